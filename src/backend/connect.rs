//! Opening a TCP connection to one backend node.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::config::BackendConfig;
use crate::metrics::Metrics;

/// Connect `backend` within `timeout`, with TCP_NODELAY (stanzas are small and
/// latency-bound; never wait to coalesce them). Failures are counted per backend; the caller
/// decides what to try next.
pub async fn connect(
    backend: &BackendConfig,
    timeout: Duration,
    metrics: &Metrics,
) -> std::io::Result<TcpStream> {
    let started = Instant::now();
    let attempt = tokio::time::timeout(timeout, TcpStream::connect(backend.address)).await;
    let result = match attempt {
        Ok(Ok(stream)) => {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(backend = %backend.name, error = %e, "set_nodelay failed");
            }
            metrics
                .backend_connect_seconds
                .with_label_values(&[&backend.name])
                .observe(started.elapsed().as_secs_f64());
            return Ok(stream);
        }
        Ok(Err(e)) => e,
        Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
    };
    metrics
        .backend_connect_failures_total
        .with_label_values(&[&backend.name])
        .inc();
    Err(result)
}
