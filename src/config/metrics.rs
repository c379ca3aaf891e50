//! `[metrics]`: where the admin endpoints listen, the token they require, and the host names
//! they answer to.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::RawMetrics;
use super::source::{ConfigError, Source, parse_addr};

/// The checked `[metrics]` table (its fields are kept flat in [`super::Config`]).
pub(super) struct MetricsConfig {
    /// Where `/metrics` and the admin endpoints are served, if anywhere.
    pub(super) bind: Option<SocketAddr>,
    /// The file holding the admin bearer token, if any.
    pub(super) token_file: Option<PathBuf>,
    /// Host names the admin endpoints answer to besides IP literals and `localhost`.
    pub(super) allowed_hosts: Vec<String>,
}

/// Check the admin address, the token file's presence and the allowed host names.
pub(super) fn validate_metrics(
    src: &Source<'_>,
    metrics: Option<&RawMetrics>,
) -> Result<MetricsConfig, ConfigError> {
    let metrics_bind = match metrics {
        Some(m) => Some(
            parse_addr(m.bind.get_ref())
                .map_err(|msg| src.err(&m.bind.span(), "metrics.bind", msg))?,
        ),
        None => None,
    };
    let metrics_token_file = match metrics.and_then(|m| m.token_file.as_ref()) {
        Some(f) => Some(src.resolve(f, "metrics.token_file")?),
        None => None,
    };
    let mut metrics_allowed_hosts = Vec::new();
    let hosts = metrics.and_then(|m| m.allowed_hosts.as_ref());
    for (i, h) in hosts.into_iter().flatten().enumerate() {
        let name = check_host_name(h.get_ref())
            .map_err(|msg| src.err(&h.span(), &format!("metrics.allowed_hosts[{i}]"), msg))?;
        metrics_allowed_hosts.push(name);
    }
    Ok(MetricsConfig {
        bind: metrics_bind,
        token_file: metrics_token_file,
        allowed_hosts: metrics_allowed_hosts,
    })
}

/// A DNS name as a `Host` header carries it, without port or scheme; lowercase, without a
/// final dot.
fn check_host_name(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a host name (write the name alone, e.g. \"metrics.example.org\", \
             without port or scheme; IP addresses and localhost need no entry)"
        ));
    }
    Ok(name)
}
