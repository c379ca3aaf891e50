//! `[drain]`: what draining a node does to the clients already connected to it.

use super::raw::RawDrain;
use super::source::{ConfigError, Source, check_host_port};
use super::values::DrainMode;

/// Draining settings.
#[derive(Clone, Debug)]
pub struct DrainConfig {
    /// Move connected clients or wait for them to leave.
    pub mode: DrainMode,
    /// Clients asked to move per second.
    pub rate: f64,
    /// `host:port` put in `<see-other-host/>`; default: the domain and the listener's port.
    pub redirect_to: Option<String>,
}

/// Check the drain rate and the redirect target.
pub(super) fn validate_drain(
    src: &Source<'_>,
    drain: &RawDrain,
) -> Result<DrainConfig, ConfigError> {
    if !(*drain.rate.get_ref() > 0.0 && drain.rate.get_ref().is_finite()) {
        return Err(src.err(
            &drain.rate.span(),
            "drain.rate",
            "must be a positive number of clients per second".into(),
        ));
    }
    let redirect_to = match &drain.redirect_to {
        Some(h) => Some(
            check_host_port(h.get_ref()).map_err(|m| src.err(&h.span(), "drain.redirect_to", m))?,
        ),
        None => None,
    };
    Ok(DrainConfig {
        mode: drain.mode,
        rate: *drain.rate.get_ref(),
        redirect_to,
    })
}
