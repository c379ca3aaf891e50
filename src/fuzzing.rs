//! The crate-internal parsers of untrusted input, reachable by the fuzz targets of `fuzz/`
//! (a workspace of its own that links this library like any other user).
//!
//! Hidden from the documentation and no part of the API: it exists for `fuzz/` alone and
//! changes with the internals it exposes. Everything here is the code the proxy itself runs,
//! re-exported or wrapped in the little a target cannot build on its own (metrics, a runtime,
//! a request without a connection), never a copy of its logic.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use bytes::Bytes;

use crate::config::{Config, PinEntry};
use crate::metrics::Metrics;
use crate::relay::Watch;
use crate::resumption::{Context, ToBackend, ToClient};
use crate::route::policy::{PinPattern, PinTable};
use crate::runtime::Shared;
use crate::xmpp::element::{Element, NsContext};

pub use crate::route::resume::{Checked, MAX_ID_BYTES, SmKeys};
pub use crate::tls::tickets::FleetTicketer;
pub use crate::xmpp::sm::{NS_SM, set_attr};
pub use crate::xmpp::tracker::{Event, Feed, Tracker};

/// An HTTP request as a client wrote it: method, request target, header lines.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawRequest {
    /// The request as hyper would hand it over, or `None` where hyper's own parser refuses it
    /// first (a method, target, header name or value HTTP does not allow).
    fn build(&self) -> Option<Request<Body>> {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::from_bytes(&self.method).ok()?;
        *req.uri_mut() = Uri::try_from(self.target.as_slice()).ok()?;
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name).ok()?;
            let value = HeaderValue::from_bytes(value).ok()?;
            req.headers_mut().append(name, value);
        }
        Some(req)
    }
}

