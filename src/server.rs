//! Binding listeners and accepting connections.
//!
//! The accept loop only accepts: the TLS handshake and everything after it run in the spawned
//! connection task, so one slow client never stalls new ones. A semaphore caps open
//! connections; past the cap new connections wait in the kernel backlog instead of exhausting
//! file descriptors. Shutdown stops accepting and waits for every connection task to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connection::{ListenerCtx, handle};
use crate::metrics::Metrics;
use crate::runtime::Shared;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener or the metrics address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The configuration could not be put into service (certificates, pins, policies).
    #[error(transparent)]
    Build(#[from] crate::runtime::BuildError),
}

/// A proxy whose sockets are bound but which does not accept yet; tests read the bound
/// addresses (port 0 becomes a real port) before starting it.
pub struct Server {
    /// State every connection shares.
    shared: Arc<Shared>,
    /// Bound client listeners with the context their connections get.
    listeners: Vec<(TcpListener, Arc<ListenerCtx>)>,
    /// Bound metrics/admin listener.
    admin: Option<TcpListener>,
}

impl Server {
    /// Load certificates and bind every address of the configuration.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let ctx = Arc::new(ListenerCtx {
                name: l.name.clone(),
                tls: l.tls,
            });
            for addr in &l.bind {
                let socket = bind(*addr).map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
                listeners.push((socket, ctx.clone()));
            }
        }
        let admin = match config.metrics_bind {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared::new(config, metrics)?);
        Ok(Server {
            shared,
            listeners,
            admin,
        })
    }

    /// The process-wide state (tests reload, drain and inspect through it).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The bound client addresses, per listener name, in config order.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, ctx)| Some((ctx.name.clone(), l.local_addr().ok()?)))
            .collect()
    }

    /// The bound metrics address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accept and serve until `shutdown` is cancelled; then stop accepting and wait for open
    /// connections to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let Server {
            shared,
            listeners,
            admin,
        } = self;
        let mut tasks = JoinSet::new();
        if let Some(admin) = admin {
            tasks.spawn(crate::admin::serve(admin, shared.clone(), shutdown.clone()));
        }
        tasks.spawn(refresh_features(shared.clone(), shutdown.clone()));
        tasks.spawn(crate::backend::health::run(
            shared.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(reload_on_sighup(shared.clone(), shutdown.clone()));
        let (max_connections, grace) = {
            let rt = shared.runtime.load();
            (
                rt.config.limits.max_connections,
                rt.config.limits.shutdown_grace,
            )
        };
        let permits = Arc::new(Semaphore::new(max_connections));
        let connections = tokio_util::task::TaskTracker::new();
        for (listener, ctx) in listeners {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let permits = permits.clone();
            let connections = connections.clone();
            tasks.spawn(async move {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(listener = %ctx.name, %addr, tls = ?ctx.tls, "listening");
                }
                loop {
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    };
                    let accepted = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        a = listener.accept() => a,
                    };
                    match accepted {
                        Ok((tcp, peer)) => {
                            let shared = shared.clone();
                            let ctx = ctx.clone();
                            connections.spawn(async move {
                                handle(shared, ctx, tcp, peer).await;
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            // EMFILE and friends: back off briefly rather than spin.
                            tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        // Every socket was bound by `bind` and each has its accept loop now: ready.
        shared
            .accepting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        shutdown.cancelled().await;
        // Not ready any more, so load balancers stop sending new clients while we drain.
        shared
            .accepting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        connections.close();
        // Stop accepting (the accept loops saw the signal); let logins in progress finish for
        // up to half the grace; then ask every relayed client to leave (`<system-shutdown/>`,
        // its XEP-0198 session left resumable on the node) and wait out the rest.
        let started = tokio::time::Instant::now();
        let deadline = started + grace;
        while shared
            .negotiating
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && started.elapsed() < grace / 2
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.interrupt_all.cancel();
        if tokio::time::timeout_at(deadline, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "shutdown grace over; the remaining connections are dropped"
            );
        }
        tasks.shutdown().await;
    }
}

/// Bind with `SO_REUSEADDR` (restart without waiting for TIME_WAIT) and, for IPv6, `IPV6_V6ONLY`
/// so `[::]` and `0.0.0.0` can be listed side by side; backlog 1024 for login bursts.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Keep each domain's cached features fresh, so a node reconfigured with other mechanisms is
/// noticed without waiting for a mismatched login.
async fn refresh_features(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let rt = shared.runtime.load_full();
        for domain in rt.domains.keys() {
            let members = rt.members_of(domain);
            shared
                .features
                .refresh(&members, domain, rt.config.probe.timeout, &shared.metrics)
                .await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(rt.config.probe.interval) => {}
        }
    }
}

/// SIGHUP re-reads the configuration file (a bad file is logged and counted, never applied).
async fn reload_on_sighup(shared: Arc<Shared>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload via the admin endpoint only");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let _outcome = shared.reload().await;
            }
        }
    }
}

/// Bind and serve `config` until `shutdown` is cancelled: the library entry point.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Server::bind(config).await?.run(shutdown).await;
    Ok(())
}
