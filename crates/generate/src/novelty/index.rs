//! The novelty index: a suffix array over the training rows' GPT-2 tokens, answering
//! "what is the longest run of a sample's tokens that some training row holds, and the
//! first row that holds it" in O(m * L * log n) for a sample of m tokens whose longest
//! run is L (short texts: microseconds), plus a sorted set of the rows' normalised-text
//! hashes for exact copies.
//!
//! Layout: every row's tokens (id + 1, as u16: GPT-2 ids are below 65535) followed by a
//! separator 0, one after another. A suffix ends at its row's separator, so a match never
//! crosses rows. Memory: 6 bytes per token (text and suffix array) plus a small range-min
//! table; building peaks at about 30 bytes per token (sort pairs, ranks).

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

/// Separator after each row (token codes are id + 1).
const SEP: u16 = 0;
/// Suffix-array entries per block of the range-minimum table.
const BLOCK: usize = 64;

/// The index over a list of training rows. Row numbers are positions in that list.
#[derive(Debug, Clone, PartialEq)]
pub struct NoveltyIndex {
    /// Token codes of all rows, each row followed by [`SEP`].
    pub(super) text: Vec<u16>,
    /// Where each row starts in `text` (increasing).
    pub(super) starts: Vec<u32>,
    /// Positions of `text` (separators excluded) in order of their suffixes.
    pub(super) sa: Vec<u32>,
    /// First 16 bytes of blake3 of each non-empty normalised row, sorted, deduplicated.
    pub(super) copies: Vec<[u8; 16]>,
    rmq: RangeMin,
}

/// The longest run of a sample's tokens held by a training row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Tokens in the run; 0 when no token of the sample is in any row.
    pub len: usize,
    /// The lowest-numbered row holding a run of `len` tokens; `None` when `len` is 0.
    pub row: Option<usize>,
}

impl NoveltyIndex {
    /// Builds the index over `rows` (token ids) with `copies`, the hashes of the
    /// normalised rows ([`super::copy_hash`]).
    pub fn from_tokens(rows: &[Vec<u32>], mut copies: Vec<[u8; 16]>) -> Result<Self> {
        let total: usize = rows.iter().map(|r| r.len() + 1).sum();
        ensure!(
            total < u32::MAX as usize,
            "the training rows hold {total} tokens; the novelty index holds at most {}",
            u32::MAX - 1
        );
        let mut text = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(rows.len());
        for row in rows {
            starts.push(text.len() as u32);
            for &id in row {
                if id >= u16::MAX as u32 {
                    bail!("token id {id} is beyond the novelty index's vocabulary (65534)");
                }
                text.push(id as u16 + 1);
            }
            text.push(SEP);
        }
        copies.sort_unstable();
        copies.dedup();
        let sa = suffix_array(&text);
        Ok(Self::from_parts(text, starts, sa, copies))
    }

    pub(super) fn from_parts(
        text: Vec<u16>,
        starts: Vec<u32>,
        sa: Vec<u32>,
        copies: Vec<[u8; 16]>,
    ) -> Self {
        let rmq = RangeMin::new(&sa);
        Self {
            text,
            starts,
            sa,
            copies,
            rmq,
        }
    }

    /// Number of training rows.
    pub fn rows(&self) -> usize {
        self.starts.len()
    }

    /// Whether a normalised text with this hash is a training row.
    pub fn is_copy(&self, hash: &[u8; 16]) -> bool {
        self.copies.binary_search(hash).is_ok()
    }

    /// The longest run of `sample`'s tokens that a training row holds.
    pub fn longest_run(&self, sample: &[u32]) -> Run {
        let m = sample.len();
        let mut best = 0;
        // Suffix-array intervals of every start whose run has length `best`.
        let mut hits: Vec<(usize, usize)> = Vec::new();
        for i in 0..m {
            if m - i < best {
                break;
            }
            let (mut lo, mut hi) = (0, self.sa.len());
            let mut k = 0;
            while i + k < m && sample[i + k] < u16::MAX as u32 {
                let c = sample[i + k] as u16 + 1;
                // Suffixes in [lo, hi) share k tokens and none ends before k, so their
                // k-th codes are sorted: narrow to those equal to c.
                let sub = &self.sa[lo..hi];
                let at = |p: u32| self.text.get(p as usize + k).copied().unwrap_or(SEP);
                let a = sub.partition_point(|&p| at(p) < c);
                let b = a + sub[a..].partition_point(|&p| at(p) == c);
                if a == b {
                    break;
                }
                (lo, hi) = (lo + a, lo + b);
                k += 1;
            }
            if k > best {
                best = k;
                hits.clear();
            }
            if k == best && k > 0 {
                hits.push((lo, hi));
            }
        }
        // The earliest position among the matches lies in the lowest-numbered row.
        let row = hits
            .iter()
            .map(|&(lo, hi)| self.rmq.min(&self.sa, lo, hi))
            .min()
            .map(|pos| self.row_of(pos));
        Run { len: best, row }
    }

