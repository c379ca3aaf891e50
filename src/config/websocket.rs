//! XMPP over WebSocket (RFC 7395): the `websocket*` keys of a `[[listener]]`, and the
//! `[websocket]` table every WebSocket listener shares (message bound, keepalive, the URLs
//! the discovery files name).

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{RawListener, RawWebSocket};
use super::source::{ConfigError, Source, parse_net};
use super::values::TlsMode;

/// The paths the discovery files (XEP-0156) are served at; a WebSocket path may not be one.
pub const HOST_META: &str = "/.well-known/host-meta";
/// The JSON discovery file.
pub const HOST_META_JSON: &str = "/.well-known/host-meta.json";

/// One listener's WebSocket settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSocketListener {
    /// The request path of the WebSocket endpoint (`/xmpp-websocket`).
    pub path: String,
    /// The `Origin` values allowed to open a WebSocket (lowercase `scheme://host[:port]`);
    /// empty: any origin.
    pub origins: Vec<String>,
    /// Whether HTTP without TLS is served (a listener behind a TLS-terminating HTTP balancer).
    pub plain: bool,
    /// Peers whose `X-Forwarded-For` header names the client (empty: the header is ignored).
    pub forwarded_for: Vec<ipnet::IpNet>,
}

/// `[websocket]`: what every WebSocket listener shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// The largest WebSocket message a client may send (bytes, after reassembly of frames);
    /// the connection is closed with code 1009 past it.
    pub max_message_bytes: usize,
    /// How long a WebSocket client may stay silent before the proxy pings it.
    pub ping_interval: Duration,
    /// How long the proxy waits for anything (a pong) after a ping before it closes.
    pub ping_timeout: Duration,
    /// The WebSocket URL the discovery files name, by served domain; a domain not listed gets
    /// `wss://HOST/PATH` from the request.
    pub urls: BTreeMap<String, String>,
}

/// Default message bound: well above any stanza a web client sends (an avatar upload is
/// ~100 KiB of base64), small enough that one connection cannot make the proxy buffer much.
pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024;
/// Default keepalive: below the 60 s idle timeout of common HTTP balancers.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default time a ping may go unanswered.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            urls: BTreeMap::new(),
        }
    }
}

/// Check one listener's `websocket*` keys: a path, origins written as `scheme://host[:port]`,
/// clear-text HTTP only where TLS does not come first, forwarded-for networks only with it.
pub(super) fn validate_listener(
    src: &Source<'_>,
    l: &RawListener,
    i: usize,
) -> Result<Option<WebSocketListener>, ConfigError> {
    let key = |k: &str| format!("listener[{i}].{k}");
    let Some(path) = &l.websocket else {
        // Without a path every other websocket key is a mistake: say which.
        let stray = [
            l.websocket_origins
                .as_ref()
                .map(|v| ("websocket_origins", v.span())),
            l.websocket_plain
                .as_ref()
                .map(|v| ("websocket_plain", v.span())),
            l.websocket_forwarded_for
                .as_ref()
                .map(|v| ("websocket_forwarded_for", v.span())),
        ];
        if let Some((name, span)) = stray.into_iter().flatten().next() {
            return Err(src.err(
                &span,
                &key(name),
                "set websocket = \"/xmpp-websocket\" on this listener first".into(),
            ));
        }
        return Ok(None);
    };
    let p = path.get_ref();
    if !p.starts_with('/')
        || p.len() > 256
        || p.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
    {
        return Err(src.err(
            &path.span(),
            &key("websocket"),
            format!("{p:?} is not a request path (e.g. \"/xmpp-websocket\")"),
        ));
    }
    if p == HOST_META || p == HOST_META_JSON {
        return Err(src.err(
            &path.span(),
            &key("websocket"),
            format!("{p} is where the discovery files are served"),
        ));
    }
    let mut origins = Vec::new();
    for o in l.websocket_origins.iter().flat_map(|v| v.get_ref()) {
        let origin = check_origin(o.get_ref())
            .map_err(|m| src.err(&o.span(), &key("websocket_origins"), m))?;
        origins.push(origin);
    }
    let plain = l.websocket_plain.as_ref().is_some_and(|v| *v.get_ref());
    if plain && l.tls == TlsMode::Direct {
        let span = l.websocket_plain.as_ref().map(|v| v.span()).unwrap_or(0..0);
        return Err(src.err(
            &span,
            &key("websocket_plain"),
            "a tls = \"direct\" listener starts with TLS; use tls = \"starttls\" or \"auto\""
                .into(),
        ));
    }
    let mut forwarded_for = Vec::new();
    if let Some(list) = &l.websocket_forwarded_for {
        if !plain {
            return Err(src.err(
                &list.span(),
                &key("websocket_forwarded_for"),
                "X-Forwarded-For comes from a TLS-terminating balancer: set websocket_plain = true"
                    .into(),
            ));
        }
        for n in list.get_ref() {
            forwarded_for.push(
                parse_net(n.get_ref())
                    .map_err(|m| src.err(&n.span(), &key("websocket_forwarded_for"), m))?,
            );
        }
    }
    Ok(Some(WebSocketListener {
        path: p.clone(),
        origins,
        plain,
        forwarded_for,
    }))
}

/// An origin as browsers send it: `http(s)://host[:port]`, no path; lowercased.
fn check_origin(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not an origin (e.g. \"https://chat.example.test\")");
    let lower = s.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if rest.is_empty()
        || rest
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@') || b.is_ascii_whitespace())
    {
        return Err(bad());
    }
    Ok(lower)
}

/// Check `[websocket]`: bounds, durations, and discovery URLs for served domains only.
pub(super) fn validate_websocket(
    src: &Source<'_>,
    raw: &RawWebSocket,
    served: &[String],
) -> Result<WebSocketConfig, ConfigError> {
    let mut out = WebSocketConfig::default();
    if let Some(n) = &raw.max_message_bytes {
        if !(4096..=16 * 1024 * 1024).contains(n.get_ref()) {
            return Err(src.err(
                &n.span(),
                "websocket.max_message_bytes",
                "must be between 4096 and 16777216".into(),
            ));
        }
        out.max_message_bytes = *n.get_ref();
    }
    let duration = |v: &toml::Spanned<String>, name: &str| {
        let key = format!("websocket.{name}");
        let d = humantime_serde::re::humantime::parse_duration(v.get_ref())
            .map_err(|e| src.err(&v.span(), &key, format!("{:?}: {e}", v.get_ref())))?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            return Err(src.err(&v.span(), &key, "must be between 1s and 1h".into()));
        }
        Ok(d)
    };
    if let Some(v) = &raw.ping_interval {
        out.ping_interval = duration(v, "ping_interval")?;
    }
    if let Some(v) = &raw.ping_timeout {
        out.ping_timeout = duration(v, "ping_timeout")?;
    }
    for (domain, url) in raw.urls.iter().flat_map(|m| m.get_ref()) {
        let key = format!("websocket.urls.{domain}");
        let normalized = crate::route::key::normalize_domain(domain);
        let Some(normalized) = normalized.filter(|d| served.contains(d)) else {
            return Err(src.err(
                &url.span(),
                &key,
                format!("{domain:?} is not a served domain"),
            ));
        };
        let u = url.get_ref();
        let ok = (u.starts_with("wss://") || u.starts_with("ws://"))
            && !u
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'"' || b == b'<');
        if !ok {
            return Err(src.err(
                &url.span(),
                &key,
                format!("{u:?} is not a WebSocket URL (wss://HOST/PATH)"),
            ));
        }
        out.urls.insert(normalized, u.clone());
    }
    Ok(out)
}
