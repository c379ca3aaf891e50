//! `GET /status`, the page an operator opens first, and `GET /status.json`, what it shows.
//!
//! The page is one static HTML file compiled into the binary (`status.html`: inline CSS,
//! script and SVG, no external asset, so it works air-gapped). It holds no data: its script
//! fetches `/status.json` every few seconds and fills the DOM with `textContent` only, so a
//! node name or configuration value can never become markup.
//!
//! The JSON is computed from the same things `/metrics` and `/backends` show: the values
//! gathered from the metrics registry ([`Readings`]), the running configuration and the
//! backends' live state, plus the history of the last quarter hour kept by
//! [`super::history`]. Nothing on the page is counted anywhere else.
//!
//! The token: the page asks for it in a small form and keeps it in the tab's
//! `sessionStorage`, sending it as `Authorization: Bearer` with every request, the way curl
//! and Prometheus do. No cookie is used on purpose: a browser sends cookies for a host to
//! every port of it, so an admin cookie for `127.0.0.1` would reach any other local web
//! service, and it would make the proxy's POST endpoints answer requests a foreign page
//! triggers. `sessionStorage` belongs to this origin (scheme, host, port) and this tab only.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::history::{History, NodeSample, Sample, unix_ms};
use super::readings::Readings;
use crate::runtime::{Runtime, Shared};

/// The page, as shipped.
pub const PAGE: &str = include_str!("status.html");

/// How far back "logins over the last minute" looks.
const RECENT: Duration = Duration::from_secs(60);

/// The page's Content-Security-Policy: only its own inline script and style (by hash), no
/// other source of script, style, image, frame or form target; requests to this origin only.
/// Even markup that reached the DOM could run nothing.
static POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; img-src data:; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash(PAGE, "<script>", "</script>"),
        inline_hash(PAGE, "<style>", "</style>"),
    )
});

/// The CSP source of the inline block between `open` and `close` in `page`: `sha256-…`.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    use base64::Engine as _;
    let start = page.find(open).expect("the page has the block") + open.len();
    let len = page[start..].find(close).expect("the block is closed");
    let digest = ring::digest::digest(&ring::digest::SHA256, &page.as_bytes()[start..start + len]);
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The page with `status`: 200, or 401 when the request had no valid token, so a browser
/// shows the login form (the page holds no data either way).
pub fn page_response(status: StatusCode) -> Response {
    let mut response = (
        status,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
            (CONTENT_SECURITY_POLICY, POLICY.as_str()),
        ],
        PAGE,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("x-content-type-options", "nosniff".parse().expect("ascii"));
    headers.insert("referrer-policy", "no-referrer".parse().expect("ascii"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            WWW_AUTHENTICATE,
            "Bearer realm=\"xmpp-lb\"".parse().expect("ascii"),
        );
    }
    response
}

/// `GET /status`.
pub async fn page() -> Response {
    page_response(StatusCode::OK)
}

/// `GET /status.json`.
pub async fn json(
    State(shared): State<Arc<Shared>>,
    Extension(history): Extension<Arc<History>>,
) -> Response {
    let readings = Readings::take(&shared.metrics);
    let rt = shared.runtime.load();
    let at = Clock {
        started: history.started,
        now: SystemTime::now(),
    };
    let mut report = report(&rt, &readings, &history.samples(), at);
    report["fleet"]["listening"] =
        json!(shared.accepting.load(std::sync::atomic::Ordering::Relaxed));
    ([(CACHE_CONTROL, "no-store")], axum::Json(report)).into_response()
}

/// When the process started, and now.
#[derive(Clone, Copy)]
pub struct Clock {
    /// Start of the process (of its admin side).
    pub started: SystemTime,
    /// The moment of the report.
    pub now: SystemTime,
}

/// Everything the page shows: `fleet`, `nodes`, `listeners`, `history`.
pub fn report(rt: &Runtime, readings: &Readings, samples: &[Sample], at: Clock) -> Value {
    let names: Vec<&str> = rt.backends().iter().map(|(_, b)| b.name.as_str()).collect();
    let current = Sample::read(readings, names.iter().copied(), at.now);
    let total_users: f64 = current.nodes.values().map(|n| n.users).sum();
    let nodes: Vec<Value> = rt
        .backends()
        .iter()
        .map(|(id, b)| node(rt, id, b, &current, samples, total_users))
        .collect();
    let listeners: Vec<Value> = rt
        .config()
        .listeners
        .iter()
        .map(|l| listener(l, readings))
        .collect();
    // The chart ends with the current values, so it is never empty.
    let mut chart_samples = samples.to_vec();
    chart_samples.push(current);
    json!({
        "fleet": fleet(rt, readings, at, total_users),
        "nodes": nodes,
        "listeners": listeners,
        "history": History::chart(&chart_samples, &names),
    })
}

