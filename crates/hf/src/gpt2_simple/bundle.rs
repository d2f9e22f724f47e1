//! TensorFlow's tensor bundle (what `tf.train.Saver` writes as `<prefix>.index` and
//! `<prefix>.data-0000i-of-0000n`), read without TensorFlow.
//!
//! The index is a LevelDB table (`tensorflow/core/lib/io/table.cc`): a footer naming an
//! index block, whose entries name data blocks; each block ends in a compression byte and a
//! masked CRC-32C. Its keys are tensor names (the empty key is the `BundleHeaderProto`) and
//! its values `BundleEntryProto`s: dtype, shape, shard, offset, size and the masked CRC-32C
//! of the tensor's bytes in that shard.

use super::crc32c::{crc32c, unmask};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// `tensorflow::DataType` values gptpipe reads.
pub const DT_FLOAT: u64 = 1;

/// Footer: two block handles padded to 40 bytes, then the table magic.
const FOOTER_LEN: usize = 48;
const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// A block's trailer: its compression type and masked CRC-32C.
const TRAILER_LEN: usize = 5;
/// The largest index read: GPT-2 1.5B's with Adam's slots is tens of kilobytes, so a larger
/// file is not an index (and is not read into memory).
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// The most data shards an index may name (a saver writes one per device).
const MAX_SHARDS: u32 = 1 << 16;

/// One tensor of the bundle, as its index describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub dtype: u64,
    pub shape: Vec<i64>,
    pub shard: u32,
    pub offset: u64,
    pub size: u64,
    /// Masked CRC-32C of the tensor's bytes.
    pub crc32c: u32,
    /// The tensor is stored in slices (a partitioned variable).
    pub sliced: bool,
}

/// The index of a bundle: its shard count and its tensors by name.
#[derive(Debug)]
pub struct Index {
    pub path: PathBuf,
    pub num_shards: u32,
    pub entries: BTreeMap<String, Entry>,
}

impl Index {
    /// Reads and checks `<prefix>.index`.
    pub fn read(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if len > MAX_INDEX_BYTES {
            bail!(
                "{} is {len} bytes, too large for a TensorFlow checkpoint index",
                path.display()
            );
        }
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&bytes)
            .with_context(|| {
                format!(
                    "{} is not a valid TensorFlow checkpoint index (truncated or corrupt)",
                    path.display()
                )
            })
            .map(|(num_shards, entries)| Self {
                path: path.to_path_buf(),
                num_shards,
                entries,
            })
    }

    fn parse(bytes: &[u8]) -> Result<(u32, BTreeMap<String, Entry>)> {
        ensure!(
            bytes.len() >= FOOTER_LEN,
            "{} bytes, fewer than a table footer",
            bytes.len()
        );
        let footer = &bytes[bytes.len() - FOOTER_LEN..];
        let magic = u64::from_le_bytes(footer[40..].try_into().expect("8 bytes"));
        ensure!(magic == TABLE_MAGIC, "no table magic number at its end");
        let mut r = Reader(footer);
        let _metaindex = (r.varint()?, r.varint()?);
        let index = (r.varint()?, r.varint()?);
        let index_block = block(bytes, index)?;
        let mut entries = BTreeMap::new();
        let mut header = None;
        for (_, handle) in block_entries(index_block)? {
            let mut h = Reader(&handle);
            let data = block(bytes, (h.varint()?, h.varint()?))?;
            for (key, value) in block_entries(data)? {
                if key.is_empty() {
                    header = Some(parse_header(&value)?);
                    continue;
                }
                let name = String::from_utf8(key).context("a tensor name is not UTF-8")?;
                let entry = parse_entry(&value).with_context(|| format!("entry of {name}"))?;
                entries.insert(name, entry);
            }
        }
        let (num_shards, big_endian) = header.context("no bundle header")?;
        ensure!(!big_endian, "the bundle is big-endian");
        ensure!(
            (1..=MAX_SHARDS).contains(&num_shards),
            "the header says {num_shards} shards"
        );
        for (name, e) in &entries {
            ensure!(
                e.shard < num_shards,
                "{name} is in shard {} of {num_shards}",
                e.shard
            );
        }
        Ok((num_shards, entries))
    }

    /// The file of shard `i`: `<prefix>.data-0000i-of-0000n`.
    pub fn shard_path(&self, i: u32) -> PathBuf {
        let prefix = self.path.with_extension("");
        let mut name = prefix.file_name().unwrap_or_default().to_owned();
        name.push(format!(".data-{i:05}-of-{:05}", self.num_shards));
        prefix.with_file_name(name)
    }
}

/// The data shards of an index, open, each with its length. Reads take `&self`
/// (positioned reads), so threads share them.
pub struct Shards {
    files: Vec<(File, u64, PathBuf)>,
}

impl Shards {
    /// Opens every shard `index` names.
    pub fn open(index: &Index) -> Result<Self> {
        let files = (0..index.num_shards)
            .map(|i| {
                let path = index.shard_path(i);
                let file = File::open(&path).with_context(|| {
                    format!(
                        "cannot open {}, a data shard of {}",
                        path.display(),
                        index.path.display()
                    )
                })?;
                let len = file.metadata()?.len();
                Ok((file, len, path))
            })
            .collect::<Result<_>>()?;
        Ok(Self { files })
    }

