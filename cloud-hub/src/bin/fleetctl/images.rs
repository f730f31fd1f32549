//! `fleetctl images`.

use std::io::{BufWriter, Seek as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use cloud_hub::images::{self, Format};
use futures_util::StreamExt as _;
use reqwest::Method;

use crate::client::{Client, Out};

#[derive(Subcommand)]
pub enum Images {
    /// List images.
    List,
    /// Import a directory, tar, docker save archive or OCI layout (directory or tar); what
    /// PATH is is detected and said.
    Import {
        path: PathBuf,
        /// Image name.
        #[arg(long)]
        name: String,
        /// Architecture: aarch64/arm64, armv7, x86_64/amd64, riscv64 (default: the image's
        /// own, else this machine's).
        #[arg(long, conflicts_with = "platform")]
        arch: Option<String>,
        /// The platform to take from a multi-architecture image, e.g. linux/arm64.
        #[arg(long)]
        platform: Option<String>,
        /// dir, tar, docker or oci: checked against what PATH is (detected when left out).
        #[arg(long)]
        format: Option<String>,
    },
    /// Delete an image no release names, with its blob and cached deltas.
    Delete { digest: String },
}

pub async fn run(cmd: Images, c: &Client, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Images::Delete { digest } => out.show(
            &c.call(
                Method::DELETE,
                &format!("/api/v1/images/{}", crate::client::segment(&digest)),
            )
            .await?,
            &[],
        ),
        Images::List => out.show(
            &c.call(Method::GET, "/api/v1/images").await?,
            &[
                ("DIGEST", "digest"),
                ("NAME", "name"),
                ("SIZE", "size"),
                ("STORED", "compressed_size"),
                ("ARCH", "arch"),
            ],
        ),
        Images::Import {
            path,
            name,
            arch,
            platform,
            format,
        } => {
            let explicit = format.as_deref().map(Format::parse).transpose()?;
            let format = images::resolve(&path, explicit)?;
            eprintln!("{}: {}", path.display(), format.describe());
            let arch = match arch.or(platform) {
                Some(a) => Some(images::formats::parse_arch(&a)?),
                None => None,
            };
            // A directory is sent as a tar written to a temporary file, file by file; an
            // archive is sent as it is. Neither is held in memory.
            let (file, fmt) = match format {
                Format::Dir => (spool(&path, images::write_dir_tar)?, Format::Tar),
                Format::Oci if path.is_dir() => (spool(&path, tar_layout)?, Format::Oci),
                f => (
                    std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?,
                    f,
                ),
            };
            let total = file.metadata()?.len();
            let mut query = vec![("name", name), ("format", fmt.as_str().to_string())];
            if let Some(a) = arch {
                query.push(("arch", a.to_string()));
            }
            let req = c
                .request(Method::POST, "/api/v1/images")
                .query(&query)
                .header("content-length", total)
                .body(progress_body(file, total, path.display().to_string()));
            let v = c.send(req, "uploading the image").await?;
            out.show(&v, &[]);
        }
    }
    Ok(())
}

/// Writes what `write` makes of `path` into an anonymous temporary file, rewound.
fn spool(
    path: &Path,
    write: impl FnOnce(&Path, BufWriter<std::fs::File>) -> anyhow::Result<BufWriter<std::fs::File>>,
) -> anyhow::Result<std::fs::File> {
    let tmp = tempfile::tempfile().context("creating a temporary file")?;
    let w =
        write(path, BufWriter::new(tmp)).with_context(|| format!("packing {}", path.display()))?;
    let mut f = w.into_inner().map_err(|e| e.into_error())?;
    f.rewind()?;
    Ok(f)
}

/// An OCI layout directory as a tar of its files.
fn tar_layout(
    root: &Path,
    w: BufWriter<std::fs::File>,
) -> anyhow::Result<BufWriter<std::fs::File>> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.append_dir_all(".", root)?;
    Ok(b.into_inner()?)
}

/// The upload body, read from `file` in chunks, drawing a progress bar on stderr.
fn progress_body(file: std::fs::File, total: u64, what: String) -> reqwest::Body {
    let stream =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024);
    let mut sent = 0u64;
    let total = total.max(1);
    let stream = stream.map(move |c| {
        if let Ok(c) = &c {
            sent += c.len() as u64;
            let pct = sent * 100 / total;
            let bar = "#".repeat((pct / 4) as usize);
            eprint!("\r{what} [{bar:<25}] {pct:>3}% {sent} bytes");
            if sent >= total {
                eprintln!();
            }
        }
        c
    });
    reqwest::Body::wrap_stream(stream)
}
