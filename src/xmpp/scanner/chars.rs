//! Byte classes of XML 1.0 and of qualified names (Namespaces in XML), as the scanner needs
//! them.
//!
//! Apart from the state machine because they are facts about XML, not about framing: each is
//! a pure function of a byte (or a name), tested through the scanner, and read far more often
//! than changed. They are `#[inline]`: the scanner calls them for every byte it does not skip.

/// XML whitespace (`S`): space, tab, carriage return, line feed.
#[inline]
pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Bytes with no meaning to the state machine inside character data,
/// attribute values and CDATA sections (quotes excluded so attribute values
/// end correctly).
#[inline]
pub(super) fn is_plain(b: u8) -> bool {
    (b >= 0x20 || is_ws(b)) && !matches!(b, b'<' | b'>' | b'&' | b']' | b'\'' | b'"')
}

/// Non-ASCII bytes are accepted as name characters: deciding which Unicode
/// characters are name characters needs decoding, which the full parse of an
/// element does; framing only needs to know where names end.
#[inline]
pub(super) fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80
}

/// A byte that may continue a name (see [`is_name_start`] for non-ASCII bytes).
#[inline]
pub(super) fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || b == b'-' || b == b'.'
}

/// A qualified name has at most one colon, with a non-empty part on each
/// side; namespaces-in-XML makes anything else not well-formed.
pub(super) fn is_qname(name: &[u8]) -> bool {
    let colons = name.iter().filter(|&&b| b == b':').count();
    match colons {
        0 => !name.is_empty(),
        1 => name[0] != b':' && name[name.len() - 1] != b':',
        _ => false,
    }
}

/// A qualified name without its prefix.
pub(super) fn local_part(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}