    /// Tensor `name` as little-endian f32s (`e.size` must be a multiple of 4), read
    /// straight into the vector returned and checked against its CRC-32C.
    pub fn read_f32(&self, name: &str, e: &Entry) -> Result<Vec<f32>> {
        let (file, len, path) = &self.files[e.shard as usize];
        let end = e.offset.checked_add(e.size).context("offset overflows")?;
        if end > *len {
            bail!(
                "{} is truncated: tensor {name} needs bytes {}..{end} but the file has {len}",
                path.display(),
                e.offset
            );
        }
        ensure!(
            e.size.is_multiple_of(4),
            "{name}: {} bytes is not a whole number of f32s",
            e.size
        );
        let mut data = vec![0f32; (e.size / 4) as usize];
        // SAFETY: any bytes are a valid f32; the slice covers exactly `data`'s memory.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), data.len() * 4)
        };
        file.read_exact_at(bytes, e.offset)
            .with_context(|| format!("cannot read tensor {name} from {}", path.display()))?;
        if crc32c(bytes) != unmask(e.crc32c) {
            bail!(
                "{}: tensor {name} fails its checksum (CRC-32C): the file is corrupt",
                path.display()
            );
        }
        if cfg!(target_endian = "big") {
            for x in &mut data {
                *x = f32::from_bits(u32::from_le(x.to_bits()));
            }
        }
        Ok(data)
    }
}

/// The contents of the block at `(offset, size)`, its trailer checked.
fn block(file: &[u8], (offset, size): (u64, u64)) -> Result<&[u8]> {
    let start = usize::try_from(offset)?;
    let len = usize::try_from(size)?;
    let end = start
        .checked_add(len)
        .and_then(|e| e.checked_add(TRAILER_LEN))
        .filter(|&e| e <= file.len())
        .with_context(|| format!("a block at {offset} (+{size}) lies past its end"))?;
    let contents = &file[start..start + len];
    let trailer = &file[start + len..end];
    let stored = u32::from_le_bytes(trailer[1..5].try_into().expect("4 bytes"));
    ensure!(
        crc32c(&file[start..start + len + 1]) == unmask(stored),
        "the block at {offset} fails its checksum (CRC-32C)"
    );
    match trailer[0] {
        0 => Ok(contents),
        1 => bail!("the block at {offset} is Snappy-compressed, which gptpipe does not read"),
        t => bail!("the block at {offset} has unknown compression type {t}"),
    }
}

/// The (key, value) pairs of a table block, keys rebuilt from their shared prefixes.
fn block_entries(b: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    ensure!(b.len() >= 4, "a block of {} bytes", b.len());
    let restarts = u32::from_le_bytes(b[b.len() - 4..].try_into().expect("4 bytes")) as usize;
    let data_end = restarts
        .checked_mul(4)
        .and_then(|r| (b.len() - 4).checked_sub(r))
        .context("a block's restart array is larger than the block")?;
    let mut r = Reader(&b[..data_end]);
    let mut key: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let shared = r.varint()? as usize;
        let non_shared = r.varint()? as usize;
        let value_len = r.varint()? as usize;
        ensure!(
            shared <= key.len(),
            "a key shares more than the previous key"
        );
        key.truncate(shared);
        key.extend_from_slice(r.take(non_shared)?);
        out.push((key.clone(), r.take(value_len)?.to_vec()));
    }
    Ok(out)
}

/// `BundleHeaderProto`: (num_shards, big-endian).
fn parse_header(b: &[u8]) -> Result<(u32, bool)> {
    let (mut shards, mut big) = (0u64, false);
    for f in fields(b)? {
        match f {
            (1, Field::Varint(v)) => shards = v,
            (2, Field::Varint(v)) => big = v == 1,
            _ => {}
        }
    }
    Ok((u32::try_from(shards)?, big))
}

/// `BundleEntryProto`.
fn parse_entry(b: &[u8]) -> Result<Entry> {
    let mut e = Entry {
        dtype: 0,
        shape: Vec::new(),
        shard: 0,
        offset: 0,
        size: 0,
        crc32c: 0,
        sliced: false,
    };
    for f in fields(b)? {
        match f {
            (1, Field::Varint(v)) => e.dtype = v,
            (2, Field::Bytes(shape)) => {
                // TensorShapeProto: repeated Dim dim = 2 { int64 size = 1 }.
                for f in fields(shape)? {
                    match f {
                        (2, Field::Bytes(dim)) => {
                            let mut size = 0i64;
                            for f in fields(dim)? {
                                if let (1, Field::Varint(v)) = f {
                                    size = v as i64;
                                }
                            }
                            e.shape.push(size);
                        }
                        (3, Field::Varint(1)) => bail!("the shape's rank is unknown"),
                        _ => {}
                    }
                }
            }
            (3, Field::Varint(v)) => e.shard = u32::try_from(v)?,
            (4, Field::Varint(v)) => e.offset = v,
            (5, Field::Varint(v)) => e.size = v,
            (6, Field::Fixed32(v)) => e.crc32c = v,
            (7, _) => e.sliced = true,
            _ => {}
        }
    }
    Ok(e)
}

enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(#[allow(dead_code)] u64),
    Bytes(&'a [u8]),
}

/// The fields of a protobuf message, in order.
fn fields(b: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    let mut r = Reader(b);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let tag = r.varint()?;
        let field = match tag & 7 {
            0 => Field::Varint(r.varint()?),
            1 => Field::Fixed64(u64::from_le_bytes(r.take(8)?.try_into().expect("8"))),
            2 => {
                let n = r.varint()? as usize;
                Field::Bytes(r.take(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(r.take(4)?.try_into().expect("4"))),
            w => bail!("protobuf wire type {w}"),
        };
        out.push((tag >> 3, field));
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().context("a number runs past its end")?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("a number of more than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(n <= self.0.len(), "{n} bytes wanted, {} left", self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
}
