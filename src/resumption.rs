//! The proxy's part in XEP-0198 stream resumption, for one connection.
//!
//! Going to the client, a node's stream-management id is wrapped with the node's name and a MAC
//! ([`crate::route::resume`]): in `<enabled/>` after a legacy `<enable/>` (seen by the relay's
//! [`ToClient`] watch), or inside a SASL2 `<success/>` (Bind 2's `<bound/>`, seen during
//! negotiation by [`rewrite_sasl2_success`]).
//!
//! Coming back, the client's `previd` is checked and, when valid, replaced by the node's own id:
//! inline in a SASL2 `<authenticate/>` ([`inline_resume`]) the check happens before a node is
//! chosen, so the client is routed to the node that holds its session; a legacy top-level
//! `<resume/>` (the relay's [`ToBackend`] watch) comes after authentication, on the node the
//! login was routed to, which is the session's node unless the ring changed in between. The
//! node's answer (`<resumed/>`, which echoes the id, or `<failed/>`) is counted and given back
//! the id the client knows.
//!
//! Ids the check refuses go on untouched: the node will not know them and answers `<failed/>`,
//! and the client starts a new session. Nothing here ever blocks a stream.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::relay::Watch;
use crate::route::resume::{Checked, SmKeys};
use crate::xmpp::element::{Element, NsContext};
use crate::xmpp::sm::{self, NS_BIND2, NS_SM};

/// What one connection needs to rewrite ids: the fleet's keys, where it is, and what to count.
#[derive(Clone)]
pub struct Context {
    /// The fleet's MAC keys (no keys: nothing is wrapped, outcomes are still counted).
    pub keys: Arc<SmKeys>,
    /// The domain the client asked for (bound into every MAC).
    pub domain: String,
    /// The node this connection is relayed to.
    pub node: String,
    /// Every node the configuration knows (to tell a moved session from a vanished node).
    pub known_nodes: Arc<[String]>,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
}

/// A resume the client asked for, waiting for the node's answer.
#[derive(Clone, Default)]
struct Pending {
    /// The id the client sent, if the proxy replaced it (the node's `<resumed previd>` must
    /// show it again).
    client_previd: Option<String>,
}

/// A resumption id is a credential (whoever presents it takes the session over): `Debug`
/// shows whether there is one, never its value.
fn redacted(id: &Option<String>) -> &'static str {
    match id {
        Some(_) => "Some(<redacted>)",
        None => "None",
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field(
                "client_previd",
                &format_args!("{}", redacted(&self.client_previd)),
            )
            .finish()
    }
}

/// What the two watches of one relay share, in one allocation: a relay may live for days, and
/// an idle one should hold as little as possible.
struct Inner {
    ctx: Context,
    /// Namespaces of the client's stream header, unless they are the usual ones.
    client_ns: Option<Box<NsContext>>,
    /// Namespaces of the node's current stream header, unless they are the usual ones.
    backend_ns: Option<Box<NsContext>>,
    /// A legacy `<resume/>` went to the node and awaits its answer.
    pending: Mutex<Option<Pending>>,
}

/// The relay's two watches for one connection.
pub fn watches(ctx: Context, client_ns: NsContext, backend_ns: NsContext) -> (ToBackend, ToClient) {
    let inner = Arc::new(Inner {
        ctx,
        client_ns: unusual(client_ns),
        backend_ns: unusual(backend_ns),
        pending: Mutex::new(None),
    });
    (ToBackend(inner.clone()), ToClient(inner))
}

/// The namespaces nearly every stream header declares: `jabber:client` and the `stream` prefix.
fn usual_ns() -> NsContext {
    NsContext {
        default_ns: "jabber:client".into(),
        prefixes: vec![("stream".into(), crate::xmpp::header::STREAM_NS.into())],
    }
}

/// Keep a stream's namespaces only if they differ from [`usual_ns`]: a relay lives for days,
/// and the usual ones can be rebuilt on the rare occasion an element is parsed.
fn unusual(ns: NsContext) -> Option<Box<NsContext>> {
    (ns != usual_ns()).then(|| Box::new(ns))
}

