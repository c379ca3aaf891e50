//! The HTTP side, on the `[metrics]` bind: `/metrics` for Prometheus, the probes `/healthz`
//! and `/readyz`, what an operator looks at (`/backends`, `/route?jid=`, and the HTML status
//! page `/status` with its data `/status.json`), and the controls: drain and undrain a
//! backend, reload the configuration.
//!
//! With `[metrics] token_file` set, every endpoint but the two probes requires
//! `Authorization: Bearer TOKEN`. The probes stay open because load balancers and
//! orchestrators probe without credentials, and all they reveal is "alive" and "ready". The
//! token is read with the rest of the configuration, so a reload rotates it.
//!
//! The endpoints are often reachable from an operator's browser (loopback, a management
//! network), so everything but the probes is also guarded against web pages:
//! - a `Host` other than an IP literal, `localhost` or a name in `[metrics] allowed_hosts` is
//!   refused (421), so a page whose name an attacker points at the proxy's address (DNS
//!   rebinding) reads nothing;
//! - without a token, a POST must carry an `X-Requested-By` header (any value): a page can
//!   make a browser send a "simple" cross-origin POST (a form), but not one with a custom
//!   header without first asking, and the proxy never says yes.
//!
//! Connections are served by hyper directly rather than `axum::serve`, for two bounds that it
//! does not set: a connection must finish each request head within [`HEADER_READ_TIMEOUT`]
//! (a client trickling headers, or idle between requests, is closed), and at most
//! [`MAX_CONNECTIONS`] are open at once; more wait in the accept backlog, as client
//! connections do past `limits.max_connections`, so the admin side can never take the file
//! descriptors the XMPP side needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::Shared;

mod history;
mod readings;
mod status;

/// How long a connection may take to send a request head, and may stay idle between two
/// requests. Real clients (Prometheus, curl, probes) send a head in one packet at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Admin connections open at once. A few scrapers, probes and operators need a handful; the
/// bound keeps a flood of connections to the admin port from using file descriptors and
/// memory the client side needs.
pub const MAX_CONNECTIONS: usize = 64;

/// How long open admin connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The header a POST must carry when no token is configured.
pub const REQUESTED_BY: &str = "x-requested-by";

/// Serve the admin endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().is_loopback()
        && shared.runtime.load().admin_token.is_none()
    {
        tracing::warn!(%addr, "admin endpoints (drain, reload) are reachable beyond loopback without a token; set [metrics] token_file");
    }
    let history = Arc::new(history::History::new(history::KEPT));
    let sampler = tokio::spawn(history::run(
        shared.clone(),
        history.clone(),
        shutdown.clone(),
    ));
    let app = router_with(shared, history);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        // A slot first: past the bound, connections wait in the kernel's accept backlog.
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, most likely: give the process a moment.
                    tracing::warn!(error = %e, "admin endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await;
    // The sampler saw the same signal; it holds nothing that needs a goodbye.
    let _ = sampler.await;
}

/// Every endpoint; all but the probes behind [`guard`]. The status page's history starts
/// empty and is not sampled (the fuzz targets serve requests without the background tasks).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    router_with(shared, Arc::new(history::History::new(history::KEPT)))
}

/// Every endpoint, the status page's charts fed from `history`.
fn router_with(shared: Arc<Shared>, history: Arc<history::History>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status::page))
        .route("/status.json", get(status::json))
        .route("/backends", get(backends))
        .route("/route", get(route))
        .route("/backends/{name}/drain", post(drain))
        .route("/backends/{name}/undrain", post(undrain))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(shared.clone(), guard))
        .layer(axum::Extension(history));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(shared)
}

/// Whether `host` (a `Host` header or a request target's authority) names the endpoint in a
/// way DNS rebinding cannot: an IP literal (IPv6 in brackets), `localhost`, or a name the
/// operator listed; with or without a port, names in any case and with or without a final dot.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => ip.parse::<Ipv6Addr>().is_ok(),
            Some((ip, port)) => {
                ip.parse::<Ipv6Addr>().is_ok() && port.strip_prefix(':').is_some_and(is_port)
            }
            None => false,
        };
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && (name.eq_ignore_ascii_case("localhost")
            || allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

/// The checks on every endpoint but the probes, in order: the host name, the token, and for
/// a POST without a token, the header a web page cannot send.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let rt = shared.runtime.load();
    let allowed = &rt.config.metrics_allowed_hosts;
    let hosts = request
        .headers()
        .get_all(HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .chain(request.uri().authority().map(|a| a.as_str()));
    for host in hosts {
        if !host_allowed(host, allowed) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "this endpoint answers to IP addresses, localhost and the names in \
                 [metrics] allowed_hosts only\n",
            )
                .into_response();
        }
    }
    if let Some(token) = &rt.admin_token {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !presented.is_some_and(|t| token.matches(t)) {
            // The page itself holds no data: a browser gets its login form, still a 401.
            if request.method() == Method::GET && request.uri().path() == "/status" {
                return status::page_response(StatusCode::UNAUTHORIZED);
            }
            return (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, "Bearer realm=\"xmpp-lb\"")],
                "a valid bearer token is required\n",
            )
                .into_response();
        }
    } else if request.method() == Method::POST && !request.headers().contains_key(REQUESTED_BY) {
        return (
            StatusCode::FORBIDDEN,
            "a POST needs the header X-Requested-By (any value), or a token \
             ([metrics] token_file): a web page cannot send it\n",
        )
            .into_response();
    }
    drop(rt);
    next.run(request).await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        shared.metrics.render(),
    )
}

