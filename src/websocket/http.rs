//! The HTTP side of a WebSocket listener: the WebSocket opening handshake (RFC 6455 §4,
//! RFC 7395 §3) and the discovery files (XEP-0156). Served by hyper; every request that is
//! not a good handshake is answered with its HTTP status, logged, and counted in
//! `xmpp_lb_http_requests_total` by result, and never reaches a node.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::{Config, HOST_META, HOST_META_JSON, WebSocketListener};
use crate::metrics::Metrics;
use crate::prefixed::Prefixed;

/// The WebSocket subprotocol of XMPP (RFC 7395 §3.1).
pub const SUBPROTOCOL: &str = "xmpp";
/// The discovery files' link relation for a WebSocket endpoint (XEP-0156).
pub const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
/// The largest request head read (request line and headers).
const MAX_HEAD: usize = 16 * 1024;

/// What the HTTP side of a listener needs to know.
pub struct HttpCtx<'a> {
    /// The listener's name (metric label, logs).
    pub listener: &'a str,
    /// Its WebSocket settings.
    pub ws: &'a WebSocketListener,
    /// The configuration (served domains, discovery URLs).
    pub config: &'a Config,
    /// Where refusals are counted.
    pub metrics: &'a Metrics,
    /// The socket's peer (whose `X-Forwarded-For` may be believed).
    pub peer: SocketAddr,
}

/// A handshake accepted: the upgraded connection and what the request said.
pub struct Upgrade<S> {
    /// The connection, after the `101` response, with what the client sent behind its
    /// request (usually nothing).
    pub io: Prefixed<S>,
    /// The WebSocket URL the client reached (`wss://HOST/PATH`).
    pub endpoint: String,
    /// The client's address from `X-Forwarded-For`, when the peer is trusted to say it.
    pub forwarded: Option<IpAddr>,
}

/// What became of one request: the metric label and the response.
pub(crate) struct Answer {
    /// `result` label of `xmpp_lb_http_requests_total`.
    pub(crate) result: &'static str,
    /// The response.
    pub(crate) response: Response<String>,
}

/// A handshake that passed, waiting for hyper to finish the `101`.
struct Pending {
    /// Resolves to the upgraded connection once the `101` is written.
    on: OnUpgrade,
    /// The WebSocket URL the client reached.
    endpoint: String,
    /// The client's address from `X-Forwarded-For`.
    forwarded: Option<IpAddr>,
}

/// Serve HTTP on `io` until a WebSocket handshake succeeds (`Some`), or the client is done
/// or `deadline` passes (`None`).
pub async fn serve<S>(io: S, ctx: &HttpCtx<'_>, deadline: Instant) -> Option<Upgrade<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot: Arc<Mutex<Option<Pending>>> = Arc::new(Mutex::new(None));
    let service = hyper::service::service_fn(|mut req: Request<Incoming>| {
        let answer = answer(&req, ctx);
        ctx.metrics
            .http_requests_total
            .with_label_values(&[ctx.listener, answer.result])
            .inc();
        if answer.response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let pending = Pending {
                on: hyper::upgrade::on(&mut req),
                endpoint: endpoint(&req, ctx),
                forwarded: forwarded_for(req.headers(), ctx),
            };
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(pending);
            }
        } else if answer.response.status().is_client_error() {
            tracing::info!(
                listener = ctx.listener,
                peer = %ctx.peer,
                method = %req.method(),
                path = req.uri().path(),
                status = answer.response.status().as_u16(),
                result = answer.result,
                "HTTP request refused"
            );
        }
        std::future::ready(Ok::<_, std::convert::Infallible>(answer.response))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    match tokio::time::timeout_at(deadline, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_parse() || e.is_parse_too_large() => {
            // hyper answered 400 (or 431) itself: count and log it like the other refusals.
            ctx.metrics
                .http_requests_total
                .with_label_values(&[ctx.listener, "bad_http"])
                .inc();
            tracing::info!(listener = ctx.listener, peer = %ctx.peer, error = %e, result = "bad_http", "HTTP request refused");
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP connection ended");
            return None;
        }
        Err(_) => {
            tracing::debug!("HTTP connection closed at its deadline");
            return None;
        }
    }
    let pending = slot.lock().ok()?.take()?;
    let upgraded = match tokio::time::timeout_at(deadline, pending.on).await {
        Ok(Ok(upgraded)) => upgraded,
        _ => return None,
    };
    // Take the connection back from hyper: no boxed stream, and hyper's read buffer (8 KiB,
    // kept alive by an empty slice of it otherwise) is dropped now; the connection may live
    // for days.
    let parts = upgraded.downcast::<TokioIo<S>>().ok()?;
    let ahead = if parts.read_buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&parts.read_buf[..])
    };
    Some(Upgrade {
        io: Prefixed::new(parts.io.into_inner(), ahead),
        endpoint: pending.endpoint,
        forwarded: pending.forwarded,
    })
}

