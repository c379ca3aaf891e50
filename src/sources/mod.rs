//! Per-source accounting: what one client address (or network) has open, how fast it opens
//! more, how many of its logins failed, and whether it is banned.
//!
//! The internet decides how many sources there are, so the memory for them is bounded: a
//! source is remembered while it has a connection open (at most `limits.max_connections` of
//! them) and, with none open, only while something about it is worth remembering (a rate
//! bucket not yet refilled, failures in their window, a ban), up to `max_idle_sources`; past
//! that the least recently seen are forgotten. An entry is under a hundred bytes.
//!
//! One plain mutex guards the table; it is held for a hash lookup and a few additions, never
//! across an `.await`, and only at the moments a connection is accepted, finishes its TLS
//! handshake, logs in or ends.

mod bucket;
mod logins;
mod table;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ipnet::IpNet;
use tokio::time::{Duration, Instant};

use self::logins::JidTable;
use self::table::Table;
pub use logins::BanScope;
pub(crate) use logins::Verdict;
use crate::config::SourceLimits;

/// Which limit refused a connection: the `limit` label of
/// `xmpp_lb_source_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections` open from the source.
    Connections,
    /// `max_unauthenticated` not yet logged in from the source.
    Unauthenticated,
    /// `connections_per_second` exceeded.
    ConnectionRate,
    /// `tls_handshakes_per_second` exceeded.
    TlsHandshakeRate,
    /// The source is banned for failed logins.
    Banned,
}

impl Limit {
    /// Every limit, for metrics exported at zero.
    pub const ALL: [Limit; 5] = [
        Limit::Connections,
        Limit::Unauthenticated,
        Limit::ConnectionRate,
        Limit::TlsHandshakeRate,
        Limit::Banned,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Unauthenticated => "unauthenticated",
            Limit::ConnectionRate => "connection_rate",
            Limit::TlsHandshakeRate => "tls_handshake_rate",
            Limit::Banned => "banned",
        }
    }

    /// What the client is told, where it can be told (a `<policy-violation/>` text).
    pub fn text(self) -> &'static str {
        match self {
            Limit::Connections => "too many connections from your network",
            Limit::Unauthenticated => "too many connections from your network still logging in",
            Limit::ConnectionRate => "too many new connections from your network; slow down",
            Limit::TlsHandshakeRate => "too many TLS handshakes from your network; slow down",
            Limit::Banned => "too many failed logins from your network; try again later",
        }
    }
}

/// How often, at most, refusals are logged (each line says how many it stands for).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Every source's accounting, process-wide (it outlives reloads; the limits are read from the
/// configuration at each decision).
pub struct Sources {
    /// Sources by network.
    table: Mutex<Table>,
    /// Failed logins by claimed account.
    jids: Mutex<JidTable>,
    /// Refusals since the last log line.
    report: Mutex<Report>,
    /// `xmpp_lb_sources_tracked`.
    tracked: prometheus::IntGauge,
}

/// Refusals not yet logged.
#[derive(Default)]
struct Report {
    /// When the last line was written.
    last: Option<Instant>,
    /// Refusals since.
    refused: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The source `ip` belongs to under `limits`: its network, cut to the configured prefix.
pub fn source_of(limits: &SourceLimits, ip: IpAddr) -> IpNet {
    // An IPv4 client reaching an IPv6 socket is still an IPv4 client.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let prefix = match ip {
        IpAddr::V4(_) => limits.ipv4_prefix,
        IpAddr::V6(_) => limits.ipv6_prefix,
    };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// Whether `ip` is on the allow-list (no per-source limit or source ban applies).
fn allowed(limits: &SourceLimits, ip: IpAddr) -> bool {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    limits
        .allow
        .iter()
        .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}

impl Sources {
    /// An empty table that keeps `tracked` up to date.
    pub fn new(tracked: prometheus::IntGauge) -> Sources {
        Sources {
            table: Mutex::new(Table::default()),
            jids: Mutex::new(JidTable::default()),
            report: Mutex::new(Report::default()),
            tracked,
        }
    }

    /// A new connection from `ip`, which will make a TLS handshake if `tls`: admitted (with a
    /// ticket that counts it until dropped; `None` for an allow-listed source), or the limit
    /// it is over.
    pub(crate) fn admit(
        self: &Arc<Self>,
        limits: &SourceLimits,
        ip: IpAddr,
        tls: bool,
        now: Instant,
    ) -> Result<Option<SourceTicket>, Limit> {
        if allowed(limits, ip) {
            return Ok(None);
        }
        let key = source_of(limits, ip);
        let mut table = lock(&self.table);
        let result = table.admit(limits, key, tls, now);
        table.bound(limits, now);
        self.tracked.set(table.len() as i64);
        drop(table);
        result?;
        Ok(Some(SourceTicket {
            sources: self.clone(),
            key,
            unauthenticated: true,
        }))
    }

    /// Log a refusal, at most one line per [`REPORT_EVERY`] for all of them.
    pub(crate) fn report(&self, limit: Limit, ip: IpAddr, limits: &SourceLimits) {
        let now = Instant::now();
        let mut report = lock(&self.report);
        report.refused += 1;
        if report
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= REPORT_EVERY)
        {
            tracing::warn!(
                limit = limit.as_str(),
                source = %source_of(limits, ip),
                refused = report.refused,
                "connections refused by per-source limits (this one, and all since the last such line)"
            );
            report.last = Some(now);
            report.refused = 0;
        }
    }
}

/// One admitted connection's place in its source's counts; dropping it gives the place back.
pub(crate) struct SourceTicket {
    /// Where the counts live.
    sources: Arc<Sources>,
    /// The source.
    key: IpNet,
    /// Still counted as not logged in.
    unauthenticated: bool,
}

impl SourceTicket {
    /// The TLS handshake is done; a full one (not resumed) costs a handshake token.
    pub(crate) fn handshook(&self, limits: &SourceLimits, full: bool) {
        if full && limits.tls_handshakes_per_second > 0.0 {
            lock(&self.sources.table).spend_handshake(limits, self.key, Instant::now());
        }
    }

    /// The client logged in: it no longer counts against `max_unauthenticated`.
    pub(crate) fn authenticated(&mut self) {
        if std::mem::take(&mut self.unauthenticated) {
            lock(&self.sources.table).authenticated(self.key);
        }
    }
}

impl Drop for SourceTicket {
    fn drop(&mut self) {
        lock(&self.sources.table).release(self.key, self.unauthenticated, Instant::now());
    }
}

#[cfg(test)]
mod tests;
