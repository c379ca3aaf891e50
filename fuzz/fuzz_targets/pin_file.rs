//! A pin file is read on every reload, and a bad one must be refused with its line and key,
//! never take the proxy down. `config::parse_pin_file` promises to check everything that can
//! be checked without the list of backends; the table built later (`PinTable::new`) must
//! therefore accept whatever it accepted once every backend it names exists, and the table
//! must send each exactly pinned JID, and each pinned tenant, to its backend (when no earlier
//! pattern claims the same user).
//!
//! Input: the file's text (invalid UTF-8 is read as the proxy would not: it is refused before
//! parsing, so it is converted lossily here to reach the parser anyway).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_lb::fuzzing::{Pins, parse_pin_file, pin_pattern};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let entries = match parse_pin_file(&text) {
        Ok(entries) => entries,
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(&e.line),
                "error on line {} of {lines}: {e:?}",
                e.line
            );
            assert!(!e.key.is_empty() && !e.message.is_empty(), "{e:?}");
            return;
        }
    };
    let backends: Vec<String> = entries.iter().map(|e| e.backend.clone()).collect();
    let pins = Pins::new(&entries, &backends)
        .unwrap_or_else(|m| panic!("the pin file parsed but its table is refused: {m}"));
    // A glob may claim a user before an exact pin of another entry only if it comes first in
    // the table; exact pins and tenants win over globs, so each must find its own backend.
    for entry in &entries {
        let (kind, normalized) = pin_pattern(&entry.pattern).expect("parsed above");
        match kind {
            "jid" => assert_eq!(
                pins.lookup(&normalized, None).as_deref(),
                Some(entry.backend.as_str()),
                "{:?}",
                entry.pattern
            ),
            "tenant" => {
                let user = "nobody-pinned-exactly@tenant.invalid";
                if entries
                    .iter()
                    .all(|e| pin_pattern(&e.pattern).is_ok_and(|(k, _)| k == "tenant"))
                {
                    assert_eq!(
                        pins.lookup(user, Some(&normalized)).as_deref(),
                        Some(entry.backend.as_str()),
                        "{:?}",
                        entry.pattern
                    );
                }
            }
            _ => {}
        }
    }
});