/// The answer to one request (generic over the body, which it never reads, so the fuzz target
/// can build requests without a connection).
pub(crate) fn answer<B>(req: &Request<B>, ctx: &HttpCtx<'_>) -> Answer {
    let path = req.uri().path();
    if path == ctx.ws.path {
        return handshake(req, ctx);
    }
    if path == HOST_META || path == HOST_META_JSON {
        return discovery(req, ctx, path.ends_with(".json"));
    }
    refusal(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

/// A refusal with a short text body.
fn refusal(status: StatusCode, result: &'static str, text: &str) -> Answer {
    let mut response = Response::new(format!("{text}\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Answer { result, response }
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The opening handshake. The checks run in the order a client can fix them: method,
/// upgrade, version, key, origin, subprotocol. Extensions (permessage-deflate) are never
/// accepted: the answer simply does not name them (see docs/websocket.md).
fn handshake<B>(req: &Request<B>, ctx: &HttpCtx<'_>) -> Answer {
    let h = req.headers();
    if req.method() != Method::GET {
        let mut a = refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET opens a WebSocket",
        );
        a.response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return a;
    }
    if !has_token(h, header::UPGRADE, "websocket") {
        let mut a = refusal(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this is an XMPP WebSocket endpoint (RFC 7395); open a WebSocket",
        );
        a.response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return a;
    }
    if !has_token(h, header::CONNECTION, "upgrade") {
        return refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Connection: Upgrade is missing",
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut a = refusal(
            StatusCode::UPGRADE_REQUIRED,
            "bad_version",
            "WebSocket version 13 is required",
        );
        a.response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return a;
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY);
    let key_ok = key.is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k.as_bytes())
            .is_ok_and(|d| d.len() == 16)
    });
    let Some(key) = key.filter(|_| key_ok) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Sec-WebSocket-Key is missing or invalid",
        );
    };
    // Browsers always send `Origin`; a client without one is not a browser, and could write
    // any Origin it liked, so the list only keeps other web pages out.
    if let Some(origin) = h.get(header::ORIGIN).filter(|_| !ctx.ws.origins.is_empty()) {
        let origin = origin
            .to_str()
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if !ctx.ws.origins.contains(&origin) {
            return refusal(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "this origin may not open an XMPP WebSocket here",
            );
        }
    }
    if !has_token(h, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return refusal(
            StatusCode::BAD_REQUEST,
            "no_subprotocol",
            "the xmpp subprotocol is required (Sec-WebSocket-Protocol: xmpp)",
        );
    }
    let mut response = Response::new(String::new());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    out.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Answer {
        result: "websocket",
        response,
    }
}

