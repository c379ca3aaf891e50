//! Login-storm shaping for one backend.
//!
//! When thousands of clients reconnect at once (a school's morning bell, a Wi-Fi controller
//! restart, the proxy itself coming back), every one of them runs TLS, SASL and resource
//! binding against the backend at the same moment. That is by far the most expensive part of
//! a session for an XMPP server: an idle session costs almost nothing, a login costs hashing,
//! roster and offline-message loads. A node that survives ten thousand idle sessions falls
//! over under ten thousand simultaneous logins. So the proxy holds clients back *before*
//! they reach the backend, in two ways that catch different storms:
//!
//! * a cap on logins in progress at once (`max_negotiations`), which adapts to how fast the
//!   backend actually is: a slot is returned as soon as a login finishes;
//! * a cap on new logins per second (`max_logins_per_second`), a token bucket that still
//!   bounds the load when logins finish quickly but what follows them (roster pushes,
//!   presence broadcast) is what hurts.
//!
//! Clients that cannot go yet wait in a bounded FIFO queue. Order matters: a client that has
//! waited longest is the closest to giving up and reconnecting, which would only add to the
//! storm. The queue is bounded and waits time out because a client held for minutes is worse
//! off than one told at once to go elsewhere (the caller turns a refusal into a redirect or
//! a `resource-constraint` stream error).
//!
//! Design: every waiter has its own [`Notify`] and is woken only when it is admitted, or
//! when it has just become the head of the queue and must sleep until the next token is due.
//! So a storm of N waiters costs N wake-ups, not N² (no thundering herd), and at most one
//! token timer runs per backend. The state sits behind a plain mutex that is never held
//! across an `.await`; the counters read by metrics and by the no-limit fast path are
//! atomics beside it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Limits of one backend, as configured (globally, or overridden per backend).
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionConfig {
    /// Logins in progress at once on this backend (from routing to the end of
    /// authentication); `None` = unlimited. `Some(0)` admits nobody: the backend is closed to
    /// new logins and waiters time out unless a reload opens it again.
    pub max_negotiations: Option<usize>,
    /// New sessions started per second (token bucket, burst = max(1, rate) tokens); `None` =
    /// unlimited. An infinite rate counts as unlimited; zero, a negative rate or NaN admit
    /// nobody, like `max_negotiations = Some(0)`.
    pub max_logins_per_second: Option<f64>,
    /// Clients that may wait for admission at once; past it they are refused at once.
    pub queue: usize,
    /// How long one client may wait.
    pub queue_timeout: Duration,
}

/// Why a client was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// `queue` clients were already waiting.
    #[error("admission queue full")]
    QueueFull,
    /// `queue_timeout` passed before a slot and a token were free.
    #[error("waited too long for admission")]
    Timeout,
}

/// Admission control of one backend; shared (via `Arc`) by every connection routed there.
pub struct Admission {
    /// Shared with every [`Permit`], which must give its slot back without borrowing `self`.
    inner: Arc<Inner>,
}

/// One negotiation slot, held from routing to the end of authentication; dropping it gives
/// the slot back (and lets the next waiter in).
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct Permit {
    /// Where the slot goes back to.
    inner: Arc<Inner>,
}

/// Everything behind an [`Admission`].
struct Inner {
    /// No limit configured: `admit` only counts, and never takes the lock. Kept apart from
    /// `state` so that backends without limits (the common case) pay nothing for admission.
    unlimited: AtomicBool,
    /// Permits held (including ones granted to a waiter that has not picked them up yet).
    negotiating: AtomicUsize,
    /// Waiters in the queue; always equal to `state.queue.len()`, written under the lock.
    /// Lets a returned permit skip the lock when nobody waits.
    waiting: AtomicUsize,
    /// Limits, token bucket and queue.
    state: Mutex<State>,
    /// Iterations of the wait loop, to prove in tests that waiters do not spin.
    #[cfg(test)]
    wakeups: AtomicUsize,
}

