//! The table of sources: one entry per client network, its open connections, rates,
//! failures and ban, bounded in size.

use std::collections::HashMap;

use ipnet::IpNet;
use tokio::time::Instant;

use super::bucket::{Bucket, Window};
use super::key::Limit;
use crate::config::SourceLimits;

/// One source's accounting.
#[derive(Debug)]
pub(super) struct Entry {
    /// Connections open.
    open: u32,
    /// Of those, not yet logged in.
    unauthenticated: u32,
    /// New connections.
    connects: Bucket,
    /// Full TLS handshakes.
    handshakes: Bucket,
    /// Failed logins.
    pub(super) failures: Window,
    /// Refused until then.
    pub(super) banned_until: Option<Instant>,
    /// The last time it connected or failed a login.
    pub(super) seen: Instant,
}

impl Entry {
    fn new(limits: &SourceLimits, now: Instant) -> Entry {
        Entry {
            open: 0,
            unauthenticated: 0,
            connects: Bucket::full(limits.connections_burst, now),
            handshakes: Bucket::full(limits.tls_handshakes_burst, now),
            failures: Window::default(),
            banned_until: None,
            seen: now,
        }
    }

    /// Banned at `now`.
    pub(super) fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|until| now < until)
    }

    /// Nothing about this source is worth keeping: no connection, full buckets, no failure
    /// in its window, no ban.
    fn forgettable(&self, limits: &SourceLimits, now: Instant) -> bool {
        self.open == 0
            && self
                .connects
                .is_full(limits.connections_per_second, limits.connections_burst, now)
            && self.handshakes.is_full(
                limits.tls_handshakes_per_second,
                limits.tls_handshakes_burst,
                now,
            )
            && self.failures.count(limits.logins.window, now) == 0
            && !self.banned(now)
    }
}

/// Sources by network, and how many of them have no connection open.
#[derive(Default)]
pub(super) struct Table {
    entries: HashMap<IpNet, Entry>,
    /// Entries with `open == 0`.
    idle: usize,
}

impl Table {
    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry of `key`, made if new (a new entry is idle until a connection is counted).
    pub(super) fn entry(&mut self, limits: &SourceLimits, key: IpNet, now: Instant) -> &mut Entry {
        let idle = &mut self.idle;
        self.entries.entry(key).or_insert_with(|| {
            *idle += 1;
            Entry::new(limits, now)
        })
    }

    /// The entry of `key`, if there is one.
    pub(super) fn get_mut(&mut self, key: &IpNet) -> Option<&mut Entry> {
        self.entries.get_mut(key)
    }

    /// Count a new connection from `key`, or say which limit it is over. `Ok(true)`: a TLS
    /// handshake token was taken for it.
    pub(super) fn admit(
        &mut self,
        limits: &SourceLimits,
        key: IpNet,
        tls: bool,
        now: Instant,
    ) -> Result<bool, Limit> {
        let e = self.entry(limits, key, now);
        e.seen = now;
        if e.banned(now) {
            return Err(Limit::Banned);
        }
        if limits.max_connections > 0 && e.open >= limits.max_connections {
            return Err(Limit::Connections);
        }
        if limits.max_unauthenticated > 0 && e.unauthenticated >= limits.max_unauthenticated {
            return Err(Limit::Unauthenticated);
        }
        if limits.connections_per_second > 0.0
            && !e
                .connects
                .take(limits.connections_per_second, limits.connections_burst, now)
        {
            return Err(Limit::ConnectionRate);
        }
        // Taken now, given back if the handshake resumes a session: checking here and
        // spending after the handshake would let a burst of parallel connections all pass
        // the check before the first of them spent anything.
        let token = tls && limits.tls_handshakes_per_second > 0.0;
        if token
            && !e.handshakes.take(
                limits.tls_handshakes_per_second,
                limits.tls_handshakes_burst,
                now,
            )
        {
            return Err(Limit::TlsHandshakeRate);
        }
        let was_idle = e.open == 0;
        e.open += 1;
        e.unauthenticated += 1;
        if was_idle {
            self.idle -= 1;
        }
        Ok(token)
    }

    /// A connection from `key` resumed a TLS session: the handshake token taken at admission
    /// goes back.
    pub(super) fn refund_handshake(&mut self, limits: &SourceLimits, key: IpNet, now: Instant) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.handshakes.refund(
                limits.tls_handshakes_per_second,
                limits.tls_handshakes_burst,
                now,
            );
        }
    }

    /// A connection from `key` logged in.
    pub(super) fn authenticated(&mut self, key: IpNet) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.unauthenticated = e.unauthenticated.saturating_sub(1);
        }
    }

    /// A connection from `key` ended.
    pub(super) fn release(&mut self, key: IpNet, unauthenticated: bool, now: Instant) {
        if let Some(e) = self.entries.get_mut(&key) {
            if unauthenticated {
                e.unauthenticated = e.unauthenticated.saturating_sub(1);
            }
            e.open = e.open.saturating_sub(1);
            e.seen = now;
            if e.open == 0 {
                self.idle += 1;
            }
        }
    }

    /// Keep the idle entries within `max_idle_sources`: first forget those with nothing worth
    /// keeping, then, if still over, the least recently seen down to three quarters of the
    /// bound (so that the next sweep is far away and sweeping stays cheap on average).
    pub(super) fn bound(&mut self, limits: &SourceLimits, now: Instant) {
        let max = limits.max_idle_sources;
        if self.idle <= max {
            return;
        }
        self.entries.retain(|_, e| !e.forgettable(limits, now));
        self.idle = self.entries.values().filter(|e| e.open == 0).count();
        if self.idle <= max {
            return;
        }
        let keep = max * 3 / 4;
        let mut seen: Vec<Instant> = self
            .entries
            .values()
            .filter(|e| e.open == 0)
            .map(|e| e.seen)
            .collect();
        let cut = seen.len() - keep;
        let (_, oldest_kept, _) = seen.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        let mut forget = cut;
        self.entries.retain(|_, e| {
            if forget > 0 && e.open == 0 && e.seen <= oldest_kept {
                forget -= 1;
                return false;
            }
            true
        });
        self.idle = self.entries.values().filter(|e| e.open == 0).count();
    }
}