    fn row_of(&self, pos: u32) -> usize {
        self.starts.partition_point(|&s| s <= pos) - 1
    }
}

/// Suffix array of `text` (separator positions left out), each suffix ending at its row's
/// separator: suffixes equal up to their separator are in no particular order (a query
/// never matches a separator). First a parallel sort by the first 4 codes, then prefix
/// doubling on the groups not yet told apart only (Larsson-Sadakane), so short rows cost
/// one sort and a huge repetitive row costs rounds of O(n log n), never quadratic time.
fn suffix_array(text: &[u16]) -> Vec<u32> {
    const HEAD: usize = 4;
    let code = |i: usize| text.get(i).copied().unwrap_or(SEP);
    // The first HEAD codes, none after a separator.
    let head = |p: u32| -> u64 {
        let mut key = 0u64;
        let mut ended = false;
        for j in 0..HEAD {
            let c = if ended { SEP } else { code(p as usize + j) };
            ended |= c == SEP;
            key = key << 16 | c as u64;
        }
        key
    };
    // Sorted as (key, position) pairs: each key is computed once, and the sort reads
    // memory in order.
    let mut pairs: Vec<(u64, u32)> = (0..text.len() as u32)
        .into_par_iter()
        .filter(|&p| text[p as usize] != SEP)
        .map(|p| (head(p), p))
        .collect();
    pairs.par_sort_unstable();
    let mut sa: Vec<u32> = pairs.iter().map(|&(_, p)| p).collect();
    // rank[p] = 1 + the start of p's group in `sa`; 0 at separators (shortest first).
    let mut rank = vec![0u32; text.len()];
    // Whether p's group is told apart as far as it can be: its suffixes are equal up to
    // their separator.
    let mut ended = vec![false; text.len()];
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut s = 0;
    while s < pairs.len() {
        let key = pairs[s].0;
        let e = s + pairs[s..].partition_point(|&(k, _)| k == key);
        let done_at_sep = key & 0xFFFF == SEP as u64;
        for &(_, p) in &pairs[s..e] {
            rank[p as usize] = s as u32 + 1;
            ended[p as usize] = done_at_sep;
        }
        if e - s > 1 && !done_at_sep {
            open.push((s, e));
        }
        s = e;
    }
    drop(pairs);
    let mut h = HEAD;
    while !open.is_empty() {
        // Each open group sorted by the rank h codes on, as (rank, position) pairs, in
        // parallel; ranks change only after the round.
        let key = |p: u32| rank.get(p as usize + h).copied().unwrap_or(0);
        let sorted: Vec<Vec<(u32, u32)>> = open
            .par_iter()
            .map(|&(s, e)| {
                let mut v: Vec<(u32, u32)> = sa[s..e].iter().map(|&p| (key(p), p)).collect();
                v.sort_unstable();
                v
            })
            .collect();
        let mut updates: Vec<(u32, u32, bool)> = Vec::new();
        let mut next = Vec::new();
        for (&(s, _), group) in open.iter().zip(&sorted) {
            let mut a = 0;
            while a < group.len() {
                let k = group[a].0;
                let b = a + group[a..].partition_point(|&(x, _)| x == k);
                let q = group[a].1 as usize + h;
                let done_at_sep = k == 0 || ended.get(q).copied().unwrap_or(true);
                for (j, &(_, p)) in group[a..b].iter().enumerate() {
                    sa[s + a + j] = p;
                    updates.push((p, (s + a) as u32 + 1, done_at_sep));
                }
                if b - a > 1 && !done_at_sep {
                    next.push((s + a, s + b));
                }
                a = b;
            }
        }
        for (p, r, d) in updates {
            rank[p as usize] = r;
            ended[p as usize] = d;
        }
        open = next;
        h *= 2;
    }
    sa
}

/// Minimum of `sa[lo..hi]`: a sparse table over blocks of [`BLOCK`] entries, scans inside
/// the end blocks. About n / 64 * log(n / 64) words.
#[derive(Debug, Clone, PartialEq, Default)]
struct RangeMin {
    /// `levels[j][b]`: the minimum of blocks b .. b + 2^j.
    levels: Vec<Vec<u32>>,
}

impl RangeMin {
    fn new(sa: &[u32]) -> Self {
        let base: Vec<u32> = sa
            .chunks(BLOCK)
            .map(|c| *c.iter().min().expect("chunks are not empty"))
            .collect();
        let mut levels = vec![base];
        let mut width = 1;
        while width * 2 <= levels[0].len() {
            let prev = levels.last().expect("one level at least");
            let level: Vec<u32> = (0..prev.len() - width)
                .map(|b| prev[b].min(prev[b + width]))
                .collect();
            levels.push(level);
            width *= 2;
        }
        Self { levels }
    }

