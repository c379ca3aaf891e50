//! The HTTP side, on the `[metrics]` bind: `/metrics` for Prometheus, `/healthz`, and the
//! operator's controls: drain and undrain a backend, reload the configuration, see backends.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::runtime::Shared;

/// Serve the admin endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/backends", get(backends))
        .route("/backends/{name}/drain", post(drain))
        .route("/backends/{name}/undrain", post(undrain))
        .route("/reload", post(reload))
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        shared.metrics.render(),
    )
}

/// Each backend's state, as JSON.
async fn backends(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let rt = shared.runtime.load();
    let list: Vec<serde_json::Value> = rt
        .names
        .iter()
        .zip(&rt.states)
        .zip(&rt.config.backends)
        .map(|((name, s), b)| {
            serde_json::json!({
                "name": name,
                "address": b.address.to_string(),
                "weight": b.weight,
                "healthy": s.is_healthy(),
                "draining": s.is_draining(),
                "connections": s.active(),
                "relayed": s.relays(),
                "negotiating": s.admission.negotiating(),
                "waiting": s.admission.waiting(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "backends": list }))
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
