//! A raw XMPP client for SASL2 (XEP-0388) with inline Bind 2 (XEP-0386),
//! stream management (XEP-0198) and FAST tokens (XEP-0484), plus the legacy
//! XEP-0198 flow (SASL PLAIN, bind, `<enable/>`, `<resume/>`), over a [`Raw`]
//! connection (plain TCP or TLS).
//!
//! Incoming bytes are split into top-level elements and parsed with quick-xml
//! into a small [`Element`] tree that keeps each element's exact bytes, so a
//! test can check both what an id is and where it sits on the wire.
//!
//! ```ignore
//! const JULIET: &str = "juliet@example.test";
//! let ua = new_user_agent_id();
//! let mut c = Client::open(Raw::tcp(addr).await, DOMAIN, Some(JULIET)).await;
//! assert!(c.features.fast_mechanisms.contains(&HT_SHA_256_NONE.to_string()));
//! let auth = Authenticate::plain("juliet", "pw")
//!     .user_agent(&ua)
//!     .bind("phone")
//!     .enable_sm()
//!     .request_token(HT_SHA_256_NONE);
//! let ok = c.authenticate(&auth).await.expect("SASL2 success");
//! let sm_id = ok.enabled.unwrap().id.unwrap();
//! let token = ok.token.unwrap().token;
//! let h = c.h_in;
//! c.vanish();
//!
//! let mut c = Client::open(Raw::tcp(addr).await, DOMAIN, Some(JULIET)).await;
//! let auth = Authenticate::fast("juliet", &token).user_agent(&ua).resume(&sm_id, h);
//! let ok = c.authenticate(&auth).await.expect("FAST success");
//! assert_eq!(ok.resumed.unwrap().previd, sm_id);
//! let message = c.expect_message().await;
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine;
use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::{NsReader, Reader};
use tokio::time::Instant;

use super::raw::{Raw, header, plain_auth};

pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
pub const NS_CLIENT: &str = "jabber:client";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_FAST: &str = "urn:xmpp:fast:0";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// The FAST mechanism without channel binding (the only one offered on a
/// plain node link).
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";

/// How long one read of an expected element may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

// ---- XML -----------------------------------------------------------------

/// One parsed element with its exact bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name (no prefix).
    pub name: String,
    /// Resolved namespace.
    pub ns: String,
    /// Attributes as written (names with prefixes, `xmlns` declarations included), values
    /// unescaped.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Character data directly inside, unescaped.
    pub text: String,
    /// The element's bytes as received (only on top-level elements; empty on children).
    pub xml: String,
}

impl Element {
    /// Parse one top-level element as it appears in a `jabber:client` stream
    /// (the `stream` prefix is bound). Panics if it is not well-formed.
    pub fn parse(xml: &str) -> Element {
        let doc = format!(
            "<stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'>{xml}</stream:stream>"
        );
        let mut reader = NsReader::from_str(&doc);
        let mut stack: Vec<Element> = Vec::new();
        loop {
            let (ns, event) = reader
                .read_resolved_event()
                .unwrap_or_else(|e| panic!("not well-formed ({e}): {xml}"));
            let ns = match ns {
                ResolveResult::Bound(ns) => ns.into_inner().to_string(),
                _ => String::new(),
            };
            match event {
                Event::Start(e) => stack.push(start(&e, ns)),
                Event::Empty(e) => {
                    let el = start(&e, ns);
                    stack
                        .last_mut()
                        .expect("inside the wrapper")
                        .children
                        .push(el);
                }
                Event::End(_) => {
                    let el = stack.pop().expect("balanced");
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => {
                            let mut el = el.children.into_iter().next().expect("one element");
                            el.xml = xml.to_string();
                            return el;
                        }
                    }
                }
                Event::Text(t) => {
                    if let Some(el) = stack.last_mut() {
                        el.text.push_str(&t.xml10_content());
                    }
                }
                Event::CData(t) => {
                    if let Some(el) = stack.last_mut() {
                        el.text.push_str(&t.xml10_content());
                    }
                }
                Event::GeneralRef(r) => {
                    let c = match r.resolve_char_ref().expect("character reference") {
                        Some(c) => c,
                        None => match &*r {
                            "lt" => '<',
                            "gt" => '>',
                            "amp" => '&',
                            "apos" => '\'',
                            "quot" => '"',
                            other => panic!("unknown entity {other} in {xml}"),
                        },
                    };
                    if let Some(el) = stack.last_mut() {
                        el.text.push(c);
                    }
                }
                Event::Eof => panic!("incomplete element: {xml}"),
                _ => {}
            }
        }
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// First child with this name and namespace.
    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(name, ns))
    }

    pub fn children_named<'a>(
        &'a self,
        name: &'a str,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.is(name, ns))
    }

    pub fn child_text(&self, name: &str, ns: &str) -> Option<&str> {
        self.child(name, ns).map(|c| c.text.as_str())
    }

    /// A stanza in the XEP-0198 sense: `<message/>`, `<presence/>` or `<iq/>`.
    pub fn is_stanza(&self) -> bool {
        self.ns == NS_CLIENT && matches!(self.name.as_str(), "message" | "presence" | "iq")
    }
}

