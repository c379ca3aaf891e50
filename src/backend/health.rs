//! Health: XMPP-level checks of every backend, and what a change of health does (a log line,
//! a counter, a gauge). Passive results (a connect that failed for a client) are recorded by
//! the connection path and reported here too, so both kinds of evidence tell one story.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::state::{BackendState, CheckResult, Command, Transition};
use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::runtime::Shared;

/// Log and count a health transition of `backend`; a node going down has the sessions
/// relayed to it closed if `health.close_sessions_on_down` (a node that stopped answering
/// still holds their TCP connections open: nothing else would end them).
pub fn note_transition(
    metrics: &Metrics,
    backend: &str,
    state: &BackendState,
    health: &HealthConfig,
    t: Transition,
) {
    if t == Transition::Down && health.close_sessions_on_down {
        let closed = state.interrupt_all(Command::NodeDown);
        if closed > 0 {
            tracing::warn!(
                backend,
                sessions = closed,
                "backend down: closing the sessions relayed to it"
            );
        }
    }
    let (state, up) = match t {
        Transition::Up => ("up", 1),
        Transition::Down => ("down", 0),
    };
    tracing::warn!(backend, state, "backend health changed");
    metrics
        .health_transitions_total
        .with_label_values(&[backend, state])
        .inc();
    metrics
        .backend_healthy
        .with_label_values(&[backend])
        .set(up);
}

/// Check every backend at the XMPP level, forever (until `shutdown`): a stream header must
/// get a header and features within the timeout. Results feed the rise/fall counters. Each
/// round uses the runtime current at its start, so a reload takes effect at the next round.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let rt = shared.runtime.load_full();
        let checks = rt.backends().iter().map(|(id, backend)| {
            let rt = rt.clone();
            let shared = shared.clone();
            let (name, address, state) =
                (backend.name.clone(), backend.address, backend.state.clone());
            async move {
                // A backend is checked as a client of its first domain (it has a link there).
                let Some(domain) = rt.domains_of(id).first().map(|d| d.to_string()) else {
                    return;
                };
                let Some(link) = rt.link(&domain, id) else {
                    return;
                };
                let health = &rt.config().health;
                let started = std::time::Instant::now();
                let probed =
                    crate::backend::probe::probe(address, &link, &domain, health.timeout).await;
                let ok = probed.is_ok();
                state.note_check(CheckResult {
                    ok,
                    latency: started.elapsed(),
                    at: std::time::SystemTime::now(),
                    error: probed.err().map_or_else(String::new, |e| e.to_string()),
                });
                if let Some(t) = state.record(ok, health.rise, health.fall) {
                    note_transition(&shared.metrics, &name, &state, health, t);
                }
            }
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = futures_util::future::join_all(checks) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(rt.config().health.interval) => {}
        }
    }
}
