//! Where in a TOML text something is: the line and column of a byte offset, and the key
//! path (`backend[1].address`, `pin[2].match`) an error of the TOML parser is about. The
//! configuration file and the pin file report their errors through these.

use std::ops::Range;

/// 1-based line and column (in bytes) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (line, before.len() - line_start + 1)
}

/// The full key an error from the TOML parser is about, in the form the checks use
/// (`backend[1].address`, `limits.prerouting_timeout`): the table around the error, the key
/// whose value the error points into, and the field serde names ("unknown field `x`",
/// "missing field `x`"). Tables are found by scanning header lines, which is enough for the
/// layout of a configuration or a pin file; `-` when nothing is known (a syntax error at top
/// level).
pub(super) fn key_path(text: &str, span: &Range<usize>, message: &str) -> String {
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .map(|(f, _)| f.to_string());
    let missing = message.starts_with("missing field");
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let is_header = line.trim_start().starts_with('[');
    let mut parts = Vec::new();
    // A missing field is reported on the header of the table that lacks it (or nowhere, for
    // the top level), an unknown table on its own header, which names it inside its parent;
    // anything else lies inside the table of the headers above its line.
    let through_line = &text[..line_start + line.len()];
    let table = if missing && span.is_empty() {
        None
    } else if is_header && (missing || field.is_none()) {
        table_at(through_line)
    } else if is_header {
        table_at(through_line).and_then(|t| t.rsplit_once('.').map(|(p, _)| p.to_string()))
    } else {
        table_at(&text[..line_start])
    };
    parts.extend(table);
    if let Some(eq) = line.find('=').filter(|_| !is_header) {
        let written = line[..eq].trim();
        // The error points into the value, or at the key itself (a duplicate key).
        let on_key = field.is_none() && text.get(span.clone()).is_some_and(|s| s.trim() == written);
        // A quoted key (`"match" = ...`) is named as a bare one.
        let k = written.trim_matches('"');
        if !k.is_empty() && (start > line_start + eq || on_key) {
            parts.push(k.to_string());
        }
    }
    parts.extend(field);
    // A header without a name (`[]`, `[[ ]]`) opens no table: it names nothing.
    parts.retain(|p| !p.is_empty());
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(".")
    }
}

/// The table the last header line of `text` opens, with array indices (`listener[0]`,
/// `listener[1].extra_cert[0]`, `routing`), or `None` before any header.
fn table_at(text: &str) -> Option<String> {
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let (rest, array) = match rest.trim_start().strip_prefix('[') {
            Some(inner) => (inner, true),
            None => (rest, false),
        };
        let Some((name, _)) = rest.split_once(']') else {
            continue;
        };
        if name.trim().is_empty() {
            // `[]` or `[[ ]]` opens no table (TOML refuses it): nothing around it is named.
            current = None;
            continue;
        }
        let segments: Vec<&str> = name.split('.').map(str::trim).collect();
        let mut path = String::new();
        for (i, seg) in segments.iter().enumerate() {
            if i > 0 {
                path.push('.');
            }
            path.push_str(seg);
            if array && i + 1 == segments.len() {
                let n = counts.entry(path.clone()).or_insert(0);
                path = format!("{path}[{n}]");
                *n += 1;
            } else if let Some(n) = counts.get(&path) {
                path = format!("{path}[{}]", n - 1);
            }
        }
        current = Some(path);
    }
    current
}
