//! Shape limits of a GPT-2: what gptpipe accepts in an inline model and a `config.json`.

/// The largest GPT-2 shapes gptpipe accepts, far beyond any real model (GPT-2 XL: 48 layers,
/// 25 heads, width 1600, context 1024, vocabulary 50257) yet small enough that no product
/// of them (a weight's element count, a KV cache's) overflows 64 bits before memory is
/// estimated. Shared by the pipeline check of an inline model, libtorch's and the ONNX
/// exporter's reading of `config.json`.
pub const SHAPE_LIMITS: [(&str, usize); 5] = [
    ("n_layer", 1 << 10),
    ("n_head", 1 << 12),
    ("n_embd", 1 << 16),
    ("n_ctx", 1 << 20),
    ("vocab_size", 1 << 24),
];

/// Width of the MLP at most (`n_inner`, 4 * n_embd by default).
pub const MAX_N_INNER: usize = 4 << 16;

/// [`check_shape`] as an error for a `config.json`: the limit of `n_ctx` names the key
/// `config.json` writes it as.
pub fn check_config_shape(
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_ctx: usize,
    vocab_size: usize,
) -> anyhow::Result<()> {
    check_shape(n_layer, n_head, n_embd, n_ctx, vocab_size).map_err(|(key, message)| match key {
        "n_ctx" => anyhow::anyhow!("{message} (n_ctx is `n_positions` in config.json)"),
        _ => anyhow::anyhow!("{message}"),
    })
}

/// The first of `n_layer`, `n_head`, `n_embd`, `n_ctx` (`n_positions`) and `vocab_size`
/// above [`SHAPE_LIMITS`], as `(key, message)`.
pub fn check_shape(
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    n_ctx: usize,
    vocab_size: usize,
) -> Result<(), (&'static str, String)> {
    let values = [n_layer, n_head, n_embd, n_ctx, vocab_size];
    for ((key, max), value) in SHAPE_LIMITS.into_iter().zip(values) {
        if value > max {
            return Err((
                key,
                format!(
                    "{key} = {value} is more than gptpipe's limit of {max} (GPT-2 XL has \
                     n_layer = 48, n_head = 25, n_embd = 1600, n_ctx = 1024, vocab_size = \
                     50257); no machine has the memory for such a model"
                ),
            ));
        }
    }
    Ok(())
}
