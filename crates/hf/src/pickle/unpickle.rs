//! A pickle reader that runs nothing: it knows the opcodes and the globals of PyTorch's
//! `weights_only` loading (`torch/_weights_only_unpickler.py`) and builds plain values.
//! A call (`REDUCE`, `NEWOBJ`) is never made: the few globals a state dict needs
//! (`OrderedDict`, `_rebuild_tensor_v2`, `_rebuild_parameter`, the storage types) are
//! interpreted here, and every other global is refused when it is named, before anything
//! could use it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The element types of PyTorch's typed storages (`torch.FloatStorage`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// The globals this reader gives a meaning to. Other globals of PyTorch's allow-list
/// (`torch.Size`, `collections.Counter`, sparse and quantized rebuilds, ...) are not in a
/// GPT-2 state dict and are refused as unsupported; anything else is refused as unsafe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Parameter,
    Storage(StorageKind),
}

/// Globals PyTorch's `weights_only` loading allows that a GPT-2 state dict never holds.
const ALLOWED_BUT_UNSUPPORTED: &[&str] = &[
    "collections.Counter",
    "torch.serialization._get_layout",
    "torch.Size",
    "torch.Tensor",
    "torch.device",
    "_codecs.encode",
    "builtins.bytearray",
    "builtins.set",
    "builtins.complex",
    "torch._tensor._rebuild_from_type_v2",
];

