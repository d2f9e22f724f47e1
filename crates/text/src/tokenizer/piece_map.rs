//! A hash map keyed by pre-tokenizer pieces.
//!
//! Most pieces are a few bytes long. Those of up to 15 bytes are packed with their length
//! into a `u128`, so a lookup hashes and compares two integers instead of hashing a slice
//! and calling `memcmp`; longer pieces use a slice-keyed map.

use rustc_hash::FxHashMap;

pub(crate) struct PieceMap<V> {
    short: FxHashMap<u128, V>,
    long: FxHashMap<Box<[u8]>, V>,
}

impl<V> Default for PieceMap<V> {
    fn default() -> Self {
        Self {
            short: FxHashMap::default(),
            long: FxHashMap::default(),
        }
    }
}

#[inline]
fn pack(piece: &[u8]) -> Option<u128> {
    if piece.len() > 15 {
        return None;
    }
    let mut buf = [0u8; 16];
    buf[..piece.len()].copy_from_slice(piece);
    buf[15] = piece.len() as u8;
    Some(u128::from_le_bytes(buf))
}

impl<V> PieceMap<V> {
    #[inline]
    pub(crate) fn get(&self, piece: &[u8]) -> Option<&V> {
        match pack(piece) {
            Some(key) => self.short.get(&key),
            None => self.long.get(piece),
        }
    }

    pub(crate) fn insert(&mut self, piece: &[u8], value: V) {
        match pack(piece) {
            Some(key) => self.short.insert(key, value),
            None => self.long.insert(piece.into(), value),
        };
    }

    pub(crate) fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub(crate) fn clear(&mut self) {
        self.short.clear();
        self.long.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::PieceMap;

    #[test]
    fn short_and_long_keys_are_distinct() {
        let mut m = PieceMap::default();
        m.insert(b"a", 1);
        m.insert(b"a\0", 2);
        m.insert(b"", 3);
        m.insert(b"0123456789abcdef", 4);
        m.insert(b"0123456789abcde", 5);
        assert_eq!(m.get(b"a"), Some(&1));
        assert_eq!(m.get(b"a\0"), Some(&2));
        assert_eq!(m.get(b""), Some(&3));
        assert_eq!(m.get(b"0123456789abcdef"), Some(&4));
        assert_eq!(m.get(b"0123456789abcde"), Some(&5));
        assert_eq!(m.get(b"b"), None);
        assert_eq!(m.len(), 5);
    }
}
