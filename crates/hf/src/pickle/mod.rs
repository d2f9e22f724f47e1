//! `pytorch_model.bin`: PyTorch state dicts read without running them. Both layouts of
//! `torch.save` are read: the zip (the default since PyTorch 1.6: `<name>/data.pkl`, one
//! entry `<name>/data/<key>` per storage, `<name>/byteorder`) and the old stream
//! (`_use_new_zipfile_serialization=False`: pickles of a magic number, a protocol version
//! and system info, the state dict, the list of storage keys, then each storage as an i64
//! element count and its bytes). The pickle goes through [`unpickle`], which allows only
//! what PyTorch's `weights_only` loading allows; the result must be a dict of tensors.

mod unpickle;
mod zip;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
pub use unpickle::StorageKind as Kind;
use unpickle::{Key, StorageKind, TensorRef, Value};

/// One tensor of a state dict: a contiguous range of the file, or its elements gathered
/// from a strided view.
pub struct Tensor {
    pub name: String,
    pub kind: StorageKind,
    pub shape: Vec<usize>,
    data: Data,
}

enum Data {
    File(Range<usize>),
    Gathered(Vec<u8>),
}

/// A state dict read from a pickle, over the file's bytes.
pub struct StateDict {
    bytes: Vec<u8>,
    pub tensors: Vec<Tensor>,
    /// `zip` or `legacy`, for the log.
    pub layout: &'static str,
}

impl StateDict {
    pub fn file_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn data<'a>(&'a self, t: &'a Tensor) -> &'a [u8] {
        match &t.data {
            Data::File(r) => &self.bytes[r.clone()],
            Data::Gathered(v) => v,
        }
    }
}

/// The magic number the old format starts with, as the LONG1 bytes of its first pickle.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Reads the state dict of `path`. Errors name the file.
pub fn read(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(bytes).with_context(|| format!("{} is not a state dict gptpipe can read", path.display()))
}

/// Reads a state dict from the bytes of a `torch.save` file.
pub fn parse(bytes: Vec<u8>) -> Result<StateDict> {
    let (refs, storages, layout) = if bytes.starts_with(b"PK\x03\x04") {
        let (refs, storages) = from_zip(&bytes)?;
        (refs, storages, "zip")
    } else if bytes.starts_with(b"\x80\x02\x8a\x0a") {
        let (refs, storages) = from_legacy(&bytes)?;
        (refs, storages, "legacy")
    } else {
        bail!("it is neither a zip nor a pickle as torch.save writes them");
    };
    // Gathered views may not, all together, outgrow the file they come from.
    let mut budget = bytes.len() as u64;
    let tensors = refs
        .into_iter()
        .map(|(name, t)| view(&bytes, &storages, name, &t, &mut budget))
        .collect::<Result<Vec<_>>>()?;
    Ok(StateDict {
        bytes,
        tensors,
        layout,
    })
}

/// The tensors of the pickle's dict, by name, in the dict's order.
fn tensors_of(value: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(dict) = value else {
        bail!(
            "it holds {}, not a state dict (a dict of tensors)",
            value.kind()
        );
    };
    let dict = dict.borrow();
    let mut out = Vec::with_capacity(dict.items.len());
    for (k, v) in &dict.items {
        let Key::Str(name) = k else {
            bail!("its dict has a key that is not a string ({k:?})");
        };
        match v {
            Value::Tensor(t) => out.push((name.clone(), (**t).clone())),
            other => bail!("its entry {name:?} is {}, not a tensor", other.kind()),
        }
    }
    Ok(out)
}

type Storages = HashMap<String, Range<usize>>;