/// Facts about this proxy that two proxies of a fleet should share (or not).
fn fleet(rt: &Runtime, readings: &Readings, at: Clock, users: f64) -> Value {
    let config = rt.config();
    let ids = |keys: &[crate::keys::FleetKey]| -> Vec<String> {
        keys.iter().map(crate::keys::FleetKey::id_hex).collect()
    };
    let mut domains: Vec<&str> = rt.domains().map(|(d, _)| d).collect();
    domains.sort_unstable();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": unix_ms(at.started),
        "now": unix_ms(at.now),
        "uptime_seconds": at.now.duration_since(at.started).map_or(0, |d| d.as_secs()),
        "config_file": config.source.display().to_string(),
        "loaded_at": unix_ms(rt.loaded_at()),
        "reloads": {
            "ok": readings.sum("xmpp_lb_config_reloads_total", &[("result", "ok")]),
            "failed": readings.sum("xmpp_lb_config_reloads_total", &[("result", "failed")]),
        },
        "sm_key_ids": ids(&config.resumption.sm_keys),
        "ticket_key_ids": ids(&config.resumption.tls_ticket_keys),
        "token_required": rt.admin_token().is_some(),
        "domains": domains,
        "users": users,
        "connections_open": readings.sum("xmpp_lb_connections_open", &[]),
        "refusals": {
            "source_limit": readings.by("xmpp_lb_source_refusals_total", &[], "limit"),
            "overload": readings.by("xmpp_lb_overload_refusals_total", &[], "budget"),
            "admission": readings.sum("xmpp_lb_admission_refused_total", &[]),
            "banned_logins": readings.sum("xmpp_lb_login_refusals_total", &[]),
        },
    })
}

/// One backend: state, load, logins, ring share, last check, links.
fn node(
    rt: &Runtime,
    id: crate::backend::record::BackendId,
    b: &crate::backend::record::Backend,
    current: &Sample,
    samples: &[Sample],
    total_users: f64,
) -> Value {
    let s = &b.state;
    let health = &rt.config().health;
    let (successes, failures) = s.streak();
    let (state, trend) = if s.is_draining() {
        ("draining", None)
    } else if s.is_healthy() {
        (
            "up",
            (failures > 0).then_some(("falling", failures, health.fall)),
        )
    } else {
        (
            "down",
            (successes > 0).then_some(("rising", successes, health.rise)),
        )
    };
    let trend =
        trend.map(|(word, count, needed)| json!({ "word": word, "count": count, "of": needed }));
    let now = current
        .nodes
        .get(&b.name)
        .copied()
        .unwrap_or(NodeSample::default());
    let recent = History::recent(samples, current, &b.name, RECENT);
    let ring_share: serde_json::Map<String, Value> = rt
        .domains()
        .filter_map(|(domain, route)| {
            let (_, share) = route.ring_shares.iter().find(|(i, _)| *i == id)?;
            Some((domain.to_string(), json!(share)))
        })
        .collect();
    let links: Vec<Value> = rt
        .domains_of(id)
        .into_iter()
        .filter_map(|domain| {
            let link = rt.link(domain, id)?;
            let c = &link.config;
            Some(json!({
                "domain": domain,
                "tls": format!("{:?}", c.tls).to_lowercase(),
                "proxy_protocol": format!("{:?}", c.proxy_protocol).to_lowercase(),
                "server_name": c.server_name,
                "verify": c.verify,
                "channel_binding": format!("{:?}", c.channel_binding).to_lowercase(),
            }))
        })
        .collect();
    let check = s.last_check().map(|c| {
        json!({
            "ok": c.ok,
            "latency_ms": c.latency.as_secs_f64() * 1000.0,
            "at": unix_ms(c.at),
            "error": c.error,
        })
    });
    json!({
        "name": b.name,
        "address": b.address.to_string(),
        "state": state,
        "trend": trend,
        "healthy": s.is_healthy(),
        "draining": s.is_draining(),
        "users": now.users,
        "user_share": if total_users > 0.0 { now.users / total_users } else { 0.0 },
        "connections": s.active(),
        "logins_total": now.logins,
        "login_failures_total": now.failures,
        "recent": recent.map(|r| json!({
            "seconds": r.seconds,
            "logins": r.logins,
            "failures": r.failures,
            "logins_per_second": if r.seconds > 0.0 { r.logins / r.seconds } else { 0.0 },
        })),
        "negotiating": s.admission.negotiating(),
        "queue": s.admission.waiting(),
        "weight": b.weight,
        "ring_share": ring_share,
        "last_check": check,
        "links": links,
    })
}

/// One listener: its settings and the counts labelled with its name.
fn listener(l: &crate::config::ListenerConfig, readings: &Readings) -> Value {
    let me = [("listener", l.name.as_str())];
    // HTTP requests that were answered (not refused) on a WebSocket listener.
    const SERVED: &[&str] = &["websocket", "host_meta", "host_meta_json", "cors_preflight"];
    let mut http_refused = readings.by("xmpp_lb_http_requests_total", &me, "result");
    http_refused.retain(|result, _| !SERVED.contains(&result.as_str()));
    json!({
        "name": l.name,
        "bind": l.bind.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tls": format!("{:?}", l.tls).to_lowercase(),
        "websocket": l.websocket.is_some(),
        "proxy_protocol_from": l.trusted_proxies.len(),
        "connections_total": readings.sum("xmpp_lb_connections_total", &me),
        "connections_open": readings.sum("xmpp_lb_connections_open", &me),
        "tls_handshakes": {
            "full": readings.sum("xmpp_lb_tls_handshakes_total", &[me[0], ("kind", "full")]),
            "resumed": readings.sum("xmpp_lb_tls_handshakes_total", &[me[0], ("kind", "resumed")]),
        },
        "refusals": readings.by("xmpp_lb_listener_refusals_total", &me, "reason"),
        "http_refusals": http_refused,
    })
}

#[cfg(test)]
mod tests;
