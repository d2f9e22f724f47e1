//! Choosing the next token from logits: repetition penalty, temperature (0 = greedy),
//! top-k and nucleus (top-p), in the order transformers applies them.
//!
//! Randomness enters as one uniform number per row and step: the token is found by
//! inverting the cumulative distribution, so any backend (or a device-side sampler) given
//! the same logits and the same number picks the same token.

use std::cmp::Ordering;

/// The sampling knobs of the generate stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 0 disables nucleus sampling (gpt-2-simple's convention); 1 keeps every token.
    pub top_p: f64,
    /// 1 disables it; CTRL's rule as in transformers.
    pub repetition_penalty: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 0,
            top_p: 0.0,
            repetition_penalty: 1.0,
        }
    }
}

impl Sampling {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Whether the repetition penalty is on (the sampler then needs each row's history).
    pub fn penalizes(&self) -> bool {
        self.repetition_penalty != 1.0
    }

    /// `Some(k)` when the `k` largest logits of each row are enough to sample (so a backend
    /// can send just those); `None` when the sampler needs every logit.
    pub fn candidates_needed(&self) -> Option<usize> {
        if self.penalizes() {
            None
        } else if self.is_greedy() {
            Some(1)
        } else if self.top_k > 0 {
            Some(self.top_k)
        } else {
            None
        }
    }

    /// Picks a token from a full row of logits; `seen` are the row's tokens so far (for
    /// the repetition penalty), `u` is uniform in [0, 1). `logits` may be modified.
    pub fn sample_row(&self, logits: &mut [f32], seen: &[u32], u: f64) -> u32 {
        self.sample_row_masked(logits, seen, u, |_| {})
    }

    /// [`Sampling::sample_row`] with `mask` applied to the logits after the repetition
    /// penalty and before temperature, top-k and top-p (where transformers applies its
    /// other logits processors).
    pub fn sample_row_masked(
        &self,
        logits: &mut [f32],
        seen: &[u32],
        u: f64,
        mask: impl FnOnce(&mut [f32]),
    ) -> u32 {
        if self.penalizes() {
            apply_repetition_penalty(logits, seen, self.repetition_penalty as f32);
        }
        mask(logits);
        if self.is_greedy() {
            return argmax(logits);
        }
        if self.top_k > 0 || self.top_p > 0.0 {
            let cands = if self.top_k > 0 {
                top_k_of(logits, self.top_k)
            } else {
                sorted_desc(logits)
            };
            return self.sample_candidates(&cands, u);
        }
        // Unrestricted: no need to sort, walk the vocabulary in id order.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = self.temperature;
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| ((l as f64 - max) / t).exp())
            .collect();
        pick(&weights, u) as u32
    }

    /// Picks a token from candidates sorted largest first (the output of [`top_k_of`]);
    /// used when a backend sent only the top logits.
    pub fn sample_candidates(&self, cands: &[(f32, u32)], u: f64) -> u32 {
        assert!(!cands.is_empty(), "no candidate tokens");
        if self.is_greedy() {
            return cands[0].1;
        }
        let weights = self.filtered_weights(cands);
        cands[pick(&weights, u)].1
    }

