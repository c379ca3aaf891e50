//! The systemd notification protocol (`sd_notify(3)`), for a unit of `Type=notify`.
//!
//! systemd starts the proxy and waits for `READY=1` before it counts the service as started
//! (and starts the units ordered after it); it then expects `RELOADING=1` … `READY=1` around
//! a reload and `STOPPING=1` when the process begins to stop, so `systemctl status` and
//! `systemctl reload` say what the proxy is doing rather than what the process table shows.
//! Each message is a datagram to the socket named by `NOTIFY_SOCKET`; without that variable
//! (the proxy not started by systemd) every function here does nothing.
//!
//! A failed send is logged and otherwise ignored: a proxy that serves clients must not stop
//! because its service manager went away.

use sd_notify::NotifyState;

/// Every listener is bound (a client's connect succeeds from now on): the service has started,
/// or a reload is over.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload of the configuration begins. systemd 253 and later want `MONOTONIC_USEC` with
/// it, the `CLOCK_MONOTONIC` time the reload started, to match it with the reload it asked
/// for; older versions ignore the field.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the monotonic clock for the reload notification");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// The process stops: no new connections, open ones drain within the shutdown grace.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining connections"),
    ]);
}

/// Send one notification, if a service manager listens.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
