//! Failed logins per claimed account, and what a login attempt is told. An account is kept
//! only as a keyed hash of its bare JID (never the JID itself, which is personal data and
//! never logged here).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use tokio::time::{Duration, Instant};

use super::bucket::Window;
use crate::config::LoginLimits;

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
pub(super) struct JidEntry {
    pub(super) failures: Window,
    pub(super) banned_until: Option<Instant>,
    pub(super) seen: Instant,
}

/// Accounts by keyed hash, bounded by `max_jids`.
#[derive(Default)]
pub(super) struct JidTable {
    pub(super) entries: HashMap<u64, JidEntry>,
    /// Keyed per process, so that nobody can aim collisions at an account.
    hasher: RandomState,
}

impl JidTable {
    pub(super) fn key(&self, jid: &str) -> u64 {
        self.hasher.hash_one(jid)
    }

    /// Keep at most `max_jids`: first forget accounts with nothing in their window and no
    /// ban, then the least recently seen down to three quarters of the bound.
    pub(super) fn bound(&mut self, limits: &LoginLimits, now: Instant) {
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
pub(super) fn wait_for(failures: u32, after: u32, limits: &LoginLimits) -> Duration {
    if after == 0 || failures < after {
        return Duration::ZERO;
    }
    let steps = failures - after + 1;
    limits.delay.saturating_mul(steps).min(limits.max_delay)
}

#[cfg(test)]
impl JidTable {
    /// Accounts held.
    pub(super) fn entries_len(&self) -> usize {
        self.entries.len()
    }
}
