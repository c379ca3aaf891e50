//! Failed logins: counted per source and per claimed account, slowing and then refusing
//! whoever keeps failing. An account is kept only as a keyed hash of its bare JID (never the
//! JID itself, which is personal data and never logged here).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

use tokio::time::{Duration, Instant};

use super::bucket::Window;
use super::{Sources, allowed, lock, source_of};
use crate::config::{LoginLimits, SourceLimits};

/// What to do with a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let it through now.
    Go,
    /// Let it through after this long.
    Wait(Duration),
    /// Refuse it: its source or its account is banned.
    Banned,
}

/// Who a new ban is on (the `scope` label of `xmpp_lb_login_bans_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanScope {
    /// A client network.
    Source,
    /// An account.
    Jid,
}

impl BanScope {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BanScope::Source => "source",
            BanScope::Jid => "jid",
        }
    }
}

/// One account's failures.
struct JidEntry {
    failures: Window,
    banned_until: Option<Instant>,
    seen: Instant,
}

/// Accounts by keyed hash, bounded by `max_jids`.
#[derive(Default)]
pub(super) struct JidTable {
    entries: HashMap<u64, JidEntry>,
    /// Keyed per process, so that nobody can aim collisions at an account.
    hasher: RandomState,
}

impl JidTable {
    fn key(&self, jid: &str) -> u64 {
        self.hasher.hash_one(jid)
    }

    /// Keep at most `max_jids`: first forget accounts with nothing in their window and no
    /// ban, then the least recently seen down to three quarters of the bound.
    fn bound(&mut self, limits: &LoginLimits, now: Instant) {
        if self.entries.len() < limits.max_jids {
            return;
        }
        self.entries.retain(|_, e| {
            e.failures.count(limits.window, now) > 0 || e.banned_until.is_some_and(|u| now < u)
        });
        if self.entries.len() < limits.max_jids {
            return;
        }
        let keep = limits.max_jids * 3 / 4;
        let mut seen: Vec<Instant> = self.entries.values().map(|e| e.seen).collect();
        let mut forget = seen.len() - keep;
        let (_, oldest_kept, _) = seen.select_nth_unstable(forget);
        let oldest_kept = *oldest_kept;
        self.entries.retain(|_, e| {
            if forget > 0 && e.seen <= oldest_kept {
                forget -= 1;
                return false;
            }
            true
        });
    }
}

/// The wait for an attempt after `failures`, past `after` (0: never).
fn wait_for(failures: u32, after: u32, limits: &LoginLimits) -> Duration {
    if after == 0 || failures < after {
        return Duration::ZERO;
    }
    let steps = failures - after + 1;
    limits.delay.saturating_mul(steps).min(limits.max_delay)
}

impl Sources {
    /// A login attempt from `ip`, naming `jid` if it names anyone.
    pub(crate) fn login_attempt(
        &self,
        limits: &SourceLimits,
        ip: IpAddr,
        jid: Option<&str>,
        now: Instant,
    ) -> Verdict {
        let l = &limits.logins;
        let mut wait = Duration::ZERO;
        if !allowed(limits, ip) {
            let mut table = lock(&self.table);
            if let Some(e) = table.get_mut(&source_of(limits, ip)) {
                if e.banned(now) {
                    return Verdict::Banned;
                }
                wait = wait_for(e.failures.count(l.window, now), l.delay_after, l);
            }
        }
        if let Some(jid) = jid {
            let jids = lock(&self.jids);
            if let Some(e) = jids.entries.get(&jids.key(jid)) {
                if e.banned_until.is_some_and(|u| now < u) {
                    return Verdict::Banned;
                }
                wait = wait.max(wait_for(
                    e.failures.count(l.window, now),
                    l.jid_delay_after,
                    l,
                ));
            }
        }
        if wait.is_zero() {
            Verdict::Go
        } else {
            Verdict::Wait(wait)
        }
    }

    /// The node failed a login from `ip` naming `jid`. Returns the bans this failure started.
    pub(crate) fn login_failed(
        &self,
        limits: &SourceLimits,
        ip: IpAddr,
        jid: Option<&str>,
        now: Instant,
    ) -> Vec<BanScope> {
        let l = &limits.logins;
        let mut bans = Vec::new();
        if !allowed(limits, ip) {
            let mut table = lock(&self.table);
            let e = table.entry(limits, source_of(limits, ip), now);
            e.seen = now;
            let n = e.failures.add(l.window, now);
            if l.ban_after > 0 && n >= l.ban_after && !e.banned(now) {
                e.banned_until = Some(now + l.ban_time);
                e.failures.clear();
                bans.push(BanScope::Source);
            }
            table.bound(limits, now);
        }
        if let Some(jid) = jid
            && (l.jid_delay_after > 0 || l.jid_ban_after > 0)
        {
            let mut jids = lock(&self.jids);
            jids.bound(l, now);
            let key = jids.key(jid);
            let e = jids.entries.entry(key).or_insert(JidEntry {
                failures: Window::default(),
                banned_until: None,
                seen: now,
            });
            e.seen = now;
            let n = e.failures.add(l.window, now);
            if l.jid_ban_after > 0 && n >= l.jid_ban_after && e.banned_until.is_none_or(|u| now >= u)
            {
                e.banned_until = Some(now + l.ban_time);
                e.failures.clear();
                bans.push(BanScope::Jid);
            }
        }
        bans
    }

    /// A login from `ip` naming `jid` succeeded: its source's and its account's failures are
    /// forgotten (a ban already given stays).
    pub(crate) fn login_succeeded(&self, limits: &SourceLimits, ip: IpAddr, jid: Option<&str>) {
        if !allowed(limits, ip)
            && let Some(e) = lock(&self.table).get_mut(&source_of(limits, ip))
        {
            e.failures.clear();
        }
        if let Some(jid) = jid {
            let mut jids = lock(&self.jids);
            let key = jids.key(jid);
            if let Some(e) = jids.entries.get_mut(&key) {
                e.failures.clear();
            }
        }
    }
}

#[cfg(test)]
impl JidTable {
    /// Accounts held.
    pub(super) fn entries_len(&self) -> usize {
        self.entries.len()
    }
}