/// What came back: status, headers (lowercase names), body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A response's status and headers, with `body`.
    fn new(parts: &hyper::http::response::Parts, body: Vec<u8>) -> RawResponse {
        RawResponse {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body,
        }
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// The admin endpoints (`admin::router`, the guard included) over a runtime built from a
/// configuration, answering requests without sockets.
pub struct AdminApp {
    tokio: tokio::runtime::Runtime,
    router: axum::Router,
    /// The state the endpoints act on.
    pub shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(config: Config) -> Result<AdminApp, String> {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let shared = {
            let _in = tokio.enter();
            Arc::new(Shared::new(config, Arc::new(Metrics::new())).map_err(|e| e.to_string())?)
        };
        let router = crate::admin::router(shared.clone());
        Ok(AdminApp {
            tokio,
            router,
            shared,
        })
    }

    /// The response to one request, or `None` if hyper would have refused it before routing.
    pub fn call(&self, request: &RawRequest) -> Option<RawResponse> {
        use hyper::service::Service as _;
        let req = request.build()?;
        let service = hyper_util::service::TowerToHyperService::new(self.router.clone());
        self.tokio.block_on(async move {
            let response = service.call(req).await.ok()?;
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.ok()?;
            Some(RawResponse::new(&parts, body.to_vec()))
        })
    }
}

/// The HTTP side of a WebSocket listener (`websocket::http::answer`) without a connection.
pub struct WsHttp {
    config: Config,
    metrics: Metrics,
}

/// What a WebSocket listener answered, and what it would record for an upgrade.
#[derive(Debug, Clone)]
pub struct WsAnswer {
    /// The `result` label of `xmpp_lb_http_requests_total`.
    pub result: &'static str,
    pub response: RawResponse,
    /// The WebSocket URL as the request reached it.
    pub endpoint: String,
    /// The client address from `X-Forwarded-For`, if the peer may say it.
    pub forwarded: Option<IpAddr>,
}

impl WsHttp {
    /// Fails unless the configuration has a WebSocket listener.
    pub fn new(config: Config) -> Result<WsHttp, String> {
        if !config.listeners.iter().any(|l| l.websocket.is_some()) {
            return Err("no WebSocket listener".into());
        }
        Ok(WsHttp {
            config,
            metrics: Metrics::new(),
        })
    }

    /// The configuration it serves.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The answer of the first WebSocket listener to `request` from `peer`.
    pub fn answer(&self, request: &RawRequest, peer: SocketAddr) -> Option<WsAnswer> {
        use crate::websocket::http::{HttpCtx, answer, endpoint, forwarded_for};
        let req = request.build()?;
        let listener = self
            .config
            .listeners
            .iter()
            .find(|l| l.websocket.is_some())?;
        let ctx = HttpCtx {
            listener: &listener.name,
            ws: listener.websocket.as_ref()?,
            config: &self.config,
            metrics: &self.metrics,
            peer,
        };
        let a = answer(&req, &ctx);
        let (parts, body) = a.response.into_parts();
        Some(WsAnswer {
            result: a.result,
            response: RawResponse::new(&parts, body.into_bytes()),
            endpoint: endpoint(&req, &ctx),
            forwarded: forwarded_for(req.headers(), &ctx),
        })
    }
}

/// A pin file error, as `config::parse_pin_file` reports it.
#[derive(Debug, Clone)]
pub struct PinFileError {
    pub line: usize,
    pub key: String,
    pub message: String,
}

/// `config::parse_pin_file`: the entries of a pin file, or where it is wrong.
pub fn parse_pin_file(text: &str) -> Result<Vec<PinEntry>, PinFileError> {
    crate::config::parse_pin_file(text).map_err(|e| PinFileError {
        line: e.line,
        key: e.key,
        message: e.message,
    })
}

/// A checked pin table (`PinTable::new`), for lookups.
pub struct Pins(PinTable);

impl Pins {
    pub fn new(entries: &[PinEntry], backends: &[String]) -> Result<Pins, String> {
        PinTable::new(entries, backends).map(Pins)
    }

    /// The backend the pins send `bare_jid` (normalized) of tenant `tenant` to.
    pub fn lookup(&self, bare_jid: &str, tenant: Option<&str>) -> Option<String> {
        self.0.lookup(bare_jid, tenant).map(|m| m.backend)
    }
}

/// A pin pattern, normalized: `Ok((kind, text))` with kind `jid`, `tenant` or `glob`.
pub fn pin_pattern(pattern: &str) -> Result<(&'static str, String), String> {
    PinPattern::parse(pattern).map(|p| match p {
        PinPattern::Exact(s) => ("jid", s),
        PinPattern::Tenant(s) => ("tenant", s),
        PinPattern::Glob(s) => ("glob", s),
    })
}

/// The relay's XEP-0198 watches of one connection (`resumption::watches`), and the SASL2
/// inline resume, over the fleet's keys.
pub struct SmRelay {
    ctx: Context,
    to_backend: ToBackend,
    to_client: ToClient,
}

impl SmRelay {
    /// A connection to `domain` relayed to `node`, with the usual stream namespaces.
    pub fn new(
        keys: Arc<SmKeys>,
        metrics: Arc<Metrics>,
        domain: &str,
        node: &str,
        known_nodes: &[&str],
    ) -> SmRelay {
        let ctx = Context {
            keys,
            domain: domain.into(),
            node: node.into(),
            known_nodes: known_nodes.iter().map(|n| n.to_string()).collect(),
            metrics,
        };
        let ns = NsContext {
            default_ns: crate::xmpp::header::CLIENT_NS.into(),
            prefixes: vec![("stream".into(), crate::xmpp::header::STREAM_NS.into())],
        };
        let (to_backend, to_client) = crate::resumption::watches(ctx.clone(), ns.clone(), ns);
        SmRelay {
            ctx,
            to_backend,
            to_client,
        }
    }

    /// A whole top-level element from the client named `name` (as written): what the relay
    /// sends on, or `None` when the watch does not hold elements of that name.
    pub fn from_client(&mut self, name: &[u8], element: Vec<u8>) -> Option<Vec<u8>> {
        self.to_backend
            .wants(name)
            .then(|| self.to_backend.rewrite(element))
    }

    /// The same for an element from the node.
    pub fn from_node(&mut self, name: &[u8], element: Vec<u8>) -> Option<Vec<u8>> {
        self.to_client
            .wants(name)
            .then(|| self.to_client.rewrite(element))
    }

    /// A SASL2 `<authenticate/>` (`raw`, parsed as `auth`) checked for an inline resume: the
    /// node it routes to and the element to send, or `None` if it asks for no resumption.
    pub fn inline_resume(&self, raw: &[u8], auth: &Element) -> Option<(Option<String>, Vec<u8>)> {
        let raw = Bytes::copy_from_slice(raw);
        crate::resumption::inline_resume(&self.ctx, &raw, auth)
            .map(|i| (i.node, i.element.to_vec()))
    }
}

/// A session ticket sealed by `ticketer` (what rustls asks of it after a handshake).
pub fn ticket_seal(ticketer: &FleetTicketer, plain: &[u8]) -> Option<Vec<u8>> {
    rustls::server::ProducesTickets::encrypt(ticketer, plain)
}

/// The state inside a ticket a client presented, if `ticketer` may open it.
pub fn ticket_open(ticketer: &FleetTicketer, ticket: &[u8]) -> Option<Vec<u8>> {
    rustls::server::ProducesTickets::decrypt(ticketer, ticket)
}
