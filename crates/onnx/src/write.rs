//! Serialising a built graph to `model.onnx`, streamed tensor by tensor so a large model
//! is never held twice in memory, with weights moved to `model.onnx.data` (ONNX external
//! data) when the file would pass protobuf's 2 GiB limit.

use crate::graph::GraphBuilder;
use crate::proto::{GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use anyhow::{bail, Context, Result};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

pub use gptpipe_hf::folder::ONNX_DATA_FILE as DATA_FILE;
pub use gptpipe_hf::folder::ONNX_FILE as MODEL_FILE;

/// Protobuf messages cannot exceed 2 GiB; keep a margin for the graph's own bytes.
pub const DEFAULT_EXTERNAL_THRESHOLD: u64 = (1 << 31) - (64 << 20);

/// External data offsets are aligned so ONNX Runtime can memory-map them.
const ALIGN: u64 = 4096;
/// Tensors smaller than this stay inline even in an external-data model (shapes, scalars).
const INLINE_MAX: usize = 1024;

#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub opset: u32,
    /// Weights go to `model.onnx.data` when their total size exceeds this many bytes.
    pub external_threshold: u64,
    /// `(key, value)` pairs stored in the model's `metadata_props`.
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub model_bytes: u64,
    /// Size of `model.onnx.data`, when weights went there.
    pub external_data_bytes: Option<u64>,
}

/// The IR version that goes with an opset (onnx/helper.py's VERSION_TABLE).
pub fn ir_version(opset: u32) -> Result<i64> {
    Ok(match opset {
        17 | 18 => 8,
        19 | 20 => 9,
        21 | 22 => 10,
        23 => 11,
        _ => bail!("opset {opset} is not supported: use 17 to 23"),
    })
}

pub fn write_model(g: GraphBuilder, dir: &Path, opts: &WriteOptions) -> Result<Written> {
    let model = ModelProto {
        ir_version: Some(ir_version(opts.opset)?),
        producer_name: Some("gptpipe".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: None,
        graph: None,
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opts.opset as i64),
        }],
        metadata_props: opts
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto::new(k, v.clone()))
            .collect(),
    };
    let graph_head = GraphProto {
        node: g.nodes,
        name: Some("gpt2".into()),
        initializer: Vec::new(),
        doc_string: None,
        input: g.inputs,
        output: g.outputs,
        value_info: Vec::new(),
    };
    let total: u64 = g.initializers.iter().map(|i| i.raw.len() as u64).sum();
    let external = total > opts.external_threshold;

    let model_path = dir.join(MODEL_FILE);
    let data_path = dir.join(DATA_FILE);
    let tmp_model = dir.join(format!("{MODEL_FILE}.tmp"));
    let tmp_data = dir.join(format!("{DATA_FILE}.tmp"));

    // Tensor protos first (weights moved out to the data file when external), so the
    // graph's length prefix is known before anything is written to model.onnx.
    let mut data_out = None;
    let mut data_len = 0u64;
    if external {
        let f = File::create(&tmp_data)
            .with_context(|| format!("cannot create {}", tmp_data.display()))?;
        data_out = Some(BufWriter::with_capacity(1 << 20, f));
    }
    let mut tensors = Vec::with_capacity(g.initializers.len());
    for init in g.initializers {
        let mut proto;
        match data_out.as_mut() {
            Some(out) if init.raw.len() >= INLINE_MAX => {
                let pad = (ALIGN - data_len % ALIGN) % ALIGN;
                out.write_all(&vec![0u8; pad as usize])?;
                data_len += pad;
                let offset = data_len;
                out.write_all(&init.raw)?;
                let length = init.raw.len() as u64;
                data_len += length;
                proto = init.to_proto();
                proto.raw_data = None;
                proto.data_location = Some(1);
                proto.external_data = vec![
                    StringStringEntryProto::new("location", DATA_FILE),
                    StringStringEntryProto::new("offset", offset.to_string()),
                    StringStringEntryProto::new("length", length.to_string()),
                ];
            }
            _ => proto = init.to_proto(),
        }
        tensors.push(proto);
    }
    if let Some(mut out) = data_out {
        out.flush()?;
        out.into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .context("cannot write external data")?;
    }

    let head_bytes = graph_head.encode_to_vec();
    let graph_len: usize = head_bytes.len()
        + tensors
            .iter()
            .map(|t| {
                let n = t.encoded_len();
                key_len(5) + encoded_len_varint(n as u64) + n
            })
            .sum::<usize>();
    let f = File::create(&tmp_model)
        .with_context(|| format!("cannot create {}", tmp_model.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, f);
    out.write_all(&model.encode_to_vec())?;
    let mut prefix = Vec::new();
    encode_key(7, WireType::LengthDelimited, &mut prefix);
    encode_varint(graph_len as u64, &mut prefix);
    out.write_all(&prefix)?;
    out.write_all(&head_bytes)?;
    let mut buf = Vec::new();
    for t in tensors {
        buf.clear();
        encode_key(5, WireType::LengthDelimited, &mut buf);
        encode_varint(t.encoded_len() as u64, &mut buf);
        t.encode(&mut buf)?;
        out.write_all(&buf)?;
    }
    out.flush()?;
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    let model_bytes = f.metadata()?.len();
    if !external && model_bytes > (1u64 << 31) {
        bail!("model.onnx would be {model_bytes} bytes, over protobuf's 2 GiB limit");
    }
    drop(f);

    std::fs::rename(&tmp_model, &model_path)
        .with_context(|| format!("cannot write {}", model_path.display()))?;
    if external {
        std::fs::rename(&tmp_data, &data_path)
            .with_context(|| format!("cannot write {}", data_path.display()))?;
    } else if data_path.exists() {
        // A stale data file from an earlier external export would confuse readers.
        std::fs::remove_file(&data_path)?;
    }
    Ok(Written {
        model_bytes,
        external_data_bytes: external.then_some(data_len),
    })
}
