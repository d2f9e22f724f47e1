//! The entries of a zip as `torch.save` writes it: stored (uncompressed), zip64 when large.
//! Compressed or encrypted entries are refused, so an entry is a range of the file and no
//! entry can expand beyond it (no zip bomb).

/// One stored entry: its name and where its bytes lie in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub range: std::ops::Range<usize>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| "the zip is truncated".to_string())
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| "the zip is truncated".to_string())
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        .ok_or_else(|| "the zip is truncated".to_string())
}

fn usize_of(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| "a zip offset is beyond this machine's address space".into())
}

const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

/// Lists the entries of the zip in `b` (the whole file).
pub fn entries(b: &[u8]) -> Result<Vec<Entry>, String> {
    // The end record is within the last 22 + 65535 (comment) bytes.
    let lowest = b.len().saturating_sub(22 + 65535);
    let eocd = (lowest..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(b, i) == Ok(EOCD))
        .ok_or("no end of central directory: the zip is truncated or not a zip")?;
    let mut count = u64::from(u16_at(b, eocd + 10)?);
    let mut cd_size = u64::from(u32_at(b, eocd + 12)?);
    let mut cd_start = u64::from(u32_at(b, eocd + 16)?);
    if count == 0xffff || cd_size == 0xffff_ffff || cd_start == 0xffff_ffff {
        let locator = eocd.checked_sub(20).ok_or("the zip64 locator is missing")?;
        if u32_at(b, locator)? != LOCATOR64 {
            return Err("the zip64 locator is missing".into());
        }
        let at = usize_of(u64_at(b, locator + 8)?)?;
        if u32_at(b, at)? != EOCD64 {
            return Err("the zip64 end record is missing".into());
        }
        count = u64_at(b, at + 32)?;
        cd_size = u64_at(b, at + 40)?;
        cd_start = u64_at(b, at + 48)?;
    }
    let (mut at, end) = (
        usize_of(cd_start)?,
        usize_of(cd_start.saturating_add(cd_size))?,
    );
    if end > b.len() {
        return Err("the central directory lies beyond the end of the file (truncated)".into());
    }
    // Each central record takes at least 46 bytes: a count beyond that is a lie.
    if count > (cd_size / 46) + 1 {
        return Err(format!("the zip claims {count} entries in {cd_size} bytes"));
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if u32_at(b, at)? != CENTRAL {
            return Err("a central directory record is damaged".into());
        }
        let flags = u16_at(b, at + 8)?;
        let method = u16_at(b, at + 10)?;
        let mut packed = u64::from(u32_at(b, at + 20)?);
        let mut size = u64::from(u32_at(b, at + 24)?);
        let name_len = usize::from(u16_at(b, at + 28)?);
        let extra_len = usize::from(u16_at(b, at + 30)?);
        let comment_len = usize::from(u16_at(b, at + 32)?);
        let mut local = u64::from(u32_at(b, at + 42)?);
        let name = b
            .get(at + 46..at + 46 + name_len)
            .ok_or("the zip is truncated")?;
        let name = String::from_utf8_lossy(name).into_owned();
        // Zip64 sizes and offset, in this order, for the fields that overflowed.
        let mut extra = at + 46 + name_len;
        let extra_end = extra + extra_len;
        while extra + 4 <= extra_end {
            let (id, len) = (u16_at(b, extra)?, usize::from(u16_at(b, extra + 2)?));
            if id == 1 {
                let mut f = extra + 4;
                for field in [&mut size, &mut packed, &mut local] {
                    if *field == 0xffff_ffff && f + 8 <= extra + 4 + len {
                        *field = u64_at(b, f)?;
                        f += 8;
                    }
                }
            }
            extra += 4 + len;
        }
        if flags & 1 != 0 {
            return Err(format!("entry {name} is encrypted"));
        }
        if method != 0 || packed != size {
            return Err(format!(
                "entry {name} is compressed (method {method}); torch.save stores entries \
                 uncompressed, and gptpipe reads no other kind"
            ));
        }
        let l = usize_of(local)?;
        if u32_at(b, l)? != LOCAL {
            return Err(format!("entry {name}'s local header is damaged"));
        }
        let start = l + 30 + usize::from(u16_at(b, l + 26)?) + usize::from(u16_at(b, l + 28)?);
        let stop = start
            .checked_add(usize_of(size)?)
            .filter(|&s| s <= b.len())
            .ok_or_else(|| format!("entry {name} runs past the end of the file (truncated)"))?;
        out.push(Entry {
            name,
            range: start..stop,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}