/// The domain a request names in `Host`, normalised, if it is served.
fn served_host<B>(req: &Request<B>, config: &Config) -> Option<String> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (name, after) = rest.split_once(']')?;
            (name, after)
        }
        None => host.split_at(host.find(':').unwrap_or(host.len())),
    };
    // Nothing but an optional port after the name: the Host is written into the discovery
    // document's URL, which must not carry anything a client did not mean as a port.
    if let Some(port) = (!port.is_empty()).then(|| port.strip_prefix(':')) {
        let port = port?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    let domain = crate::route::key::normalize_domain(name)?;
    config.routing.domains.contains(&domain).then_some(domain)
}

/// The URL of the WebSocket endpoint as this request reached it.
pub(crate) fn endpoint<B>(req: &Request<B>, ctx: &HttpCtx<'_>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("wss://{host}{}", ctx.ws.path)
}

/// `/.well-known/host-meta` (XRD) or `host-meta.json`, for a served domain, readable from
/// any web page (CORS), naming the WebSocket endpoint.
fn discovery<B>(req: &Request<B>, ctx: &HttpCtx<'_>, json: bool) -> Answer {
    let cors = |response: &mut Response<String>| {
        let h = response.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
    };
    if req.method() == Method::OPTIONS {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        cors(&mut response);
        return Answer {
            result: "cors_preflight",
            response,
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "GET, HEAD or OPTIONS",
        );
    }
    let Some(domain) = served_host(req, ctx.config) else {
        return refusal(
            StatusCode::NOT_FOUND,
            "unknown_host",
            "no XMPP service for this host",
        );
    };
    let url = ctx
        .config
        .websocket
        .urls
        .get(&domain)
        .cloned()
        .unwrap_or_else(|| endpoint(req, ctx));
    let (body, content_type) = if json {
        let doc = serde_json::json!({
            "links": [{ "rel": REL_WEBSOCKET, "href": url }]
        });
        (format!("{doc}\n"), "application/json")
    } else {
        let href = url
            .replace('&', "&amp;")
            .replace('\'', "&apos;")
            .replace('<', "&lt;");
        (
            format!(
                "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n  <Link rel='{REL_WEBSOCKET}' href='{href}'/>\n</XRD>\n"
            ),
            "application/xrd+xml",
        )
    };
    let body = if req.method() == Method::HEAD {
        String::new()
    } else {
        body
    };
    let mut response = Response::new(body);
    cors(&mut response);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Answer {
        result: if json { "host_meta_json" } else { "host_meta" },
        response,
    }
}

/// The client's address from the last `X-Forwarded-For` entry, if the peer is a trusted
/// balancer (the last entry is the one that balancer added).
pub(crate) fn forwarded_for(headers: &HeaderMap, ctx: &HttpCtx<'_>) -> Option<IpAddr> {
    if !crate::proxy_protocol::trusted(&ctx.ws.forwarded_for, ctx.peer.ip()) {
        return None;
    }
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    last.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("c.key"), cert.signing_key.serialize_pem()).unwrap();
        let text = "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:0\"]\ntls = \"direct\"\n\
            cert = \"c.pem\"\nkey = \"c.key\"\n\n[routing]\nkey = \"jid\"\ndomains = [\"example.test\"]\n\n\
            [[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
        let config = Config::from_toml(text, &dir.path().join("x.toml")).unwrap();
        (dir, config)
    }

    fn host(config: &Config, host: &str) -> Option<String> {
        let req = Request::builder()
            .header(header::HOST, host)
            .body(())
            .unwrap();
        served_host(&req, config)
    }

    #[test]
    fn a_served_host_is_a_domain_and_at_most_a_port() {
        let (_dir, c) = config();
        for ok in [
            "example.test",
            "Example.Test",
            "example.test:443",
            "example.test:5443",
        ] {
            assert_eq!(host(&c, ok).as_deref(), Some("example.test"), "{ok}");
        }
        // Anything else after the name would be written into the discovery URL.
        for bad in [
            "example.test:",
            "example.test:.443",
            "example.test:443x",
            "example.test:123456",
            "example.test:443:443",
            "other.test",
            "[example.test]x",
        ] {
            assert_eq!(host(&c, bad), None, "{bad}");
        }
    }
}
