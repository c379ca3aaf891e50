//! Draining a backend: it takes no new logins, and in `redirect` mode its relayed clients are
//! asked to move, at a bounded rate, so that they reconnect to their next node without a
//! thundering herd.

use std::sync::Arc;

use crate::backend::state::Command;
use crate::config::DrainMode;
use crate::runtime::Shared;

/// Start or stop draining the backend called `name`. Draining in `redirect` mode asks its
/// relayed clients to move, `rate` per second, until none is left or the drain is lifted.
pub fn set_draining(shared: &Arc<Shared>, name: &str, on: bool) -> Result<(), String> {
    let rt = shared.runtime.load_full();
    let id = rt
        .backends()
        .find(name)
        .ok_or_else(|| format!("no backend named {name:?}"))?;
    let state = rt.backends()[id].state.clone();
    let was = state.set_draining(on);
    shared
        .metrics
        .backend_draining
        .with_label_values(&[name])
        .set(i64::from(on));
    tracing::warn!(backend = name, draining = on, "drain state changed");
    let drain = &rt.config().drain;
    if on && !was && drain.mode == DrainMode::Redirect {
        let shared = shared.clone();
        let period = std::time::Duration::from_secs_f64(1.0 / drain.rate);
        let name = name.to_string();
        tokio::spawn(async move {
            while state.is_draining() && state.movable_relays() > 0 {
                let asked = state.interrupt_some(1, Command::Drain);
                shared
                    .metrics
                    .drain_redirects_total
                    .with_label_values(&[&name])
                    .inc_by(asked as u64);
                tokio::time::sleep(period).await;
            }
            tracing::info!(backend = %name, "drain: no relayed client left to move");
        });
    }
    Ok(())
}
