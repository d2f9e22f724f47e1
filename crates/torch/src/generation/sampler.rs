//! Sampling on the device: the same choice as `gptpipe_generate::Sampling::sample_row`
//! (temperature, top-k, top-p, inverse CDF with one uniform per row), in tensor ops that a
//! CUDA graph can capture, so decoding never waits for the host between tokens.

use gptpipe_generate::Sampling;
use tch::{Kind, Tensor};

/// The token of each row `[B]` (Int64) for logits `[B, V]` (any float kind; the choice is
/// made in fp32) and uniforms `u` `[B]` in [0, 1). The repetition penalty is not applied
/// here (callers sample on the host then).
pub fn sample(logits: &Tensor, u: &Tensor, s: &Sampling) -> Tensor {
    if s.is_greedy() {
        return logits.argmax(-1, false);
    }
    let vocab = logits.size()[1];
    // Candidates, largest first when top-k or top-p needs an order; else every token in id
    // order (no sort needed, as on the host).
    let (values, ids) = if s.top_k > 0 {
        let (v, i) = logits.topk((s.top_k as i64).min(vocab), -1, true, true);
        (v, Some(i))
    } else if s.top_p > 0.0 {
        let (v, i) = logits.sort(-1, true);
        (v, Some(i))
    } else {
        (logits.shallow_clone(), None)
    };
    let mut weights = (values.to_kind(Kind::Float) / s.temperature).softmax(-1, Kind::Float);
    let mut cum = weights.cumsum(-1, Kind::Float);
    let n = cum.size()[1];
    if s.top_p > 0.0 && s.top_p < 1.0 {
        // Keep a candidate while the mass before it is below top_p (the nucleus includes
        // the candidate that crosses it).
        let before = &cum - &weights;
        weights = weights.multiply(&before.lt(s.top_p).to_kind(Kind::Float));
        cum = weights.cumsum(-1, Kind::Float);
    }
    let target = u.unsqueeze(1) * cum.narrow(1, n - 1, 1);
    // The first index whose cumulative weight exceeds the target: the count of those that
    // do not (fewer than n, as u < 1; the clamp only guards rounding).
    let pick = cum
        .le_tensor(&target)
        .sum_dim_intlist(-1, true, Kind::Int64)
        .clamp_max(n - 1);
    match ids {
        Some(ids) => ids.gather(1, &pick, false).squeeze_dim(1),
        None => pick.squeeze_dim(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptpipe_generate::rng::SampleRng;
    use tch::Device;

    /// The device sampler picks what the host sampler picks, on random logits, for every
    /// kind of setting; the rare disagreement (fp32 against f64 at a boundary) stays in the
    /// host's support.
    #[test]
    fn device_sampling_equals_host_sampling() {
        tch::manual_seed(7);
        let (rows, vocab) = (64, 500);
        let logits = Tensor::randn([rows, vocab], (Kind::Float, Device::Cpu)) * 3.0;
        let host: Vec<f32> = Vec::try_from(logits.reshape([-1])).unwrap();
        let mut rng = SampleRng::for_sample(3, 0);
        let settings = [
            Sampling::greedy(),
            Sampling {
                temperature: 1.0,
                ..Sampling::default()
            },
            Sampling {
                temperature: 0.7,
                top_k: 40,
                ..Sampling::default()
            },
            Sampling {
                temperature: 1.3,
                top_p: 0.9,
                ..Sampling::default()
            },
            Sampling {
                temperature: 0.9,
                top_k: 20,
                top_p: 0.5,
                ..Sampling::default()
            },
            Sampling {
                temperature: 2.0,
                top_k: 1,
                ..Sampling::default()
            },
        ];
        for s in settings {
            let mut same = 0;
            for _ in 0..8 {
                let us: Vec<f64> = (0..rows).map(|_| rng.next_f64()).collect();
                let u32s: Vec<f32> = us.iter().map(|&u| u as f32).collect();
                let got: Vec<i64> =
                    Vec::try_from(sample(&logits, &Tensor::from_slice(&u32s), &s)).unwrap();
                for (r, (&g, &u)) in got.iter().zip(&us).enumerate() {
                    let row = &host[r * vocab as usize..(r + 1) * vocab as usize];
                    let want = s.sample_row(&mut row.to_vec(), &[], u);
                    if g as u32 == want {
                        same += 1;
                    } else {
                        assert!(
                            s.support(row, &[]).contains(&(g as u32)),
                            "{s:?}: {g} outside the support"
                        );
                    }
                }
            }
            assert!(
                same >= 8 * rows - 2,
                "{s:?}: only {same} of {} agree",
                8 * rows
            );
        }
    }
}
