//! Learning what the backends offer before a client asks.
//!
//! A client that sends no `from` must be shown the SASL mechanisms before it says who it is,
//! and before the proxy has picked a node. It must see exactly what the node would have sent
//! (XEP-0474 hashes that list), so the proxy opens a stream to a backend, records its
//! `<stream:features/>` (filtered, see [`crate::xmpp::features`]) and caches it per domain.
//! The cache is refreshed on a timer and whenever a live login finds a backend offering
//! something else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::link::{Link, Member};
use crate::backend::preamble::{PreambleError, client_header, read_preamble};
use crate::framed::Framed;
use crate::metrics::Metrics;
use crate::xmpp::features::FilteredFeatures;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The node could not be reached over its link.
    #[error("{0}")]
    Connect(#[from] crate::backend::connect::LinkError),
    /// The node's header and features were missing or unusable.
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    /// Writing to the node failed.
    #[error("write: {0}")]
    Write(std::io::Error),
}

/// Open a stream to a node as a client of `domain` would, over the same link real clients
/// get (PROXY header, TLS), and return the node's features: what it offers depends on the
/// link (a node may offer PLAIN only over TLS, and may refuse a connection without the PROXY
/// header it expects).
pub async fn probe(
    address: std::net::SocketAddr,
    link: &Link,
    domain: &str,
    timeout: Duration,
) -> Result<FilteredFeatures, ProbeError> {
    let deadline = Instant::now() + timeout;
    let stream = crate::backend::connect::open(address, link, domain, None, deadline)
        .await
        .map_err(ProbeError::Connect)?;
    // Negotiation-size frames are plenty for a features element.
    let mut framed = Framed::new(stream, 65536);
    framed
        .send(client_header(domain).as_bytes(), timeout)
        .await
        .map_err(ProbeError::Write)?;
    // A probe presents every binding type when the link passes them (see `connect::open`).
    let bound: &[&str] = match link.config.channel_binding {
        crate::config::ChannelBinding::Pass => &[
            crate::channel_binding::TLS_EXPORTER,
            crate::channel_binding::TLS_SERVER_END_POINT,
        ],
        crate::config::ChannelBinding::Off => &[],
    };
    let (_, features) = read_preamble(&mut framed, deadline, bound).await?;
    // Leave politely: this was never a session.
    let _closed = framed
        .send(b"</stream:stream>", Duration::from_millis(200))
        .await;
    Ok(features)
}

/// The features each domain's clients are shown before routing, learned from the backends.
pub struct FeatureCache {
    /// Domain → features the backends offer for it.
    by_domain: RwLock<HashMap<String, Arc<FilteredFeatures>>>,
    /// Domain → its probe in flight. With the cache cold and the nodes down, every new client
    /// would otherwise start its own round of probes to every node.
    flights: Mutex<HashMap<String, Arc<Flight>>>,
}

/// One domain's probing: one round at a time; those who waited for a round take its answer.
#[derive(Default)]
struct Flight {
    /// Held while a round of probes runs.
    running: tokio::sync::Mutex<()>,
    /// Rounds finished so far.
    rounds: AtomicU64,
}

impl Default for FeatureCache {
    fn default() -> Self {
        FeatureCache::new()
    }
}

impl FeatureCache {
    /// An empty cache.
    pub fn new() -> Self {
        FeatureCache {
            by_domain: RwLock::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The features cached for `domain`, if any.
    fn cached(&self, domain: &str) -> Option<Arc<FilteredFeatures>> {
        self.by_domain
            .read()
            .expect("cache lock")
            .get(domain)
            .cloned()
    }

    /// The cached features of `domain`, probing the backends (config order) if none are known.
    pub async fn get(
        &self,
        backends: &[Member],
        domain: &str,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Option<Arc<FilteredFeatures>> {
        if let Some(f) = self.cached(domain) {
            return Some(f);
        }
        self.refresh(backends, domain, timeout, metrics).await
    }

    /// Probe the backends of `domain` in config order until one answers; cache and return it.
    /// One round per domain at a time: a caller that finds a round running waits for it and
    /// takes its answer (the cache, or `None` if every node failed) instead of probing again.
    pub async fn refresh(
        &self,
        backends: &[Member],
        domain: &str,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Option<Arc<FilteredFeatures>> {
        let flight = self
            .flights
            .lock()
            .expect("flights lock")
            .entry(domain.to_string())
            .or_default()
            .clone();
        let before = flight.rounds.load(Ordering::Acquire);
        let _running = flight.running.lock().await;
        if flight.rounds.load(Ordering::Acquire) != before {
            return self.cached(domain);
        }
        let found = self.probe_round(backends, domain, timeout, metrics).await;
        flight.rounds.fetch_add(1, Ordering::Release);
        found
    }

    /// One round: probe the backends in config order until one answers.
    async fn probe_round(
        &self,
        backends: &[Member],
        domain: &str,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Option<Arc<FilteredFeatures>> {
        for Member {
            name,
            address,
            link,
        } in backends
        {
            match probe(*address, link, domain, timeout).await {
                Ok(features) => {
                    metrics.probes_total.with_label_values(&[name, "ok"]).inc();
                    let features = Arc::new(features);
                    let previous = self
                        .by_domain
                        .write()
                        .expect("cache lock")
                        .insert(domain.to_string(), features.clone());
                    if previous.is_some_and(|p| p.mechanisms != features.mechanisms) {
                        tracing::info!(domain, backend = %name, mechanisms = ?features.mechanisms, "backend SASL mechanisms changed");
                    }
                    return Some(features);
                }
                Err(e) => {
                    metrics
                        .probes_total
                        .with_label_values(&[name, "failed"])
                        .inc();
                    tracing::warn!(domain, backend = %name, error = %e, "feature probe failed");
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn a_cold_cache_probes_once_however_many_clients_wait() {
        // A node that accepts and never answers (the worst case: every probe runs to its
        // timeout).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let node = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(tcp);
            }
        });
        let cache = Arc::new(FeatureCache::new());
        let metrics = Arc::new(Metrics::new());
        let members = vec![Member {
            name: "node1".into(),
            address,
            link: Arc::new(Link::plain()),
        }];
        let clients: Vec<_> = (0..20)
            .map(|_| {
                let (cache, metrics, members) = (cache.clone(), metrics.clone(), members.clone());
                tokio::spawn(async move {
                    cache
                        .get(
                            &members,
                            "example.test",
                            Duration::from_millis(300),
                            &metrics,
                        )
                        .await
                })
            })
            .collect();
        for c in clients {
            assert!(c.await.unwrap().is_none());
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one probe for 20 clients"
        );
        node.abort();
    }
}
