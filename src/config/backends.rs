//! `[[backend]]`: the XMPP server nodes, their names and weights (which decide placement),
//! and how each is reached (PROXY protocol, TLS), a setting a `[[domain]]` may also give.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Spanned;

use super::raw::RawBackend;
use super::source::{ConfigError, Source, parse_addr};
use super::values::{BackendTls, ChannelBinding, ProxyProtocol};

/// How the proxy reaches a node, as written for one `[[backend]]` or one `[[domain]]` (the
/// pool): every field unset means "inherit" (the backend's own value beats its pool's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkOverrides {
    /// PROXY protocol header toward the node.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS toward the node.
    pub tls: Option<BackendTls>,
    /// Name the node's certificate must match (default: the XMPP domain of the connection).
    pub server_name: Option<String>,
    /// PEM file of the CA certificates trusted for the node (default: the Mozilla roots).
    pub ca: Option<PathBuf>,
    /// Whether the node's certificate is verified (default: yes).
    pub verify: Option<bool>,
    /// Whether the client's channel binding is handed to the node (default: no).
    pub channel_binding: Option<ChannelBinding>,
}

/// How the proxy reaches one node for one domain, every choice made.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinkConfig {
    /// PROXY protocol header toward the node.
    pub proxy_protocol: ProxyProtocol,
    /// TLS toward the node.
    pub tls: BackendTls,
    /// Name the node's certificate must match; `None`: the XMPP domain of the connection.
    pub server_name: Option<String>,
    /// PEM file of trusted CA certificates; `None`: the Mozilla roots compiled in.
    pub ca: Option<PathBuf>,
    /// Whether the node's certificate is verified.
    pub verify: bool,
    /// Whether the client's channel binding goes to the node in the PROXY v2 header.
    pub channel_binding: ChannelBinding,
}

impl LinkOverrides {
    /// The link of a backend (`self`) in a pool (`pool`): each field from the backend if set,
    /// else from the pool, else the default (plain TCP, no PROXY header, verification on).
    pub(crate) fn resolve(&self, pool: &LinkOverrides) -> LinkConfig {
        LinkConfig {
            proxy_protocol: self
                .proxy_protocol
                .or(pool.proxy_protocol)
                .unwrap_or_default(),
            tls: self.tls.or(pool.tls).unwrap_or_default(),
            server_name: self
                .server_name
                .clone()
                .or_else(|| pool.server_name.clone()),
            ca: self.ca.clone().or_else(|| pool.ca.clone()),
            verify: self.verify.or(pool.verify).unwrap_or(true),
            channel_binding: self
                .channel_binding
                .or(pool.channel_binding)
                .unwrap_or_default(),
        }
    }
}

/// One XMPP server node.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    /// Stable name: it, and the weight, decide placement on the ring.
    pub name: String,
    /// The node's plain c2s address on the trusted link.
    pub address: SocketAddr,
    /// Relative share of the keys (virtual nodes on the ring).
    pub weight: u32,
    /// Concurrent logins allowed (overrides [admission]).
    pub max_negotiations: Option<usize>,
    /// New logins per second allowed (overrides [admission]).
    pub max_logins_per_second: Option<f64>,
    /// How the node is reached (overrides its pools' settings).
    pub link: LinkOverrides,
}

/// Check the backends: at least one, names usable as labels and unique, addresses, weights
/// and link settings. Admission overrides are checked with `[admission]`.
pub(super) fn validate_backends(
    src: &Source<'_>,
    raw: &[RawBackend],
    has_groups: bool,
) -> Result<Vec<BackendConfig>, ConfigError> {
    if raw.is_empty() && !has_groups {
        return Err(src.err(
            &(0..0),
            "backend",
            "at least one [[backend]] or [[backend_group]] is required".into(),
        ));
    }
    let mut backend_names = HashSet::new();
    let mut backends = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        let key = |k: &str| format!("backend[{i}].{k}");
        let name = b.name.get_ref();
        if !valid_backend_name(name) {
            return Err(src.err(
                &b.name.span(),
                &key("name"),
                format!("{name:?}: use letters, digits, '-', '_' or '.'"),
            ));
        }
        if !backend_names.insert(name.clone()) {
            return Err(src.err(
                &b.name.span(),
                &key("name"),
                format!("backend {name:?} is defined twice"),
            ));
        }
        let address = parse_addr(b.address.get_ref())
            .map_err(|m| src.err(&b.address.span(), &key("address"), m))?;
        if *b.weight.get_ref() == 0 || *b.weight.get_ref() > 1000 {
            return Err(src.err(&b.weight.span(), &key("weight"), "must be 1..=1000".into()));
        }
        let link = RawLink {
            proxy_protocol: b.proxy_protocol,
            tls: b.backend_tls,
            server_name: b.tls_server_name.as_ref(),
            ca: b.tls_ca.as_ref(),
            verify: b.tls_verify,
            channel_binding: b.channel_binding,
        }
        .check(src, &key(""))?;
        backends.push(BackendConfig {
            name: name.clone(),
            address,
            weight: *b.weight.get_ref(),
            max_negotiations: None,
            max_logins_per_second: None,
            link,
        });
    }
    Ok(backends)
}

/// Whether `name` may name a backend (or a group): letters, digits, '-', '_', '.'.
pub(super) fn valid_backend_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The link settings of a `[[backend]]` or `[[domain]]` table, before checks.
pub(super) struct RawLink<'a> {
    pub(super) proxy_protocol: Option<ProxyProtocol>,
    pub(super) tls: Option<BackendTls>,
    pub(super) server_name: Option<&'a Spanned<String>>,
    pub(super) ca: Option<&'a Spanned<PathBuf>>,
    pub(super) verify: Option<bool>,
    pub(super) channel_binding: Option<ChannelBinding>,
}

impl RawLink<'_> {
    /// Check the server name (a DNS name or an IP address, as TLS can verify it) and resolve
    /// the CA file. `prefix` is the table's key prefix (`backend[0].`).
    pub(super) fn check(
        self,
        src: &Source<'_>,
        prefix: &str,
    ) -> Result<LinkOverrides, ConfigError> {
        let server_name = match self.server_name {
            Some(n) => {
                if rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
                    return Err(src.err(
                        &n.span(),
                        &format!("{prefix}tls_server_name"),
                        format!("{:?} is not a DNS name or an IP address", n.get_ref()),
                    ));
                }
                Some(n.get_ref().clone())
            }
            None => None,
        };
        let ca = match self.ca {
            Some(p) => Some(src.resolve(p, &format!("{prefix}tls_ca"))?),
            None => None,
        };
        Ok(LinkOverrides {
            proxy_protocol: self.proxy_protocol,
            tls: self.tls,
            server_name,
            ca,
            verify: self.verify,
            channel_binding: self.channel_binding,
        })
    }
}
