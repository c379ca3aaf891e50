//! Everything the proxy derives from one configuration, swapped whole on reload.
//!
//! A connection takes one [`Runtime`] snapshot when it is accepted and keeps it to the end, so
//! a reload can never change the rules under a login in progress, and never drops an
//! established connection. Backend *state* (health, drain, load) lives outside, keyed by name
//! in [`StateRegistry`], so it survives reloads.
//!
//! - `snapshot.rs` is the [`Runtime`] itself and what a connection asks of it;
//! - [`build`](Runtime::build) (in `build.rs`) turns a validated configuration into a runtime;
//! - `registry.rs` keeps the backend states that outlive runtimes;
//! - `shared.rs` holds what the whole process shares: the current runtime, reload, metrics;
//! - `zero.rs` creates at zero every metric series whose labels the configuration and the
//!   code already know, so a quiet proxy's scrape has them.
//!
//! Route explanations live in `route::explain`, health checks in `backend::health`, drain in
//! `backend::drain`: they read a runtime, they are not part of it.

mod build;
mod registry;
mod shared;
mod snapshot;
mod zero;

pub use self::build::BuildError;
pub use self::registry::StateRegistry;
pub use self::shared::{ReloadError, Shared};
pub use self::snapshot::{DomainRoute, Runtime};

#[cfg(test)]
mod tests;
