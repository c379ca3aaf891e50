//! Socket options every relayed connection gets, on both sides.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle time before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between two probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Probes unanswered before the kernel gives the connection up.
const KEEPALIVE_PROBES: u32 = 6;

/// TCP keepalive: a peer whose host vanished (power cut, network gone, no reset ever sent)
/// is noticed within two minutes of silence instead of the hours the kernel default takes,
/// so an idle session never holds two descriptors for a dead device or node. A peer that is
/// alive but stopped (a hung process) still answers probes: the write timeout and the
/// health checks catch that one.
pub(crate) fn keepalive(tcp: &TcpStream) {
    let params = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = SockRef::from(tcp).set_tcp_keepalive(&params) {
        tracing::debug!(error = %e, "TCP keepalive not set");
    }
}