/// The part of an [`Admission`] that changes together, under one lock.
struct State {
    /// Limit on permits held, `None` = unlimited.
    limit: Option<usize>,
    /// The rate as configured, to tell whether a reload changed it.
    rate: Option<f64>,
    /// New-session tokens.
    bucket: Bucket,
    /// Most waiters allowed at once.
    queue_cap: usize,
    /// How long a new waiter may wait (a reload does not shorten or extend running waits).
    queue_timeout: Duration,
    /// Waiters in arrival order; only the head is ever admitted.
    queue: VecDeque<Arc<Waiter>>,
    /// Source of waiter ids.
    next_id: u64,
    /// The head that was told it waits only for a token (and so runs the token timer).
    /// Remembered so that it is told once, not on every dispatch, and so that a new head
    /// (after an admission or a cancellation) is told too.
    told_head: Option<u64>,
}

/// One client waiting in the queue.
struct Waiter {
    /// Identifies it in the queue (for removal on cancellation).
    id: u64,
    /// A resumption: queued ahead of every full login (see [`Admission::admit_resume`]).
    resume: bool,
    /// A slot and a token were taken for it and it left the queue; written under the lock.
    granted: AtomicBool,
    /// Wakes it: when granted, or when it becomes a head that waits only for a token.
    notify: Notify,
}

/// Longest interval between tokens considered; keeps absurdly small rates from overflowing
/// time arithmetic (a rate below one login a year is a closed backend in practice).
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// New-session tokens, as a GCRA ("virtual scheduling") token bucket: a single "theoretical
/// arrival time" instead of a token count refilled by a ticker, so nothing needs to run
/// while nobody logs in, and the time the next token is due is known exactly (one timer,
/// set for that instant, instead of polling).
#[derive(Debug)]
enum Bucket {
    /// No rate limit.
    Unlimited,
    /// Rate of zero (or invalid): no token is ever due.
    Closed,
    /// `rate` tokens per second, at most `burst = max(1, rate)` saved up.
    Limited {
        /// Time between two tokens (1 / rate).
        interval: Duration,
        /// How far ahead of `tat` a token may be taken: (burst − 1) intervals.
        tolerance: Duration,
        /// Tokens the bucket holds when full.
        burst: f64,
        /// When the bucket would be empty if no token came in early; at or before now, the
        /// bucket is full.
        tat: Instant,
    },
}

impl Bucket {
    /// A full bucket for `rate`.
    fn new(rate: Option<f64>, now: Instant) -> Bucket {
        let Some(rate) = rate else {
            return Bucket::Unlimited;
        };
        if rate.is_nan() || rate <= 0.0 {
            return Bucket::Closed;
        }
        if rate.is_infinite() {
            return Bucket::Unlimited;
        }
        let interval = Duration::try_from_secs_f64(1.0 / rate)
            .unwrap_or(MAX_INTERVAL)
            .min(MAX_INTERVAL);
        if interval.is_zero() {
            // Over a billion logins per second: no limit that could ever be reached.
            return Bucket::Unlimited;
        }
        let burst = rate.max(1.0);
        Bucket::Limited {
            interval,
            // (burst − 1) × (1 / rate) < 1 s, so this cannot overflow.
            tolerance: interval.mul_f64(burst - 1.0),
            burst,
            tat: now,
        }
    }

    /// A bucket for a new `rate` that keeps the current fill level (capped to the new
    /// burst), so that a reload neither hands out a fresh burst in the middle of a storm nor
    /// stalls logins that had tokens saved up. Coming from no rate limit, or from a closed
    /// backend being opened, it starts full, as a new bucket does.
    fn rebuilt(&self, rate: Option<f64>, now: Instant) -> Bucket {
        let mut new = Bucket::new(rate, now);
        let level = self.level(now);
        if let (
            Some(level),
            Bucket::Limited {
                interval,
                burst,
                tat,
                ..
            },
        ) = (level, &mut new)
        {
            let missing = (*burst - level.min(*burst)).max(0.0);
            // missing × interval ≤ burst / rate ≤ max(1 s, MAX_INTERVAL): no overflow.
            *tat = now.checked_add(interval.mul_f64(missing)).unwrap_or(now);
        }
        new
    }

