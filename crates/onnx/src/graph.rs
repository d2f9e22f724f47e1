//! A small builder for ONNX graphs: nodes with generated output names, constants, and
//! weights kept as raw little-endian bytes until the file is written.

use crate::proto::{
    attribute_type, data_type, AttributeProto, Dimension, NodeProto, TensorProto, TensorShapeProto,
    TypeProto, TypeProtoTensor, ValueInfoProto,
};

/// Element type of the model's floating-point tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Float {
    F32,
    F16,
}

impl Float {
    pub fn onnx_type(self) -> i32 {
        match self {
            Float::F32 => data_type::FLOAT,
            Float::F16 => data_type::FLOAT16,
        }
    }

    pub fn bytes(self, values: &[f32]) -> Vec<u8> {
        match self {
            Float::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Float::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }

    /// The most negative finite value: the masked-attention score (as transformers does),
    /// which keeps softmax free of NaN even on a fully masked row.
    pub fn lowest(self) -> f32 {
        match self {
            Float::F32 => f32::MIN,
            Float::F16 => half::f16::MIN.to_f32(),
        }
    }
}

/// A tensor stored in the file (weights and constants alike).
pub struct Initializer {
    pub name: String,
    pub data_type: i32,
    pub dims: Vec<i64>,
    pub raw: Vec<u8>,
}

impl Initializer {
    pub fn to_proto(self) -> TensorProto {
        TensorProto {
            dims: self.dims,
            data_type: Some(self.data_type),
            name: Some(self.name),
            raw_data: Some(self.raw),
            ..Default::default()
        }
    }
}

pub struct GraphBuilder {
    pub float: Float,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    counter: usize,
}

/// A dimension of a graph input or output: fixed or symbolic.
pub enum Dim<'a> {
    Fixed(usize),
    Named(&'a str),
}

pub fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Dimension {
                dim_value: Some(*n as i64),
                dim_param: None,
            },
            Dim::Named(s) => Dimension {
                dim_value: None,
                dim_param: Some((*s).to_owned()),
            },
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: None,
    }
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(attribute_type::INT),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(attribute_type::INTS),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(attribute_type::FLOAT),
        ..Default::default()
    }
}

impl GraphBuilder {
    pub fn new(float: Float) -> Self {
        Self {
            float,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            counter: 0,
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node with the given output names.
    pub fn node_to(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            name: Some(name),
            op_type: Some(op.to_owned()),
            attribute: attrs,
            domain: None,
        });
    }

    /// Adds a node with one output and returns the output's (generated) name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_to(op, inputs, &[&out], attrs);
        out
    }

    /// Adds a node with `n` outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n).map(|_| self.fresh(&op.to_lowercase())).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.node_to(op, inputs, &refs, attrs);
        outs
    }

    pub fn const_i64(&mut self, values: &[i64], dims: &[usize]) -> String {
        let name = self.fresh("const_i64");
        self.initializers.push(Initializer {
            name: name.clone(),
            data_type: data_type::INT64,
            dims: dims.iter().map(|d| *d as i64).collect(),
            raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A scalar of the model's float type.
    pub fn const_float(&mut self, value: f32) -> String {
        let name = self.fresh("const_f");
        let raw = self.float.bytes(&[value]);
        self.initializers.push(Initializer {
            name: name.clone(),
            data_type: self.float.onnx_type(),
            dims: Vec::new(),
            raw,
        });
        name
    }

    /// A named weight, stored in the model's float type.
    pub fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), values.len());
        let raw = self.float.bytes(values);
        self.initializers.push(Initializer {
            name: name.to_owned(),
            data_type: self.float.onnx_type(),
            dims: dims.iter().map(|d| *d as i64).collect(),
            raw,
        });
        name.to_owned()
    }
}
