//! The configuration is read at start and on every reload, where a bad file must be refused
//! with an error an operator can act on, never take a running proxy down. `Config::from_toml`
//! on any text: no panic; every error is `FILE:LINE:COLUMN: KEY: message` with the line and
//! column inside the text and a key; and what it accepts holds together (listeners and
//! backends present, backend names unique, every served domain with backends that exist).
//!
//! The file is taken to sit in the repository's `config/`, so relative paths reach the test
//! certificate there and the fixtures of `fuzz/fixtures/`, and seeds can pass the file checks.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xmpp_lb::config::{Config, ConfigError};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fuzz.toml");

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let config = match Config::from_toml(&text, Path::new(PATH)) {
        Ok(config) => config,
        Err(ConfigError::Invalid {
            file,
            line,
            column,
            key,
            message,
        }) => {
            assert_eq!(file, Path::new(PATH));
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(
                (1..=lines.len()).contains(&line),
                "line {line} of {}: {key}: {message}",
                lines.len()
            );
            assert!(
                (1..=lines[line - 1].len() + 1).contains(&column),
                "column {column} of line {line} ({} bytes): {key}: {message}",
                lines[line - 1].len()
            );
            assert!(!key.is_empty() && !message.is_empty());
            return;
        }
        Err(e @ ConfigError::Read { .. }) => panic!("nothing is read from a text: {e}"),
    };
    assert!(!config.listeners.is_empty());
    assert!(!config.backends.is_empty());
    let names: HashSet<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names.len(), config.backends.len(), "backend names repeat");
    for domain in &config.routing.domains {
        let d = config
            .domains
            .iter()
            .find(|d| &d.name == domain)
            .unwrap_or_else(|| panic!("served domain {domain} has no entry"));
        assert!(!d.backends.is_empty(), "{domain} has no backend");
        for b in &d.backends {
            assert!(names.contains(b.as_str()), "{domain} names backend {b}");
        }
    }
});
