//! STOMP 1.2 header escaping: `\r`, `\n`, `\c` and `\\` stand for CR, LF, `:` and `\`.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

/// Undoes escaping. `None` when a backslash is followed by anything else or ends the text,
/// which STOMP 1.2 calls a fatal protocol error.
pub(crate) fn unescape(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if memchr::memchr(b'\\', raw).is_none() {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next()? {
            b'r' => b'\r',
            b'n' => b'\n',
            b'c' => b':',
            b'\\' => b'\\',
            _ => return None,
        });
    }
    Some(Cow::Owned(out))
}

/// Writes `text` escaped.
pub(crate) fn escape_into(text: &str, dst: &mut BytesMut) {
    let bytes = text.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\r' | b'\n' | b':' | b'\\'))
    {
        dst.put_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\r' => dst.put_slice(b"\\r"),
            b'\n' => dst.put_slice(b"\\n"),
            b':' => dst.put_slice(b"\\c"),
            b'\\' => dst.put_slice(b"\\\\"),
            _ => dst.put_u8(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_escapes_decode() {
        assert_eq!(unescape(br"a\r\n\c\\b").as_deref(), Some(&b"a\r\n:\\b"[..]));
        assert_eq!(unescape(b"plain").as_deref(), Some(&b"plain"[..]));
    }

    #[test]
    fn other_escapes_and_a_trailing_backslash_are_refused() {
        for bad in [&br"\t"[..], br"a\", br"\C", br"\\\"] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn escape_then_unescape_is_identity() {
        let text = "a:b\\c\r\nd:";
        let mut dst = BytesMut::new();
        escape_into(text, &mut dst);
        assert_eq!(&dst[..], br"a\cb\\c\r\nd\c");
        assert_eq!(unescape(&dst).as_deref(), Some(text.as_bytes()));
    }
}
