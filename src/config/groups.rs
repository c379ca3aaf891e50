//! `[[backend_group]]`: a set of nodes named by DNS instead of listed one by one. The file
//! gives the query and its bounds; the nodes themselves are found at run time (see
//! `crate::discovery`) and put into a configuration with `Config::expand`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::backends::{BackendConfig, LinkOverrides};
use super::raw::RawBackendGroup;
use super::source::{ConfigError, Source, parse_addr};

/// The lower bound of `min_interval`: DNS answers are not polled faster than this.
const FLOOR: Duration = Duration::from_secs(1);

/// What a group asks DNS for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupQuery {
    /// SRV records of this name; each record is one node, its weight the node's weight.
    Srv(String),
    /// A and AAAA records of this host; each address is one node on `port`.
    Host {
        /// The name looked up.
        host: String,
        /// The c2s port of every address found.
        port: u16,
        /// The ring weight of every node found.
        weight: u32,
    },
}

/// One `[[backend_group]]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendGroupConfig {
    /// The name domains list in `backends` (it stands for every member).
    pub name: String,
    /// The DNS query.
    pub query: GroupQuery,
    /// Name servers to ask (`IP:PORT`); empty: the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// The shortest wait before the next lookup, whatever the TTL says.
    pub min_interval: Duration,
    /// The longest wait before the next lookup, whatever the TTL says.
    pub max_interval: Duration,
}

/// One node a group's lookup found: a backend with a name derived from the DNS answer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupMember {
    /// Backend name (a pure function of the DNS answer, so every proxy agrees).
    pub name: String,
    /// The node's c2s address.
    pub address: SocketAddr,
    /// Ring weight, 1..=1000.
    pub weight: u32,
}

/// The members of each group, by group name, as last resolved.
pub type GroupMembers = BTreeMap<String, Vec<GroupMember>>;

/// Check the groups: names usable as backend names and distinct from every backend's, one
/// query each (`srv`, or `host` with `port`), name servers as `IP:PORT`, intervals in order.
pub(super) fn validate_groups(
    src: &Source<'_>,
    raw: &[RawBackendGroup],
    backends: &[BackendConfig],
) -> Result<Vec<BackendGroupConfig>, ConfigError> {
    let mut seen: HashSet<String> = backends.iter().map(|b| b.name.clone()).collect();
    let mut groups = Vec::new();
    for (i, g) in raw.iter().enumerate() {
        let key = |k: &str| format!("backend_group[{i}].{k}");
        let name = g.name.get_ref();
        if !super::backends::valid_backend_name(name) {
            return Err(src.err(
                &g.name.span(),
                &key("name"),
                format!("{name:?}: use letters, digits, '-', '_' or '.'"),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(src.err(
                &g.name.span(),
                &key("name"),
                format!("{name:?} is already the name of a backend or a group"),
            ));
        }
        let query = match (&g.srv, &g.host, &g.port) {
            (Some(srv), None, None) => {
                if let Some(w) = &g.weight {
                    return Err(src.err(
                        &w.span(),
                        &key("weight"),
                        "SRV records carry their own weights; `weight` is for `host`".into(),
                    ));
                }
                GroupQuery::Srv(
                    check_dns_name(srv.get_ref())
                        .map_err(|m| src.err(&srv.span(), &key("srv"), m))?,
                )
            }
            (None, Some(host), Some(port)) => {
                let weight = g.weight.as_ref().map_or(1, |w| *w.get_ref());
                if !(1..=1000).contains(&weight) {
                    let span = g.weight.as_ref().map_or(0..0, |w| w.span());
                    return Err(src.err(&span, &key("weight"), "must be 1..=1000".into()));
                }
                if *port.get_ref() == 0 {
                    return Err(src.err(&port.span(), &key("port"), "must be 1..=65535".into()));
                }
                GroupQuery::Host {
                    host: check_dns_name(host.get_ref())
                        .map_err(|m| src.err(&host.span(), &key("host"), m))?,
                    port: *port.get_ref(),
                    weight,
                }
            }
            _ => {
                return Err(src.err(
                    &g.name.span(),
                    &key("srv"),
                    "set `srv`, or `host` and `port` (not both)".into(),
                ));
            }
        };
        let mut nameservers = Vec::new();
        for ns in g.nameservers.iter().flatten() {
            nameservers.push(
                parse_addr(ns.get_ref())
                    .map_err(|m| src.err(&ns.span(), &key("nameservers"), m))?,
            );
        }
        let min_interval = g.min_interval.unwrap_or(Duration::from_secs(5));
        let max_interval = g.max_interval.unwrap_or(Duration::from_secs(300));
        if min_interval < FLOOR || max_interval < min_interval {
            return Err(src.err(
                &g.name.span(),
                &key("min_interval"),
                format!(
                    "need 1s <= min_interval <= max_interval (got {min_interval:?} and \
                     {max_interval:?})"
                ),
            ));
        }
        groups.push(BackendGroupConfig {
            name: name.clone(),
            query,
            nameservers,
            min_interval,
            max_interval,
        });
    }
    Ok(groups)
}

/// A DNS name as it will be asked: lowercase, with a trailing dot (fully qualified, so no
/// search domain of resolv.conf changes what different proxies find).
fn check_dns_name(s: &str) -> Result<String, String> {
    let name = s.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{s:?} is not a DNS name"));
    }
    Ok(format!("{name}."))
}

/// Put each group's members into a configuration: appended to `backends`, and in place of
/// the group's name in every domain's list (`lists`). A member whose name is already a
/// backend's is left out (the file's backend wins), so a DNS answer can never redefine a
/// configured node. A group with no member leaves its domains without its nodes.
pub(super) fn expand<'a>(
    backends: &mut Vec<BackendConfig>,
    lists: impl Iterator<Item = &'a mut Vec<String>>,
    groups: &[BackendGroupConfig],
    members: &GroupMembers,
) {
    let mut taken: HashSet<String> = backends.iter().map(|b| b.name.clone()).collect();
    let mut by_group: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for g in groups {
        let names = by_group.entry(&g.name).or_default();
        for m in members.get(&g.name).into_iter().flatten() {
            if !taken.insert(m.name.clone()) {
                continue;
            }
            names.push(m.name.clone());
            backends.push(BackendConfig {
                name: m.name.clone(),
                address: m.address,
                weight: m.weight,
                max_negotiations: None,
                max_logins_per_second: None,
                link: LinkOverrides::default(),
            });
        }
    }
    for list in lists {
        let mut expanded = Vec::new();
        for name in list.iter() {
            match by_group.get(name.as_str()) {
                Some(members) => expanded.extend(members.iter().cloned()),
                None => expanded.push(name.clone()),
            }
        }
        expanded.dedup();
        *list = expanded;
    }
}

#[cfg(test)]
mod tests;