    /// Unnormalised probabilities of the candidates that survive top-k and top-p, in the
    /// candidates' order (largest first); the rest are cut off.
    fn filtered_weights(&self, cands: &[(f32, u32)]) -> Vec<f64> {
        let k = if self.top_k > 0 {
            self.top_k.min(cands.len())
        } else {
            cands.len()
        };
        let cands = &cands[..k];
        let max = cands[0].0 as f64;
        let t = self.temperature;
        let mut weights: Vec<f64> = cands
            .iter()
            .map(|&(l, _)| ((l as f64 - max) / t).exp())
            .collect();
        if self.top_p > 0.0 && self.top_p < 1.0 {
            let total: f64 = weights.iter().sum();
            let mut cum = 0.0;
            let mut keep = weights.len();
            for (i, w) in weights.iter().enumerate() {
                cum += w / total;
                if cum >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
            weights.truncate(keep);
        }
        weights
    }

    /// The tokens this sampler can pick from a row of logits, in increasing id order
    /// (after the repetition penalty, top-k and top-p; one token when greedy).
    pub fn support(&self, logits: &[f32], seen: &[u32]) -> Vec<u32> {
        let mut logits = logits.to_vec();
        if self.penalizes() {
            apply_repetition_penalty(&mut logits, seen, self.repetition_penalty as f32);
        }
        if self.is_greedy() {
            return vec![argmax(&logits)];
        }
        let cands = sorted_desc(&logits);
        let n = self.filtered_weights(&cands).len();
        let mut ids: Vec<u32> = cands[..n].iter().map(|c| c.1).collect();
        ids.sort_unstable();
        ids
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: every token already in the row has
/// its logit divided by the penalty when positive, multiplied when negative.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    let mut done = vec![false; logits.len()];
    for &t in seen {
        let t = t as usize;
        if t < logits.len() && !done[t] {
            done[t] = true;
            let l = logits[t];
            logits[t] = if l < 0.0 { l * penalty } else { l / penalty };
        }
    }
}

/// Largest first, ties by lower token id: the one order every path agrees on. A NaN of
/// either sign ranks above everything, as in libtorch's `topk` (x86 makes `0 * inf` a
/// negative NaN, which `total_cmp` alone would rank last).
fn desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    unsign_nan(b.0)
        .total_cmp(&unsign_nan(a.0))
        .then(a.1.cmp(&b.1))
}

/// `l`, with any NaN made the positive one (the largest in `total_cmp`'s order).
fn unsign_nan(l: f32) -> f32 {
    if l.is_nan() {
        f32::NAN
    } else {
        l
    }
}

/// The first index of the largest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest logits as `(logit, token)`, largest first, ties by lower id.
pub fn top_k_of(logits: &[f32], k: usize) -> Vec<(f32, u32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    if k * 8 > logits.len() {
        let mut all: Vec<(f32, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i as u32))
            .collect();
        if k < all.len() {
            all.select_nth_unstable_by(k - 1, desc);
            all.truncate(k);
        }
        all.sort_unstable_by(desc);
        return all;
    }
    // A few of many (top_k = 40 of 50257 at every step): one pass that keeps the best k
    // in a heap whose root is the worst kept, so most logits cost one comparison with it
    // (a quarter of a batch-20 decoding step went to libtorch's topk, issue 16).
    let mut heap: std::collections::BinaryHeap<Ranked> = logits[..k]
        .iter()
        .enumerate()
        .map(|(i, &l)| Ranked(l, i as u32))
        .collect();
    // Later ids lose ties, so only a strictly larger logit (in `total_cmp`'s order, here
    // as integer keys) enters; a block without one is passed over with one vectorised test.
    let mut bar = total_key(heap.peek().expect("k > 0").0);
    const BLOCK: usize = 64;
    for (b, block) in logits[k..].chunks(BLOCK).enumerate() {
        if !block
            .iter()
            .fold(false, |any, &l| any | (total_key(l) > bar))
        {
            continue;
        }
        for (j, &l) in block.iter().enumerate() {
            if total_key(l) > bar {
                *heap.peek_mut().expect("k > 0") = Ranked(l, (k + b * BLOCK + j) as u32);
                bar = total_key(heap.peek().expect("k > 0").0);
            }
        }
    }
    let mut top: Vec<(f32, u32)> = heap.into_iter().map(|Ranked(l, i)| (l, i)).collect();
    top.sort_unstable_by(desc);
    top
}

