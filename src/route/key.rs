//! Routing keys, normalised the way the XMPP server sees them.
//!
//! Two spellings the server treats as the same account (`Juliet@Example.TEST` and
//! `juliet@example.test`, or fullwidth letters) must land on the same backend, otherwise
//! one user's sessions would be split across nodes. So keys go through the same stringprep
//! profiles (RFC 6122) the server applies before it looks the account up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest allowed localpart or domainpart in bytes (RFC 6122 §2.2, §2.3).
const MAX_PART_BYTES: usize = 1023;

/// Case-fold a bare JID as the XMPP server would before it looks up the account: localpart
/// through stringprep Nodeprep, domain through Nameprep (plus lowercase), resource stripped.
///
/// A key needs an account, so a JID without a localpart is rejected. Returns `None` if the
/// JID is invalid (empty parts, prohibited characters, more than 1023 bytes per part).
pub fn normalize_bare_jid(jid: &str) -> Option<String> {
    // RFC 7622 §3.2: the first '/' starts the resource, then the first '@' ends the localpart.
    let bare = match jid.split_once('/') {
        Some((_, "")) => return None,
        Some((bare, _resource)) => bare,
        None => jid,
    };
    let (local, domain) = bare.split_once('@')?;
    if local.is_empty() {
        return None;
    }
    let local = stringprep::nodeprep(local).ok()?;
    if local.is_empty() || local.len() > MAX_PART_BYTES {
        return None;
    }
    let domain = normalize_domain(domain)?;
    Some(format!("{local}@{domain}"))
}

/// Normalize a domain (Nameprep, lowercase, strip one trailing dot). `None` if invalid.
///
/// The trailing dot of a fully qualified name does not make it a different host. Besides
/// Nameprep's own prohibitions, spaces, control characters and the JID separators `@` and
/// `/` are rejected: no server accepts them in a domainpart, and letting them through would
/// create keys for accounts that cannot exist.
pub fn normalize_domain(d: &str) -> Option<String> {
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.is_empty() {
        return None;
    }
    let prepped = stringprep::nameprep(d).ok()?;
    let lower = prepped.to_lowercase();
    let invalid = lower.is_empty()
        || lower.len() > MAX_PART_BYTES
        || lower
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || c == '@' || c == '/');
    if invalid { None } else { Some(lower) }
}