fn start(e: &BytesStart<'_>, ns: String) -> Element {
    let attrs = e
        .attributes()
        .map(|a| {
            let a = a.expect("attribute");
            let key = a.key.as_ref().to_string();
            let value = a
                .normalized_value(XmlVersion::Implicit1_0)
                .expect("attribute value")
                .into_owned();
            (key, value)
        })
        .collect();
    Element {
        name: e.local_name().as_ref().to_string(),
        ns,
        attrs,
        ..Element::default()
    }
}

/// What comes next in a received stream.
#[derive(Debug)]
enum Frame {
    /// A `<stream:stream>` header (XML declaration included when sent).
    Header(String),
    Element(String),
    /// `</stream:stream>`
    Close,
}

/// The next complete frame at the start of `buf` and the bytes it takes, or
/// None if more bytes are needed.
fn next_frame(buf: &str) -> Option<(Frame, usize)> {
    let mut reader = Reader::from_str(buf);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    let mut depth = 0usize;
    let mut from = 0;
    loop {
        let before = reader.buffer_position() as usize;
        let event = reader.read_event().ok()?;
        let after = reader.buffer_position() as usize;
        match event {
            Event::Start(e) if depth == 0 && e.name().as_ref() == "stream:stream" => {
                return Some((Frame::Header(buf[..after].trim_start().to_string()), after));
            }
            Event::Start(_) => {
                if depth == 0 {
                    from = before;
                }
                depth += 1;
            }
            Event::Empty(_) if depth == 0 => {
                return Some((Frame::Element(buf[before..after].to_string()), after));
            }
            Event::End(_) if depth == 0 => return Some((Frame::Close, after)),
            Event::End(_) => {
                depth -= 1;
                if depth == 0 {
                    return Some((Frame::Element(buf[from..after].to_string()), after));
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// Text escaped for XML character data and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---- what the server says ------------------------------------------------

/// Stream features, with the SASL2 parts picked out.
#[derive(Clone, Debug, Default)]
pub struct Features {
    pub element: Element,
    /// `<authentication xmlns='urn:xmpp:sasl:2'>` is offered.
    pub sasl2: bool,
    /// Its `<mechanism/>`s.
    pub sasl2_mechanisms: Vec<String>,
    /// `<inline><bind xmlns='urn:xmpp:bind:0'>` is offered...
    pub bind2: bool,
    /// ...with these `<inline><feature var/>`s.
    pub bind2_features: Vec<String>,
    /// `<inline><sm xmlns='urn:xmpp:sm:3'/>` (inline resume) is offered.
    pub sm_inline: bool,
    /// `<inline><fast xmlns='urn:xmpp:fast:0'>` mechanisms (empty: no FAST).
    pub fast_mechanisms: Vec<String>,
    /// Legacy `<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>`.
    pub sasl_mechanisms: Vec<String>,
    /// Legacy top-level `<sm xmlns='urn:xmpp:sm:3'/>`.
    pub sm: bool,
    pub starttls: bool,
}

impl Features {
    pub fn from_element(element: &Element) -> Features {
        let mut f = Features {
            element: element.clone(),
            sm: element.child("sm", NS_SM).is_some(),
            starttls: element
                .child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
                .is_some(),
            ..Features::default()
        };
        if let Some(m) = element.child("mechanisms", NS_SASL) {
            f.sasl_mechanisms = texts(m, "mechanism", NS_SASL);
        }
        if let Some(auth) = element.child("authentication", NS_SASL2) {
            f.sasl2 = true;
            f.sasl2_mechanisms = texts(auth, "mechanism", NS_SASL2);
            if let Some(inline) = auth.child("inline", NS_SASL2) {
                if let Some(bind) = inline.child("bind", NS_BIND2) {
                    f.bind2 = true;
                    f.bind2_features = bind
                        .child("inline", NS_BIND2)
                        .map(|i| {
                            i.children_named("feature", NS_BIND2)
                                .filter_map(|x| x.attr("var").map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                }
                f.sm_inline = inline.child("sm", NS_SM).is_some();
                if let Some(fast) = inline.child("fast", NS_FAST) {
                    f.fast_mechanisms = texts(fast, "mechanism", NS_FAST);
                }
            }
        }
        f
    }
}

fn texts(parent: &Element, name: &str, ns: &str) -> Vec<String> {
    parent
        .children_named(name, ns)
        .map(|c| c.text.clone())
        .collect()
}

/// `<enabled xmlns='urn:xmpp:sm:3'/>` (inline in `<bound/>`, or legacy).
#[derive(Clone, Debug)]
pub struct SmEnabled {
    /// The resumption id (SM id): what a later `<resume previd/>` names.
    pub id: Option<String>,
    /// `resume='true'` or `'1'`.
    pub resume: bool,
    /// `max`: how long (seconds) the server keeps the session for resumption.
    pub max: Option<u32>,
    pub element: Element,
}

/// `<resumed xmlns='urn:xmpp:sm:3' previd h/>` (inline in `<success/>`, or legacy).
#[derive(Clone, Debug)]
pub struct Resumed {
    pub previd: String,
    /// How many of our stanzas the server handled.
    pub h: u32,
    pub element: Element,
}

/// `<failed xmlns='urn:xmpp:sm:3'/>`, for a failed enable or resume.
#[derive(Clone, Debug)]
pub struct SmFailed {
    pub h: Option<u32>,
    /// The stanza error condition, as a direct child or inside `<error/>`.
    pub condition: Option<String>,
    pub element: Element,
}

/// `<token xmlns='urn:xmpp:fast:0' token expiry/>`.
#[derive(Clone, Debug)]
pub struct FastToken {
    pub token: String,
    pub expiry: String,
}

/// A SASL2 `<success/>`, taken apart.
#[derive(Clone, Debug)]
pub struct Success {
    pub element: Element,
    /// `<authorization-identifier/>`: the full JID once bound or resumed.
    pub jid: Option<String>,
    /// `<additional-data/>`, decoded (FAST: the server's HMAC proof).
    pub additional_data: Option<Vec<u8>>,
    /// `<bound xmlns='urn:xmpp:bind:0'/>` is present.
    pub bound: bool,
    /// `<bound><enabled xmlns='urn:xmpp:sm:3'/></bound>`.
    pub enabled: Option<SmEnabled>,
    /// `<resumed xmlns='urn:xmpp:sm:3'/>`, a direct child of `<success/>`.
    pub resumed: Option<Resumed>,
    /// `<failed xmlns='urn:xmpp:sm:3'/>`: a failed resume (direct child) or a
    /// failed enable (in `<bound/>`).
    pub sm_failed: Option<SmFailed>,
    /// `<token xmlns='urn:xmpp:fast:0'/>`.
    pub token: Option<FastToken>,
}

impl Success {
    pub fn from_element(element: &Element) -> Success {
        let bound = element.child("bound", NS_BIND2);
        Success {
            element: element.clone(),
            jid: element
                .child_text("authorization-identifier", NS_SASL2)
                .map(String::from),
            additional_data: element.child_text("additional-data", NS_SASL2).map(|t| {
                base64::engine::general_purpose::STANDARD
                    .decode(t.trim())
                    .expect("additional-data is base64")
            }),
            bound: bound.is_some(),
            enabled: bound
                .and_then(|b| b.child("enabled", NS_SM))
                .map(sm_enabled),
            resumed: element.child("resumed", NS_SM).map(resumed),
            sm_failed: element
                .child("failed", NS_SM)
                .or_else(|| bound.and_then(|b| b.child("failed", NS_SM)))
                .map(sm_failed),
            token: element.child("token", NS_FAST).map(|t| FastToken {
                token: t.attr("token").expect("token attribute").to_string(),
                expiry: t.attr("expiry").unwrap_or_default().to_string(),
            }),
        }
    }

    /// The bytes of the `<success/>` as received.
    pub fn xml(&self) -> &str {
        &self.element.xml
    }
}

/// A SASL2 `<failure/>`.
#[derive(Clone, Debug)]
pub struct Failure {
    pub element: Element,
    /// The SASL condition (e.g. `not-authorized`, `malformed-request`).
    pub condition: String,
    pub text: Option<String>,
}

fn sm_enabled(e: &Element) -> SmEnabled {
    SmEnabled {
        id: e.attr("id").map(String::from),
        resume: matches!(e.attr("resume"), Some("true" | "1")),
        max: e.attr("max").and_then(|m| m.parse().ok()),
        element: e.clone(),
    }
}

fn resumed(e: &Element) -> Resumed {
    Resumed {
        previd: e.attr("previd").unwrap_or_default().to_string(),
        h: e.attr("h")
            .and_then(|h| h.parse().ok())
            .expect("<resumed h>"),
        element: e.clone(),
    }
}

fn sm_failed(e: &Element) -> SmFailed {
    let condition = e
        .children
        .iter()
        .chain(
            e.child("error", NS_SM)
                .into_iter()
                .flat_map(|x| &x.children),
        )
        .find(|c| c.ns == NS_STANZAS && c.name != "text")
        .map(|c| c.name.clone());
    SmFailed {
        h: e.attr("h").and_then(|h| h.parse().ok()),
        condition,
        element: e.clone(),
    }
}

// ---- what the client says ------------------------------------------------

/// XEP-0388 `<user-agent/>`: its `id` keys FAST tokens and, with Bind 2, the
/// bound resource.
#[derive(Clone, Debug)]
pub struct UserAgent {
    pub id: String,
    pub software: Option<String>,
    pub device: Option<String>,
}

/// XEP-0386 `<bind xmlns='urn:xmpp:bind:0'/>` inside `<authenticate/>`.
#[derive(Clone, Debug, Default)]
pub struct Bind {
    pub tag: Option<String>,
    /// Add `<enable xmlns='urn:xmpp:sm:3' resume='true'/>`.
    pub enable_sm: bool,
}

/// A SASL2 `<authenticate/>`, built up with the methods below and sent by
/// [`Client::authenticate`].
#[derive(Clone, Debug)]
pub struct Authenticate {
    pub mechanism: String,
    pub initial_response: Vec<u8>,
    pub user_agent: Option<UserAgent>,
    pub bind: Option<Bind>,
    /// `<request-token xmlns='urn:xmpp:fast:0' mechanism/>`.
    pub request_token: Option<String>,
    /// `<fast xmlns='urn:xmpp:fast:0'/>`: this authentication uses a FAST token.
    pub fast: bool,
    /// `<resume xmlns='urn:xmpp:sm:3' previd h/>`.
    pub resume: Option<(String, u32)>,
    /// Raw XML appended inside `<authenticate/>`.
    pub extra: String,
}

impl Authenticate {
    /// PLAIN for `user` (a localpart) with `password`.
    pub fn plain(user: &str, password: &str) -> Authenticate {
        Authenticate {
            mechanism: "PLAIN".into(),
            initial_response: format!("\0{user}\0{password}").into_bytes(),
            user_agent: None,
            bind: None,
            request_token: None,
            fast: false,
            resume: None,
            extra: String::new(),
        }
    }

    /// Any mechanism with this initial response (SCRAM: the client-first message).
    pub fn mechanism(mechanism: &str, initial_response: &[u8]) -> Authenticate {
        Authenticate {
            mechanism: mechanism.into(),
            initial_response: initial_response.to_vec(),
            ..Authenticate::plain("", "")
        }
    }

    /// FAST with `HT-SHA-256-NONE` for `user` (a localpart): the initial
    /// response is `user NUL HMAC-SHA-256(key = token, "Initiator")`, and the
    /// `<fast/>` marker is added. Needs the same [`user_agent`](Self::user_agent)
    /// id the token was issued to.
    pub fn fast(user: &str, token: &str) -> Authenticate {
        Authenticate {
            mechanism: HT_SHA_256_NONE.into(),
            initial_response: ht_sha_256_none(user, token),
            fast: true,
            ..Authenticate::plain(user, "")
        }
    }

    /// `<user-agent id>` with a fixed software and device name.
    pub fn user_agent(mut self, id: &str) -> Self {
        self.user_agent = Some(UserAgent {
            id: id.into(),
            software: Some("xmpp-lb tests".into()),
            device: Some("test".into()),
        });
        self
    }

    /// Inline Bind 2 with this `<tag/>`.
    pub fn bind(mut self, tag: &str) -> Self {
        self.bind.get_or_insert_with(Bind::default).tag = Some(tag.into());
        self
    }

    /// Inline `<enable resume='true'/>` (inside the Bind 2 request, which is
    /// added without a tag if missing).
    pub fn enable_sm(mut self) -> Self {
        self.bind.get_or_insert_with(Bind::default).enable_sm = true;
        self
    }

    /// Ask for a FAST token for `mechanism`.
    pub fn request_token(mut self, mechanism: &str) -> Self {
        self.request_token = Some(mechanism.into());
        self
    }

    /// Inline `<resume previd h/>`.
    pub fn resume(mut self, previd: &str, h: u32) -> Self {
        self.resume = Some((previd.into(), h));
        self
    }

    pub fn to_xml(&self) -> String {
        let mut x = format!(
            "<authenticate xmlns='{NS_SASL2}' mechanism='{}'><initial-response>{}</initial-response>",
            escape(&self.mechanism),
            b64(&self.initial_response)
        );
        if let Some(ua) = &self.user_agent {
            x += &format!("<user-agent id='{}'>", escape(&ua.id));
            if let Some(s) = &ua.software {
                x += &format!("<software>{}</software>", escape(s));
            }
            if let Some(d) = &ua.device {
                x += &format!("<device>{}</device>", escape(d));
            }
            x += "</user-agent>";
        }
        if let Some(b) = &self.bind {
            x += &format!("<bind xmlns='{NS_BIND2}'>");
            if let Some(t) = &b.tag {
                x += &format!("<tag>{}</tag>", escape(t));
            }
            if b.enable_sm {
                x += &format!("<enable xmlns='{NS_SM}' resume='true'/>");
            }
            x += "</bind>";
        }
        if let Some((previd, h)) = &self.resume {
            x += &format!(
                "<resume xmlns='{NS_SM}' previd='{}' h='{h}'/>",
                escape(previd)
            );
        }
        if let Some(m) = &self.request_token {
            x += &format!(
                "<request-token xmlns='{NS_FAST}' mechanism='{}'/>",
                escape(m)
            );
        }
        if self.fast {
            x += &format!("<fast xmlns='{NS_FAST}'/>");
        }
        x += &self.extra;
        x += "</authenticate>";
        x
    }
}

fn hmac_sha_256(key: &str, data: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::sign(&key, data).as_ref().to_vec()
}

/// The `HT-SHA-256-NONE` initial response: `user NUL HMAC-SHA-256(token, "Initiator")`
/// (no channel-binding data). `token` is the `token` attribute exactly as received.
pub fn ht_sha_256_none(user: &str, token: &str) -> Vec<u8> {
    let mut v = format!("{user}\0").into_bytes();
    v.extend(hmac_sha_256(token, b"Initiator"));
    v
}

/// What the server proves it knows the token with (its `<additional-data/>`):
/// HMAC-SHA-256(token, "Responder").
pub fn ht_sha_256_none_server(token: &str) -> Vec<u8> {
    hmac_sha_256(token, b"Responder")
}

/// A random UUID (version 4 layout), for `<user-agent id/>`.
pub fn new_user_agent_id() -> String {
    let mut b = rand::random::<[u8; 16]>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..]
    )
}

// ---- the client ----------------------------------------------------------

/// What [`Client::next_within`] found.
#[derive(Debug)]
pub enum Read {
    /// The next element.
    Element(Element),
    /// Nothing complete before the deadline.
    TimedOut,
    /// The connection or the stream ended (`stream_closed` tells the stream's end).
    Closed,
}

/// An XMPP client connection: framing, SASL2 / legacy login, stream
/// management counters.
pub struct Client {
    pub raw: Raw,
    pub domain: String,
    /// The last stream header received.
    pub stream_header: String,
    /// The last `<stream:features/>` received.
    pub features: Features,
    /// The bound full JID, once known.
    pub jid: Option<String>,
    /// Stream management is on (enabled or resumed): incoming stanzas are
    /// counted in `h_in`, outgoing ones in `h_out`.
    pub sm: bool,
    /// Stanzas received while `sm` is on (the h this client acks and resumes with).
    pub h_in: u32,
    /// Stanzas sent with [`send_stanza`](Self::send_stanza) while `sm` is on
    /// (continues from the server's h after a resume).
    pub h_out: u32,
    /// The h of the server's last `<a/>`.
    pub server_h: Option<u32>,
    /// Answer the server's `<r/>` with `<a h/>` as soon as it is read (the `<r/>`
    /// is then not handed out). On by default.
    pub auto_ack: bool,
    /// `<r/>`s received.
    pub acks_requested: u32,
    /// The server sent `</stream:stream>`.
    pub stream_closed: bool,
    /// Elements read but not handed out yet, in order.
    pending: VecDeque<Element>,
}

impl Client {
    /// Send a stream header (`from` as given: FAST needs the user's bare JID
    /// there) and read the server's header and features.
    pub async fn open(raw: Raw, domain: &str, from: Option<&str>) -> Client {
        let mut c = Client {
            raw,
            domain: domain.into(),
            stream_header: String::new(),
            features: Features::default(),
            jid: None,
            sm: false,
            h_in: 0,
            h_out: 0,
            server_h: None,
            auto_ack: true,
            acks_requested: 0,
            stream_closed: false,
            pending: VecDeque::new(),
        };
        c.restart(from).await;
        c
    }

    /// A new stream header on this connection (after legacy SASL success),
    /// then the server's header and features.
    pub async fn restart(&mut self, from: Option<&str>) {
        self.raw.clear();
        self.pending.clear();
        self.stream_header.clear();
        let h = header(&self.domain, from);
        self.raw.send(&h).await;
        self.expect("stream:features", |e| e.is("features", NS_STREAM))
            .await;
        assert!(
            !self.stream_header.is_empty(),
            "no stream header before the features"
        );
    }

    /// Legacy login: stream header, SASL PLAIN, restart, and resource binding
    /// unless `resource` is None (as before a legacy `<resume/>`).
    pub async fn legacy_login(
        raw: Raw,
        domain: &str,
        user: &str,
        password: &str,
        resource: Option<&str>,
    ) -> Client {
        let mut c = Client::open(raw, domain, None).await;
        c.send(&plain_auth(user, password)).await;
        let e = c
            .expect("SASL success or failure", |e| {
                e.ns == NS_SASL && (e.name == "success" || e.name == "failure")
            })
            .await;
        assert_eq!(e.name, "success", "login of {user} failed: {}", e.xml);
        c.restart(None).await;
        c.raw.mark_relay_start();
        if let Some(resource) = resource {
            c.send(&format!(
                "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
                escape(resource)
            ))
            .await;
            let iq = c
                .expect("bind result", |e| {
                    e.is("iq", NS_CLIENT) && e.attr("id") == Some("bind1")
                })
                .await;
            let jid = iq
                .child("bind", NS_BIND)
                .and_then(|b| b.child_text("jid", NS_BIND))
                .unwrap_or_else(|| panic!("bind failed: {}", iq.xml));
            c.jid = Some(jid.to_string());
        }
        c
    }

    /// Send a SASL2 `<authenticate/>` and read the `<success/>` or `<failure/>`.
    /// On success, stream management state follows what the server said
    /// (enabled: counters from 0; resumed: `h_in` from the resume request,
    /// `h_out` from the server's h). Prosody then sends (with a resume: the
    /// unacked stanzas and an `<r/>` first) new `<stream:features/>`; they are
    /// left to be read.
    pub async fn authenticate(&mut self, auth: &Authenticate) -> Result<Success, Failure> {
        self.authenticate_with(auth, |challenge| {
            panic!("a one-step mechanism got a challenge: {challenge:?}")
        })
        .await
    }

    /// [`authenticate`](Self::authenticate) for a mechanism with challenges (SCRAM): each
    /// `<challenge/>`, decoded, is answered with `<response/>` of what `respond` returns.
    pub async fn authenticate_with(
        &mut self,
        auth: &Authenticate,
        mut respond: impl FnMut(&[u8]) -> Vec<u8>,
    ) -> Result<Success, Failure> {
        self.send(&auth.to_xml()).await;
        let e = loop {
            let e = self
                .expect("SASL2 challenge, success or failure", |e| {
                    e.ns == NS_SASL2
                        && ["challenge", "success", "failure"].contains(&e.name.as_str())
                })
                .await;
            if e.name != "challenge" {
                break e;
            }
            let challenge = base64::engine::general_purpose::STANDARD
                .decode(e.text.trim())
                .expect("a base64 challenge");
            let response = b64(&respond(&challenge));
            self.send(&format!(
                "<response xmlns='{NS_SASL2}'>{response}</response>"
            ))
            .await;
        };
        if e.name == "failure" {
            let condition = e
                .children
                .iter()
                .find(|c| c.name != "text")
                .map(|c| c.name.clone())
                .unwrap_or_default();
            return Err(Failure {
                condition,
                text: e.child_text("text", NS_SASL2).map(String::from),
                element: e,
            });
        }
        let s = Success::from_element(&e);
        if let Some(jid) = &s.jid {
            self.jid = Some(jid.clone());
        }
        if let Some(r) = &s.resumed {
            self.sm = true;
            self.h_in = auth.resume.as_ref().map(|(_, h)| *h).unwrap_or(0);
            self.h_out = r.h;
        } else if s.enabled.is_some() {
            self.start_sm();
        }
        Ok(s)
    }

    /// Legacy `<enable resume='true'/>` (after bind).
    pub async fn enable_sm(&mut self) -> Result<SmEnabled, SmFailed> {
        self.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
            .await;
        let e = self
            .expect("<enabled/> or <failed/>", |e| {
                e.ns == NS_SM && (e.name == "enabled" || e.name == "failed")
            })
            .await;
        if e.name == "failed" {
            return Err(sm_failed(&e));
        }
        self.start_sm();
        Ok(sm_enabled(&e))
    }

    /// Legacy `<resume previd h/>` (after SASL, before bind).
    pub async fn resume(&mut self, previd: &str, h: u32) -> Result<Resumed, SmFailed> {
        self.send(&format!(
            "<resume xmlns='{NS_SM}' previd='{}' h='{h}'/>",
            escape(previd)
        ))
        .await;
        let e = self
            .expect("<resumed/> or <failed/>", |e| {
                e.ns == NS_SM && (e.name == "resumed" || e.name == "failed")
            })
            .await;
        if e.name == "failed" {
            return Err(sm_failed(&e));
        }
        let r = resumed(&e);
        self.sm = true;
        self.h_in = h;
        self.h_out = r.h;
        Ok(r)
    }

    fn start_sm(&mut self) {
        self.sm = true;
        self.h_in = 0;
        self.h_out = 0;
    }

    /// Send text as is (not counted).
    pub async fn send(&mut self, xml: &str) {
        self.raw.send(xml).await;
    }

    /// Send a stanza (counted in `h_out` while stream management is on).
    pub async fn send_stanza(&mut self, xml: &str) {
        self.raw.send(xml).await;
        if self.sm {
            self.h_out += 1;
        }
    }

    /// Send a stanza if the peer still takes it (counted as [`send_stanza`](Self::send_stanza)
    /// does); false if the write failed because the connection is gone.
    pub async fn try_send_stanza(&mut self, xml: &str) -> bool {
        let sent = self.raw.try_send(xml).await;
        if sent && self.sm {
            self.h_out += 1;
        }
        sent
    }

    /// Send a chat message.
    pub async fn send_message(&mut self, to: &str, id: &str, body: &str) {
        self.send_stanza(&format!(
            "<message to='{}' id='{}' type='chat'><body>{}</body></message>",
            escape(to),
            escape(id),
            escape(body)
        ))
        .await;
    }

    /// `<a h/>` with this client's count.
    pub async fn ack(&mut self) {
        let a = format!("<a xmlns='{NS_SM}' h='{}'/>", self.h_in);
        self.send(&a).await;
    }

    /// `<r/>`, then the h of the server's `<a/>`.
    pub async fn request_ack(&mut self) -> u32 {
        self.send(&format!("<r xmlns='{NS_SM}'/>")).await;
        let a = self.expect("<a/>", |e| e.is("a", NS_SM)).await;
        a.attr("h")
            .and_then(|h| h.parse().ok())
            .unwrap_or_else(|| panic!("bad <a/>: {}", a.xml))
    }

    /// The next element (pending ones first), waiting up to [`TIMEOUT`].
    pub async fn next(&mut self) -> Element {
        if let Some(e) = self.pending.pop_front() {
            return e;
        }
        self.read().await
    }

    /// The first element matching `pred` (pending ones first); elements read
    /// on the way are kept, in order, for later. Panics after [`TIMEOUT`].
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let e = self.read_until(deadline, what).await;
            if pred(&e) {
                return e;
            }
            self.pending.push_back(e);
        }
    }

    /// The next `<message/>` (others kept for later).
    pub async fn expect_message(&mut self) -> Element {
        self.expect("<message/>", |e| e.is("message", NS_CLIENT))
            .await
    }

    /// Elements read but not handed out yet.
    pub fn pending(&self) -> impl Iterator<Item = &Element> {
        self.pending.iter()
    }

    async fn read(&mut self) -> Element {
        self.read_until(Instant::now() + TIMEOUT, "an element")
            .await
    }

    /// Read the next element off the wire, keeping the stream management
    /// books: count stanzas, answer `<r/>` (when `auto_ack`), note `<a/>`.
    async fn read_until(&mut self, deadline: Instant, what: &str) -> Element {
        match self.read_within(deadline).await {
            Read::Element(e) => e,
            Read::TimedOut => panic!(
                "timed out waiting for {what}; unparsed: {:?}; read before: {:?}",
                self.raw.received,
                self.pending.iter().map(|e| &e.xml).collect::<Vec<_>>()
            ),
            Read::Closed if self.stream_closed => {
                panic!("the server closed the stream while waiting for {what}")
            }
            Read::Closed => panic!(
                "peer closed while waiting for {what}; unparsed: {:?}",
                self.raw.received
            ),
        }
    }

    /// The next element (pending ones first), or why there is none by `deadline`: for a
    /// client that expects its connection may be cut at any time.
    pub async fn next_within(&mut self, deadline: Instant) -> Read {
        match self.pending.pop_front() {
            Some(e) => Read::Element(e),
            None => self.read_within(deadline).await,
        }
    }

    /// [`read_until`](Self::read_until) without panicking.
    async fn read_within(&mut self, deadline: Instant) -> Read {
        loop {
            let Some((frame, used)) = next_frame(&self.raw.received) else {
                if self.raw.closed {
                    return Read::Closed;
                }
                if !self.raw.read_some(deadline).await {
                    return Read::TimedOut;
                }
                continue;
            };
            self.raw.received.drain(..used);
            let xml = match frame {
                Frame::Header(h) => {
                    self.stream_header = h;
                    continue;
                }
                Frame::Close => {
                    self.stream_closed = true;
                    return Read::Closed;
                }
                Frame::Element(xml) => xml,
            };
            let e = Element::parse(&xml);
            if self.sm && e.is_stanza() {
                self.h_in += 1;
            }
            if e.is("features", NS_STREAM) {
                self.features = Features::from_element(&e);
            }
            if e.is("a", NS_SM) {
                self.server_h = e.attr("h").and_then(|h| h.parse().ok());
            }
            if e.is("r", NS_SM) {
                self.acks_requested += 1;
                if self.auto_ack {
                    let a = format!("<a xmlns='{NS_SM}' h='{}'/>", self.h_in);
                    if !self.raw.try_send(&a).await {
                        return Read::Closed;
                    }
                    continue;
                }
            }
            return Read::Element(e);
        }
    }

    /// Drop the connection without `</stream:stream>` or a TLS close: the
    /// server sees a vanished client (a smacks session hibernates).
    pub fn vanish(self) {
        self.raw.vanish();
    }
}
