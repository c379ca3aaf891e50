//! `channel_binding` across the tables that set it: a backend's link as its domains resolve it.

use super::backends::BackendConfig;
use super::raw::RawBackend;
use super::routing::DomainConfig;
use super::source::{ConfigError, Source};
use super::values::{ChannelBinding, ProxyProtocol};

/// `channel_binding = "pass"` needs the PROXY v2 header (the binding data travel in it), and
/// every node of a domain must agree: the client is shown one domain's features before it is
/// routed, and a `-PLUS` mechanism shown must be one the chosen node can verify.
pub(super) fn validate_channel_binding(
    src: &Source<'_>,
    domains: &[DomainConfig],
    backends: &[BackendConfig],
    raw: &[RawBackend],
) -> Result<(), ConfigError> {
    for d in domains {
        let mut first: Option<(&str, ChannelBinding)> = None;
        for name in &d.backends {
            let Some(j) = backends.iter().position(|b| &b.name == name) else {
                continue;
            };
            let span = raw
                .iter()
                .find(|r| r.name.get_ref() == name)
                .map_or(0..0, |r| r.name.span());
            let link = backends[j].link.resolve(&d.link);
            if link.channel_binding == ChannelBinding::Pass
                && link.proxy_protocol != ProxyProtocol::V2
            {
                return Err(src.err(
                    &span,
                    &format!("backend[{j}].channel_binding"),
                    format!(
                        "\"pass\" needs proxy_protocol = \"v2\" for domain {} (the binding \
                         data travel in the PROXY v2 header)",
                        d.name
                    ),
                ));
            }
            match first {
                None => first = Some((name, link.channel_binding)),
                Some((other, cb)) if cb != link.channel_binding => {
                    return Err(src.err(
                        &span,
                        &format!("backend[{j}].channel_binding"),
                        format!(
                            "backends {other:?} and {name:?} of domain {} disagree on \
                             channel_binding; all nodes of a domain must pass it or none",
                            d.name
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}
