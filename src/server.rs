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

/// The first wait after `accept` fails; it doubles at each failure in a row.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between two `accept` attempts that fail.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
        // Backend groups are looked up before any listener serves (bounded wait).
        let members = crate::discovery::first_lookup(&config, &metrics).await;
        let shared = Arc::new(Shared::with_members(config, members, metrics)?);
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
        tasks.spawn(crate::discovery::run(shared.clone(), shutdown.clone()));
        let (max_connections, grace) = {
            let rt = shared.runtime.load();
            (
                rt.config.limits.max_connections,
                rt.config.limits.shutdown_grace,
            )
        };
        let permits = Arc::new(Semaphore::new(max_connections));
        let connections = tokio_util::task::TaskTracker::new();
        tasks.spawn(sample_overload(shared.clone(), shutdown.clone()));
        for (listener, ctx) in listeners {
            tasks.spawn(accept_loop(
                listener,
                ctx,
                shared.clone(),
                permits.clone(),
                connections.clone(),
                shutdown.clone(),
            ));
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
                // A unit's `ExecReload` sends SIGHUP: systemd hears when the reload starts and
                // ends (a refused file ends it too; the running configuration stays).
                crate::notify::reloading();
                let _outcome = shared.reload().await;
                crate::notify::ready("serving");
            }
        }
    }
}

/// Bind and serve `config` until `shutdown` is cancelled: the library entry point.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    Server::bind(config).await?.run(shutdown).await;
    Ok(())
}

/// Accept on one listener until `shutdown`: one task per connection, at most
/// `max_connections` at once (past it new ones wait in the kernel's backlog), and none while
/// the process is over its memory or descriptor budget (new connections are closed at once).
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    connections: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = %ctx.name, %addr, tls = ?ctx.tls, "listening");
    }
    let metrics = &shared.metrics;
    // Failures in a row, and the wait before the next attempt.
    let mut failing: u64 = 0;
    let mut backoff = ACCEPT_BACKOFF_FIRST;
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
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (or another transient failure): the pending connection
                // stays in the backlog, so retrying at once would spin. Wait, longer each
                // time, and try again; nothing else is needed to recover.
                let kind = accept_error_kind(&e);
                metrics
                    .accept_errors_total
                    .with_label_values(&[&ctx.name, kind])
                    .inc();
                if failing == 0 {
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed; backing off until it works again");
                }
                failing += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if failing > 0 {
            tracing::info!(listener = %ctx.name, failures = failing, "accept works again");
            failing = 0;
            backoff = ACCEPT_BACKOFF_FIRST;
        }
        shared.overload.accepted();
        let over = shared.overload.over(&shared.runtime.load().config.overload);
        if let Some(budget) = over {
            metrics
                .overload_refusals_total
                .with_label_values(&[budget.as_str()])
                .inc();
            metrics
                .listener_refusals_total
                .with_label_values(&[&ctx.name, "overload"])
                .inc();
            drop(tcp);
            continue;
        }
        let shared = shared.clone();
        let ctx = ctx.clone();
        connections.spawn(async move {
            handle(shared, ctx, tcp, peer).await;
            drop(permit);
        });
    }
}

/// The `error` label of `xmpp_lb_accept_errors_total`.
fn accept_error_kind(e: &std::io::Error) -> &'static str {
    // Linux errno values: EMFILE (the process's limit), ENFILE (the system's).
    match e.raw_os_error() {
        Some(24) => "emfile",
        Some(23) => "enfile",
        _ => "other",
    }
}

/// Measure memory and descriptors a few times a second; say when the process goes over its
/// budget and when it is back under (one line each, not one per refused connection); give
/// freed memory back once many connections have closed ([`crate::trim`]).
async fn sample_overload(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut was: Option<crate::overload::Budget> = None;
    let mut trimmer = crate::trim::Trimmer::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::overload::SAMPLE_EVERY) => {}
        }
        shared.overload.sample();
        if trimmer.due(shared.overload.descriptors(), std::time::Instant::now()) {
            crate::trim::release_free_memory().await;
        }
        let config = &shared.runtime.load().config.overload;
        let now = shared.overload.over(config);
        for budget in [
            crate::overload::Budget::Memory,
            crate::overload::Budget::Descriptors,
        ] {
            shared
                .metrics
                .overloaded
                .with_label_values(&[budget.as_str()])
                .set(i64::from(now == Some(budget)));
        }
        match (was, now) {
            (None, Some(budget)) => tracing::warn!(
                budget = budget.as_str(),
                "over the overload budget: new connections are closed at once until it passes"
            ),
            (Some(budget), None) => {
                tracing::info!(budget = budget.as_str(), "back under the overload budget")
            }
            _ => {}
        }
        was = now;
    }
}
