//! GPT-2's byte-to-character map: each byte is shown as a printable character so that BPE
//! vocabularies can be stored as text (`Ġ` is the space byte).

/// The character that stands for each byte.
pub(crate) fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("a valid char");
            next += 1;
            c
        };
    }
    map
}

#[cfg(test)]
mod tests {
    #[test]
    fn space_is_g_dot() {
        let map = super::byte_chars();
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map[b'a' as usize], 'a');
    }
}
