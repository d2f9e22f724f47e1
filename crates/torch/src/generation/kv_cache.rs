//! The decoder's key/value cache: per layer one preallocated buffer of `cap` rows of
//! `n_ctx` positions, written in place (no concatenation per step, fixed addresses for CUDA
//! graphs). Rows `..rows()` are in use; rows can leave ([`KvCache::retain`]) and join
//! ([`KvCache::push_rows`]) a running batch, and each row knows how many positions it holds
//! ([`KvCache::lens`]).
//!
//! (Not the model's own [`crate::model::KvCache`], which grows by concatenation and serves
//! the prompt's forward pass.)

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// How a layer's buffer orders its dimensions. Keys and values share one buffer (one copy
/// per step writes both): dimension 0 is key (0) or value (1), dimension 1 the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// `[2, cap, H, n_ctx, D]`: batch dimensions mergeable, so the attention matmuls need
    /// no copy.
    Heads,
    /// `[2, cap, n_ctx, H, D]`: what FlashAttention's variable-length kernel reads.
    Positions,
}

impl KvLayout {
    /// The dimension of positions in a layer's buffer.
    pub fn position_dim(self) -> i64 {
        match self {
            KvLayout::Heads => 3,
            KvLayout::Positions => 2,
        }
    }
}

/// Where a decoding step writes its keys and values: a position the host knows, a
/// one-element Int64 tensor on the device (graph-replayable steps), or one position per
/// row (Int64 `[b]` on the device; rows of different lengths).
#[derive(Clone, Copy)]
pub enum Position<'a> {
    Host(i64),
    Device(&'a Tensor),
    Rows(&'a Tensor),
}

/// See the module documentation.
pub struct KvCache {
    layout: KvLayout,
    /// One buffer per layer (see [`KvLayout`]).
    layers: Vec<Tensor>,
    cap: i64,
    /// Filled positions of each row in use.
    lens: Vec<i64>,
}

impl KvCache {
    /// Zeroed buffers for `n_layer` layers of `cap` rows, `n_ctx` positions, `heads` heads
    /// of `head_dim`.
    pub fn new(
        n_layer: usize,
        cap: i64,
        (heads, n_ctx, head_dim): (i64, i64, i64),
        layout: KvLayout,
        opts: (Kind, Device),
    ) -> Self {
        let shape = match layout {
            KvLayout::Heads => [2, cap, heads, n_ctx, head_dim],
            KvLayout::Positions => [2, cap, n_ctx, heads, head_dim],
        };
        Self {
            layout,
            layers: (0..n_layer).map(|_| Tensor::zeros(shape, opts)).collect(),
            cap,
            lens: Vec::new(),
        }
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Rows the buffers hold at most.
    pub fn cap(&self) -> i64 {
        self.cap
    }

    /// Rows in use.
    pub fn rows(&self) -> i64 {
        self.lens.len() as i64
    }

    /// Filled positions of each row in use.
    pub fn lens(&self) -> &[i64] {
        &self.lens
    }

    /// Positions per row.
    pub fn n_ctx(&self) -> i64 {
        self.layers
            .first()
            .map_or(0, |l| l.size()[self.layout.position_dim() as usize])
    }

    /// Layer `l`'s keys and values of rows `..b` (a view; see [`KvLayout`]).
    pub fn layer(&self, l: usize, b: i64) -> Tensor {
        self.layers[l].narrow(1, 0, b)
    }

    /// Forgets every row (the buffers stay).
    pub fn clear(&mut self) {
        self.lens.clear();
    }

    /// Adds rows after those in use, holding the `t` positions of `prompt`: per layer the
    /// keys and values `[n, H, t, D]` of `n` new rows.
    pub fn push_rows(&mut self, prompt: &[(&Tensor, &Tensor)]) -> Result<()> {
        ensure!(
            prompt.len() == self.layers.len(),
            "keys and values of {} layers for a cache of {}",
            prompt.len(),
            self.layers.len()
        );
        let Some((k, _)) = prompt.first() else {
            return Ok(());
        };
        let (n, t) = (k.size()[0], k.size()[2]);
        let start = self.rows();
        ensure!(
            start + n <= self.cap,
            "{n} more rows do not fit a cache of {} rows ({start} in use)",
            self.cap
        );
        ensure!(
            t <= self.n_ctx(),
            "{t} positions do not fit a cache of {}",
            self.n_ctx()
        );
        tch::no_grad(|| {
            for (buffer, (k, v)) in self.layers.iter().zip(prompt) {
                let rows = buffer.narrow(1, start, n);
                match self.layout {
                    KvLayout::Positions => {
                        rows.get(0).narrow(1, 0, t).copy_(&k.transpose(1, 2));
                        rows.get(1).narrow(1, 0, t).copy_(&v.transpose(1, 2));
                    }
                    KvLayout::Heads => {
                        rows.get(0).narrow(2, 0, t).copy_(k);
                        rows.get(1).narrow(2, 0, t).copy_(v);
                    }
                }
            }
        });
        self.lens.extend(std::iter::repeat_n(t, n as usize));
        Ok(())
    }

    /// Takes over the rows in use of `other` (same layers, layout and positions, no more
    /// rows than fit here): their keys, values and lengths replace this cache's rows. How
    /// the buffers grow while rows are in use.
    pub fn copy_rows_from(&mut self, other: &KvCache) -> Result<()> {
        let n = other.rows();
        ensure!(
            self.layout == other.layout
                && self.layers.len() == other.layers.len()
                && self.n_ctx() == other.n_ctx(),
            "copying rows between caches of different shapes"
        );
        ensure!(
            n <= self.cap,
            "{n} rows do not fit a cache of {} rows",
            self.cap
        );
        tch::no_grad(|| {
            for (to, from) in self.layers.iter().zip(&other.layers) {
                to.narrow(1, 0, n).copy_(&from.narrow(1, 0, n));
            }
        });
        self.lens = other.lens.clone();
        Ok(())
    }

    /// Keeps only the rows `keep` (indices among those in use), in that order, moved to the
    /// front in place: the buffers (and any graph captured on them) keep their addresses.
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let rows = self.rows();
        ensure!(
            keep.iter().all(|&i| (i as i64) < rows),
            "rows {keep:?} to keep, of {rows}"
        );
        let Some(first) = self.layers.first() else {
            self.lens = keep.iter().map(|&i| self.lens[i]).collect();
            return Ok(());
        };
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx).to_device(first.device());
        retain_rows(&self.layers, 1, rows, &idx);
        self.lens = keep.iter().map(|&i| self.lens[i]).collect();
        Ok(())
    }

    /// Counts `n` more positions filled in every row in use.
    pub fn advance(&mut self, n: i64) {
        for len in &mut self.lens {
            *len += n;
        }
    }

    /// Writes one position of rows `..b` of layer `l` (its own per row with
    /// [`Position::Rows`]): `new` is `[2, b, H, 1, D]` ([`KvLayout::Heads`]) or
    /// `[2, b, 1, H, D]` ([`KvLayout::Positions`]). Returns the layer's rows `..b`
    /// ([`KvCache::layer`]).
    pub fn write(&self, l: usize, b: i64, new: &Tensor, at: Position) -> Tensor {
        let dim = self.layout.position_dim();
        let kv = self.layer(l, b);
        match at {
            Position::Host(p) => {
                kv.narrow(dim, p, 1).copy_(new);
            }
            Position::Device(p) => {
                let _ = kv.shallow_clone().index_copy_(dim, p, new);
            }
            Position::Rows(p) => {
                // Row r's entries all go to position p[r] of its own row.
                let index = p.view([1, b, 1, 1, 1]).expand_as(new);
                let _ = kv.shallow_clone().scatter_(dim, &index, new);
            }
        }
        kv
    }

    /// Keys and values of row `row` of layer `l` over its filled positions, as the model
    /// holds them whatever the layout: `[H, len, D]` each.
    pub fn row(&self, l: usize, row: usize) -> (Tensor, Tensor) {
        let len = self.lens[row];
        let kv =
            self.layers[l]
                .select(1, row as i64)
                .narrow(self.layout.position_dim() - 1, 0, len);
        let kv = match self.layout {
            KvLayout::Heads => kv,
            KvLayout::Positions => kv.transpose(1, 2),
        };
        (kv.get(0), kv.get(1))
    }
}

