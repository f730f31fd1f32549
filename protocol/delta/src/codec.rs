//! Per-stream compression: each stream is stored, zstd or lzma (liblzma), whichever is smallest, and is
//! decoded with its window bounded.

use crate::format::Method;
use crate::Error;
use std::io::{self, BufRead, Read, Write};

/// liblzma's `LZMA_PRESET_EXTREME` (xz2 does not re-export it).
const PRESET_EXTREME: u32 = 1 << 31;

/// Compresses `data` with every method and keeps the smallest. `window_log` bounds the window
/// a decoder will need.
pub fn compress_best(data: &[u8], window_log: u32) -> io::Result<(Method, Vec<u8>)> {
    let mut best = (Method::Stored, data.to_vec());
    if data.is_empty() {
        return Ok(best);
    }
    for method in [Method::Lzma, Method::Zstd] {
        let packed = compress(method, data, window_log)?;
        if packed.len() < best.1.len() {
            best = (method, packed);
        }
    }
    Ok(best)
}

/// A scoped thread's result; its panic, if any, goes on in the caller.
pub fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The smallest window that covers `len` bytes, within `[min, max]` (log2).
fn window_for(len: usize, min: u32, max: u32) -> u32 {
    let need = usize::BITS - len.saturating_sub(1).leading_zeros();
    need.clamp(min, max)
}

pub fn compress(method: Method, data: &[u8], window_log: u32) -> io::Result<Vec<u8>> {
    match method {
        Method::Stored => Ok(data.to_vec()),
        Method::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::new(), 19)?;
            enc.window_log(window_for(data.len(), 10, window_log))?;
            enc.long_distance_matching(true)?;
            enc.include_checksum(false)?;
            enc.include_contentsize(false)?;
            enc.write_all(data)?;
            enc.finish()
        }
        Method::Lzma => {
            // The .lzma ("alone") form: 13 header bytes where the xz container takes some 60.
            let mut opts = xz2::stream::LzmaOptions::new_preset(9 | PRESET_EXTREME)
                .map_err(io::Error::from)?;
            opts.dict_size(1 << window_for(data.len(), 12, window_log));
            let stream = xz2::stream::Stream::new_lzma_encoder(&opts).map_err(io::Error::from)?;
            let mut enc = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
            enc.write_all(data)?;
            enc.finish()
        }
    }
}

/// A decoder over one stream's compressed bytes.
pub enum Decoder<R: BufRead> {
    Stored(R),
    Zstd(zstd::stream::read::Decoder<'static, R>),
    Lzma(xz2::bufread::XzDecoder<R>),
}

impl<R: BufRead> Decoder<R> {
    pub fn new(stream: &'static str, method: Method, r: R, window_log: u32) -> crate::Result<Self> {
        Ok(match method {
            Method::Stored => Decoder::Stored(r),
            Method::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(r)
                    .map_err(|e| classify(stream, e))?
                    .single_frame();
                d.window_log_max(window_log)
                    .map_err(|e| classify(stream, e))?;
                Decoder::Zstd(d)
            }
            Method::Lzma => {
                // liblzma refuses a header whose dictionary needs more than this.
                let memlimit = (1u64 << window_log) + (1 << 20);
                let s = xz2::stream::Stream::new_lzma_decoder(memlimit)
                    .map_err(|e| classify(stream, e.into()))?;
                Decoder::Lzma(xz2::bufread::XzDecoder::new_stream(r, s))
            }
        })
    }

    pub fn into_inner(self) -> R {
        match self {
            Decoder::Stored(r) => r,
            Decoder::Zstd(d) => d.finish(),
            Decoder::Lzma(d) => d.into_inner(),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Stored(r) => r.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Lzma(d) => d.read(buf),
        }
    }
}

/// Turns a decompression error into a typed one: a window over the limit, or corruption.
pub fn classify(stream: &'static str, e: io::Error) -> Error {
    let lzma_mem = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<xz2::stream::Error>())
        .is_some_and(|x| matches!(x, xz2::stream::Error::MemLimit));
    // zstd reports a frame whose window exceeds `window_log_max` this way (ZSTD_error_frameParameter_windowTooLarge).
    let zstd_window = e.to_string().contains("too much memory");
    if lzma_mem || zstd_window {
        Error::WindowTooLarge { stream }
    } else {
        Error::Corrupt { stream, source: e }
    }
}
