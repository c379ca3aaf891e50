//! The chosen node as one value: [`Upstream`] holds the backend's stream with everything that
//! belongs to it, and [`Upstream::open`] is the one way to get one (admit, connect, try the
//! next node, record passive health).

use super::context::{At, SEND_LIMIT};
use super::refuse::{Failure, backend_lost};
use crate::backend::admission::Permit;
use crate::backend::connect::connect;
use crate::backend::health::note_transition;
use crate::backend::link::BackendStream;
use crate::backend::preamble::read_preamble;
use crate::backend::record::BackendId;
use crate::backend::state::ActiveGuard;
use crate::framed::Framed;
use crate::route::KeySource;
use crate::route::policy::{Decision, Placement};
use crate::xmpp::element::NsContext;
use crate::xmpp::stream_error::Condition;

/// The node a connection is on, and what it holds there.
pub(crate) struct Upstream {
    /// Which backend of the connection's runtime.
    pub(crate) id: BackendId,
    /// The node's side of the stream, framed while negotiating.
    pub(crate) stream: Framed<BackendStream>,
    /// Namespaces of the node's current stream header (to read its elements).
    pub(crate) ns: NsContext,
    /// Keeps the connection counted on the node (bounded load) until it ends.
    guard: Option<ActiveGuard>,
    /// The node's admission slot, held while a login is under way (login-storm shaping).
    permit: Option<Permit>,
    /// Where the decision placed the connection (a retry with another placement moves).
    pub(crate) placement: Placement,
    /// What the routing key came from (metric label, access log).
    pub(crate) source: KeySource,
}

/// When [`Upstream::open`] takes the node's admission slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Before connecting: the client's SASL element is in hand. `resume`: it resumes a
    /// session, and queues ahead of full logins.
    Now { resume: bool },
    /// When the client sends its first SASL element (the stream was routed by its header):
    /// see [`Upstream::admit_login`].
    AtFirstSasl,
}

impl Upstream {
    /// Connect the node the policy and the pool pick for `decision` in `domain`: admission
    /// first (a node under a login storm makes clients wait, never overloads), then its link
    /// for this domain (TCP, PROXY header, TLS: `backend::connect`); a node whose link fails
    /// is marked (passive health) and the next candidate tried.
    pub(crate) async fn open(
        at: &At<'_>,
        domain: &str,
        decision: &Decision,
        admit: Admit,
    ) -> Result<Upstream, Failure> {
        let source = decision.source;
        let (shared, rt) = (at.shared, at.rt);
        let health = &rt.config.health;
        let limits = &rt.config.limits;
        let mut tried = Vec::new();
        while let Some((id, guard)) = rt.pick(domain, decision, &tried) {
            tried.push(id);
            let backend = &rt.backends[id];
            let name = &backend.name;
            // Routing only picks members of the domain, which all have a link; never fall back
            // to an unconfigured one (see `Runtime::link`).
            let Some(link) = rt.link(domain, id) else {
                tracing::warn!(backend = %name, domain = %domain, "no link to this node for the domain; skipped");
                continue;
            };
            let permit = match admit {
                Admit::Now { resume } => Some(admit_on(at, id, resume).await?),
                Admit::AtFirstSasl => None,
            };
            let connected = connect(
                backend,
                &link,
                domain,
                &at.origin,
                limits.backend_connect_timeout,
                &shared.metrics,
            )
            .await;
            match connected {
                Ok(stream) => {
                    // An open link proves little about an XMPP node, so only the active
                    // checks count successes; a failed link does count as a failure.
                    shared
                        .metrics
                        .routed_total
                        .with_label_values(&[name, source.as_str()])
                        .inc();
                    return Ok(Upstream {
                        id,
                        stream: Framed::new(stream, limits.max_negotiation_element_bytes),
                        ns: NsContext::default(),
                        guard: Some(guard),
                        permit,
                        placement: decision.placement.clone(),
                        source,
                    });
                }
                Err(e) => {
                    tracing::warn!(backend = %name, error = %e, "backend connect failed; trying the next node");
                    if let Some(t) = backend.state.record(false, health.rise, health.fall) {
                        note_transition(&shared.metrics, name, &backend.state, health, t);
                    }
                }
            }
        }
        Err(Failure::Refuse(
            Condition::RemoteConnectionFailed,
            "no server node is reachable".into(),
        ))
    }