/// `torch.float32`, `torch.per_tensor_affine`, ...: dtypes and quantization schemes.
fn is_dtype_name(name: &str) -> bool {
    [
        "float", "int", "uint", "bfloat", "complex", "bool", "per_", "qint", "quint",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

fn global(module: &str, name: &str) -> Result<Global, String> {
    let full = format!("{module}.{name}");
    let g = match full.as_str() {
        "collections.OrderedDict" => Global::OrderedDict,
        "torch._utils._rebuild_tensor_v2" => Global::RebuildTensorV2,
        "torch._utils._rebuild_parameter" => Global::RebuildParameter,
        "torch._utils._rebuild_parameter_with_state" => Global::RebuildParameterWithState,
        "torch.nn.parameter.Parameter" => Global::Parameter,
        _ => match (module, StorageKind::from_class(name)) {
            ("torch", Some(kind)) => Global::Storage(kind),
            _ => {
                let allowed = ALLOWED_BUT_UNSUPPORTED.contains(&full.as_str())
                    || (module == "torch" && name.ends_with("Storage"))
                    || (module == "torch._utils" && name.starts_with("_rebuild_"))
                    || (module == "torch" && is_dtype_name(name));
                return Err(if allowed {
                    format!(
                        "global {full} is allowed by PyTorch's weights-only loading but is not \
                         part of a GPT-2 state dict, which gptpipe reads"
                    )
                } else {
                    format!(
                        "refusing global {full}: a weights-only load allows only tensors, \
                         storages and plain containers (loading it could run code)"
                    )
                });
            }
        },
    };
    Ok(g)
}

/// A storage named by a persistent id: its key and element type. Its bytes are found by
/// the caller (an entry of the zip, or the storages after the pickles of the old format).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub kind: StorageKind,
    /// Elements, as the persistent id says.
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

pub type List = Rc<RefCell<Vec<Value>>>;
pub type Dict = Rc<RefCell<DictData>>;

/// Keys and values in insertion order (an `OrderedDict`'s order), with an index so a
/// hostile file of many keys costs no more than its length.
#[derive(Debug, Default)]
pub struct DictData {
    pub items: Vec<(Key, Value)>,
    index: HashMap<Key, usize>,
}

impl DictData {
    fn set(&mut self, key: Key, value: Value) {
        match self.index.get(&key) {
            Some(&i) => self.items[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.items.len());
                self.items.push((key, value));
            }
        }
    }
}

/// The keys a dict may have here (a state dict's are strings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as LONG1 gives it (little-endian two's complement).
    BigInt(Vec<u8>),
    Float,
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(List),
    Dict(Dict),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// Reads one pickle from the start of `data`; returns its value and the bytes it took.
pub fn unpickle(data: &[u8]) -> Result<(Value, usize), String> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let value = m.run()?;
    Ok((value, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or("the pickle ends in the middle of an instruction (truncated)")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .take(256)
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL's name has no end")?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| "a GLOBAL's name is not UTF-8")?
            .to_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("the pickle pops an empty stack".into());
        }
        Ok(self.stack.pop().unwrap())
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err("the pickle reads an empty stack".into());
        }
        Ok(self.stack.last_mut().unwrap())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let at = self.marks.pop().ok_or("the pickle has no MARK to pop to")?;
        Ok(self.stack.split_off(at))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self
                .u8()
                .map_err(|_| "the pickle ends before STOP (truncated)")?;
            self.step(op)
                .map_err(|e| format!("{e} (opcode {:?} at byte {at})", op as char))?;
            if op == b'.' {
                return self.pop();
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<(), String> {
        match op {
            b'.' => {} // STOP: the caller pops the result
            0x80 => {
                let proto = self.u8()?;
                if proto > 5 {
                    return Err(format!("unknown pickle protocol {proto}"));
                }
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(global(&module, &name)?));
            }
            b'(' => self.marks.push(self.stack.len()),
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
            b']' => self.push(Value::List(Rc::default())),
            b'}' => self.push(Value::Dict(Rc::default())),
            b'J' => {
                let b = self.take(4)?;
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let b = self.take(2)?;
                self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]).into()));
            }
            0x8a => {
                let n = self.u8()? as usize;
                let b = self.take(n)?.to_vec();
                self.push(long(b));
            }
            b'G' => {
                let b = self.take(8)?;
                let _ = b; // a float is never part of a tensor
                self.push(Value::Float);
            }
            b'X' => {
                let n = self.u32()? as usize;
                let b = self.take(n)?;
                let s = std::str::from_utf8(b).map_err(|_| "a string is not valid UTF-8")?;
                self.push(Value::Str(s.to_owned()));
            }
            b'U' => {
                // SHORT_BINSTRING: Python 2's str, read as bytes.
                let n = self.u8()? as usize;
                let b = self.take(n)?.to_vec();
                self.push(Value::Bytes(b));
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Value::Tuple(Rc::new(items)));
            }
            b'q' | b'r' => {
                let i = if op == b'q' {
                    self.u8()?.into()
                } else {
                    self.u32()?
                };
                let v = self.top()?.clone();
                self.memo.insert(i, v);
            }
            b'h' | b'j' => {
                let i = if op == b'h' {
                    self.u8()?.into()
                } else {
                    self.u32()?
                };
                let v = self
                    .memo
                    .get(&i)
                    .cloned()
                    .ok_or_else(|| format!("memo entry {i} was never stored"))?;
                self.push(v);
            }
            b'a' => {
                let item = self.pop()?;
                list_of(self.top()?)?.borrow_mut().push(item);
            }
            b'e' => {
                let items = self.pop_mark()?;
                list_of(self.top()?)?.borrow_mut().extend(items);
            }
            b's' => {
                let v = self.pop()?;
                let k = key(self.pop()?)?;
                dict_of(self.top()?)?.borrow_mut().set(k, v);
            }
            b'u' => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                let dict = dict_of(self.top()?)?;
                let mut d = dict.borrow_mut();
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.set(key(k)?, v);
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push(persistent(pid)?);
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = call(&func, &args)?;
                self.push(v);
            }
            0x81 => {
                // NEWOBJ: only `Parameter(tensor, requires_grad)`, which is its tensor.
                let args = self.pop()?;
                let cls = self.pop()?;
                if !matches!(cls, Value::Global(Global::Parameter)) {
                    return Err(format!("NEWOBJ of {} is not allowed", cls.kind()));
                }
                let v = tuple(&args)?
                    .first()
                    .cloned()
                    .ok_or("Parameter() without data")?;
                self.push(v);
            }
            b'b' => {
                // BUILD: an OrderedDict's attributes (a state dict's `_metadata`) or a
                // Parameter's state; neither changes the tensors.
                let _state = self.pop()?;
                match self.top()? {
                    Value::Dict(_) | Value::Tensor(_) => {}
                    other => {
                        return Err(format!(
                            "BUILD of {} is not allowed (only OrderedDict, tensors and parameters)",
                            other.kind()
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "opcode {other:#04x} is not one a weights-only load allows"
                ))
            }
        }
        Ok(())
    }
}

fn long(b: Vec<u8>) -> Value {
    if b.len() <= 8 {
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut w = [fill; 8];
        w[..b.len()].copy_from_slice(&b);
        Value::Int(i64::from_le_bytes(w))
    } else {
        Value::BigInt(b)
    }
}

fn key(v: Value) -> Result<Key, String> {
    match v {
        Value::Str(s) => Ok(Key::Str(s)),
        Value::Int(i) => Ok(Key::Int(i)),
        other => Err(format!(
            "a dict key of type {} is not supported",
            other.kind()
        )),
    }
}

fn list_of(v: &Value) -> Result<List, String> {
    match v {
        Value::List(l) => Ok(l.clone()),
        other => Err(format!(
            "can only append to a list, not to {}",
            other.kind()
        )),
    }
}

fn dict_of(v: &Value) -> Result<Dict, String> {
    match v {
        Value::Dict(d) => Ok(d.clone()),
        other => Err(format!(
            "can only set items of a dict, not of {}",
            other.kind()
        )),
    }
}

fn tuple(v: &Value) -> Result<&[Value], String> {
    match v {
        Value::Tuple(t) => Ok(t),
        other => Err(format!(
            "expected a tuple of arguments, got {}",
            other.kind()
        )),
    }
}

