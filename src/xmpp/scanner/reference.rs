//! Entity and character references inside character data and attribute values.
//!
//! A sub-machine of its own because a reference is the one construct inside text that framing
//! must read to its end rather than skip: RFC 6120 §11.1 allows only the five predefined
//! entities and character references to legal characters, and a reference that is refused
//! must be refused before anything is forwarded. It keeps a little state (the entity's name,
//! the character's value) that the rest of the scanner never looks at.

use super::chars::{is_name_char, is_name_start};

/// Where a reference returns to once its `;` is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefCtx {
    Text,
    /// An attribute value delimited by this quote.
    Attr(u8),
}

/// How far into a reference the scanner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefState {
    /// Just after `&`.
    Start,
    /// Inside an entity name.
    Name,
    /// Just after `&#`.
    CharStart,
    /// Just after `&#x`.
    CharHexStart,
    /// Inside a decimal character reference.
    CharDec,
    /// Inside a hexadecimal character reference.
    CharHex,
}

/// What the reference being read has accumulated.
#[derive(Clone, Debug, Default)]
pub(super) struct Reference {
    /// Predefined entity names are at most 4 bytes; longer names are unknown.
    name: [u8; 4],
    /// The entity name's length, counted past the 4 bytes kept.
    len: usize,
    /// The character reference's value so far.
    val: u32,
    /// Digits of the character reference so far.
    digits: u8,
}

/// Leading zeros are legal in character references, but nothing sane needs
/// more than this many digits; the bound keeps the accumulator simple.
const MAX_CHAR_REF_DIGITS: u8 = 10;

/// The entities XML predefines; RFC 6120 allows no other.
const PREDEFINED: &[&[u8]] = &[b"lt", b"gt", b"amp", b"apos", b"quot"];

/// XML 1.0 `Char` production, for character references.
fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x1_0000..=0x10_FFFF)
}

/// Why a reference is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefError {
    /// Not XML at all.
    Malformed(&'static str),
    /// Well-formed XML that RFC 6120 forbids (an entity other than the predefined five).
    Restricted(&'static str),
}

impl Reference {
    /// Byte `b` of a reference now at stage `at`: the next stage, or `None` once its `;` ends
    /// it (the caller returns to where the reference began).
    pub(super) fn step(&mut self, at: RefState, b: u8) -> Result<Option<RefState>, RefError> {
        let malformed = |why| Err(RefError::Malformed(why));
        let next = match at {
            RefState::Start => {
                if b == b'#' {
                    RefState::CharStart
                } else if is_name_start(b) {
                    self.name[0] = b;
                    self.len = 1;
                    RefState::Name
                } else {
                    return malformed("malformed entity reference");
                }
            }
            RefState::Name => {
                if b == b';' {
                    let name = &self.name[..self.len.min(4)];
                    if self.len > 4 || !PREDEFINED.contains(&name) {
                        return Err(RefError::Restricted("undeclared entity reference"));
                    }
                    return Ok(None);
                } else if is_name_char(b) {
                    if self.len < 4 {
                        self.name[self.len] = b;
                    }
                    self.len = self.len.saturating_add(1);
                    RefState::Name
                } else {
                    return malformed("malformed entity reference");
                }
            }
            RefState::CharStart => {
                if b == b'x' {
                    RefState::CharHexStart
                } else if b.is_ascii_digit() {
                    self.val = u32::from(b - b'0');
                    self.digits = 1;
                    RefState::CharDec
                } else {
                    return malformed("malformed character reference");
                }
            }
            RefState::CharHexStart => match (b as char).to_digit(16) {
                Some(d) => {
                    self.val = d;
                    self.digits = 1;
                    RefState::CharHex
                }
                None => return malformed("malformed character reference"),
            },
            RefState::CharDec | RefState::CharHex => {
                let radix = if at == RefState::CharHex { 16 } else { 10 };
                if b == b';' {
                    if !is_xml_char(self.val) {
                        return malformed("character reference to an illegal character");
                    }
                    return Ok(None);
                } else if let Some(d) = (b as char).to_digit(radix) {
                    self.digits += 1;
                    if self.digits > MAX_CHAR_REF_DIGITS {
                        return malformed("character reference too long");
                    }
                    // Clamp just past the Unicode range so it stays invalid.
                    self.val = (self.val * radix + d).min(0x11_0000);
                    at
                } else {
                    return malformed("malformed character reference");
                }
            }
        };
        Ok(Some(next))
    }
}
