//! Failed-login throttling on the connection path: each SASL attempt asks the per-source
//! table whether to go, wait or be refused, and each answer from the node is reported back.

use tokio::time::Instant;

use super::context::At;
use super::refuse::Failure;
use crate::backend::record::BackendId;
use crate::metrics::Metrics;
use crate::sources::{Verdict, source_of};
use crate::xmpp::stream_error::Condition;

/// Before a login attempt naming `jid` goes to a node: go on, after a wait if its source or
/// account failed too often (never past the negotiation deadline), or be refused if either
/// is banned.
pub(super) async fn gate(at: &At<'_>, jid: Option<&str>) -> Result<(), Failure> {
    let (shared, rt) = (at.shared, at.rt);
    let verdict =
        shared
            .sources
            .login_attempt(&rt.config.sources, at.peer.ip(), jid, Instant::now());
    match verdict {
        Verdict::Go => Ok(()),
        Verdict::Wait(wait) => {
            shared
                .metrics
                .login_delays_total
                .with_label_values::<&str>(&[])
                .inc();
            let deadline = at.started + rt.config.limits.negotiation_timeout;
            tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
            Ok(())
        }
        Verdict::Banned => {
            shared
                .metrics
                .login_refusals_total
                .with_label_values::<&str>(&[])
                .inc();
            Err(Failure::Refuse(
                Condition::PolicyViolation,
                "too many failed logins; try again later".into(),
            ))
        }
    }
}

/// Count the node's answer to a login: by mechanism (`xmpp_lb_sasl_outcomes_total`) and by
/// the node that gave it (`xmpp_lb_backend_logins_total`, the status page's logins per node).
pub(super) fn count(at: &At<'_>, mechanism: &str, node: BackendId, success: bool) {
    let result = if success { "success" } else { "failure" };
    let metrics = &at.shared.metrics;
    metrics
        .sasl_total
        .with_label_values(&[Metrics::mechanism_label(mechanism), result])
        .inc();
    metrics
        .backend_logins_total
        .with_label_values(&[at.rt.backends.name(node), result])
        .inc();
}

/// The node answered a login attempt naming `jid`: a success forgets the failures of its
/// source and account, a failure counts against both (and may ban them; the account is never
/// logged here).
pub(super) fn outcome(at: &At<'_>, jid: Option<&str>, success: bool) {
    let (shared, limits) = (at.shared, &at.rt.config.sources);
    let ip = at.peer.ip();
    if success {
        shared.sources.login_succeeded(limits, ip, jid);
        return;
    }
    for scope in shared.sources.login_failed(limits, ip, jid, Instant::now()) {
        shared
            .metrics
            .login_bans_total
            .with_label_values(&[scope.as_str()])
            .inc();
        tracing::warn!(
            scope = scope.as_str(),
            source = %source_of(limits, ip),
            ban = ?limits.logins.ban_time,
            "banned for failed logins"
        );
    }
}