/// `l` as an integer that orders as [`f32::total_cmp`] orders floats.
fn total_key(l: f32) -> i32 {
    let bits = unsign_nan(l).to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// A kept candidate of [`top_k_of`], ordered so that the heap's root is the worst kept:
/// the smallest logit, and among equal ones the largest id.
#[derive(Clone, Copy)]
struct Ranked(f32, u32);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        desc(&(self.0, self.1), &(other.0, other.1))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

fn sorted_desc(logits: &[f32]) -> Vec<(f32, u32)> {
    top_k_of(logits, logits.len())
}

/// Inverse CDF: the first index whose cumulative weight exceeds `u * total`.
fn pick(weights: &[f64], u: f64) -> usize {
    let total: f64 = weights.iter().sum();
    let target = u * total;
    let mut cum = 0.0;
    for (i, w) in weights.iter().enumerate() {
        cum += w;
        if cum > target {
            return i;
        }
    }
    // Rounding: fall back to the last token with any weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SampleRng;
    use std::collections::BTreeSet;

    /// Known logits: token i has logit `l[i]`; softmax at T=1 is easy to reason about.
    fn logits() -> Vec<f32> {
        vec![0.5, 3.0, -1.0, 2.0, 2.9, 0.0, 1.0, -4.0, 2.5, 0.1]
    }

    fn draw(s: Sampling, n: usize) -> BTreeSet<u32> {
        let mut rng = SampleRng::for_sample(1, 2);
        (0..n)
            .map(|_| s.sample_row(&mut logits(), &[], rng.next_f64()))
            .collect()
    }

    /// The one-pass top-k gives what sorting every logit gives: largest first, ties (many,
    /// here) by lower id, infinities as `total_cmp` orders them, NaN of either sign first.
    #[test]
    fn top_k_equals_a_full_sort() {
        let mut rng = SampleRng::for_sample(5, 0);
        for n in [1usize, 7, 100, 5000] {
            let mut row: Vec<f32> = (0..n)
                .map(|_| (rng.next_f64() * 20.0).floor() as f32 - 10.0)
                .collect();
            if n > 10 {
                row[3] = f32::INFINITY;
                row[n - 1] = f32::NAN;
                row[n / 3] = -f32::NAN;
                row[5] = f32::NEG_INFINITY;
            }
            let mut all: Vec<(f32, u32)> = row
                .iter()
                .enumerate()
                .map(|(i, &l)| (l, i as u32))
                .collect();
            all.sort_by(desc);
            for k in [0, 1, 3, 40, n / 2, n, n + 1] {
                let got = top_k_of(&row, k);
                let want = &all[..k.min(n)];
                assert_eq!(got.len(), want.len(), "n {n} k {k}");
                for (g, w) in got.iter().zip(want) {
                    let same = (g.0.is_nan() && w.0.is_nan()) || g.0.total_cmp(&w.0).is_eq();
                    assert!(same && g.1 == w.1, "n {n} k {k}");
                }
            }
        }
    }

    #[test]
    fn temperature_zero_is_argmax() {
        assert_eq!(draw(Sampling::greedy(), 50), BTreeSet::from([1]));
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let s = Sampling {
            temperature: 5.0,
            top_k: 1,
            ..Sampling::default()
        };
        assert_eq!(draw(s, 200), BTreeSet::from([1]));
    }

    #[test]
    fn top_k_samples_stay_in_the_top_k_and_reach_all_of_them() {
        let s = Sampling {
            temperature: 1.0,
            top_k: 3,
            ..Sampling::default()
        };
        // The three largest: 3.0 (1), 2.9 (4), 2.5 (8).
        assert_eq!(draw(s, 2000), BTreeSet::from([1, 4, 8]));
    }

    #[test]
    fn top_p_samples_stay_in_the_nucleus() {
        let l = logits();
        let max = l.iter().copied().fold(f32::MIN, f32::max) as f64;
        let w: Vec<f64> = l.iter().map(|&x| (x as f64 - max).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        for p in [0.3, 0.5, 0.8, 0.95] {
            // The smallest set of most likely tokens whose mass reaches p.
            let mut nucleus = BTreeSet::new();
            let mut cum = 0.0;
            for &i in &order {
                nucleus.insert(i as u32);
                cum += w[i] / total;
                if cum >= p {
                    break;
                }
            }
            let s = Sampling {
                temperature: 1.0,
                top_p: p,
                ..Sampling::default()
            };
            assert_eq!(draw(s, 3000), nucleus, "top_p {p}");
        }
    }

    #[test]
    fn top_k_and_top_p_combine() {
        let s = Sampling {
            temperature: 1.0,
            top_k: 4,
            top_p: 0.99,
            ..Sampling::default()
        };
        assert_eq!(draw(s, 3000), BTreeSet::from([1, 3, 4, 8]));
    }

    #[test]
    fn unrestricted_sampling_follows_the_softmax() {
        let s = Sampling {
            temperature: 1.0,
            ..Sampling::default()
        };
        let mut rng = SampleRng::for_sample(9, 0);
        let n = 40_000;
        let mut counts = [0usize; 10];
        for _ in 0..n {
            counts[s.sample_row(&mut logits(), &[], rng.next_f64()) as usize] += 1;
        }
        let l = logits();
        let total: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = (l[i] as f64).exp() / total;
            let got = c as f64 / n as f64;
            assert!((got - p).abs() < 0.01, "token {i}: {got} vs {p}");
        }
    }

    #[test]
    fn candidates_path_equals_full_path() {
        let s = Sampling {
            temperature: 0.8,
            top_k: 5,
            top_p: 0.9,
            ..Sampling::default()
        };
        let mut rng = SampleRng::for_sample(3, 3);
        for _ in 0..500 {
            let u = rng.next_f64();
            let cands = top_k_of(&logits(), 5);
            assert_eq!(
                s.sample_row(&mut logits(), &[], u),
                s.sample_candidates(&cands, u)
            );
        }
    }

    #[test]
    fn repetition_penalty_follows_ctrl() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
        // Penalising the argmax enough hands greedy decoding to the runner-up.
        let s = Sampling {
            repetition_penalty: 1.2,
            ..Sampling::greedy()
        };
        assert_eq!(s.sample_row(&mut logits(), &[1], 0.5), 4);
        assert_eq!(s.candidates_needed(), None);
    }

    #[test]
    fn top_k_of_orders_ties_by_id() {
        assert_eq!(
            top_k_of(&[1.0, 2.0, 2.0, 0.0], 3),
            vec![(2.0, 1), (2.0, 2), (1.0, 0)]
        );
        assert_eq!(argmax(&[1.0, 2.0, 2.0]), 1);
    }
}