/// Parse a held element with a stream's namespaces.
fn parse(element: &[u8], ns: &Option<Box<NsContext>>) -> Option<Element> {
    match ns {
        Some(ns) => Element::parse(element, ns).ok(),
        None => Element::parse(element, &usual_ns()).ok(),
    }
}

/// Whether a qualified name (as written) has this local part.
fn local_is(name: &[u8], local: &[u8]) -> bool {
    let l = match name.iter().rposition(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    };
    l == local
}

/// Client → node: a legacy `<resume previd/>` gets the node's own id back.
pub struct ToBackend(Arc<Inner>);

impl Watch for ToBackend {
    fn wants(&self, name: &[u8]) -> bool {
        local_is(name, b"resume")
    }

    fn rewrite(&mut self, element: Vec<u8>) -> Vec<u8> {
        let inner = &*self.0;
        let Some(el) = parse(&element, &inner.client_ns) else {
            return element;
        };
        let Some(previd) = el.attr("previd").filter(|_| sm::is_sm(&el, "resume")) else {
            return element;
        };
        let (out, client_previd) = match check(&inner.ctx, previd, false).0 {
            // Even for another node: in a cluster (ejabberd) any node may resume it.
            Checked::Valid { id, .. } => match sm::set_attr(&element, 0, "previd", id) {
                Some(out) => (out, Some(previd.to_string())),
                None => (element.clone(), None),
            },
            _ => (element.clone(), None),
        };
        if let Ok(mut pending) = inner.pending.lock() {
            *pending = Some(Pending { client_previd });
        }
        out
    }
}

/// Node → client: `<enabled id/>` is wrapped; `<resumed/>` and `<failed/>` after a resume are
/// counted (and `<resumed previd/>` shows the client its own id again).
pub struct ToClient(Arc<Inner>);

impl Watch for ToClient {
    fn wants(&self, name: &[u8]) -> bool {
        local_is(name, b"enabled") || local_is(name, b"resumed") || local_is(name, b"failed")
    }

    fn rewrite(&mut self, element: Vec<u8>) -> Vec<u8> {
        let inner = &*self.0;
        let Some(el) = parse(&element, &inner.backend_ns) else {
            return element;
        };
        if el.ns != NS_SM {
            return element;
        }
        match el.local_name() {
            "enabled" => wrap_enabled(&inner.ctx, &element, &el).unwrap_or(element),
            "resumed" | "failed" => {
                let pending = inner.pending.lock().ok().and_then(|mut p| p.take());
                let Some(pending) = pending else {
                    // A <failed/> answering something else (an <enable/> refused).
                    return element;
                };
                let resumed = el.local_name() == "resumed";
                count_resume(&inner.ctx, "legacy", resumed);
                match pending.client_previd {
                    Some(previd) if resumed => {
                        sm::set_attr(&element, 0, "previd", &previd).unwrap_or(element)
                    }
                    _ => element,
                }
            }
            _ => element,
        }
    }
}

/// Check a previd; count the result; the node's own id when it is valid. `routed` says whether
/// the connection was routed by it (inline resume) rather than by the login.
/// Check a previd and count the result (`xmpp_lb_resume_ids_total{check}`): the check and its
/// label. `routed` says whether the connection is routed by the id (inline resume) rather than
/// by its login, in which case a valid id's node is where it goes, not where it is.
fn check<'a>(ctx: &Context, previd: &'a str, routed: bool) -> (Checked<'a>, &'static str) {
    let checked = ctx.keys.check(&ctx.domain, previd);
    let label = match &checked {
        Checked::Valid { node, .. } if !routed && *node != ctx.node => {
            if ctx.known_nodes.contains(node) {
                "other_node"
            } else {
                "unknown_node"
            }
        }
        Checked::Valid { node, .. } if !ctx.known_nodes.contains(node) => "unknown_node",
        other => other.label(),
    };
    ctx.metrics
        .resume_ids_total
        .with_label_values(&[label])
        .inc();
    (checked, label)
}

fn count_resume(ctx: &Context, kind: &str, resumed: bool) {
    ctx.metrics
        .resumes_total
        .with_label_values(&[
            ctx.node.as_str(),
            kind,
            if resumed { "resumed" } else { "failed" },
        ])
        .inc();
}

