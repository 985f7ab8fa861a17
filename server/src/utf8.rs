//! Bytes to text as they stream: the model's vocabulary is bytes, so a reply may split a UTF-8
//! character across chunks, or not be UTF-8 at all.

/// Decodes a byte stream into text piece by piece, exactly as [`String::from_utf8_lossy`]
/// decodes the whole: an incomplete character at the end of a piece is held back until the next
/// piece completes it, and every invalid sequence becomes one U+FFFD, so the pieces concatenate
/// to the lossy decoding of all the bytes.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    /// The start of a character whose other bytes have not arrived yet (at most 3 bytes).
    held: Vec<u8>,
}

impl Utf8Stream {
    /// The text that `bytes` completes (possibly empty).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.held;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by `valid_up_to`'s contract.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // An incomplete character at the end: wait for its other bytes.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.held = rest.to_vec();
        out
    }

    /// The end of the stream: an incomplete character left over becomes one U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.held).into_owned();
        self.held.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    /// Feeds `bytes` one at a time and checks the pieces join to the lossy decoding.
    fn check(bytes: &[u8]) {
        let mut d = Utf8Stream::default();
        let mut text: String = bytes.iter().map(|&b| d.push(&[b])).collect();
        text.push_str(&d.finish());
        assert_eq!(text, String::from_utf8_lossy(bytes), "{bytes:?}");
    }

    #[test]
    fn pieces_join_to_the_lossy_decoding() {
        check(b"plain ascii");
        check("h\u{e9}llo \u{1f600} \u{4e16}".as_bytes());
        check(&[0xff, b'a', 0xe2, 0x82, b'b', 0xf0, 0x9f, 0x98]);
        check(&[0xe2, 0x82]);
        check(&[0xc0, 0x80, 0xed, 0xa0, 0x80]);
        // Every two-byte sequence, as whole-byte pieces.
        for a in 0..=255u8 {
            for b in [0x00, 0x80, 0xbf, 0xc2, 0xff] {
                check(&[a, b, 0x80, 0x80]);
            }
        }
    }
}