/// Moves rows `idx` (of the first `rows`, along dimension `dim`) of each tensor to its
/// front, in place.
pub(super) fn retain_rows(tensors: &[Tensor], dim: i64, rows: i64, idx: &Tensor) {
    let n = idx.size()[0];
    tch::no_grad(|| {
        for t in tensors {
            let kept = t.narrow(dim, 0, rows).index_select(dim, idx);
            t.narrow(dim, 0, n).copy_(&kept);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: (i64, i64, i64) = (2, 5, 3); // heads, n_ctx, head_dim
    const LAYERS: usize = 2;

    fn cache(cap: i64, layout: KvLayout) -> KvCache {
        KvCache::new(LAYERS, cap, DIMS, layout, (Kind::Float, Device::Cpu))
    }

    /// Keys and values `[n, H, t, D]` per layer whose every value says where it is:
    /// `1000 * tag + 100 * layer + position`, negated for values.
    fn prompt(n: i64, t: i64, tag: f64) -> Vec<(Tensor, Tensor)> {
        let (h, _, d) = DIMS;
        (0..LAYERS)
            .map(|l| {
                let pos = Tensor::arange(t, (Kind::Float, Device::Cpu)).view([1, 1, t, 1]);
                let row = Tensor::arange(n, (Kind::Float, Device::Cpu)).view([n, 1, 1, 1]);
                let k = (pos + row * 10.0 + 1000.0 * tag + 100.0 * l as f64)
                    .expand([n, h, t, d], false)
                    .contiguous();
                let v = -&k;
                (k, v)
            })
            .collect()
    }

    fn refs(p: &[(Tensor, Tensor)]) -> Vec<(&Tensor, &Tensor)> {
        p.iter().map(|(k, v)| (k, v)).collect()
    }

    /// Row `i` of the prompt, as `KvCache::row` returns it.
    fn prompt_row(p: &[(Tensor, Tensor)], l: usize, i: i64) -> (Tensor, Tensor) {
        (p[l].0.get(i), p[l].1.get(i))
    }

    fn assert_row(c: &KvCache, row: usize, expected: &[(Tensor, Tensor)]) {
        for (l, (k, v)) in expected.iter().enumerate() {
            let (ck, cv) = c.row(l, row);
            assert_eq!(ck.size(), k.size(), "layer {l} row {row}");
            assert!(ck.equal(k) && cv.equal(v), "layer {l} row {row}");
        }
    }

    fn row_of(p: &[(Tensor, Tensor)], i: i64) -> Vec<(Tensor, Tensor)> {
        (0..LAYERS).map(|l| prompt_row(p, l, i)).collect()
    }

    #[test]
    fn shapes_follow_the_layout() {
        let heads = cache(4, KvLayout::Heads);
        assert_eq!(heads.layer(0, 4).size(), [2, 4, 2, 5, 3]);
        let positions = cache(4, KvLayout::Positions);
        assert_eq!(positions.layer(1, 3).size(), [2, 3, 5, 2, 3]);
        for c in [heads, positions] {
            assert_eq!((c.cap(), c.rows(), c.n_ctx()), (4, 0, 5));
        }
    }

    #[test]
    fn pushed_rows_read_back_in_both_layouts() {
        for layout in [KvLayout::Heads, KvLayout::Positions] {
            let mut c = cache(4, layout);
            let p = prompt(3, 2, 1.0);
            c.push_rows(&refs(&p)).unwrap();
            assert_eq!(c.lens(), [2, 2, 2]);
            for i in 0..3 {
                assert_row(&c, i, &row_of(&p, i as i64));
            }
        }
    }

    #[test]
    fn retain_keeps_the_values_of_kept_rows_in_the_order_given() {
        for layout in [KvLayout::Heads, KvLayout::Positions] {
            let mut c = cache(4, layout);
            let p = prompt(4, 3, 1.0);
            c.push_rows(&refs(&p)).unwrap();
            let address = c.layer(0, 4).data_ptr();
            c.retain(&[3, 1]).unwrap();
            assert_eq!(c.rows(), 2);
            assert_eq!(c.lens(), [3, 3]);
            assert_row(&c, 0, &row_of(&p, 3));
            assert_row(&c, 1, &row_of(&p, 1));
            assert_eq!(c.layer(0, 4).data_ptr(), address, "kept in place");
            c.retain(&[]).unwrap();
            assert_eq!(c.rows(), 0);
        }
    }

    #[test]
    fn retain_refuses_rows_not_in_use() {
        let mut c = cache(4, KvLayout::Heads);
        c.push_rows(&refs(&prompt(2, 1, 1.0))).unwrap();
        assert!(c.retain(&[2]).is_err());
        assert_eq!(c.rows(), 2);
    }

    #[test]
    fn rows_join_a_running_batch_with_their_own_lengths() {
        for layout in [KvLayout::Heads, KvLayout::Positions] {
            let mut c = cache(4, layout);
            let first = prompt(2, 2, 1.0);
            c.push_rows(&refs(&first)).unwrap();
            c.advance(1);
            c.retain(&[1]).unwrap();
            let joining = prompt(2, 4, 2.0);
            c.push_rows(&refs(&joining)).unwrap();
            assert_eq!(c.lens(), [3, 4, 4]);
            // The kept row's prompt positions are unchanged, its third position is as it was
            // (zero: nothing wrote it here).
            for l in 0..LAYERS {
                let (k, v) = c.row(l, 0);
                let (pk, pv) = prompt_row(&first, l, 1);
                assert!(k.narrow(1, 0, 2).equal(&pk) && v.narrow(1, 0, 2).equal(&pv));
                assert_eq!(
                    k.narrow(1, 2, 1).abs().sum(Kind::Float).double_value(&[]),
                    0.0
                );
            }
            assert_row(&c, 1, &row_of(&joining, 0));
            assert_row(&c, 2, &row_of(&joining, 1));
        }
    }

    #[test]
    fn push_rows_refuses_what_does_not_fit() {
        let mut c = cache(2, KvLayout::Heads);
        c.push_rows(&refs(&prompt(2, 1, 1.0))).unwrap();
        assert!(c.push_rows(&refs(&prompt(1, 1, 1.0))).is_err());
        c.clear();
        assert!(c.push_rows(&refs(&prompt(1, 6, 1.0))).is_err());
        let p = prompt(1, 1, 1.0);
        assert!(c.push_rows(&refs(&p)[..1]).is_err());
        assert_eq!(c.rows(), 0);
    }

    #[test]
    fn write_at_a_host_or_device_position() {
        for layout in [KvLayout::Heads, KvLayout::Positions] {
            let mut c = cache(3, layout);
            let p = prompt(2, 2, 1.0);
            c.push_rows(&refs(&p)).unwrap();
            let (h, _, d) = DIMS;
            let shape = match layout {
                KvLayout::Heads => [2, 2, h, 1, d],
                KvLayout::Positions => [2, 2, 1, h, d],
            };
            let new = Tensor::full(shape, 7.0, (Kind::Float, Device::Cpu));
            let _ = c.write(1, 2, &new, Position::Host(2));
            let pos = Tensor::from_slice(&[3i64]);
            let _ = c.write(1, 2, &(new * 2.0), Position::Device(&pos));
            c.advance(2);
            assert_eq!(c.lens(), [4, 4]);
            for row in 0..2 {
                let (k, v) = c.row(1, row);
                let (pk, pv) = prompt_row(&p, 1, row as i64);
                assert!(k.narrow(1, 0, 2).equal(&pk) && v.narrow(1, 0, 2).equal(&pv));
                let at = |t: &Tensor, pos| t.narrow(1, pos, 1).mean(Kind::Float).double_value(&[]);
                assert_eq!((at(&k, 2), at(&v, 2), at(&k, 3)), (7.0, 7.0, 14.0));
                // Layer 0 saw no write.
                assert_eq!(at(&c.row(0, row).0, 2), 0.0);
            }
        }
    }

    #[test]
    fn write_at_a_position_per_row() {
        for layout in [KvLayout::Heads, KvLayout::Positions] {
            let mut c = cache(3, layout);
            let short = prompt(1, 1, 1.0);
            let long = prompt(2, 3, 2.0);
            c.push_rows(&refs(&long)).unwrap();
            c.retain(&[1]).unwrap();
            c.push_rows(&refs(&short)).unwrap();
            assert_eq!(c.lens(), [3, 1]);
            let (h, _, d) = DIMS;
            let shape = match layout {
                KvLayout::Heads => [2, 2, h, 1, d],
                KvLayout::Positions => [2, 2, 1, h, d],
            };
            // Row 0 gets 7s, row 1 gets 8s; values the negated keys.
            let row = Tensor::from_slice(&[7.0f32, 8.0]).view([1, 2, 1, 1, 1]);
            let sign = Tensor::from_slice(&[1.0f32, -1.0]).view([2, 1, 1, 1, 1]);
            let new = (row * sign).expand(shape, false).contiguous();
            let pos = Tensor::from_slice(&[3i64, 1]);
            let _ = c.write(0, 2, &new, Position::Rows(&pos));
            c.advance(1);
            assert_eq!(c.lens(), [4, 2]);
            let at = |t: &Tensor, pos| t.narrow(1, pos, 1).mean(Kind::Float).double_value(&[]);
            let (k0, v0) = c.row(0, 0);
            let (k1, v1) = c.row(0, 1);
            assert_eq!((at(&k0, 3), at(&v0, 3)), (7.0, -7.0));
            assert_eq!((at(&k1, 1), at(&v1, 1)), (8.0, -8.0));
            // Each row's earlier positions are as pushed; nothing else was written.
            let (pk, pv) = prompt_row(&long, 0, 1);
            assert!(k0.narrow(1, 0, 3).equal(&pk) && v0.narrow(1, 0, 3).equal(&pv));
            let (pk, pv) = prompt_row(&short, 0, 0);
            assert!(k1.narrow(1, 0, 1).equal(&pk) && v1.narrow(1, 0, 1).equal(&pv));
            assert_eq!(at(&c.row(1, 0).0, 3), 0.0, "layer 1 saw no write");
            let full = c.layer(0, 2);
            let dim = layout.position_dim();
            let row1_pos3 = full.select(1, 1).narrow(dim - 1, 3, 1);
            assert_eq!(row1_pos3.abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
    }

    #[test]
    fn copy_rows_from_a_smaller_cache_keeps_rows_and_lengths() {
        for layout in [KvLayout::Heads, KvLayout::Positions] {
            let mut small = cache(2, layout);
            let first = prompt(1, 3, 1.0);
            let second = prompt(1, 2, 2.0);
            small.push_rows(&refs(&first)).unwrap();
            small.push_rows(&refs(&second)).unwrap();
            let mut big = cache(5, layout);
            big.copy_rows_from(&small).unwrap();
            assert_eq!((big.cap(), big.lens()), (5, &[3i64, 2][..]));
            assert_row(&big, 0, &row_of(&first, 0));
            assert_row(&big, 1, &row_of(&second, 0));
            // Rows join after the copied ones.
            let third = prompt(1, 4, 3.0);
            big.push_rows(&refs(&third)).unwrap();
            assert_row(&big, 2, &row_of(&third, 0));
            assert!(cache(1, layout).copy_rows_from(&small).is_err());
            let other = if layout == KvLayout::Heads {
                KvLayout::Positions
            } else {
                KvLayout::Heads
            };
            assert!(cache(5, other).copy_rows_from(&small).is_err());
        }
    }
}