fn from_zip(bytes: &[u8]) -> Result<(Vec<(String, TensorRef)>, Storages)> {
    let entries = zip::entries(bytes).map_err(anyhow::Error::msg)?;
    let pkl: Vec<_> = entries
        .iter()
        .filter(|e| e.name.ends_with("/data.pkl"))
        .collect();
    let [pkl] = pkl[..] else {
        bail!("the zip has {} data.pkl entries (one expected)", pkl.len());
    };
    let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    if let Some(order) = entries
        .iter()
        .find(|e| e.name == format!("{prefix}byteorder"))
    {
        if &bytes[order.range.clone()] != b"little" {
            bail!("its storages are big-endian; gptpipe reads little-endian ones");
        }
    }
    let (value, _) = unpickle::unpickle(&bytes[pkl.range.clone()])
        .map_err(|e| anyhow::anyhow!("{}: {e}", pkl.name))?;
    let storages = entries
        .iter()
        .filter_map(|e| {
            let key = e.name.strip_prefix(prefix)?.strip_prefix("data/")?;
            Some((key.to_owned(), e.range.clone()))
        })
        .collect();
    Ok((tensors_of(value)?, storages))
}

fn from_legacy(bytes: &[u8]) -> Result<(Vec<(String, TensorRef)>, Storages)> {
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Value> {
        let (v, n) = unpickle::unpickle(&bytes[pos..])
            .map_err(|e| anyhow::anyhow!("its {what} pickle: {e}"))?;
        pos += n;
        Ok(v)
    };
    match next("magic number")? {
        Value::BigInt(b) if b == LEGACY_MAGIC => {}
        _ => bail!("it does not start with torch.save's magic number"),
    }
    match next("protocol")? {
        Value::Int(1001) => {}
        other => bail!("its protocol version is {other:?}, not 1001"),
    }
    if let Value::Dict(info) = next("system info")? {
        let little =
            info.borrow().items.iter().any(|(k, v)| {
                *k == Key::Str("little_endian".into()) && matches!(v, Value::Bool(true))
            });
        if !little {
            bail!("it was saved on a big-endian machine; gptpipe reads little-endian storages");
        }
    }
    let refs = tensors_of(next("state dict")?)?;
    let Value::List(keys) = next("storage keys")? else {
        bail!("its storage keys are not a list");
    };
    let kinds: HashMap<&str, StorageKind> = refs
        .iter()
        .map(|(_, t)| (t.storage.key.as_str(), t.storage.kind))
        .collect();
    let mut storages = Storages::new();
    for key in keys.borrow().iter() {
        let Value::Str(key) = key else {
            bail!("a storage key is {}, not a string", key.kind());
        };
        let kind = kinds
            .get(key.as_str())
            .with_context(|| format!("storage {key} is listed but no tensor uses it"))?;
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .with_context(|| format!("storage {key} is missing (the file is truncated)"))?;
        let start = pos + 8;
        let end = count
            .checked_mul(kind.size() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= bytes.len())
            .with_context(|| {
                format!(
                    "storage {key} claims {count} elements, past the end of the file (truncated?)"
                )
            })?;
        storages.insert(key.clone(), start..end);
        pos = end;
    }
    Ok((refs, storages))
}

/// The bytes of one tensor, checked against its storage.
fn view(
    bytes: &[u8],
    storages: &Storages,
    name: String,
    t: &TensorRef,
    budget: &mut u64,
) -> Result<Tensor> {
    let range = storages
        .get(&t.storage.key)
        .with_context(|| format!("tensor {name}: its storage {} is missing", t.storage.key))?;
    let es = t.storage.kind.size() as u64;
    let available = ((range.len() as u64) / es).min(t.storage.numel);
    let bad = || anyhow::anyhow!("tensor {name}: its shape {:?} is too large", t.shape);
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(bad)?;
    let shape = t
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad()))
        .collect::<Result<Vec<_>>>()?;
    let outside = || {
        anyhow::anyhow!(
            "tensor {name} (shape {:?}, stride {:?}, offset {}) reaches outside its storage of \
             {available} elements",
            t.shape,
            t.stride,
            t.offset
        )
    };
    let data = if numel == 0 {
        Data::Gathered(Vec::new())
    } else {
        // The last element the view reads.
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            })
            .ok_or_else(outside)?;
        if last >= available {
            return Err(outside());
        }
        let base = range.start as u64;
        if is_contiguous(&t.shape, &t.stride) {
            let start = (base + t.offset * es) as usize;
            Data::File(start..start + (numel * es) as usize)
        } else {
            if numel > available {
                bail!(
                    "tensor {name} is a view of {numel} elements over a storage of {available}: \
                     expanded views are not supported"
                );
            }
            *budget = budget.checked_sub(numel * es).with_context(|| {
                format!("tensor {name}: its strided views together outgrow the file")
            })?;
            let es = es as usize;
            let mut out = Vec::with_capacity(numel as usize * es);
            let mut index = vec![0u64; shape.len()];
            for _ in 0..numel {
                let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
                let from = (base + at * es as u64) as usize;
                out.extend_from_slice(&bytes[from..from + es]);
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < t.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            Data::Gathered(out)
        }
    };
    Ok(Tensor {
        name,
        kind: t.storage.kind,
        shape,
        data,
    })
}

