//! A pin file: `[[pin]]` tables naming a pattern and a backend, read when the configuration is
//! put into service (and on every reload). Its errors name the line and key, found by the same
//! [`position`](super::position) helpers as the configuration's.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::position::{key_path, line_col};
use crate::route::policy::PinEntry;
use crate::route::policy::PinPattern;

/// A pin file error, at a line of the file, under a key like `pin[3].backend`.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {key}: {message}")]
pub(crate) struct PinFileError {
    /// 1-based line number.
    pub(crate) line: usize,
    /// The key the error is about (`pin[0].match`), or `-` when none is known.
    pub(crate) key: String,
    /// What is wrong.
    pub(crate) message: String,
}

/// A pin file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPinFile {
    #[serde(default)]
    pin: Vec<RawPin>,
}

/// One `[[pin]]`, with spans so a checked-but-wrong value can be reported at its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    #[serde(rename = "match")]
    pattern: Spanned<String>,
    backend: Spanned<String>,
}

/// A pin file: `[[pin]]` tables with `match` and `backend`, nothing else (deny unknown keys).
///
/// Everything that can be checked without the list of backends is checked here, where the
/// error can name its line: patterns, empty backends, patterns listed twice. Backends are
/// checked by [`PinTable::new`](crate::route::policy::PinTable::new) when the configuration
/// is put into service.
pub(crate) fn parse_pin_file(text: &str) -> Result<Vec<PinEntry>, PinFileError> {
    let raw: RawPinFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        PinFileError {
            line: line_col(text, span.start).0,
            key: key_path(text, &span, &message),
            message,
        }
    })?;
    let err = |span: Range<usize>, key: String, message: String| PinFileError {
        line: line_col(text, span.start).0,
        key,
        message,
    };
    let mut first_seen: HashMap<PinPattern, (usize, String)> = HashMap::new();
    let mut entries = Vec::with_capacity(raw.pin.len());
    for (i, pin) in raw.pin.into_iter().enumerate() {
        let (pattern_span, written) = (pin.pattern.span(), pin.pattern.into_inner());
        let (backend_span, backend) = (pin.backend.span(), pin.backend.into_inner());
        let pattern = PinPattern::parse(&written)
            .map_err(|m| err(pattern_span.clone(), format!("pin[{i}].match"), m))?;
        let line = line_col(text, pattern_span.start).0;
        if let Some((first, as_written)) = first_seen.insert(pattern, (line, written.clone())) {
            let spelled = if as_written == written {
                String::new()
            } else {
                format!(" as {as_written:?}")
            };
            return Err(err(
                pattern_span,
                format!("pin[{i}].match"),
                format!("{written:?} is already pinned on line {first}{spelled}"),
            ));
        }
        if backend.trim().is_empty() {
            return Err(err(
                backend_span,
                format!("pin[{i}].backend"),
                "name a backend".into(),
            ));
        }
        entries.push(PinEntry {
            pattern: written,
            backend,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::policy::PinTable;

    const PINS: &str = r#"# Devices of the lab
[[pin]]
match = "sensor-*@iot.example"
backend = "node2"

[[pin]]
match = "tenant:acme"   # all of acme
backend = "node1"
"#;

    #[test]
    fn pin_file_parses() {
        let entries = parse_pin_file(PINS).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].pattern, "sensor-*@iot.example");
        assert_eq!(entries[0].backend, "node2");
        assert_eq!(entries[1].pattern, "tenant:acme");
        assert_eq!(entries[1].backend, "node1");
        let backends = ["node1".to_string(), "node2".to_string()];
        assert_eq!(PinTable::new(&entries, &backends).unwrap().len(), 2);
        assert!(parse_pin_file("").unwrap().is_empty());
        assert!(parse_pin_file("# nothing pinned yet\n").unwrap().is_empty());
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/pin_file.rs`): a header without a name gave an
    /// error with an empty key (`line 9: : …`).
    #[test]
    fn a_header_without_a_name_names_no_key() {
        for header in ["[]", "[]]", "[[]]x"] {
            let e = parse_pin_file(&format!("{PINS}{header}\n")).unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (9, "-"), "{header}: {e}");
        }
    }

    #[test]
    fn pin_file_errors_name_line_and_key() {
        let with = |extra: &str| format!("{PINS}\n[[pin]]\n{extra}");
        // Line 10 is the third `[[pin]]` header, 11 and 12 its keys.
        for (text, line, key, message) in [
            (
                with("match = \"a@iot.example\"\nbackned = \"node1\"\n"),
                12,
                "pin[2].backned",
                "unknown field `backned`",
            ),
            (
                with("match = \"a@iot.example\"\n"),
                10,
                "pin[2].backend",
                "missing field `backend`",
            ),
            (
                with("match = \"a@iot.example\"\nbackend = 3\n"),
                12,
                "pin[2].backend",
                "invalid type",
            ),
            (
                with("match = \"sensor-[0-9]@iot.example\"\nbackend = \"node1\"\n"),
                11,
                "pin[2].match",
                "bad glob",
            ),
            (
                with("match = \"SENSOR-*@iot.example\"\nbackend = \"node1\"\n"),
                11,
                "pin[2].match",
                "already pinned on line 3 as \"sensor-*@iot.example\"",
            ),
            (
                with("match = \"a@iot.example\"\nbackend = \"\"\n"),
                12,
                "pin[2].backend",
                "name a backend",
            ),
            (
                format!("version = 2\n{PINS}"),
                1,
                "version",
                "unknown field `version`",
            ),
            (
                format!("{PINS}[pins]\nx = 1\n"),
                9,
                "pins",
                "unknown field `pins`",
            ),
            (
                with("match = \"a@iot.example\n"),
                11,
                "pin[2].match",
                "string",
            ),
        ] {
            let e = parse_pin_file(&text).unwrap_err();
            assert_eq!((e.line, e.key.as_str()), (line, key), "{e}\n{text}");
            assert!(e.message.contains(message), "{e}");
            assert_eq!(e.to_string(), format!("line {line}: {key}: {}", e.message));
        }
    }
}