    /// Minimum of `sa[lo..hi]`, `lo < hi`.
    fn min(&self, sa: &[u32], lo: usize, hi: usize) -> u32 {
        let (first, last) = (lo / BLOCK, (hi - 1) / BLOCK);
        if last <= first + 1 {
            return *sa[lo..hi].iter().min().expect("a non-empty range");
        }
        let ends = sa[lo..(first + 1) * BLOCK]
            .iter()
            .chain(&sa[last * BLOCK..hi])
            .min()
            .copied()
            .expect("non-empty ends");
        // Whole blocks first + 1 ..= last - 1.
        let (a, b) = (first + 1, last);
        let j = (usize::BITS - 1 - (b - a).leading_zeros()) as usize;
        let level = &self.levels[j];
        ends.min(level[a]).min(level[b - (1 << j)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The brute-force answer: longest common substring with every row, the first row
    /// holding the longest.
    fn reference(rows: &[Vec<u32>], sample: &[u32]) -> Run {
        let mut best = Run { len: 0, row: None };
        for (r, row) in rows.iter().enumerate() {
            let mut prev = vec![0usize; row.len() + 1];
            let mut longest = 0;
            for &s in sample {
                let mut cur = vec![0usize; row.len() + 1];
                for (j, &t) in row.iter().enumerate() {
                    if s == t {
                        cur[j + 1] = prev[j] + 1;
                        longest = longest.max(cur[j + 1]);
                    }
                }
                prev = cur;
            }
            if longest > best.len {
                best = Run {
                    len: longest,
                    row: Some(r),
                };
            }
        }
        best
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn random_rows(rng: &mut Rng, count: usize, vocab: u64, max_len: u64) -> Vec<Vec<u32>> {
        (0..count)
            .map(|_| {
                let len = rng.next(max_len + 1);
                (0..len).map(|_| rng.next(vocab) as u32).collect()
            })
            .collect()
    }

    #[test]
    fn longest_run_equals_brute_force_on_random_data() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            // Small vocabularies make long shared runs and many ties.
            let vocab = [2, 3, 5, 50][round % 4];
            let count = 1 + rng.next(30) as usize;
            // Long rows over a tiny vocabulary need several doubling rounds.
            let max_len = if round % 3 == 0 { 80 } else { 12 };
            let rows = random_rows(&mut rng, count, vocab, max_len);
            let index = NoveltyIndex::from_tokens(&rows, Vec::new()).unwrap();
            for _ in 0..20 {
                let mut sample: Vec<u32> = (0..rng.next(max_len + 3))
                    .map(|_| rng.next(vocab) as u32)
                    .collect();
                // Often splice in a piece of a row, as samples copy training text.
                let row = &rows[rng.next(rows.len() as u64) as usize];
                if !row.is_empty() && rng.next(2) == 0 {
                    let a = rng.next(row.len() as u64) as usize;
                    let b = a + rng.next((row.len() - a) as u64 + 1) as usize;
                    let at = rng.next(sample.len() as u64 + 1) as usize;
                    sample.splice(at..at, row[a..b].iter().copied());
                }
                assert_eq!(
                    index.longest_run(&sample),
                    reference(&rows, &sample),
                    "rows {rows:?} sample {sample:?}"
                );
            }
        }
    }

    #[test]
    fn range_min_equals_a_scan() {
        let mut rng = Rng(7);
        for n in [1, 2, 63, 64, 65, 200, 1000] {
            let sa: Vec<u32> = (0..n).map(|_| rng.next(1_000_000) as u32).collect();
            let rmq = RangeMin::new(&sa);
            for _ in 0..500 {
                let lo = rng.next(n as u64) as usize;
                let hi = lo + 1 + rng.next((n - lo) as u64) as usize;
                assert_eq!(rmq.min(&sa, lo, hi), *sa[lo..hi].iter().min().unwrap());
            }
        }
    }

    #[test]
    fn absurd_input_does_not_panic() {
        // No rows at all, only empty rows, an empty sample.
        let none = NoveltyIndex::from_tokens(&[], Vec::new()).unwrap();
        assert_eq!(none.longest_run(&[1, 2]), Run { len: 0, row: None });
        let empty = NoveltyIndex::from_tokens(&[vec![], vec![]], Vec::new()).unwrap();
        assert_eq!(empty.longest_run(&[]), Run { len: 0, row: None });
        assert_eq!(empty.longest_run(&[5]), Run { len: 0, row: None });
        // A token the index cannot hold matches nothing, and an id too large to index is
        // an error, not a panic.
        let one = NoveltyIndex::from_tokens(&[vec![1, 2, 3]], Vec::new()).unwrap();
        assert_eq!(
            one.longest_run(&[1, 2, u32::MAX, 3]),
            Run {
                len: 2,
                row: Some(0)
            }
        );
        assert!(NoveltyIndex::from_tokens(&[vec![70_000]], Vec::new()).is_err());
        // A huge repetitive row costs doubling rounds, not quadratic time.
        let huge = vec![7u32; 200_000];
        let index = NoveltyIndex::from_tokens(&[vec![1], huge], Vec::new()).unwrap();
        assert_eq!(
            index.longest_run(&[7; 50]),
            Run {
                len: 50,
                row: Some(1)
            }
        );
    }
}
