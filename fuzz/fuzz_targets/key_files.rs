//! Key files (`[resumption] sm_key_files`, `tls_ticket_key_files`) and the admin token file are
//! read at start and on every reload. On any contents: no panic; a fleet key is the text
//! without surrounding whitespace, accepted exactly when it has at least 32 bytes and is not
//! a published example, and its id depends on that secret alone; an admin token is accepted
//! exactly when it is one word of printable ASCII, matches exactly its own text (never a
//! prefix, an extension or another word), and is never shown by `Debug`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xmpp_lb::keys::{AdminToken, FleetKey, KeyError, MIN_SECRET_BYTES, published_as};

fuzz_target!(|data: &[u8]| {
    let file = Path::new("fuzz.key");
    let trimmed = data.trim_ascii();
    match FleetKey::from_file_contents(data, file) {
        Ok(key) => {
            assert!(trimmed.len() >= MIN_SECRET_BYTES && published_as(trimmed).is_none());
            assert_eq!(key.id(), FleetKey::from_secret(trimmed, file).id());
            let mut padded = b" \n".to_vec();
            padded.extend_from_slice(trimmed);
            padded.extend_from_slice(b"\r\n\t");
            let again = FleetKey::from_file_contents(&padded, file).expect("same secret");
            assert_eq!(again.id(), key.id());
        }
        Err(KeyError::TooShort { len, .. }) => {
            assert_eq!(len, trimmed.len());
            assert!(len < MIN_SECRET_BYTES);
        }
        Err(KeyError::Published { .. }) => assert!(published_as(trimmed).is_some()),
        Err(e @ KeyError::Read { .. }) => panic!("nothing was read: {e}"),
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let word = text.trim();
    match AdminToken::new(text) {
        Ok(token) => {
            assert!(!word.is_empty() && word.bytes().all(|b| b.is_ascii_graphic()));
            assert!(token.matches(word));
            assert!(!token.matches(&word[..word.len() - 1]));
            assert!(!token.matches(&format!("{word}x")));
            assert!(!token.matches(&format!(" {word}")));
            let mut other = word.as_bytes().to_vec();
            let last = other.len() - 1;
            other[last] = if other[last] == b'a' { b'b' } else { b'a' };
            assert!(!token.matches(std::str::from_utf8(&other).expect("ASCII")));
            assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
        }
        Err(_) => assert!(
            word.is_empty()
                || !word.bytes().all(|b| b.is_ascii_graphic())
                || published_as(word.as_bytes()).is_some()
        ),
    }
});
