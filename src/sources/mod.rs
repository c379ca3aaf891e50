//! Per-source accounting: what one client address (or network) has open, how fast it opens
//! more, how many of its logins failed, and whether it is banned.
//!
//! The internet decides how many sources there are, so the memory for them is bounded: a
//! source is remembered while it has a connection open (at most `limits.max_connections` of
//! them) and, with none open, only while something about it is worth remembering (a rate
//! bucket not yet refilled, failures in their window, a ban), up to `max_idle_sources`; past
//! that the least recently seen are forgotten. An entry costs under 200 bytes (a unit test
//! keeps it so): the default 65,536 idle sources about 10 MiB at most, and a source with a
//! connection open far less than its connection.
//!
//! One plain mutex guards the table; it is held for a hash lookup and a few additions, never
//! across an `.await`, and only at the moments a connection is accepted, finishes its TLS
//! handshake, logs in or ends.

mod bucket;
mod jids;
mod key;
mod logins;
mod table;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use tokio::time::{Duration, Instant};

use self::jids::JidTable;
use self::key::{allowed, lock};
use self::table::Table;
use crate::config::SourceLimits;
pub use jids::BanScope;
pub(crate) use jids::Verdict;
pub use key::{Limit, source_of};

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
        Ok(Some(SourceTicket {
            sources: self.clone(),
            key,
            unauthenticated: true,
            handshake_token: result?,
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
    /// A TLS handshake token was taken for it and not given back.
    handshake_token: bool,
}

impl SourceTicket {
    /// The TLS handshake is done: a resumed one gives back the handshake token taken at
    /// admission (only a full handshake costs one).
    pub(crate) fn handshook(&mut self, limits: &SourceLimits, full: bool) {
        if !full && std::mem::take(&mut self.handshake_token) {
            lock(&self.sources.table).refund_handshake(limits, self.key, Instant::now());
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
