//! `[admission]` and its per-backend overrides: login-storm shaping.

use std::time::Duration;

use toml::Spanned;

use super::backends::BackendConfig;
use super::raw::{RawAdmission, RawBackend};
use super::source::{ConfigError, Source, check_host_port};

/// Admission defaults for every backend.
#[derive(Clone, Debug)]
pub struct AdmissionDefaults {
    /// Concurrent logins per backend (None: unlimited).
    pub max_negotiations: Option<usize>,
    /// New logins per second per backend (None: unlimited).
    pub max_logins_per_second: Option<f64>,
    /// Clients that may wait per backend.
    pub queue: usize,
    /// How long one may wait.
    pub queue_timeout: Duration,
    /// `host:port` of another proxy to send clients to instead of `<resource-constraint/>`.
    pub overflow_redirect: Option<String>,
}

/// Check the admission defaults, then each backend's own limits (set on `backends`, in file
/// order).
pub(super) fn validate_admission(
    src: &Source<'_>,
    adm: &RawAdmission,
    raw_backends: &[RawBackend],
    backends: &mut [BackendConfig],
) -> Result<AdmissionDefaults, ConfigError> {
    let overflow_redirect = match &adm.overflow_redirect {
        Some(h) => Some(
            check_host_port(h.get_ref())
                .map_err(|m| src.err(&h.span(), "admission.overflow_redirect", m))?,
        ),
        None => None,
    };
    let adm_rate = match &adm.max_logins_per_second {
        Some(r) => Some(
            check_rate(r).map_err(|m| src.err(&r.span(), "admission.max_logins_per_second", m))?,
        ),
        None => None,
    };
    for (i, (raw, backend)) in raw_backends.iter().zip(backends.iter_mut()).enumerate() {
        if let Some(r) = &raw.max_logins_per_second {
            backend.max_logins_per_second = Some(check_rate(r).map_err(|m| {
                src.err(&r.span(), &format!("backend[{i}].max_logins_per_second"), m)
            })?);
        }
        backend.max_negotiations = raw.max_negotiations;
    }
    Ok(AdmissionDefaults {
        max_negotiations: adm.max_negotiations,
        max_logins_per_second: adm_rate,
        queue: adm.queue,
        queue_timeout: adm.queue_timeout,
        overflow_redirect,
    })
}

/// A rate of new logins: a positive, finite number per second.
fn check_rate(r: &Spanned<f64>) -> Result<f64, String> {
    let r = *r.get_ref();
    if r.is_finite() && r > 0.0 {
        Ok(r)
    } else {
        Err("must be a positive number per second".into())
    }
}
