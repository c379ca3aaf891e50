//! Opening a connection to the chosen node, falling back along the ring.

use std::time::Instant;

use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::route::pool::Pool;

/// No backend in the preference list could be reached.
#[derive(Debug, thiserror::Error)]
#[error("no backend reachable (tried {tried})")]
pub struct ConnectError {
    /// Names of the backends tried, in order.
    pub tried: String,
}

/// Connect the first reachable backend of `preference` (ring order: home node first).
///
/// A node that refuses or times out is skipped so that only its own users move; the next
/// distinct node on the ring is the same one for every proxy, so a user still lands in one
/// place fleet-wide while its home node is down.
pub async fn connect_first(
    pool: &Pool,
    preference: &[usize],
    timeout: std::time::Duration,
    metrics: &Metrics,
) -> Result<(usize, TcpStream), ConnectError> {
    let mut tried = Vec::new();
    for &i in preference {
        let backend = pool.backend(i);
        let started = Instant::now();
        let attempt = tokio::time::timeout(timeout, TcpStream::connect(backend.address)).await;
        match attempt {
            Ok(Ok(stream)) => {
                metrics
                    .backend_connect_seconds
                    .with_label_values(&[&backend.name])
                    .observe(started.elapsed().as_secs_f64());
                // Stanzas are small and latency-bound; never wait to coalesce them.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(backend = %backend.name, error = %e, "set_nodelay failed");
                }
                return Ok((i, stream));
            }
            Ok(Err(e)) => {
                tracing::warn!(backend = %backend.name, address = %backend.address, error = %e, "backend connect failed");
            }
            Err(_) => {
                tracing::warn!(backend = %backend.name, address = %backend.address, "backend connect timed out");
            }
        }
        metrics
            .backend_connect_failures_total
            .with_label_values(&[&backend.name])
            .inc();
        tried.push(backend.name.clone());
    }
    Err(ConnectError {
        tried: tried.join(", "),
    })
}
