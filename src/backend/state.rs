//! What the proxy knows about a backend while it runs: health, drain, load, and the
//! connections relayed to it.
//!
//! One [`BackendState`] exists per backend *name* and outlives configuration reloads, so a
//! reload that reweights a node neither forgets that it is down nor loses the connections
//! that drain must move. Everything here is shared by every connection task and the health
//! checker, so it is atomics and short critical sections only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Live state of one backend.
pub struct BackendState {
    /// The backend's name (stable across reloads).
    pub name: String,
    /// Passing health checks (optimistic at start: a node is tried until it fails).
    healthy: AtomicBool,
    /// Draining: takes no new logins.
    draining: AtomicBool,
    /// Consecutive check results: (successes, failures).
    streak: Mutex<(u32, u32)>,
    /// The last active health check, for the status page (none before the first).
    last_check: Mutex<Option<CheckResult>>,
    /// Client connections routed here and not closed yet (bounded-load input).
    active: AtomicUsize,
    /// Relayed connections that can be told to leave (drain, shutdown), by id, with whether
    /// they are pinned here (a drain cannot move those: they would come straight back).
    relays: Mutex<HashMap<u64, (oneshot::Sender<Command>, bool)>>,
    /// Source of relay ids.
    next_id: AtomicU64,
    /// Login-storm shaping for this backend.
    pub admission: crate::backend::admission::Admission,
}

/// What a relayed connection is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Its node is draining: send the client elsewhere (`<see-other-host/>`), end the session.
    Drain,
    /// The proxy is stopping: `<system-shutdown/>`, session left resumable.
    Shutdown,
    /// Its node failed its health checks: send the client back to the proxy
    /// (`<see-other-host/>`), leave the session on the node resumable.
    NodeDown,
}

/// What the last active health check of a node found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Whether the node answered with a stream header and features in time.
    pub ok: bool,
    /// How long the check took (to the answer, or to the failure).
    pub latency: std::time::Duration,
    /// When it finished.
    pub at: std::time::SystemTime,
    /// Why it failed (empty when it passed).
    pub error: String,
}

/// A health transition caused by one check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The node went from healthy to unhealthy.
    Down,
    /// The node went from unhealthy to healthy.
    Up,
}

impl BackendState {
    /// A fresh state: healthy, not draining, idle.
    pub fn new(
        name: &str,
        admission: crate::backend::admission::AdmissionConfig,
    ) -> Arc<BackendState> {
        Arc::new(BackendState {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            streak: Mutex::new((0, 0)),
            last_check: Mutex::new(None),
            active: AtomicUsize::new(0),
            relays: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            admission: crate::backend::admission::Admission::new(admission),
        })
    }

    /// Whether health checks (and recent connects) say the node works.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the node is being drained.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start or stop draining; returns the previous value.
    pub fn set_draining(&self, on: bool) -> bool {
        self.draining.swap(on, Ordering::Relaxed)
    }

