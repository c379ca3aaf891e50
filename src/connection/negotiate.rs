//! From the client's checked stream header to the end of authentication: route, open the
//! node, and relay element by element (parsing both ways) until the login is over.
//!
//! Where a connection stands is one [`Phase`]; what the latest login attempt carries is one
//! [`Attempt`]; the node and all it holds is one [`Upstream`], replaced as a whole when the
//! connection moves.

use bytes::Bytes;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::attempt::Attempt;
use super::capture::{self, Hello, SaslStart};
use super::context::At;
use super::handover::Routed;
use super::logins;
use super::refuse::{
    Failure, backend_frame_failure, backend_lost, client_frame_failure, client_xml_failure,
};
use super::trace::Trace;
use super::transport::ElementTransport;
use super::upstream::{Admit, Upstream};
use crate::backend::preamble::read_preamble;
use crate::backend::record::BackendId;
use crate::framed::FrameError;
use crate::resumption;
use crate::route::policy::{Decision, Placement};
use crate::route::resume::Checked;
use crate::xmpp::element::{Element, NsContext};
use crate::xmpp::features::{self, NS_SASL, NS_SASL2};
use crate::xmpp::header::{STREAM_NS, StreamHeader};
use crate::xmpp::scanner::FrameKind;
use crate::xmpp::sm::NS_SM;
use crate::xmpp::stream_error::Condition;

/// How many times one connection may move to another node for a SASL retry as another user.
/// A person who mistyped their name needs one or two; a password guesser wants hundreds, each
/// a new connection to some node.
const MAX_REROUTES: u8 = 3;

/// Where the negotiation stands.
enum Phase {
    /// Logging in. `in_flight`: a SASL attempt went to the node and it has not answered
    /// `<success/>` or `<failure/>` yet; a retry as another user may only move the connection
    /// once the node has failed the attempt before it (no pipelined logins across nodes).
    Authenticating { in_flight: bool },
    /// Legacy SASL succeeded and both streams restart (RFC 6120 §6.4.6); waiting for the
    /// node's new features. `restart`: the client's restarted header, once it came.
    Restarting { restart: Option<Bytes> },
    /// Authenticated with a PLAIN login kept and the node offering XEP-0198: the client's
    /// next element decides where the stream goes (a `<resume/>` may have to move).
    AwaitingFirst { restart: Option<Bytes> },
    /// Authentication is over. `first`: a client element held back for the relay (whose
    /// watch rewrites a `<resume/>`).
    Done { first: Option<Bytes> },
}

/// One connection's negotiation, after its header was checked.
struct Negotiation<'a> {
    /// The connection's context.
    at: &'a At<'a>,
    /// The client's post-TLS stream header, replayed byte-exact to every node tried.
    header: Bytes,
    /// Namespaces declared by the client's current header.
    client_ns: NsContext,
    /// The domain the client asked for.
    domain: String,
    /// The account the client named last (header `from`, or a SASL message).
    jid: Option<String>,
    /// Where the negotiation stands.
    phase: Phase,
    /// The latest SASL attempt.
    attempt: Attempt,
    /// How many times a SASL retry moved this connection to another node.
    reroutes: u8,
}

/// Everything from the checked header to the end of authentication. `Ok(None)` means the
/// node ended the stream during negotiation (its words were already relayed).
pub(crate) async fn negotiate<C: ElementTransport>(
    at: &At<'_>,
    client: &mut C,
    hello: Hello,
    trace: &mut Trace,
) -> Result<Option<Routed>, Failure> {
    let rt = at.rt;
    client.set_max_frame(rt.config.limits.max_prerouting_element_bytes);
    let from = hello.bare_from();
    trace.jid = from.clone();
    let mut n = Negotiation {
        at,
        header: hello.bytes.clone(),
        client_ns: hello.header.ns.clone(),
        domain: hello.domain.clone(),
        jid: from.clone(),
        phase: Phase::Authenticating { in_flight: false },
        attempt: Attempt::default(),
        reroutes: 0,
    };
    // Not final: with no `from`, a key that needs the user waits for the login.
    let named = rt.decide(&n.domain, from.as_deref(), at.peer.ip(), false);
    let up = match named {
        Some(decision) => {
            // The node answers the client directly: its header and features are relayed. No
            // admission yet: a login slot is taken when the client starts a login (its first
            // SASL element), not for a stream that has sent no credentials.
            let mut up = Upstream::open(at, &n.domain, &decision, Admit::AtFirstSasl).await?;
            n.adopt(&up, trace);
            up.send(&n.header).await?;
            up
        }
        None => n.route_by_login(client, &hello, trace).await?,
    };
    n.run(client, up, trace).await
}

