//! Failed logins: counted per source and per claimed account, slowing and then refusing
//! whoever keeps failing. Successes forget the failures; bans given stay for their time.

use std::net::IpAddr;

use tokio::time::{Duration, Instant};

use super::Sources;
use super::bucket::Window;
use super::jids::{BanScope, JidEntry, Verdict, wait_for};
use super::key::{allowed, lock, source_of};
use crate::config::SourceLimits;

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
            if l.jid_ban_after > 0
                && n >= l.jid_ban_after
                && e.banned_until.is_none_or(|u| now >= u)
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
