//! The random numbers of one sample.
//!
//! Sample `i` of a run with seed `s` draws from its own stream seeded from `(s, i)` only, so
//! it does not depend on the batch it lands in, on `batch_size`, or on the backend.

/// SplitMix64's output function: a strong 64-bit mixer (also used to seed the stream).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** seeded through SplitMix64: small, fast and well tested; we need its exact
/// sequence to be stable forever, which is why it is written here rather than taken from
/// a crate whose algorithm could change.
#[derive(Debug, Clone)]
pub struct SampleRng {
    s: [u64; 4],
}

impl SampleRng {
    /// The stream of sample `index` under `seed`.
    pub fn for_sample(seed: u64, index: u64) -> Self {
        let mut x =
            mix(seed ^ 0x6A09_E667_F3BC_C908) ^ mix(index.wrapping_add(0xBB67_AE85_84CA_A73B));
        let mut s = [0u64; 4];
        for v in &mut s {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            *v = mix(x);
        }
        Self { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_on_seed_and_index_only() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(SampleRng::for_sample(42, 3), |r, _: u64| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(SampleRng::for_sample(42, 3), |r, _: u64| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(SampleRng::for_sample(42, 4), |r, _: u64| Some(r.next_u64()))
            .collect();
        let d: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(SampleRng::for_sample(43, 3), |r, _: u64| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let mut r = SampleRng::for_sample(7, 0);
        let xs: Vec<f64> = (0..20_000).map(|_| r.next_f64()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
