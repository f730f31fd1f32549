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
    /// `buckets[k]`: the first index of `sa` whose suffix's first two bytes (big-endian; a
    /// one-byte suffix `x` counts as `x 0`) are `k` or more; `buckets[65536]` = `sa.len()`.
    buckets: Vec<u32>,
}

impl<'a> Index<'a> {
    /// Builds the suffix array (5 bytes of memory per byte of `old`, with `old` itself).
    pub fn new(old: &'a [u8]) -> Self {
        let mut sa = vec![0i32; old.len()];
        if !old.is_empty() {
            cdivsufsort::sort_in_place(old, &mut sa);
        }
        let mut buckets = vec![0u32; (1 << 16) + 1];
        let mut next = 0usize;
        for (i, &p) in sa.iter().enumerate() {
            let key = bucket_key(&old[p as usize..]);
            while next <= key {
                buckets[next] = i as u32;
                next += 1;
            }
        }
        for b in &mut buckets[next..] {
            *b = sa.len() as u32;
        }
        Index { old, sa, buckets }
    }

    /// The longest match of a prefix of `target` in old: (position, length).
    fn search(&self, target: &[u8]) -> (usize, usize) {
        let (old, sa) = (self.old, &self.sa);
        if sa.is_empty() {
            return (0, 0);
        }
        // The suffixes sharing the target's first two bytes, with one neighbour each side: the
        // search ends between the same two suffixes as over the whole array, after 16 fewer
        // steps through memory far apart. (Where a suffix at the end of the base is a shorter
        // prefix of the target, bsdiff's comparison is not monotone; there either search
        // returns a true match, not always the same one.)
        let (mut lo, mut hi) = (0usize, sa.len() - 1);
        if target.len() >= 2 {
            let key = bucket_key(target);
            let last = sa.len() - 1;
            lo = (self.buckets[key] as usize)
                .saturating_sub(1)
                .min(last.saturating_sub(1));
            hi = (self.buckets[key + 1] as usize)
                .clamp(lo + 1, last.max(1))
                .min(last);
        }
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

/// The first two bytes of `s` as a number (`x 0` for a single byte `x`).
fn bucket_key(s: &[u8]) -> usize {
    match s {
        [a, b, ..] => usize::from(*a) << 8 | usize::from(*b),
        [a] => usize::from(*a) << 8,
        [] => 0,
    }
}

fn match_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::{match_len, Index};

    /// bsdiff's search over the whole suffix array, as it was before the bucket table.
    fn whole_search(index: &Index<'_>, target: &[u8]) -> (usize, usize) {
        let (old, sa) = (index.old, &index.sa);
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
        let (a, b) = (sa[lo] as usize, sa[hi] as usize);
        let (la, lb) = (match_len(&old[a..], target), match_len(&old[b..], target));
        if la >= lb {
            (a, la)
        } else {
            (b, lb)
        }
    }

    /// The bucket table changes where the search starts, not what it finds.
    #[test]
    fn the_bucketed_search_finds_what_the_whole_array_search_finds() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for alphabet in [1u64, 2, 3, 256] {
            for len in [1usize, 2, 3, 50, 5_000] {
                let old: Vec<u8> = (0..len).map(|_| (next() % alphabet) as u8).collect();
                let index = Index::new(&old);
                for _ in 0..300 {
                    let mut target: Vec<u8> = if next() % 3 == 0 {
                        (0..1 + next() % 40)
                            .map(|_| (next() % alphabet) as u8)
                            .collect()
                    } else {
                        let at = (next() as usize) % old.len();
                        let end = (at + 1 + (next() as usize) % 300).min(old.len());
                        old[at..end].to_vec()
                    };
                    if next() % 2 == 0 {
                        let i = (next() as usize) % target.len();
                        target[i] = target[i].wrapping_add(1);
                    }
                    let (p, l) = index.search(&target);
                    let whole = whole_search(&index, &target);
                    assert_eq!(match_len(&old[p..], &target), l);
                    // bsdiff's comparison is not monotone where a suffix of the base is a
                    // shorter prefix of the target (it compares equal there); both searches
                    // return a true match then, not always the same one.
                    let edge = (old.len().saturating_sub(target.len())..old.len())
                        .any(|q| target.starts_with(&old[q..]));
                    if !edge {
                        assert_eq!(
                            (p, l),
                            whole,
                            "alphabet {alphabet}, old {len} bytes, target {target:?}"
                        );
                    }
                }
            }
        }
    }
}