/// The top-level `<enabled/>` `raw` (parsed as `el`) with its resumable id wrapped; `None` when
/// there is nothing to wrap.
fn wrap_enabled(ctx: &Context, raw: &[u8], el: &Element) -> Option<Vec<u8>> {
    let id = sm::resumable_id(el)?;
    let wrapped = ctx.keys.wrap(&ctx.domain, &ctx.node, id)?;
    let out = sm::set_attr(raw, el.span.start, "id", &wrapped)?;
    ctx.metrics
        .sm_ids_wrapped_total
        .with_label_values(&[ctx.node.as_str()])
        .inc();
    Some(out)
}

/// What [`inline_resume`] found in a SASL2 `<authenticate/>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Inline {
    /// The node the verified id names: route there.
    pub node: Option<String>,
    /// The id the client sent, when the proxy replaced it (for the `<resumed/>` in the answer).
    pub client_previd: Option<String>,
    /// The element to send to the node (the node's own id in place of the client's).
    pub element: Bytes,
}

/// The node, but neither id nor the element: the element is the client's whole SASL2
/// `<authenticate/>`, credentials included.
impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline")
            .field("node", &self.node)
            .field(
                "client_previd",
                &format_args!("{}", redacted(&self.client_previd)),
            )
            .field("element", &format_args!("<{} bytes>", self.element.len()))
            .finish()
    }
}

/// A SASL2 `<authenticate/>` with an inline `<resume previd/>`: check the id before routing.
/// `None` if the element asks for no resumption. `ctx.node` is not known yet here and unused.
pub fn inline_resume(ctx: &Context, raw: &Bytes, auth: &Element) -> Option<Inline> {
    let resume = auth.child("resume", NS_SM)?;
    let previd = resume.attr("previd")?;
    match check(ctx, previd, true) {
        (Checked::Valid { node, id }, "valid") => {
            let element = sm::set_attr(raw, resume.span.start, "previd", id)?;
            Some(Inline {
                node: Some(node),
                client_previd: Some(previd.to_string()),
                element: element.into(),
            })
        }
        _ => Some(Inline {
            node: None,
            client_previd: None,
            element: raw.clone(),
        }),
    }
}

/// A node's SASL2 `<success/>`: wrap the id of a Bind 2 `<bound><enabled/></bound>`, count an
/// inline `<resumed/>`/`<failed/>` (when the client asked to resume) and give `<resumed/>` the
/// client's id back. Every other byte is kept.
pub fn rewrite_sasl2_success(
    ctx: &Context,
    raw: &Bytes,
    success: &Element,
    resume: Option<&Inline>,
) -> Bytes {
    // Edits as (offset of the start tag, attribute, new value), applied last first so that
    // earlier offsets stay valid.
    let mut edits: Vec<(usize, &str, String)> = Vec::new();
    let enabled = success
        .child("bound", NS_BIND2)
        .and_then(|b| b.child("enabled", NS_SM))
        .or_else(|| success.child("enabled", NS_SM));
    if let Some(enabled) = enabled
        && let Some(id) = sm::resumable_id(enabled)
        && let Some(wrapped) = ctx.keys.wrap(&ctx.domain, &ctx.node, id)
    {
        ctx.metrics
            .sm_ids_wrapped_total
            .with_label_values(&[ctx.node.as_str()])
            .inc();
        edits.push((enabled.span.start, "id", wrapped));
    }
    if let Some(resume) = resume {
        if let Some(resumed) = success.child("resumed", NS_SM) {
            count_resume(ctx, "inline", true);
            if let Some(previd) = &resume.client_previd {
                edits.push((resumed.span.start, "previd", previd.clone()));
            }
        } else {
            // No <resumed/>: the node said <failed/> (inside <success/>, or instead of one).
            count_resume(ctx, "inline", false);
        }
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out: Vec<u8> = raw.to_vec();
    for (at, attr, value) in edits {
        if let Some(edited) = sm::set_attr(&out, at, attr, &value) {
            out = edited;
        }
    }
    out.into()
}

#[cfg(test)]
mod tests;
