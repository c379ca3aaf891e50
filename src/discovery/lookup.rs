//! One DNS lookup of one group, through hickory-resolver: the members found and how long the
//! answer may be trusted.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use super::answer::{SrvNode, members_from_addresses, members_from_srv};
use crate::config::{BackendGroupConfig, GroupMember, GroupQuery};

/// A lookup that gave nothing usable; the group keeps its last good members.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The resolver could not be set up (e.g. no usable resolv.conf).
    #[error("resolver: {0}")]
    Resolver(String),
    /// The query failed, timed out, or found no record.
    #[error("{name}: {message}")]
    Query { name: String, message: String },
}

/// What one lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The members, sorted by name.
    pub members: Vec<GroupMember>,
    /// The answer's remaining time to live.
    pub ttl: Duration,
}

/// A resolver for one group's name servers. Its cache is off: the proxy schedules its own
/// lookups from the TTL, and a cached answer would hide a change past `max_interval`.
pub fn resolver(group: &BackendGroupConfig) -> Result<TokioResolver, LookupError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if group.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| LookupError::Resolver(e.to_string()))?
    } else {
        let mut config = ResolverConfig::from_parts(None, vec![], vec![]);
        for ns in &group.nameservers {
            let mut server = NameServerConfig::udp_and_tcp(ns.ip());
            for c in &mut server.connections {
                c.port = ns.port();
            }
            config.add_name_server(server);
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    builder
        .build()
        .map_err(|e| LookupError::Resolver(e.to_string()))
}

/// Ask DNS for the group's members.
pub async fn lookup(
    resolver: &TokioResolver,
    group: &BackendGroupConfig,
) -> Result<Answer, LookupError> {
    let failed = |name: &str, e: &dyn std::fmt::Display| LookupError::Query {
        name: name.trim_end_matches('.').to_string(),
        message: e.to_string(),
    };
    match &group.query {
        GroupQuery::Srv(name) => {
            let srv = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| failed(name, &e))?;
            let mut valid_until = srv.valid_until();
            let mut nodes = Vec::new();
            for record in srv.answers() {
                let RData::SRV(s) = &record.data else {
                    continue;
                };
                let target = s.target.to_ascii();
                let ips = resolver
                    .lookup_ip(target.as_str())
                    .await
                    .map_err(|e| failed(&target, &e))?;
                valid_until = valid_until.min(ips.valid_until());
                // The lowest address, so that every proxy picks the same one.
                let Some(address) = ips.iter().min() else {
                    continue;
                };
                nodes.push(SrvNode {
                    target,
                    port: s.port,
                    weight: s.weight,
                    address,
                });
            }
            if nodes.is_empty() {
                return Err(failed(name, &"no SRV record with an address"));
            }
            Ok(Answer {
                members: members_from_srv(nodes),
                ttl: valid_until.saturating_duration_since(Instant::now()),
            })
        }
        GroupQuery::Host { host, port, weight } => {
            let ips = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| failed(host, &e))?;
            let addresses: Vec<IpAddr> = ips.iter().collect();
            if addresses.is_empty() {
                return Err(failed(host, &"no address"));
            }
            Ok(Answer {
                members: members_from_addresses(&group.name, addresses, *port, *weight),
                ttl: ips.valid_until().saturating_duration_since(Instant::now()),
            })
        }
    }
}