    /// Whether new logins may go here.
    pub fn accepts_logins(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    /// Count one check (active probe or a real connection attempt). `rise` consecutive
    /// successes make an unhealthy node healthy, `fall` consecutive failures the reverse, so
    /// one lost packet does not move users.
    pub fn record(&self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        let mut streak = self.streak.lock().expect("streak lock");
        if ok {
            streak.0 = streak.0.saturating_add(1);
            streak.1 = 0;
            if !self.is_healthy() && streak.0 >= rise.max(1) {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(Transition::Up);
            }
        } else {
            streak.1 = streak.1.saturating_add(1);
            streak.0 = 0;
            if self.is_healthy() && streak.1 >= fall.max(1) {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(Transition::Down);
            }
        }
        None
    }

    /// Consecutive check results now: (successes, failures); one of them is 0.
    pub fn streak(&self) -> (u32, u32) {
        *self.streak.lock().expect("streak lock")
    }

    /// Keep the result of an active check (only the last one is kept).
    pub fn note_check(&self, result: CheckResult) {
        *self.last_check.lock().expect("check lock") = Some(result);
    }

    /// The last active check, if one has finished.
    pub fn last_check(&self) -> Option<CheckResult> {
        self.last_check.lock().expect("check lock").clone()
    }

    /// Client connections routed here now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Count a connection as routed here until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Register a relayed connection that may be interrupted; it stays registered until the
    /// returned guard drops.
    pub fn register_relay(
        self: &Arc<Self>,
        pinned: bool,
    ) -> (RelayRegistration, oneshot::Receiver<Command>) {
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.relays
            .lock()
            .expect("relays lock")
            .insert(id, (tx, pinned));
        (
            RelayRegistration {
                state: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Ask up to `n` relayed connections that are not pinned here to act on `command`;
    /// returns how many were asked.
    pub fn interrupt_some(&self, n: usize, command: Command) -> usize {
        let picked: Vec<oneshot::Sender<Command>> = {
            let mut relays = self.relays.lock().expect("relays lock");
            let ids: Vec<u64> = relays
                .iter()
                .filter(|(_, (_, pinned))| !pinned)
                .map(|(id, _)| *id)
                .take(n)
                .collect();
            ids.iter()
                .filter_map(|id| relays.remove(id))
                .map(|(tx, _)| tx)
                .collect()
        };
        let mut asked = 0;
        for tx in picked {
            if tx.send(command).is_ok() {
                asked += 1;
            }
        }
        asked
    }

    /// Ask every relayed connection, pinned or not, to act on `command`; returns how many
    /// were asked.
    pub fn interrupt_all(&self, command: Command) -> usize {
        let all: Vec<oneshot::Sender<Command>> = {
            let mut relays = self.relays.lock().expect("relays lock");
            relays.drain().map(|(_, (tx, _))| tx).collect()
        };
        all.into_iter()
            .filter_map(|tx| tx.send(command).ok())
            .count()
    }

    /// Relayed connections registered now.
    pub fn relays(&self) -> usize {
        self.relays.lock().expect("relays lock").len()
    }

    /// Relayed connections a drain can move (not pinned here).
    pub fn movable_relays(&self) -> usize {
        self.relays
            .lock()
            .expect("relays lock")
            .values()
            .filter(|(_, pinned)| !pinned)
            .count()
    }
}

/// Keeps a connection counted in [`BackendState::active`].
pub struct ActiveGuard(Arc<BackendState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps a relay registered for interrupts.
pub struct RelayRegistration {
    state: Arc<BackendState>,
    id: u64,
}

impl Drop for RelayRegistration {
    fn drop(&mut self) {
        self.state
            .relays
            .lock()
            .expect("relays lock")
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::admission::AdmissionConfig;

    fn state() -> Arc<BackendState> {
        BackendState::new(
            "n",
            AdmissionConfig {
                max_negotiations: None,
                max_logins_per_second: None,
                queue: 10,
                queue_timeout: std::time::Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        let s = state();
        assert!(s.is_healthy());
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(
            s.record(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), None);
        assert_eq!(s.record(false, 2, 3), Some(Transition::Down));
        assert!(!s.is_healthy() && !s.accepts_logins());
        assert_eq!(s.record(true, 2, 3), None);
        assert_eq!(s.record(true, 2, 3), Some(Transition::Up));
        assert!(s.accepts_logins());
    }

    #[test]
    fn guards_count_and_registrations_interrupt() {
        let s = state();
        let g1 = s.track();
        let g2 = s.track();
        assert_eq!(s.active(), 2);
        drop(g1);
        assert_eq!(s.active(), 1);
        drop(g2);
        assert_eq!(s.active(), 0);
        let (r1, mut rx1) = s.register_relay(false);
        let (r2, mut rx2) = s.register_relay(false);
        let (r3, mut rx3) = s.register_relay(true);
        assert_eq!((s.relays(), s.movable_relays()), (3, 2));
        assert_eq!(s.interrupt_some(1, Command::Drain), 1);
        let got: Vec<_> = [rx1.try_recv().ok(), rx2.try_recv().ok()]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(got, vec![Command::Drain], "exactly one relay was asked");
        assert_eq!(
            s.interrupt_some(10, Command::Drain),
            1,
            "the pinned relay is never moved"
        );
        assert!(rx3.try_recv().is_err());
        assert_eq!(s.relays(), 1);
        drop((r1, r2, r3));
        assert_eq!(s.relays(), 0, "guards unregister");
    }
}
