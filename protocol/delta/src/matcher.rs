//! The matcher: a suffix array over the old image and a bsdiff-style scan over the new one.
//!
//! The scan looks for exact matches of the new image in the old one; around each it extends
//! approximate matches (byte-wise more equal than not) forwards and backwards, so a region
//! that changed only in scattered bytes (addresses, version strings) becomes one long "diff"
//! run of mostly zeros that compresses to almost nothing. What no match covers becomes literal
//! bytes. The algorithm is Colin Percival's bsdiff; see `docs/DELTA.md`.

use crate::format::Record;

/// The matcher's output: control records and the diff and literal streams they consume.
#[derive(Debug, Default)]
pub struct Script {
    pub records: Vec<Record>,
    pub diff: Vec<u8>,
    pub literal: Vec<u8>,
}

impl Script {
    /// The script that `records` (as [`Index::diff`] made them, every seek applied) describe.
    pub fn rebuild(old: &[u8], new: &[u8], records: Vec<Record>) -> Script {
        let (mut diff, mut literal) = (Vec::new(), Vec::new());
        let (mut base, mut out) = (0usize, 0usize);
        for r in &records {
            base = base.wrapping_add_signed(r.seek as isize);
            let (dl, ll) = (r.diff_len as usize, r.literal_len as usize);
            let pairs = new[out..out + dl].iter().zip(&old[base..base + dl]);
            diff.extend(pairs.map(|(n, o)| n.wrapping_sub(*o)));
            literal.extend_from_slice(&new[out + dl..out + dl + ll]);
            (base, out) = (base + dl, out + dl + ll);
        }
        Script {
            records,
            diff,
            literal,
        }
    }
}

/// When the scan leaves the current alignment for a new exact match: when the match is longer
/// than what the current alignment already gets right by `threshold` bytes plus `jump_weight`
/// per control byte the jump costs. A higher weight keeps the scan from jumping across the
/// image for a short match. An approximate extension of a match is kept while more than
/// `extend_den / extend_num` of its bytes are equal: stricter keeps changed text as literals,
/// which pack better than its differences. bsdiff is `(8, 0, 2, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub threshold: i64,
    pub jump_weight: i64,
    pub extend_num: i64,
    pub extend_den: i64,
}

const fn tuning(threshold: i64, jump_weight: i64, extend_num: i64, extend_den: i64) -> Tuning {
    Tuning {
        threshold,
        jump_weight,
        extend_num,
        extend_den,
    }
}

/// The tunings [`crate::create`] tries, keeping whichever gives the smallest delta.
pub const TUNINGS: [Tuning; 4] = [
    tuning(8, 0, 2, 1),
    tuning(4, 4, 2, 1),
    tuning(8, 8, 2, 1),
    tuning(8, 8, 3, 2),
];

pub struct Index<'a> {
    old: &'a [u8],
    sa: Vec<i32>,
}

impl<'a> Index<'a> {
    /// Builds the suffix array (5 bytes of memory per byte of `old`, with `old` itself).
    pub fn new(old: &'a [u8]) -> Self {
        let mut sa = vec![0i32; old.len()];
        if !old.is_empty() {
            cdivsufsort::sort_in_place(old, &mut sa);
        }
        Index { old, sa }
    }

    /// The longest match of a prefix of `target` in old: (position, length).
    fn search(&self, target: &[u8]) -> (usize, usize) {
        let (old, sa) = (self.old, &self.sa);
        if sa.is_empty() {
            return (0, 0);
        }
        let (mut lo, mut hi) = (0usize, sa.len() - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let p = sa[mid] as usize;
            let n = (old.len() - p).min(target.len());
            if old[p..p + n] < target[..n] {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let a = sa[lo] as usize;
        let b = sa[hi] as usize;
        let la = match_len(&old[a..], target);
        let lb = match_len(&old[b..], target);
        if la >= lb {
            (a, la)
        } else {
            (b, lb)
        }
    }

    /// Runs the scan over `new` and returns the records of the script that rebuilds it from
    /// old (every seek applied, also on records without diff bytes; see [`Script::rebuild`]).
    pub fn diff(&self, new: &[u8], tuning: Tuning) -> Vec<Record> {
        let old = self.old;
        let (oldsize, newsize) = (old.len() as i64, new.len() as i64);
        let at_old = |i: i64| old[i as usize];
        let at_new = |i: i64| new[i as usize];
        let mut out = Vec::new();
        let threshold = tuning.threshold;
        let (en, ed) = (tuning.extend_num, tuning.extend_den);
        // What a jump of `d` in the base costs in control bytes, weighted.
        let jump_cost = |d: i64| -> i64 {
            let z = ((d << 1) ^ (d >> 63)) as u64;
            tuning.jump_weight * ((64 - i64::from(z.leading_zeros())) / 7 + 1)
        };
        // The base offset the decoder will be at: after the previous record's diff run.
        let mut cursor: i64 = 0;
        let (mut scan, mut len, mut pos) = (0i64, 0i64, 0i64);
        let (mut lastscan, mut lastpos, mut lastoffset) = (0i64, 0i64, 0i64);
        while scan < newsize {
            let mut oldscore = 0i64;
            scan += len;
            let mut scsc = scan;
            while scan < newsize {
                let (p, l) = self.search(&new[scan as usize..]);
                pos = p as i64;
                len = l as i64;
                while scsc < scan + len {
                    if scsc + lastoffset < oldsize && at_old(scsc + lastoffset) == at_new(scsc) {
                        oldscore += 1;
                    }
                    scsc += 1;
                }
                if (len == oldscore && len != 0)
                    || len > oldscore + threshold + jump_cost(pos - (scan + lastoffset))
                {
                    break;
                }
                if scan + lastoffset < oldsize && at_old(scan + lastoffset) == at_new(scan) {
                    oldscore -= 1;
                }
                scan += 1;
            }
            if len == oldscore && scan != newsize {
                continue;
            }
            // Extend the previous match forwards, approximately.
            let (mut s, mut sf, mut lenf) = (0i64, 0i64, 0i64);
            let mut i = 0i64;
            while lastscan + i < scan && lastpos + i < oldsize {
                if at_old(lastpos + i) == at_new(lastscan + i) {
                    s += 1;
                }
                i += 1;
                if s * en - i * ed > sf * en - lenf * ed {
                    sf = s;
                    lenf = i;
                }
            }
            // Extend the new match backwards, approximately.
            let mut lenb = 0i64;
            if scan < newsize {
                let (mut s, mut sb) = (0i64, 0i64);
                let mut i = 1i64;
                while scan >= lastscan + i && pos >= i {
                    if at_old(pos - i) == at_new(scan - i) {
                        s += 1;
                    }
                    if s * en - i * ed > sb * en - lenb * ed {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            // Where the two extensions overlap, split at the best point.
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0i64, 0i64, 0i64);
                for i in 0..overlap {
                    if at_new(lastscan + lenf - overlap + i) == at_old(lastpos + lenf - overlap + i)
                    {
                        s += 1;
                    }
                    if at_new(scan - lenb + i) == at_old(pos - lenb + i) {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf += lens - overlap;
                lenb -= lens;
            }
            let literal_len = (scan - lenb) - (lastscan + lenf);
            // A record writes at least one byte; a segment with nothing to write only moves.
            if lenf + literal_len > 0 {
                out.push(Record {
                    seek: lastpos - cursor,
                    diff_len: lenf as u64,
                    literal_len: literal_len as u64,
                });
                cursor = lastpos + lenf;
            }
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos - scan;
        }
        out
    }
}

fn match_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