impl Negotiation<'_> {
    /// The client named nobody in its header: show it the nodes' features as the proxy's own,
    /// capture its first login message, and route by who that names.
    async fn route_by_login<C: ElementTransport>(
        &mut self,
        client: &mut C,
        hello: &Hello,
        trace: &mut Trace,
    ) -> Result<Upstream, Failure> {
        let (shared, rt) = (self.at.shared, self.at.rt);
        let deadline = self.at.started + rt.config.limits.prerouting_timeout;
        let members = rt.members_of(&self.domain);
        // A cold cache probes the nodes (one probe per domain at a time, however many clients
        // wait for it); the client waits no longer than its pre-routing deadline.
        let probed = tokio::time::timeout_at(
            deadline,
            shared.features.get(
                &members,
                &self.domain,
                rt.config.probe.timeout,
                &shared.metrics,
            ),
        )
        .await;
        let shown = probed.ok().flatten().ok_or_else(|| {
            Failure::Refuse(
                Condition::RemoteConnectionFailed,
                "no server node is reachable".into(),
            )
        })?;
        let shown = self.at.features_for(&self.domain, shown);
        client.open(&self.domain, &shown.bytes).await?;
        let captured =
            capture::capture_login(client, &hello.header.ns, &self.domain, deadline).await?;
        self.attempt.mechanism = captured.mechanism.clone();
        if captured.jid.is_some() {
            trace.jid = captured.jid.clone();
            self.jid = captured.jid.clone();
        }
        if captured.sasl {
            logins::gate(self.at, self.jid.as_deref()).await?;
        }
        // A SASL2 login that resumes inline goes to the node holding the session.
        let (first, resume_node) = match Element::parse(&captured.first, &hello.header.ns) {
            Ok(el) => self.start_attempt(&captured.first, &el),
            Err(_) => (captured.first.clone(), None),
        };
        let decision = self
            .decide(self.jid.as_deref(), resume_node)
            .ok_or(Failure::Quiet("no routing policy for the domain"))?;
        let mut up = Upstream::open_behind(
            self.at,
            &self.domain,
            &self.header,
            &decision,
            Some(&shown.mechanisms),
            self.attempt.resumes(),
        )
        .await?;
        self.adopt(&up, trace);
        up.send(&first).await?;
        self.phase = Phase::Authenticating {
            in_flight: captured.sasl,
        };
        Ok(up)
    }

    /// The routing decision once the login named `jid` (or nobody), on `resume`'s node if a
    /// verified stream-management id names one.
    fn decide(&self, jid: Option<&str>, resume: Option<String>) -> Option<Decision> {
        let rt = self.at.rt;
        let decision = rt.decide(&self.domain, jid, self.at.peer.ip(), true)?;
        Some(match resume {
            Some(node) => decision.resuming_on(node),
            None => decision,
        })
    }

    /// The connection is on `up` now: the access log says so.
    fn adopt(&self, up: &Upstream, trace: &mut Trace) {
        trace.backend = Some(self.at.rt.backends.name(up.id).to_string());
        trace.source = Some(up.source);
    }

    /// What rewriting stream-management ids needs to know on `node`.
    fn sm_context(&self, node: &str) -> resumption::Context {
        let rt = self.at.rt;
        resumption::Context {
            keys: rt.sm_keys.clone(),
            domain: self.domain.clone(),
            node: node.to_string(),
            known_nodes: rt.known_nodes.clone(),
            metrics: self.at.shared.metrics.clone(),
        }
    }

    /// A SASL attempt (`bytes`, parsed as `el`) on its way to a node. A legacy PLAIN `<auth/>`
    /// is kept for a possible replay (see [`Attempt::replay`]). A SASL2 `<authenticate/>` that
    /// resumes inline has its id checked and remembered for the node's answer. Returns the
    /// bytes to send (the node's own id in place of the client's) and the node the id names,
    /// if it is valid.
    fn start_attempt(&mut self, bytes: &Bytes, el: &Element) -> (Bytes, Option<String>) {
        self.attempt.inline = None;
        self.attempt.replay = None;
        if el.is("auth", NS_SASL) {
            if self.at.rt.sm_keys.enabled() && el.attr("mechanism") == Some("PLAIN") {
                self.attempt.replay = Some(Zeroizing::new(bytes.to_vec()));
            }
            return (bytes.clone(), None);
        }
        if !el.is("authenticate", NS_SASL2) {
            return (bytes.clone(), None);
        }
        match resumption::inline_resume(&self.sm_context(""), bytes, el) {
            Some(inline) => {
                let out = (inline.element.clone(), inline.node.clone());
                self.attempt.inline = Some(inline);
                out
            }
            None => (bytes.clone(), None),
        }
    }

    /// Relay, parsing both ways, until authentication ends. Returns what the relay needs, or
    /// `None` if the node closed the stream first.
    async fn run<C: ElementTransport>(
        mut self,
        client: &mut C,
        mut up: Upstream,
        trace: &mut Trace,
    ) -> Result<Option<Routed>, Failure> {
        let limits = &self.at.rt.config.limits;
        let deadline = self.at.started + limits.negotiation_timeout;
        client.set_max_frame(limits.max_negotiation_element_bytes);
        loop {
            while let Some((kind, bytes)) =
                up.stream.buffered_frame().map_err(backend_frame_failure)?
            {
                self.on_backend_frame(client, &mut up, kind, bytes).await?;
                if matches!(self.phase, Phase::Done { .. }) {
                    return Ok(Some(self.finish(up)));
                }
            }
            while let Some((kind, bytes)) = client.buffered_frame().map_err(client_frame_failure)? {
                if let Some(moved) = self.on_client_frame(&mut up, kind, bytes, trace).await? {
                    up = moved;
                }
                if matches!(self.phase, Phase::Done { .. }) {
                    // What follows stays in the client's buffer, behind it, for the relay.
                    return Ok(Some(self.finish(up)));
                }
            }
            tokio::select! {
                r = client.fill(deadline) => match r {
                    Ok(()) => {}
                    // The client vanished: drop the node's socket without a stream close.
                    Err(FrameError::Eof) | Err(FrameError::Io(_)) => return Err(Failure::Quiet("client gone during authentication")),
                    Err(e) => return Err(client_frame_failure(e)),
                },
                r = up.stream.fill(deadline) => match r {
                    Ok(()) => {}
                    Err(FrameError::Eof) => return Ok(None),
                    Err(FrameError::Timeout) => return Err(client_frame_failure(FrameError::Timeout)),
                    Err(_) => return Err(backend_lost()),
                },
            }
        }
    }

    /// Authentication is over: count it, hand the streams over to the relay (the admission
    /// slot goes to the next login).
    fn finish(self, up: Upstream) -> Routed {
        self.at
            .shared
            .metrics
            .negotiation_seconds
            .observe(self.at.started.elapsed().as_secs_f64());
        let first = match self.phase {
            Phase::Done { first } => first,
            _ => None,
        };
        let source = up.source;
        let (backend, backend_ns, guard, id) = up.into_relay();
        Routed {
            backend,
            id,
            guard,
            source,
            domain: self.domain,
            client_ns: self.client_ns,
            backend_ns,
            client_first: first,
        }
    }

    /// One frame from the node, relayed to the client (features filtered, ids rewritten).
    async fn on_backend_frame<C: ElementTransport>(
        &mut self,
        client: &mut C,
        up: &mut Upstream,
        kind: FrameKind,
        bytes: Bytes,
    ) -> Result<(), Failure> {
        let element = match kind {
            FrameKind::Header => {
                let header = StreamHeader::parse(&bytes).map_err(|_| backend_lost())?;
                up.ns = header.ns;
                client.send_header(&bytes).await?;
                return Ok(());
            }
            FrameKind::Whitespace | FrameKind::StreamEnd => {
                client.send(&bytes).await?;
                return Ok(());
            }
            FrameKind::Element => Element::parse(&bytes, &up.ns).map_err(|_| backend_lost())?,
        };
        let mut out = bytes.clone();
        if element.is("features", STREAM_NS) {
            out = features::filter_bound(&bytes, &up.ns, &self.at.bound(&self.domain))
                .map_err(|_| backend_lost())?
                .bytes
                .into();
            // With a PLAIN login kept for replay, the client's first element decides (a resume
            // may have to move); otherwise authentication is over.
            if let Phase::Restarting { restart } | Phase::AwaitingFirst { restart } =
                &mut self.phase
            {
                let restart = restart.take();
                self.phase =
                    if self.attempt.replay.is_some() && element.child("sm", NS_SM).is_some() {
                        Phase::AwaitingFirst { restart }
                    } else {
                        Phase::Done { first: None }
                    };
            }
        } else if element.is("success", NS_SASL) {
            logins::count(self.at, &self.attempt.mechanism, up.id, true);
            logins::outcome(self.at, self.jid.as_deref(), true);
            // Both streams restart after legacy SASL success (RFC 6120 §6.4.6).
            self.phase = Phase::Restarting { restart: None };
            client.restart();
            up.stream.restart();
        } else if element.is("success", NS_SASL2) {
            logins::count(self.at, &self.attempt.mechanism, up.id, true);
            logins::outcome(self.at, self.jid.as_deref(), true);
            // Bind 2's session id goes out wrapped; an inline resume is answered here.
            let node = self.at.rt.backends.name(up.id);
            out = resumption::rewrite_sasl2_success(
                &self.sm_context(node),
                &bytes,
                &element,
                self.attempt.inline.as_ref(),
            );
            self.phase = Phase::Done { first: None };
        } else if element.local_name() == "failure"
            && (element.ns == NS_SASL || element.ns == NS_SASL2)
        {
            if let Phase::Authenticating { in_flight } = &mut self.phase {
                *in_flight = false;
            }
            logins::outcome(self.at, self.jid.as_deref(), false);
            logins::count(self.at, &self.attempt.mechanism, up.id, false);
        }
        client.send(&out).await?;
        Ok(())
    }

    /// One frame from the client, relayed to the node. A SASL attempt naming a user who
    /// belongs on another node moves the connection there; returns the new node if so.
    async fn on_client_frame(
        &mut self,
        up: &mut Upstream,
        kind: FrameKind,
        mut bytes: Bytes,
        trace: &mut Trace,
    ) -> Result<Option<Upstream>, Failure> {
        match (&mut self.phase, kind) {
            // The client closed its stream where a restart was due: the node's stream has
            // restarted too and has nothing open to close; the proxy answers the close.
            (
                Phase::Restarting { restart: None } | Phase::AwaitingFirst { restart: None },
                FrameKind::StreamEnd,
            ) => return Err(Failure::ClientClosedStream),
            (Phase::AwaitingFirst { restart }, FrameKind::Element) => {
                let restart = restart.take();
                return Ok(self.first_after_auth(up, bytes, restart, trace).await);
            }
            (
                Phase::Restarting { restart } | Phase::AwaitingFirst { restart },
                FrameKind::Header,
            ) => {
                let header = capture::check_restart(&self.at.rt.config, &bytes, &self.domain)?;
                self.client_ns = header.ns;
                *restart = Some(bytes.clone());
            }
            (Phase::Authenticating { .. }, FrameKind::Element) => {
                let element =
                    Element::parse(&bytes, &self.client_ns).map_err(client_xml_failure)?;
                if let Some(start) = SaslStart::read(&element, &self.domain) {
                    // A SASL2 attempt that resumes inline is routed to the session's node.
                    let (rewritten, resume_node) = self.start_attempt(&bytes, &element);
                    bytes = rewritten;
                    if let Some(moved) = self.login(up, start, resume_node, &bytes, trace).await? {
                        return Ok(Some(moved));
                    }
                }
            }
            _ => {}
        }
        up.send(&bytes).await?;
        Ok(None)
    }

    /// A login attempt (`bytes`, read as `start`) while on `up`. Only a different placement
    /// moves the client: the same user (or a key that does not depend on the user) stays where
    /// it is, whatever the load is now, and so does a resume whose session is on this very
    /// node. Returns the new node, with the attempt sent to it, if the connection moved.
    async fn login(
        &mut self,
        up: &mut Upstream,
        start: SaslStart,
        resume_node: Option<String>,
        bytes: &[u8],
        trace: &mut Trace,
    ) -> Result<Option<Upstream>, Failure> {
        let rt = self.at.rt;
        self.attempt.mechanism = start.mechanism.clone();
        let key = start.jid().map(str::to_string);
        if key.is_some() {
            // A retry as another user: the access log names who tried last.
            trace.jid = key.clone();
            self.jid = key.clone();
        }
        logins::gate(self.at, self.jid.as_deref()).await?;
        let here = rt.backends.name(up.id);
        let stays = resume_node.as_deref() == Some(here);
        let decision = match resume_node {
            Some(_) => self.decide(key.as_deref(), resume_node),
            None if key.is_some() => self.decide(key.as_deref(), None),
            None => None,
        };
        let in_flight = matches!(self.phase, Phase::Authenticating { in_flight: true });
        self.phase = Phase::Authenticating { in_flight: true };
        match decision {
            Some(decision) if up.placement != decision.placement && !stays => {
                if in_flight {
                    return Err(Failure::Refuse(
                        Condition::PolicyViolation,
                        "a new login before the server answered the last one".into(),
                    ));
                }
                if self.reroutes >= MAX_REROUTES {
                    return Err(Failure::Refuse(
                        Condition::PolicyViolation,
                        "too many logins as other users on one connection".into(),
                    ));
                }
                self.reroutes += 1;
                up.release();
                let mut moved = Upstream::open_behind(
                    self.at,
                    &self.domain,
                    &self.header,
                    &decision,
                    None,
                    self.attempt.resumes(),
                )
                .await?;
                self.adopt(&moved, trace);
                moved.send(bytes).await?;
                tracing::debug!(from = %here, to = %rt.backends.name(moved.id), "SASL retry re-routed");
                Ok(Some(moved))
            }
            _ => {
                up.admit_login(self.at, self.attempt.resumes()).await?;
                Ok(None)
            }
        }
    }

    /// The client's first element after a legacy login with a PLAIN `<auth/>` kept. A
    /// `<resume/>` whose verified id names another node (the ring changed since the session
    /// began, or the node drains) moves the stream there: the same login is replayed on that
    /// node, then the stream restarted, and the `<resume/>` goes to it through the relay. If
    /// anything fails on the way, the stream stays where it is (the node will answer
    /// `<failed/>`).
    async fn first_after_auth(
        &mut self,
        up: &Upstream,
        bytes: Bytes,
        restart: Option<Bytes>,
        trace: &mut Trace,
    ) -> Option<Upstream> {
        self.phase = Phase::Done {
            first: Some(bytes.clone()),
        };
        let replay = self.attempt.replay.take()?;
        let rt = self.at.rt;
        let here = rt.backends.name(up.id);
        let el = Element::parse(&bytes, &self.client_ns).ok()?;
        let previd = el.attr("previd").filter(|_| el.is("resume", NS_SM))?;
        let node = match rt.sm_keys.check(&self.domain, previd) {
            Checked::Valid { node, .. } if node != here => node,
            _ => return None,
        };
        let target = rt.backends.find(&node)?;
        let base = self.decide(self.jid.as_deref(), Some(node.clone()))?;
        // Only the session's node will do: elsewhere the resume fails anyway.
        let decision = Decision {
            placement: Placement::Pinned(node.clone()),
            ..base
        };
        match self.replay_on(&decision, target, &replay, restart?).await {
            Some(moved) => {
                tracing::debug!(from = %here, to = %node, "legacy resume moved to the session's node");
                self.adopt(&moved, trace);
                Some(moved)
            }
            None => {
                tracing::info!(from = %here, to = %node, "legacy resume could not move to the session's node; left where it is");
                None
            }
        }
    }

    /// Open `target` for `decision`, replay the login `auth` and the client's `restart`
    /// header, and swallow the node's answers: a stream on `target` in the state the client's
    /// is in.
    async fn replay_on(
        &self,
        decision: &Decision,
        target: BackendId,
        auth: &[u8],
        restart: Bytes,
    ) -> Option<Upstream> {
        // A `<resume/>` follows this login: it queues as a resumption.
        let mut up =
            Upstream::open_behind(self.at, &self.domain, &self.header, decision, None, true)
                .await
                .ok()?;
        if up.id != target {
            return None;
        }
        let deadline: Instant = self.at.started + self.at.rt.config.limits.negotiation_timeout;
        up.send(auth).await.ok()?;
        loop {
            let (kind, frame) = up.stream.next_non_ws(deadline).await.ok()?;
            if kind != FrameKind::Element {
                return None;
            }
            let el = Element::parse(&frame, &up.ns).ok()?;
            if el.is("success", NS_SASL) {
                break;
            }
            if !el.is("challenge", NS_SASL) {
                return None;
            }
        }
        up.stream.restart();
        up.send(&restart).await.ok()?;
        let (header, _features) = read_preamble(&mut up.stream, deadline, &[]).await.ok()?;
        up.ns = header.ns;
        Some(up)
    }
}
