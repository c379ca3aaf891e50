//! The enumerated values a configuration file may name (`tls = "direct"`, `proxy_protocol =
//! "v2"`, ...): read by the raw file and used by the checked sections alike, so they sit
//! below both.

use serde::Deserialize;

/// How a listener expects TLS to start.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// RFC 6120 STARTTLS: a clear-text stream header first, then TLS (port 5222 style).
    Starttls,
    /// XEP-0368 direct TLS: the TLS handshake is the first thing on the wire (port 5223 style).
    Direct,
    /// Both on one port: a first byte of 0x16 (a TLS handshake record) means direct TLS.
    Auto,
}

/// How the proxy speaks TLS to a node.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BackendTls {
    /// Plain TCP on a trusted link.
    #[default]
    None,
    /// RFC 6120 STARTTLS, negotiated by the proxy itself before it replays the client's header.
    Starttls,
    /// XEP-0368 direct TLS (ALPN `xmpp-client`) from the first byte.
    Direct,
}

/// Whether the client's TLS channel binding is handed to the node (docs/channel-binding.md).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ChannelBinding {
    /// The node never sees the client's TLS: channel-binding mechanisms (`-PLUS`) and
    /// XEP-0440 types are removed from what the client is shown.
    #[default]
    Off,
    /// The binding data of the client's TLS session travel to the node in the PROXY v2
    /// header, and the node's `-PLUS` mechanisms and binding types are shown to the client.
    Pass,
}

/// Whether, and in which version, a PROXY protocol header opens each connection to a node.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header: the node sees the proxy's address as the client's.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 ...`): every implementation reads it.
    V1,
    /// The binary header, which can also carry the client's ALPN, SNI and TLS facts (TLVs).
    V2,
}

/// What draining does to the clients already connected to the node.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DrainMode {
    /// Ask them to reconnect (`<see-other-host/>` pointing back at the proxy), a few per second.
    Redirect,
    /// Leave them until they log out by themselves.
    Wait,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal or journald.
    #[default]
    Text,
    /// One JSON object per line in the Logstash/ECS style (`@timestamp`, `log.level`,
    /// `message`, then the event's fields), for Elasticsearch, Loki or any document store.
    Json,
}