/// Ready to take clients: every listener is bound and accepting (not shutting down), and at
/// least one backend is healthy and not draining, so a new login has somewhere to go.
async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let accepting = shared.accepting.load(Ordering::Relaxed);
    let rt = shared.runtime.load();
    let healthy = rt
        .backends
        .iter()
        .filter(|(_, b)| b.state.is_healthy())
        .count();
    let taking_logins = rt
        .backends
        .iter()
        .filter(|(_, b)| b.state.accepts_logins())
        .count();
    let ready = accepting && taking_logins > 0;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "ready": ready,
            "listening": accepting,
            "backends": rt.backends.len(),
            "backends_healthy": healthy,
            "backends_taking_logins": taking_logins,
        })),
    )
}

/// Each backend's state, load and ring share per domain, as JSON.
async fn backends(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let rt = shared.runtime.load();
    let list: Vec<serde_json::Value> = rt
        .backends
        .iter()
        .map(|(id, b)| {
            let s = &b.state;
            let state = if s.is_draining() {
                "draining"
            } else if s.is_healthy() {
                "up"
            } else {
                "down"
            };
            let shares: serde_json::Map<String, serde_json::Value> = rt
                .domains
                .iter()
                .filter_map(|(domain, route)| {
                    let (_, share) = route.ring_shares.iter().find(|(i, _)| *i == id)?;
                    Some((domain.clone(), json!(share)))
                })
                .collect();
            json!({
                "name": b.name,
                "address": b.address.to_string(),
                "weight": b.weight,
                "state": state,
                "healthy": s.is_healthy(),
                "draining": s.is_draining(),
                "connections": s.active(),
                "relayed": s.relays(),
                "negotiating": s.admission.negotiating(),
                "waiting": s.admission.waiting(),
                "ring_share": shares,
            })
        })
        .collect();
    axum::Json(json!({ "backends": list }))
}

/// The query of `/route`.
#[derive(serde::Deserialize)]
struct RouteQuery {
    /// The user, e.g. `juliet@example.test`.
    jid: Option<String>,
    /// The client's address, needed when the user is routed by subnet.
    ip: Option<String>,
}

/// Where a user goes now and why, as JSON (what `xmpp-lb route` prints, with live state).
async fn route(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<RouteQuery>,
) -> impl IntoResponse {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": message })),
        )
    };
    let Some(jid) = query.jid.filter(|j| !j.trim().is_empty()) else {
        return bad("give the user as ?jid=USER@DOMAIN".into());
    };
    let ip = match query.ip.as_deref().map(str::parse::<IpAddr>) {
        None => None,
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => return bad("ip is not an IP address".into()),
    };
    let rt = shared.runtime.load();
    match crate::route::explain::route_info(&rt, &jid, ip) {
        Ok(info) => (StatusCode::OK, axum::Json(json!(info))),
        Err(e) => bad(e),
    }
}

async fn drain(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> impl IntoResponse {
    set_drain(&shared, &name, true)
}

async fn undrain(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> impl IntoResponse {
    set_drain(&shared, &name, false)
}

fn set_drain(shared: &Arc<Shared>, name: &str, on: bool) -> (StatusCode, String) {
    match crate::backend::drain::set_draining(shared, name, on) {
        Ok(()) => (
            StatusCode::OK,
            format!(
                "{name}: {}\n",
                if on { "draining" } else { "taking new logins" }
            ),
        ),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")),
    }
}

async fn reload(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    match shared.reload().await {
        Ok(()) => (StatusCode::OK, "reloaded\n".to_string()),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_that_dns_rebinding_cannot_forge() {
        let listed = vec!["metrics.example.org".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "10.0.0.5:80",
            "[::1]",
            "[::1]:9464",
            "[2001:db8::1]:9464",
            "localhost",
            "LOCALHOST:9464",
            "localhost.",
            "metrics.example.org",
            "Metrics.Example.Org.:9464",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "",
            ":9464",
            "evil.example",
            "evil.example:9464",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "metrics.example.org.evil.example",
            "example.org",
            "[::1",
            "[::1]9464",
            "[::1]:",
            "[evil.example]",
            "::1",
            "127.0.0.1:port",
            "127.0.0.1:99999999",
        ] {
            assert!(!host_allowed(bad, &listed), "{bad:?}");
        }
        assert!(!host_allowed("metrics.example.org", &[]));
    }
}
