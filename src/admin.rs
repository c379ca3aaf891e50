//! The HTTP side, on the `[metrics]` bind: `/metrics` for Prometheus, the probes `/healthz`
//! and `/readyz`, what an operator looks at (`/backends`, `/route?jid=`), and the controls:
//! drain and undrain a backend, reload the configuration.
//!
//! With `[metrics] token_file` set, every endpoint but the two probes requires
//! `Authorization: Bearer TOKEN`. The probes stay open because load balancers and
//! orchestrators probe without credentials, and all they reveal is "alive" and "ready". The
//! token is read with the rest of the configuration, so a reload rotates it.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::Shared;

/// The admin bearer token. Its `Debug` never shows it, so a logged configuration or runtime
/// cannot leak it.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token held by a token file: its text without surrounding whitespace (editors add a
    /// final newline). One word of printable ASCII, so it fits an HTTP header as written.
    pub fn new(file_text: &str) -> Result<AdminToken, String> {
        let token = file_text.trim();
        if token.is_empty() {
            return Err("the token file is empty".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be one word of printable ASCII characters".into());
        }
        Ok(AdminToken(token.to_string()))
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ
    /// (a byte-by-byte early exit would let a client guess the token one byte at a time).
    pub fn matches(&self, presented: &str) -> bool {
        let (want, got) = (self.0.as_bytes(), presented.as_bytes());
        let mut diff = want.len() ^ got.len();
        for (i, w) in want.iter().enumerate() {
            diff |= usize::from(w ^ got.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Serve the admin endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().is_loopback()
        && shared.runtime.load().admin_token.is_none()
    {
        tracing::warn!(%addr, "admin endpoints (drain, reload) are reachable beyond loopback without a token; set [metrics] token_file");
    }
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/backends", get(backends))
        .route("/route", get(route))
        .route("/backends/{name}/drain", post(drain))
        .route("/backends/{name}/undrain", post(undrain))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

/// Let the request through if no token is configured or it carries the right one.
async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let rt = shared.runtime.load();
    if let Some(token) = &rt.admin_token {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !presented.is_some_and(|t| token.matches(t)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(WWW_AUTHENTICATE, "Bearer realm=\"xmpp-lb\"")],
                "a valid bearer token is required\n",
            )
                .into_response();
        }
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
    let healthy = rt.states.iter().filter(|s| s.is_healthy()).count();
    let taking_logins = rt.states.iter().filter(|s| s.accepts_logins()).count();
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
            "backends": rt.names.len(),
            "backends_healthy": healthy,
            "backends_taking_logins": taking_logins,
        })),
    )
}

/// Each backend's state, load and ring share per domain, as JSON.
async fn backends(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let rt = shared.runtime.load();
    let list: Vec<serde_json::Value> = rt
        .names
        .iter()
        .enumerate()
        .zip(&rt.states)
        .zip(&rt.config.backends)
        .map(|(((idx, name), s), b)| {
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
                    let (_, share) = route.ring_shares.iter().find(|(i, _)| *i == idx)?;
                    Some((domain.clone(), json!(share)))
                })
                .collect();
            json!({
                "name": name,
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
    match rt.route_info(&jid, ip) {
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
    match shared.set_draining(name, on) {
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
    fn token_is_trimmed_checked_and_never_shown() {
        let t = AdminToken::new("  s3cret-Token_1\n").unwrap();
        assert!(t.matches("s3cret-Token_1"));
        assert!(!t.matches("s3cret-Token_"));
        assert!(!t.matches("s3cret-Token_12"));
        assert!(!t.matches(""));
        assert!(!t.matches("S3cret-Token_1"));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(AdminToken::new("\n \n").is_err());
        assert!(AdminToken::new("two words").is_err());
    }
}