    /// Tokens held now; `None` when not limited (counts as full).
    fn level(&self, now: Instant) -> Option<f64> {
        match self {
            Bucket::Limited {
                interval,
                burst,
                tat,
                ..
            } => {
                let owed =
                    tat.saturating_duration_since(now).as_secs_f64() / interval.as_secs_f64();
                Some((burst - owed).clamp(0.0, *burst))
            }
            Bucket::Unlimited | Bucket::Closed => None,
        }
    }

    /// When the next token can be taken (at or before `now`: at once); `None`: never.
    fn ready_at(&self, now: Instant) -> Option<Instant> {
        match self {
            Bucket::Unlimited => Some(now),
            Bucket::Closed => None,
            // Before the clock's origin means long past: due now.
            Bucket::Limited { tolerance, tat, .. } => {
                Some(tat.checked_sub(*tolerance).unwrap_or(now))
            }
        }
    }

    /// Whether a token can be taken now.
    fn ready(&self, now: Instant) -> bool {
        self.ready_at(now).is_some_and(|t| t <= now)
    }

    /// Takes a token; only after `ready(now)`.
    fn take(&mut self, now: Instant) {
        if let Bucket::Limited { interval, tat, .. } = self {
            *tat = (*tat).max(now) + *interval;
        }
    }

    /// Puts back a token taken for a client that left before using it, so that a
    /// cancellation does not slow down the clients behind it.
    fn refund(&mut self, now: Instant) {
        if let Bucket::Limited { interval, tat, .. } = self {
            // Never earlier than now: a full bucket holds `burst` tokens, not more.
            *tat = tat.checked_sub(*interval).map_or(now, |t| t.max(now));
        }
    }
}

impl Inner {
    /// The state; a panic elsewhere while it was held cannot have left it half-updated (no
    /// code under the lock panics between related writes), so poisoning is ignored rather
    /// than taking every later login down with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether one more permit fits under the limit.
    fn slot_free(&self, st: &State) -> bool {
        st.limit
            .is_none_or(|limit| self.negotiating.load(Ordering::SeqCst) < limit)
    }

    /// Admits waiters from the head of the queue while both a slot and a token are free,
    /// and tells a head that now waits only for a token to set its timer. Called after
    /// anything that may let someone in: a returned permit, a reload, a waiter leaving, a
    /// token timer firing. `caller` is a waiter running this itself (it need not be told).
    fn dispatch(&self, st: &mut State, now: Instant, caller: Option<u64>) {
        loop {
            let Some(head) = st.queue.front() else {
                st.told_head = None;
                break;
            };
            if !self.slot_free(st) {
                // Woken by the permit that frees a slot, not by a timer.
                st.told_head = None;
                break;
            }
            match st.bucket.ready_at(now) {
                Some(at) if at <= now => {
                    st.bucket.take(now);
                    self.negotiating.fetch_add(1, Ordering::SeqCst);
                    if let Some(head) = st.queue.pop_front() {
                        head.granted.store(true, Ordering::Relaxed);
                        head.notify.notify_one();
                    }
                }
                Some(_) => {
                    if st.told_head != Some(head.id) {
                        st.told_head = Some(head.id);
                        if caller != Some(head.id) {
                            head.notify.notify_one();
                        }
                    }
                    break;
                }
                None => {
                    // Closed: only a reload can open it.
                    st.told_head = None;
                    break;
                }
            }
        }
        self.waiting.store(st.queue.len(), Ordering::SeqCst);
    }

