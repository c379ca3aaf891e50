//! From a DNS answer to group members, purely: names, weights and the next lookup time are
//! functions of the records alone, so every proxy of a fleet (and every restart) derives the
//! same ring from the same answer.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::GroupMember;

/// One SRV record with the address its target resolved to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrvNode {
    /// The record's target host, as published (a trailing dot is allowed).
    pub target: String,
    /// The node's port.
    pub port: u16,
    /// The record's weight.
    pub weight: u16,
    /// An address of the target.
    pub address: IpAddr,
}

/// A backend name from a host name: lowercase, trailing dot removed, and every character a
/// backend name may not hold replaced by '-'.
pub fn name_from_host(host: &str) -> String {
    let name: String = host
        .trim_end_matches('.')
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() { "node".into() } else { name }
}

/// A backend name from an address (all an A/AAAA answer gives): the group's name, then the
/// address with IPv6 colons as '-'. A node whose address changes is a new node.
pub fn name_from_address(group: &str, address: IpAddr) -> String {
    name_from_host(&format!("{group}-{address}"))
}

/// An SRV weight as a ring weight: 0 counts as 1, and weights above the ring's 1000 are cut.
pub fn ring_weight(srv_weight: u16) -> u32 {
    u32::from(srv_weight).clamp(1, 1000)
}

/// When to look again: the answer's time to live, kept within `[min, max]`.
pub fn next_interval(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.clamp(min, max)
}

/// The members of an SRV answer, sorted by name. Two records with the same target (two
/// ports) get the port appended to the name of all but the first in sorted order.
pub fn members_from_srv(mut nodes: Vec<SrvNode>) -> Vec<GroupMember> {
    nodes.sort();
    nodes.dedup_by(|a, b| a.target == b.target && a.port == b.port);
    let mut taken = HashSet::new();
    let mut members = Vec::new();
    for n in nodes {
        let mut name = name_from_host(&n.target);
        if !taken.insert(name.clone()) {
            name = format!("{name}-{}", n.port);
            if !taken.insert(name.clone()) {
                continue;
            }
        }
        members.push(GroupMember {
            name,
            address: SocketAddr::new(n.address, n.port),
            weight: ring_weight(n.weight),
        });
    }
    members.sort();
    members
}

/// The members of an A/AAAA answer: one per distinct address, all on `port` with `weight`.
pub fn members_from_addresses(
    group: &str,
    mut addresses: Vec<IpAddr>,
    port: u16,
    weight: u32,
) -> Vec<GroupMember> {
    addresses.sort();
    addresses.dedup();
    let mut members: Vec<GroupMember> = addresses
        .into_iter()
        .map(|a| GroupMember {
            name: name_from_address(group, a),
            address: SocketAddr::new(a, port),
            weight,
        })
        .collect();
    members.sort();
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(target: &str, port: u16, weight: u16, ip: &str) -> SrvNode {
        SrvNode {
            target: target.into(),
            port,
            weight,
            address: ip.parse().unwrap(),
        }
    }

    #[test]
    fn names_come_from_the_target_host() {
        assert_eq!(
            name_from_host("Xmpp-0.Nodes.xmpp.svc.cluster.local."),
            "xmpp-0.nodes.xmpp.svc.cluster.local"
        );
        assert_eq!(name_from_host("a b*c."), "a-b-c");
        assert_eq!(name_from_host("."), "node");
        assert_eq!(
            name_from_address("xmpp", "10.0.0.7".parse().unwrap()),
            "xmpp-10.0.0.7"
        );
        assert_eq!(
            name_from_address("xmpp", "fd00::13".parse().unwrap()),
            "xmpp-fd00--13"
        );
    }

    #[test]
    fn weights_are_clamped_into_the_ring_range() {
        assert_eq!(ring_weight(0), 1);
        assert_eq!(ring_weight(1), 1);
        assert_eq!(ring_weight(700), 700);
        assert_eq!(ring_weight(1000), 1000);
        assert_eq!(ring_weight(65535), 1000);
    }

    #[test]
    fn ttls_are_clamped_into_the_intervals() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        assert_eq!(next_interval(Duration::ZERO, min, max), min);
        assert_eq!(
            next_interval(Duration::from_secs(60), min, max),
            Duration::from_secs(60)
        );
        assert_eq!(next_interval(Duration::from_secs(86400), min, max), max);
    }

    #[test]
    fn srv_members_do_not_depend_on_record_order() {
        let a = vec![
            srv("n2.example.test.", 5222, 0, "127.0.0.2"),
            srv("n1.example.test.", 5222, 10, "127.0.0.1"),
            srv("n1.example.test.", 5223, 10, "127.0.0.1"),
        ];
        let mut b = a.clone();
        b.reverse();
        let (ma, mb) = (members_from_srv(a), members_from_srv(b));
        assert_eq!(ma, mb);
        let names: Vec<&str> = ma.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["n1.example.test", "n1.example.test-5223", "n2.example.test"]
        );
        assert_eq!(ma[2].weight, 1);
        assert_eq!(ma[0].weight, 10);
    }

    #[test]
    fn address_members_are_one_per_address() {
        let m = members_from_addresses(
            "g",
            vec![
                "10.0.0.2".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
            ],
            5222,
            3,
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "g-10.0.0.1");
        assert_eq!(m[0].address, "10.0.0.1:5222".parse().unwrap());
        assert_eq!(m[1].weight, 3);
    }
}
