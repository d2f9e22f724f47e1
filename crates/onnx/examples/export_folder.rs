//! Exports a Hugging Face GPT-2 folder to ONNX without the pipeline runner:
//! `cargo run -p gptpipe-onnx --example export_folder -- SRC DST [fp32|fp16] [OPSET]`.

use gptpipe_onnx::export::{export_folder, ExportOptions};
use gptpipe_onnx::graph::Float;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dst, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: export_folder SRC DST [fp32|fp16] [OPSET]");
    };
    let mut opts = ExportOptions::default();
    if let Some(p) = rest.first() {
        opts.precision = match p.as_str() {
            "fp32" => Float::F32,
            "fp16" => Float::F16,
            other => anyhow::bail!("unknown precision {other:?}"),
        };
    }
    if let Some(o) = rest.get(1) {
        opts.opset = o.parse()?;
    }
    std::fs::create_dir_all(dst)?;
    let e = export_folder(src.as_ref(), dst.as_ref(), &opts)?;
    println!(
        "{} bytes (external data: {:?}), build {:.2}s, write {:.2}s",
        e.written.model_bytes, e.written.external_data_bytes, e.build_s, e.write_s
    );
    Ok(())
}