    /// Takes `waiter` out: out of the queue if still there, or, if it was granted but never
    /// picked its permit up, gives back the slot and the token taken for it.
    fn leave(&self, st: &mut State, waiter: &Waiter, now: Instant) {
        if waiter.granted.load(Ordering::Relaxed) {
            self.negotiating.fetch_sub(1, Ordering::SeqCst);
            st.bucket.refund(now);
        } else if let Some(pos) = st.queue.iter().position(|w| w.id == waiter.id) {
            st.queue.remove(pos);
        }
        self.dispatch(st, now, None);
    }

    /// Gives a slot back.
    fn release(&self) {
        // SeqCst pairs with the enqueuing waiter, which publishes `waiting` before it checks
        // `negotiating`: either it sees this slot free, or this sees it waiting.
        self.negotiating.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let mut st = self.lock();
            self.dispatch(&mut st, Instant::now(), None);
        }
    }
}

/// Takes a waiter out of the queue when its `admit` future is dropped (the client
/// disconnected, or the caller gave up), so that nobody waits behind a ghost and no slot or
/// token granted to it is lost.
struct WaitGuard<'a> {
    /// Where it waits.
    inner: &'a Inner,
    /// Who waits.
    waiter: Arc<Waiter>,
    /// Still to be cleaned up on drop (cleared once the wait ended under the lock).
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.inner.lock();
            self.inner.leave(&mut st, &self.waiter, Instant::now());
        }
    }
}

/// What a waiter does next, decided under the lock and done after it is released.
enum Step {
    /// Granted: take the permit.
    Granted,
    /// Out of time (already out of the queue).
    TimedOut,
    /// Sleep until notified, or until this instant (token due, or timeout).
    Wait(Option<Instant>),
}

impl Admission {
    /// Admission control with limits `cfg`; the token bucket starts full.
    pub fn new(cfg: AdmissionConfig) -> Admission {
        let now = Instant::now();
        let bucket = Bucket::new(cfg.max_logins_per_second, now);
        let unlimited = cfg.max_negotiations.is_none() && matches!(bucket, Bucket::Unlimited);
        Admission {
            inner: Arc::new(Inner {
                unlimited: AtomicBool::new(unlimited),
                negotiating: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                state: Mutex::new(State {
                    limit: cfg.max_negotiations,
                    rate: cfg.max_logins_per_second,
                    bucket,
                    queue_cap: cfg.queue,
                    queue_timeout: cfg.queue_timeout,
                    queue: VecDeque::new(),
                    next_id: 0,
                    told_head: None,
                }),
                #[cfg(test)]
                wakeups: AtomicUsize::new(0),
            }),
        }
    }

    /// Change limits at run time (config reload) without losing waiters or permits in flight:
    /// raising a limit admits waiters at once; lowering it takes effect as permits are
    /// returned.
    ///
    /// A changed rate keeps the bucket's current fill level (capped to the new burst). A new
    /// `queue` applies to clients arriving from now on (waiters past a lowered cap keep
    /// their place), a new `queue_timeout` to clients that start waiting from now on.
    pub fn reconfigure(&self, cfg: AdmissionConfig) {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let now = Instant::now();
        st.limit = cfg.max_negotiations;
        if st.rate != cfg.max_logins_per_second {
            st.bucket = st.bucket.rebuilt(cfg.max_logins_per_second, now);
            st.rate = cfg.max_logins_per_second;
            // The head's token timer was set for the old rate: tell it again.
            st.told_head = None;
        }
        st.queue_cap = cfg.queue;
        st.queue_timeout = cfg.queue_timeout;
        let unlimited = st.limit.is_none() && matches!(st.bucket, Bucket::Unlimited);
        inner.unlimited.store(unlimited, Ordering::SeqCst);
        inner.dispatch(&mut st, now, None);
    }

    /// Wait (FIFO, fair) for both a negotiation slot and a rate token; refuse at once if
    /// `queue` waiters are already waiting; refuse after `queue_timeout`. With no limits
    /// configured this returns immediately without touching any lock-heavy path.
    ///
    /// Cancellation-safe: dropping the future leaves the queue, and a slot or token already
    /// taken for this caller is given back.
    pub async fn admit(&self) -> Result<Permit, Refused> {
        self.admit_as(false).await
    }