/// Row-major with no gaps (dimensions of size 1 may have any stride).
fn is_contiguous(shape: &[u64], stride: &[u64]) -> bool {
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[4, 3], &[3, 1]));
        assert!(!is_contiguous(&[3, 4], &[1, 3]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(is_contiguous(&[], &[]));
    }

    #[test]
    fn neither_zip_nor_pickle_is_an_error() {
        let e = parse(b"GGUF....".to_vec()).err().unwrap();
        assert!(e.to_string().contains("neither a zip nor a pickle"), "{e}");
    }
}

/// Files made by hand, byte for byte, for the limits torch.save never reaches (the files
/// torch.save does write are tested against torch itself in `tests/safety/pickles.rs`).
#[cfg(test)]
mod limits {
    use super::*;

    /// A stored zip of `entries`, as torch.save lays it out (no zip64).
    pub(crate) fn zip_of(entries: &[(&str, &[u8])], method: u16) -> Vec<u8> {
        let (mut out, mut central) = (Vec::new(), Vec::new());
        for (name, data) in entries {
            let at = out.len() as u32;
            let n = name.len() as u16;
            let size = data.len() as u32;
            out.extend(0x0403_4b50u32.to_le_bytes());
            out.extend([20, 0, 0, 0]);
            out.extend(method.to_le_bytes());
            out.extend([0; 8]); // time, date, crc (not checked)
            out.extend(size.to_le_bytes());
            out.extend(size.to_le_bytes());
            out.extend(n.to_le_bytes());
            out.extend(0u16.to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(*data);
            central.extend(0x0201_4b50u32.to_le_bytes());
            central.extend([20, 0, 20, 0, 0, 0]);
            central.extend(method.to_le_bytes());
            central.extend([0; 8]);
            central.extend(size.to_le_bytes());
            central.extend(size.to_le_bytes());
            central.extend(n.to_le_bytes());
            central.extend([0; 12]); // extra, comment, disk, attributes
            central.extend(at.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let (cd_at, cd_len) = (out.len() as u32, central.len() as u32);
        out.extend(central);
        out.extend(0x0605_4b50u32.to_le_bytes());
        out.extend([0; 4]);
        out.extend((entries.len() as u16).to_le_bytes());
        out.extend((entries.len() as u16).to_le_bytes());
        out.extend(cd_len.to_le_bytes());
        out.extend(cd_at.to_le_bytes());
        out.extend([0, 0]);
        out
    }

    fn binunicode(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend((s.len() as u32).to_le_bytes());
        v.extend(s.as_bytes());
        v
    }

    /// LONG1 of 8 bytes: any size a hostile file may claim.
    fn long(x: u64) -> Vec<u8> {
        let mut v = vec![0x8a, 8];
        v.extend(x.to_le_bytes());
        v
    }

    fn tuple_of_ints(xs: &[u64]) -> Vec<u8> {
        let mut v = vec![b'('];
        for &x in xs {
            v.extend(long(x));
        }
        v.push(b't');
        v
    }

    /// `{"w": tensor}` over FloatStorage "0" of `numel` elements, as torch.save pickles it.
    pub(crate) fn state_pickle(numel: u64, offset: u64, shape: &[u64], stride: &[u64]) -> Vec<u8> {
        let mut p = b"\x80\x02ccollections\nOrderedDict\nq\x00)R(".to_vec();
        p.extend(binunicode("w"));
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        p.extend(binunicode("storage"));
        p.extend(b"ctorch\nFloatStorage\n");
        p.extend(binunicode("0"));
        p.extend(binunicode("cpu"));
        p.extend(long(numel));
        p.extend(b"tQ");
        p.extend(long(offset));
        p.extend(tuple_of_ints(shape));
        p.extend(tuple_of_ints(stride));
        // requires_grad, backward_hooks = OrderedDict(); the call; SETITEMS; STOP.
        p.extend(b"\x89h\x00)RtRu.");
        p
    }

    fn floats(xs: &[f32]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn file(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
        zip_of(
            &[
                ("m/data.pkl", pickle),
                ("m/byteorder", b"little"),
                ("m/data/0", storage),
            ],
            0,
        )
    }

    fn error(bytes: Vec<u8>) -> String {
        format!("{:#}", parse(bytes).err().expect("an error"))
    }

    #[test]
    fn a_hand_made_state_dict_reads_views_and_transposes() {
        let data = floats(&[0., 1., 2., 3., 4., 5., 6.]);
        let s = parse(file(&state_pickle(7, 1, &[2, 3], &[3, 1]), &data)).unwrap();
        assert_eq!(s.layout, "zip");
        assert_eq!(s.tensors[0].shape, [2, 3]);
        assert_eq!(
            s.data(&s.tensors[0]),
            &floats(&[1., 2., 3., 4., 5., 6.])[..]
        );
        // The transpose of [[1, 2, 3], [4, 5, 6]].
        let s = parse(file(&state_pickle(7, 1, &[3, 2], &[1, 3]), &data)).unwrap();
        assert_eq!(
            s.data(&s.tensors[0]),
            &floats(&[1., 4., 2., 5., 3., 6.])[..]
        );
    }

    #[test]
    fn views_outside_their_storage_are_errors() {
        let data = floats(&[0.; 6]);
        for (offset, shape, stride) in [
            (1, vec![2, 3], vec![3, 1]),                         // one past the end
            (1 << 62, vec![1], vec![1]),                         // an absurd offset
            (0, vec![1 << 40, 1 << 40, 1 << 40], vec![1, 1, 1]), // an absurd shape
            (5, vec![2], vec![1 << 62]),                         // an absurd stride
            (0, vec![3, 2], vec![1, 4]),                         // strided past the end
        ] {
            let e = error(file(&state_pickle(6, offset, &shape, &stride), &data));
            assert!(
                e.contains("tensor w") && (e.contains("outside") || e.contains("too large")),
                "{e}"
            );
        }
        // A storage that claims more elements than its entry holds is as large as its bytes.
        let e = error(file(&state_pickle(1000, 0, &[100], &[1]), &data));
        assert!(e.contains("outside its storage of 6 elements"), "{e}");
        // Stride 0 repeats elements: an expanded view is refused, not multiplied.
        let e = error(file(&state_pickle(6, 0, &[1000, 6], &[0, 1]), &data));
        assert!(e.contains("expanded views are not supported"), "{e}");
    }

    #[test]
    fn damaged_zips_are_errors() {
        let good = file(&state_pickle(6, 0, &[6], &[1]), &floats(&[0.; 6]));
        parse(good.clone()).unwrap();
        for cut in [good.len() - 1, good.len() - 30, good.len() / 2, 10] {
            let e = error(good[..cut].to_vec());
            assert!(
                e.contains("truncated") || e.contains("not a zip"),
                "{cut}: {e}"
            );
        }
        let deflated = zip_of(&[("m/data.pkl", b"x")], 8);
        assert!(error(deflated).contains("compressed (method 8)"));
        let big = zip_of(
            &[
                ("m/data.pkl", &state_pickle(6, 0, &[6], &[1])),
                ("m/byteorder", b"big"),
            ],
            0,
        );
        assert!(error(big).contains("big-endian"));
        let missing = zip_of(&[("m/data.pkl", &state_pickle(6, 0, &[6], &[1]))], 0);
        assert!(error(missing).contains("storage 0 is missing"));
        let none = zip_of(&[("m/other", b"x")], 0);
        assert!(error(none).contains("0 data.pkl entries"));
    }
}
