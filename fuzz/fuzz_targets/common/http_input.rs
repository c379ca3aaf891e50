//! A fuzz input read as an HTTP request head: `METHOD TARGET` on the first line, then one
//! `Name: value` header per line (CR before LF optional), as a client would write it.

use xmpp_lb::fuzzing::RawRequest;

pub fn request(data: &[u8]) -> RawRequest {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let (method, target) = match first.iter().position(|&b| b == b' ') {
        Some(i) => (&first[..i], &first[i + 1..]),
        None => (first, &b"/"[..]),
    };
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.iter().position(|&b| b == b':') {
            Some(i) => (l[..i].to_vec(), l[i + 1..].trim_ascii_start().to_vec()),
            None => (l.to_vec(), Vec::new()),
        })
        .collect();
    RawRequest {
        method: method.to_vec(),
        target: target.to_vec(),
        headers,
    }
}

/// Every value of header `name` (case-insensitive), in order.
pub fn values<'a>(req: &'a RawRequest, name: &str) -> Vec<&'a [u8]> {
    req.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The authority of an absolute-form request target (`http://AUTHORITY/...`).
pub fn target_authority(target: &[u8]) -> Option<&[u8]> {
    if target.starts_with(b"/") {
        return None;
    }
    let i = target.windows(3).position(|w| w == b"://")?;
    let rest = &target[i + 3..];
    let end = rest
        .iter()
        .position(|b| b"/?#".contains(b))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The request path, as routing sees it (still percent-encoded).
pub fn path(target: &[u8]) -> &[u8] {
    let start = match target_authority(target) {
        Some(a) => a.as_ptr() as usize - target.as_ptr() as usize + a.len(),
        None => 0,
    };
    let rest = &target[start..];
    let end = rest
        .iter()
        .position(|b| b"?#".contains(b))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// A header value as `HeaderValue::to_str` reads it: visible ASCII, space and tab only.
pub fn as_str(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}