/// The subnet group key of a client address: the network address with the prefix length, in
/// canonical text, e.g. `192.0.2.0/24`, `2001:db8:1:2::/64`.
///
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is how a dual-stack listener reports an
/// IPv4 client, so it is grouped as IPv4. Prefix lengths are clamped to 32 / 128.
pub fn subnet_key(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let prefix = u32::from(v4_prefix.min(32));
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            let net = Ipv4Addr::from(u32::from(v4) & mask);
            format!("{net}/{prefix}")
        }
        IpAddr::V6(v6) => {
            let prefix = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            let net = Ipv6Addr::from(u128::from(v6) & mask);
            format!("{net}/{prefix}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(jid: &str) -> Option<String> {
        normalize_bare_jid(jid)
    }

    #[test]
    fn ascii_case_folding_and_resource_stripped() {
        assert_eq!(
            n("JuLiet@Example.TEST/res").as_deref(),
            Some("juliet@example.test")
        );
        assert_eq!(
            n("juliet@example.test").as_deref(),
            Some("juliet@example.test")
        );
        assert_eq!(
            n("juliet@example.test/a/b@c").as_deref(),
            Some("juliet@example.test")
        );
    }

    #[test]
    fn unicode_case_folding() {
        assert_eq!(n("ÄNNE@example.test").as_deref(), Some("änne@example.test"));
        assert_eq!(n("ÄNNE@ÉXAMPLE.test").as_deref(), Some("änne@éxample.test"));
        // Precomposed and decomposed forms are the same account after NFKC.
        assert_eq!(n("A\u{308}nne@example.test"), n("Änne@example.test"));
        // Sharp s folds to "ss" in stringprep's case folding table.
        assert_eq!(
            n("STRAßE@example.test").as_deref(),
            Some("strasse@example.test")
        );
    }

    #[test]
    fn compatibility_characters_are_normalized() {
        // Fullwidth letters fold and decompose to ASCII.
        assert_eq!(
            n("ＪＵＬＩＥＴ@example.test").as_deref(),
            Some("juliet@example.test")
        );
        // Ligature "ﬁ" decomposes under NFKC.
        assert_eq!(
            n("ﬁona@example.test").as_deref(),
            Some("fiona@example.test")
        );
        // Soft hyphen is mapped to nothing.
        assert_eq!(
            n("jul\u{ad}iet@example.test").as_deref(),
            Some("juliet@example.test")
        );
        // Fullwidth domain letters too.
        assert_eq!(
            n("juliet@ＥＸＡＭＰＬＥ.test").as_deref(),
            Some("juliet@example.test")
        );
    }

    #[test]
    fn invalid_jids() {
        for jid in [
            "",
            "@example.test",
            "juliet@",
            "juliet",
            "example.test",
            "juliet@example.test/",
            "juliet/res@example.test",
            "jul iet@example.test",
            "jul\"iet@example.test",
            "jul:iet@example.test",
            "jul<iet@example.test",
            "jul\u{7}iet@example.test",
            "jul\u{e000}iet@example.test",
            "juliet@exa mple.test",
            "juliet@example.test@other",
            "\u{ad}@example.test",
            "juliet@.",
        ] {
            assert_eq!(n(jid), None, "{jid:?}");
        }
    }

    #[test]
    fn part_length_limit() {
        let ok_local = "a".repeat(MAX_PART_BYTES);
        assert!(n(&format!("{ok_local}@example.test")).is_some());
        let long_local = "a".repeat(MAX_PART_BYTES + 1);
        assert_eq!(n(&format!("{long_local}@example.test")), None);
        let long_domain = "d".repeat(MAX_PART_BYTES + 1);
        assert_eq!(n(&format!("juliet@{long_domain}")), None);
    }

    #[test]
    fn domains() {
        assert_eq!(
            normalize_domain("Example.TEST.").as_deref(),
            Some("example.test")
        );
        assert_eq!(
            normalize_domain("example.test").as_deref(),
            Some("example.test")
        );
        assert_eq!(
            normalize_domain("example.test..").as_deref(),
            Some("example.test.")
        );
        assert_eq!(normalize_domain("."), None);
        assert_eq!(normalize_domain(""), None);
        assert_eq!(normalize_domain("exa/mple"), None);
        assert_eq!(
            normalize_domain("[2001:DB8::1]").as_deref(),
            Some("[2001:db8::1]")
        );
        assert_eq!(
            n("juliet@Example.TEST.").as_deref(),
            Some("juliet@example.test")
        );
    }

    #[test]
    fn subnet_v4() {
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        assert_eq!(subnet_key(ip, 24, 64), "192.0.2.0/24");
        assert_eq!(subnet_key(ip, 16, 64), "192.0.0.0/16");
        assert_eq!(subnet_key(ip, 32, 64), "192.0.2.77/32");
        assert_eq!(subnet_key(ip, 0, 64), "0.0.0.0/0");
        assert_eq!(subnet_key(ip, 200, 64), "192.0.2.77/32");
        assert_eq!(subnet_key(ip, 25, 64), "192.0.2.0/25");
        let high: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(subnet_key(high, 25, 64), "192.0.2.128/25");
    }

    #[test]
    fn subnet_v6() {
        let ip: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        assert_eq!(subnet_key(ip, 24, 64), "2001:db8:1:2::/64");
        assert_eq!(subnet_key(ip, 24, 48), "2001:db8:1::/48");
        assert_eq!(
            subnet_key(ip, 24, 128),
            "2001:db8:1:2:aaaa:bbbb:cccc:dddd/128"
        );
        assert_eq!(
            subnet_key(ip, 24, 255),
            "2001:db8:1:2:aaaa:bbbb:cccc:dddd/128"
        );
        assert_eq!(subnet_key(ip, 24, 0), "::/0");
        assert_eq!(subnet_key(ip, 24, 56), "2001:db8:1::/56");
        let loopback: IpAddr = "::1".parse().unwrap();
        assert_eq!(subnet_key(loopback, 24, 64), "::/64");
        assert_eq!(subnet_key(loopback, 24, 128), "::1/128");
    }

    #[test]
    fn subnet_v4_mapped_counts_as_v4() {
        let ip: IpAddr = "::ffff:192.0.2.77".parse().unwrap();
        assert_eq!(subnet_key(ip, 24, 64), "192.0.2.0/24");
        assert_eq!(subnet_key(ip, 32, 64), "192.0.2.77/32");
        assert_eq!(subnet_key(ip, 0, 64), "0.0.0.0/0");
        // The same client seen on a v4 socket and on a dual-stack socket shares one key.
        let plain: IpAddr = "192.0.2.77".parse().unwrap();
        assert_eq!(subnet_key(ip, 24, 64), subnet_key(plain, 24, 64));
        // IPv4-compatible (deprecated) addresses are ordinary IPv6.
        let compat: IpAddr = "::192.0.2.77".parse().unwrap();
        assert_eq!(subnet_key(compat, 24, 64), "::/64");
    }
}