    /// Like [`Admission::admit`], for a login that resumes a session (a SASL2 inline resume,
    /// a FAST token): it waits behind other resumptions only, ahead of every full login, and
    /// the queue bound counts resumptions apart. In a storm after an outage most clients
    /// come back to resume; each resume is cheap for the node and gives a user their session
    /// back, where a full login costs hashing, roster and presence.
    pub async fn admit_resume(&self) -> Result<Permit, Refused> {
        self.admit_as(true).await
    }

    async fn admit_as(&self, resume: bool) -> Result<Permit, Refused> {
        let inner = &*self.inner;
        if inner.unlimited.load(Ordering::SeqCst) {
            // Clients admitted this way while a reload adds limits count against them as
            // soon as the reload is done, like permits already held.
            inner.negotiating.fetch_add(1, Ordering::SeqCst);
            return Ok(self.permit());
        }
        let (waiter, deadline) = {
            let mut st = inner.lock();
            let now = Instant::now();
            // Nobody ahead: no reason to queue (and `queue = 0` still admits when free).
            if st.queue.is_empty() && inner.slot_free(&st) && st.bucket.ready(now) {
                st.bucket.take(now);
                inner.negotiating.fetch_add(1, Ordering::SeqCst);
                return Ok(self.permit());
            }
            // Resumptions queue ahead of full logins: after the last resumption waiting.
            let resumes = st.queue.iter().take_while(|w| w.resume).count();
            let ahead = if resume { resumes } else { st.queue.len() };
            let queued = if resume {
                resumes
            } else {
                st.queue.len() - resumes
            };
            if queued >= st.queue_cap {
                return Err(Refused::QueueFull);
            }
            let waiter = Arc::new(Waiter {
                id: st.next_id,
                resume,
                granted: AtomicBool::new(false),
                notify: Notify::new(),
            });
            st.next_id += 1;
            st.queue.insert(ahead, waiter.clone());
            inner.waiting.store(st.queue.len(), Ordering::SeqCst);
            // An unrepresentable deadline (a timeout of centuries) means: no timeout.
            (waiter, now.checked_add(st.queue_timeout))
        };
        let id = waiter.id;
        let mut guard = WaitGuard {
            inner,
            waiter,
            armed: true,
        };
        loop {
            #[cfg(test)]
            inner.wakeups.fetch_add(1, Ordering::Relaxed);
            let step = {
                let mut st = inner.lock();
                let now = Instant::now();
                // Also catches a permit returned between enqueuing and here, and a token
                // that became due: this waiter's own timer is what drives the bucket.
                inner.dispatch(&mut st, now, Some(id));
                if guard.waiter.granted.load(Ordering::Relaxed) {
                    guard.armed = false;
                    Step::Granted
                } else if deadline.is_some_and(|d| d <= now) {
                    guard.armed = false;
                    inner.leave(&mut st, &guard.waiter, now);
                    Step::TimedOut
                } else {
                    let is_head = st.queue.front().is_some_and(|w| w.id == id);
                    let token_at = if is_head && inner.slot_free(&st) {
                        st.bucket.ready_at(now)
                    } else {
                        None
                    };
                    Step::Wait(match (token_at, deadline) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    })
                }
            };
            match step {
                Step::Granted => return Ok(self.permit()),
                Step::TimedOut => return Err(Refused::Timeout),
                Step::Wait(Some(at)) => {
                    tokio::select! {
                        () = guard.waiter.notify.notified() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Step::Wait(None) => guard.waiter.notify.notified().await,
            }
        }
    }

    /// Clients waiting for admission (for metrics).
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Permits held (for metrics).
    pub fn negotiating(&self) -> usize {
        self.inner.negotiating.load(Ordering::Relaxed)
    }

    /// A permit for a slot already counted in `negotiating`.
    fn permit(&self) -> Permit {
        Permit {
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("negotiating", &self.negotiating())
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