fn int(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        other => Err(format!("{what} must be a non-negative int, got {other:?}")),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<u64>, String> {
    tuple(v)?.iter().map(|x| int(x, what)).collect()
}

/// BINPERSID: `('storage', storage_type, key, location, numel[, view_metadata])`.
fn persistent(pid: Value) -> Result<Value, String> {
    let t = tuple(&pid).map_err(|_| "a persistent id must be a tuple".to_string())?;
    let tag = match t.first() {
        Some(Value::Str(s)) => s.as_bytes(),
        Some(Value::Bytes(b)) => b.as_slice(),
        _ => &[],
    };
    if tag != b"storage" {
        return Err("only persistent ids of storages are allowed".into());
    }
    if t.len() != 5 && t.len() != 6 {
        return Err(format!(
            "a storage id has {} fields (5 or 6 expected)",
            t.len()
        ));
    }
    let kind = match &t[1] {
        Value::Global(Global::Storage(k)) => *k,
        other => {
            return Err(format!(
                "a storage's type is {}, not a storage class",
                other.kind()
            ))
        }
    };
    let key = match &t[2] {
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => return Err(format!("a storage key is {}, not a string", other.kind())),
    };
    if t.len() == 6 && !matches!(t[5], Value::None) {
        return Err("storage views (PyTorch before 1.0) are not supported".into());
    }
    let numel = int(&t[4], "a storage's size")?;
    Ok(Value::Storage(Rc::new(StorageRef { key, kind, numel })))
}

/// REDUCE of one of the allowed globals.
fn call(func: &Value, args: &Value) -> Result<Value, String> {
    let g = match func {
        Value::Global(g) => *g,
        other => return Err(format!("REDUCE of {} is not allowed", other.kind())),
    };
    let a = tuple(args)?;
    match g {
        Global::OrderedDict if a.is_empty() => Ok(Value::Dict(Rc::default())),
        Global::RebuildTensorV2 if (6..=7).contains(&a.len()) => {
            let Value::Storage(storage) = &a[0] else {
                return Err(format!(
                    "_rebuild_tensor_v2 of {}, not a storage",
                    a[0].kind()
                ));
            };
            let shape = ints(&a[2], "a tensor's size")?;
            let stride = ints(&a[3], "a tensor's stride")?;
            if shape.len() != stride.len() {
                return Err("a tensor's size and stride differ in length".into());
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: (**storage).clone(),
                offset: int(&a[1], "a storage offset")?,
                shape,
                stride,
            })))
        }
        Global::RebuildParameter | Global::RebuildParameterWithState
            if (3..=4).contains(&a.len()) && matches!(a[0], Value::Tensor(_)) =>
        {
            Ok(a[0].clone())
        }
        _ => Err(format!(
            "REDUCE of {g:?} with these {} arguments is not supported",
            a.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(pickle: &[u8]) -> String {
        unpickle(pickle).unwrap_err()
    }

    #[test]
    fn os_system_is_refused_when_named() {
        // What `pickle.dumps` of a `__reduce__` returning `(os.system, ("touch x",))` holds.
        let p = b"\x80\x02cposix\nsystem\nq\x00X\x07\x00\x00\x00touch xq\x01\x85q\x02Rq\x03.";
        let e = err(p);
        assert!(e.contains("refusing global posix.system"), "{e}");
        let e = err(b"cbuiltins\neval\n.");
        assert!(e.contains("refusing global builtins.eval"), "{e}");
        let e = err(b"ctorch\nSize\n.");
        assert!(
            e.contains("allowed by PyTorch") && e.contains("torch.Size"),
            "{e}"
        );
    }

    #[test]
    fn opcodes_outside_weights_only_are_refused() {
        // INST, OBJ, STACK_GLOBAL, EXT1: ways to call or name code without GLOBAL.
        for op in [b'i', b'o', 0x93, 0x82, b'S', b'I'] {
            let e = err(&[0x80, 2, op, b'.']);
            assert!(
                e.contains("not one a weights-only load allows"),
                "{op}: {e}"
            );
        }
    }

    #[test]
    fn truncated_and_malformed_pickles_are_errors() {
        assert!(err(b"\x80\x02X\xff\xff\xff\xffabc").contains("truncated"));
        assert!(err(b"\x80\x02}").contains("before STOP"));
        assert!(err(b"h\x05.").contains("never stored"));
        assert!(err(b"u.").contains("no MARK"));
        assert!(err(b"K\x01a.").contains("empty stack"));
    }

    #[test]
    fn a_dict_of_ints_and_a_big_long() {
        let (v, n) =
            unpickle(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x05X\x01\x00\x00\x00b\x8a\x01\xffu.rest")
                .unwrap();
        assert_eq!(n, 25);
        let Value::Dict(d) = v else { panic!() };
        let d = d.borrow();
        assert!(matches!(d.items[0], (Key::Str(ref k), Value::Int(5)) if k == "a"));
        assert!(matches!(d.items[1].1, Value::Int(-1)));
    }
}
