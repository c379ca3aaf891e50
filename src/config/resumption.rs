//! `[resumption]`: the fleet's keys for stream-management ids and TLS session tickets.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawResumption;
use super::source::{ConfigError, Source};
use crate::keys::FleetKey;

/// Fast reconnect across a fleet of proxies (see docs/fast-reconnect.md).
#[derive(Clone, Debug)]
pub struct ResumptionConfig {
    /// Keys that wrap XEP-0198 stream-management ids, newest first: the first wraps, all
    /// verify. Empty: ids pass through untouched and resumes are routed like logins.
    pub sm_keys: Vec<FleetKey>,
    /// Secrets TLS 1.3 session-ticket keys are derived from, newest first: the first issues,
    /// all decrypt. Empty: each proxy keeps its own session cache (no resumption across
    /// proxies, none across restarts).
    pub tls_ticket_keys: Vec<FleetKey>,
    /// How long one derived ticket key issues tickets; tickets of the previous period are still
    /// accepted, so a ticket lives between one and two periods.
    pub tls_ticket_rotation: Duration,
}

/// Default ticket-key period: short enough that a stolen derived key opens few sessions, long
/// enough that a phone reconnecting after a night still resumes.
pub(crate) const DEFAULT_TICKET_ROTATION: Duration = Duration::from_secs(12 * 3600);

/// Read every key file (so `xmpp-lb check` and a reload refuse a bad one by name) and check
/// the ticket rotation period.
pub(super) fn validate_resumption(
    src: &Source<'_>,
    raw: &RawResumption,
) -> Result<ResumptionConfig, ConfigError> {
    let load = |list: &Option<Spanned<Vec<Spanned<PathBuf>>>>,
                name: &str|
     -> Result<Vec<FleetKey>, ConfigError> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        let mut keys: Vec<FleetKey> = Vec::new();
        for (i, f) in list.get_ref().iter().enumerate() {
            let key = format!("resumption.{name}[{i}]");
            let path = src.resolve(f, &key)?;
            let loaded =
                FleetKey::load(&path).map_err(|e| src.err(&f.span(), &key, e.to_string()))?;
            if let Some(twin) = keys.iter().find(|k| k.id() == loaded.id()) {
                return Err(src.err(
                    &f.span(),
                    &key,
                    format!(
                        "holds the same secret as {}; each key must be different",
                        twin.file().display()
                    ),
                ));
            }
            keys.push(loaded);
        }
        Ok(keys)
    };
    let sm_keys = load(&raw.sm_key_files, "sm_key_files")?;
    let tls_ticket_keys = load(&raw.tls_ticket_key_files, "tls_ticket_key_files")?;
    let tls_ticket_rotation = match &raw.tls_ticket_rotation {
        None => DEFAULT_TICKET_ROTATION,
        Some(text) => {
            let key = "resumption.tls_ticket_rotation";
            let d = humantime_serde::re::humantime::parse_duration(text.get_ref())
                .map_err(|e| src.err(&text.span(), key, format!("not a duration: {e}")))?;
            if d < Duration::from_secs(60) || d > Duration::from_secs(7 * 86400) {
                return Err(src.err(
                    &text.span(),
                    key,
                    "must be between 1 minute and 7 days".into(),
                ));
            }
            d
        }
    };
    Ok(ResumptionConfig {
        sm_keys,
        tls_ticket_keys,
        tls_ticket_rotation,
    })
}