    /// [`Upstream::open`] with admission now, then open the stream on the node with the
    /// client's `header` and swallow the node's header and features (the client already has
    /// the proxy's). A node offering other mechanisms than the client was `shown` is counted
    /// and the feature cache refreshed; the login goes on regardless.
    pub(crate) async fn open_behind(
        at: &At<'_>,
        domain: &str,
        header: &[u8],
        decision: &Decision,
        shown: Option<&[String]>,
        resume: bool,
    ) -> Result<Upstream, Failure> {
        let mut up = Upstream::open(at, domain, decision, Admit::Now { resume }).await?;
        let (shared, rt) = (at.shared, at.rt);
        up.send(header).await?;
        let deadline = at.started + rt.config.limits.negotiation_timeout;
        let name = rt.backends.name(up.id);
        let (node_header, features) = read_preamble(&mut up.stream, deadline, &at.bound(domain))
            .await
            .map_err(|e| {
                tracing::warn!(backend = %name, error = %e, "backend preamble unusable");
                backend_lost()
            })?;
        up.ns = node_header.ns;
        // Order is not significant (Prosody shuffles it per stream; XEP-0474 hashes a sorted
        // list): only a different set of mechanisms is a mismatch.
        if let Some(shown) = shown
            && !same_set(shown, &features.mechanisms)
        {
            shared
                .metrics
                .feature_mismatch_total
                .with_label_values(&[name])
                .inc();
            tracing::warn!(backend = %name, shown = ?shown, offered = ?features.mechanisms, "backend offers other SASL mechanisms than the client was shown; refreshing");
            shared
                .features
                .refresh(
                    &rt.members_of(domain),
                    domain,
                    rt.config.probe.timeout,
                    &shared.metrics,
                )
                .await;
        }
        Ok(up)
    }

    /// Write to the node; a broken link is the client's `<remote-connection-failed/>`.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream
            .send(bytes, SEND_LIMIT)
            .await
            .map_err(|_| backend_lost())
    }

    /// A login starts on this node: take its admission slot if the stream was routed before
    /// any login (by its header) and holds none yet.
    pub(crate) async fn admit_login(&mut self, at: &At<'_>, resume: bool) -> Result<(), Failure> {
        if self.permit.is_none() {
            self.permit = Some(admit_on(at, self.id, resume).await?);
        }
        Ok(())
    }

    /// The connection is leaving this node for another: let go of its count and slot before
    /// asking the next node for its own.
    pub(crate) fn release(&mut self) {
        self.guard = None;
        self.permit = None;
    }

    /// Authentication is over: the admission slot goes to the next login; the stream, its
    /// namespaces and the load count go to the relay.
    pub(crate) fn into_relay(self) -> (Framed<BackendStream>, NsContext, ActiveGuard, BackendId) {
        let guard = self.guard.expect("an upstream in use holds its guard");
        (self.stream, self.ns, guard, self.id)
    }
}

/// The admission slot of node `id` for one login (it waits in the node's queue under a login
/// storm; a resumption waits ahead of full logins); a refusal becomes the client's stream
/// error.
async fn admit_on(at: &At<'_>, id: BackendId, resume: bool) -> Result<Permit, Failure> {
    let (shared, rt) = (at.shared, at.rt);
    let backend = &rt.backends[id];
    let admitted = if resume {
        backend.state.admission.admit_resume().await
    } else {
        backend.state.admission.admit().await
    };
    match admitted {
        Ok(p) => Ok(p),
        Err(refused) => {
            shared
                .metrics
                .admission_refused_total
                .with_label_values(&[&backend.name])
                .inc();
            tracing::warn!(backend = %backend.name, reason = %refused, "login refused by admission control");
            Err(match &rt.config.admission.overflow_redirect {
                Some(other) => Failure::Refuse(
                    Condition::SeeOtherHost(other.clone()),
                    "this node is busy; try the other proxy".into(),
                ),
                None => Failure::Refuse(
                    Condition::ResourceConstraint,
                    "too many logins at once; try again shortly".into(),
                ),
            })
        }
    }
}

/// Whether two mechanism lists name the same mechanisms, in any order.
fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_order_is_not_a_mismatch() {
        let s = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        assert!(same_set(
            &s(&["PLAIN", "SCRAM-SHA-1"]),
            &s(&["SCRAM-SHA-1", "PLAIN"])
        ));
        assert!(!same_set(&s(&["PLAIN", "SCRAM-SHA-1"]), &s(&["PLAIN"])));
        assert!(!same_set(&s(&["PLAIN"]), &s(&["SCRAM-SHA-1"])));
    }
}
