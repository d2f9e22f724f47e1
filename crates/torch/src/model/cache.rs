//! The key/value cache of incremental decoding.

use tch::Tensor;

/// Keys and values of the tokens already fed, per layer, plus the attention mask of those
/// tokens when some of them are padding. Create it with [`super::Gpt2::new_cache`] and pass
/// it to every [`super::Gpt2::forward_masked`] call of one generation.
pub struct KvCache {
    /// Per layer: keys and values, `[B, n_head, len, head_dim]`.
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[B, len]`, 1 for a real token, 0 for padding; `None` while every token is real.
    pub(crate) mask: Option<Tensor>,
    pub(crate) len: i64,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: (0..n_layer).map(|_| None).collect(),
            mask: None,
            len: 0,
        }
    }

    /// Tokens (padding included) the cache holds per row; the next token's index.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The attention mask of the cached tokens (`[B, len]`, 1 = real), if any padding.
    pub fn mask(&self) -> Option<&Tensor> {
        self.mask.as_ref()
    }

    /// Keeps only the rows `rows` (an Int64 index tensor, on the cache's device), in that
    /// order: drops finished rows of a batch.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(0, rows);
            *v = v.index_select(0, rows);
        }
        if let Some(m) = &mut self.mask {
            *m = m.index_select(0, rows);
        }
    }

    /// Forgets everything (the next forward starts at position 0).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            *l = None;
        }
        self.mask = None;
        self.len = 0;
    }
}
