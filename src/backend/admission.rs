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
            if st.queue.len() >= st.queue_cap {
                return Err(Refused::QueueFull);
            }
            let waiter = Arc::new(Waiter {
                id: st.next_id,
                granted: AtomicBool::new(false),
                notify: Notify::new(),
            });
            st.next_id += 1;
            st.queue.push_back(waiter.clone());
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
mod tests {
    //! Timing tests run on the real clock (the crate's tokio has no paused test clock), so
    //! they assert what the design guarantees whatever the machine's load: lower bounds on
    //! when a token can be had, exact counts, and generous upper bounds. Exact token times
    //! are checked on the bucket alone, with made-up instants.

    use super::*;
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll, Waker};

    fn cfg(
        max_negotiations: Option<usize>,
        max_logins_per_second: Option<f64>,
        queue: usize,
        queue_timeout: Duration,
    ) -> AdmissionConfig {
        AdmissionConfig {
            max_negotiations,
            max_logins_per_second,
            queue,
            queue_timeout,
        }
    }

    /// A limit on slots only, with room to wait and time to do it.
    fn slots(n: usize) -> AdmissionConfig {
        cfg(Some(n), None, 10_000, Duration::from_secs(60))
    }

    const NONE: AdmissionConfig = AdmissionConfig {
        max_negotiations: None,
        max_logins_per_second: None,
        queue: 10_000,
        queue_timeout: Duration::from_secs(60),
    };

    /// Polls once, as a runtime would; what a waiter does is driven by its own loop, so
    /// polling by hand checks the state machine step by step, without timing.
    fn poll_once<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn admitted<F: Future<Output = Result<Permit, Refused>>>(f: Pin<&mut F>) -> Permit {
        match poll_once(f) {
            Poll::Ready(Ok(p)) => p,
            Poll::Ready(Err(e)) => panic!("refused: {e}"),
            Poll::Pending => panic!("still waiting"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Admission>();
        send_sync::<Permit>();
        let adm = Admission::new(slots(1));
        send(&adm.admit());
    }

    #[tokio::test]
    async fn no_limits_admit_is_immediate_and_lock_free() {
        let adm = Admission::new(NONE);
        // Holding the lock proves the fast path never takes it.
        let held = adm.inner.lock();
        let permits: Vec<Permit> = (0..1000).map(|_| admitted(pin!(adm.admit()))).collect();
        drop(held);
        assert_eq!(adm.negotiating(), 1000);
        assert_eq!(adm.waiting(), 0);
        drop(permits);
        assert_eq!(adm.negotiating(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn limit_50_with_500_concurrent_logins() {
        let adm = Arc::new(Admission::new(slots(50)));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let (adm, inside, most) = (adm.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let permit = adm.admit().await?;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    assert!(adm.negotiating() <= 50);
                    tokio::time::sleep(ms(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                    Ok::<(), Refused>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= 50, "{most} logins at once");
        assert!(most > 1, "logins were serialised: {most} at once");
        assert_eq!((adm.negotiating(), adm.waiting()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rate_100_spreads_300_logins_over_two_seconds() {
        let start = Instant::now();
        let adm = Arc::new(Admission::new(cfg(
            None,
            Some(100.0),
            1000,
            Duration::from_secs(60),
        )));
        let tasks: Vec<_> = (0..300)
            .map(|_| {
                let adm = adm.clone();
                tokio::spawn(async move {
                    let _permit = adm.admit().await?;
                    Ok::<Duration, Refused>(start.elapsed())
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap().unwrap());
        }
        times.sort();
        // The burst of 100 goes at once, then one every 10 ms: the k-th login cannot
        // happen before (k − 99) × 10 ms.
        for (k, t) in times.iter().enumerate() {
            let due = ms(10) * (k.saturating_sub(99) as u32);
            assert!(*t >= due, "login {k} at {t:?}, before {due:?}");
        }
        let last = times[299];
        assert!(last >= ms(2000), "{last:?}");
        assert!(last < ms(3000), "too slow: {last:?}");
        assert!(
            times[99] < ms(500),
            "the burst was held back: {:?}",
            times[99]
        );
        assert_eq!((adm.negotiating(), adm.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn full_queue_refuses_at_once() {
        let adm = Admission::new(cfg(Some(1), None, 2, Duration::from_secs(60)));
        let _held = admitted(pin!(adm.admit()));
        let mut a = pin!(adm.admit());
        let mut b = pin!(adm.admit());
        assert!(poll_once(a.as_mut()).is_pending());
        assert!(poll_once(b.as_mut()).is_pending());
        assert_eq!(adm.waiting(), 2);
        assert!(matches!(
            poll_once(pin!(adm.admit())),
            Poll::Ready(Err(Refused::QueueFull))
        ));
        assert_eq!((adm.negotiating(), adm.waiting()), (1, 2));
    }

    #[tokio::test]
    async fn queue_of_zero_still_admits_when_free() {
        let adm = Admission::new(cfg(Some(1), None, 0, Duration::from_secs(60)));
        let _p = admitted(pin!(adm.admit()));
        assert!(matches!(
            poll_once(pin!(adm.admit())),
            Poll::Ready(Err(Refused::QueueFull))
        ));
    }

    #[tokio::test]
    async fn waiting_too_long_times_out() {
        let adm = Admission::new(cfg(Some(1), None, 10, ms(50)));
        let _held = adm.admit().await.unwrap();
        let start = Instant::now();
        assert_eq!(adm.admit().await.unwrap_err(), Refused::Timeout);
        assert!(start.elapsed() >= ms(50));
        assert_eq!((adm.negotiating(), adm.waiting()), (1, 0));
    }

    #[tokio::test]
    async fn timeout_while_waiting_for_a_token() {
        let adm = Admission::new(cfg(None, Some(1.0), 10, ms(50)));
        let _p = adm.admit().await.unwrap();
        let start = Instant::now();
        assert_eq!(adm.admit().await.unwrap_err(), Refused::Timeout);
        let waited = start.elapsed();
        assert!(waited >= ms(50) && waited < ms(900), "{waited:?}");
        assert_eq!((adm.negotiating(), adm.waiting()), (1, 0));
    }

    #[tokio::test]
    async fn dropped_waiter_frees_its_place() {
        let adm = Admission::new(cfg(Some(1), None, 1, Duration::from_secs(60)));
        let held = admitted(pin!(adm.admit()));
        {
            let mut gone = pin!(adm.admit());
            assert!(poll_once(gone.as_mut()).is_pending());
            assert_eq!(adm.waiting(), 1);
        }
        assert_eq!(adm.waiting(), 0);
        let mut next = pin!(adm.admit());
        assert!(
            poll_once(next.as_mut()).is_pending(),
            "refused though a place was free"
        );
        drop(held);
        let _p = admitted(next);
        assert_eq!((adm.negotiating(), adm.waiting()), (1, 0));
    }

    #[tokio::test]
    async fn dropped_after_grant_gives_back_slot_and_token() {
        // Burst of 2: the holder takes one token, the waiter the other.
        let adm = Admission::new(cfg(Some(1), Some(2.0), 10, Duration::from_secs(60)));
        let held = admitted(pin!(adm.admit()));
        {
            let mut granted = pin!(adm.admit());
            assert!(poll_once(granted.as_mut()).is_pending());
            drop(held);
            // Granted to the waiter, which goes away before picking it up.
            assert_eq!((adm.negotiating(), adm.waiting()), (1, 0));
        }
        assert_eq!(adm.negotiating(), 0);
        // Without the token back, this would wait half a second.
        let _p = admitted(pin!(adm.admit()));
    }

    #[tokio::test]
    async fn waiters_are_admitted_in_arrival_order() {
        let adm = Admission::new(slots(1));
        let mut permit = Some(admitted(pin!(adm.admit())));
        let mut waiters: Vec<_> = (0..10).map(|_| Box::pin(adm.admit())).collect();
        for w in &mut waiters {
            assert!(poll_once(w.as_mut()).is_pending());
        }
        let mut order = Vec::new();
        while order.len() < 10 {
            permit = None;
            // Poll the latest arrivals first: order must not depend on who is polled first.
            for (i, w) in waiters.iter_mut().enumerate().rev() {
                if order.contains(&i) {
                    continue;
                }
                if let Poll::Ready(r) = poll_once(w.as_mut()) {
                    assert!(permit.is_none(), "two admitted at once");
                    permit = Some(r.unwrap());
                    order.push(i);
                }
            }
        }
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        drop(permit);
        assert_eq!((adm.negotiating(), adm.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn raising_the_limit_admits_waiters_at_once() {
        let adm = Admission::new(slots(1));
        let _held = admitted(pin!(adm.admit()));
        let mut waiters: Vec<_> = (0..5).map(|_| Box::pin(adm.admit())).collect();
        for w in &mut waiters {
            assert!(poll_once(w.as_mut()).is_pending());
        }
        adm.reconfigure(slots(6));
        assert_eq!((adm.negotiating(), adm.waiting()), (6, 0));
        let _permits: Vec<Permit> = waiters.iter_mut().map(|w| admitted(w.as_mut())).collect();
    }

    #[tokio::test]
    async fn lowering_the_limit_takes_effect_as_permits_return() {
        let adm = Admission::new(slots(4));
        let mut held: Vec<Permit> = (0..4).map(|_| admitted(pin!(adm.admit()))).collect();
        adm.reconfigure(slots(2));
        let mut w = pin!(adm.admit());
        assert!(poll_once(w.as_mut()).is_pending());
        held.pop();
        held.pop();
        assert!(
            poll_once(w.as_mut()).is_pending(),
            "admitted with 2 of 2 held"
        );
        held.pop();
        let _p = admitted(w);
        assert_eq!((adm.negotiating(), adm.waiting()), (2, 0));
    }

    #[tokio::test]
    async fn closed_backend_waits_for_a_reload() {
        let adm = Admission::new(slots(0));
        let mut w = pin!(adm.admit());
        assert!(poll_once(w.as_mut()).is_pending());
        adm.reconfigure(slots(1));
        let _p = admitted(w);
        let adm = Admission::new(cfg(None, Some(0.0), 10, Duration::from_secs(60)));
        let mut w = pin!(adm.admit());
        assert!(poll_once(w.as_mut()).is_pending());
        adm.reconfigure(NONE);
        let _p = admitted(w);
    }

    #[tokio::test]
    async fn removing_all_limits_lets_every_waiter_in() {
        let adm = Admission::new(slots(1));
        let held = admitted(pin!(adm.admit()));
        let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(adm.admit())).collect();
        for w in &mut waiters {
            assert!(poll_once(w.as_mut()).is_pending());
        }
        adm.reconfigure(NONE);
        let mut permits: Vec<Permit> = waiters.iter_mut().map(|w| admitted(w.as_mut())).collect();
        permits.push(held);
        permits.push(admitted(pin!(adm.admit())));
        assert_eq!((adm.negotiating(), adm.waiting()), (5, 0));
        // And back: the permits taken without limits count against the new one.
        adm.reconfigure(slots(5));
        let mut w = pin!(adm.admit());
        assert!(poll_once(w.as_mut()).is_pending());
        permits.pop();
        let _p = admitted(w);
    }

    #[tokio::test]
    async fn raising_the_rate_wakes_a_head_waiting_for_a_token() {
        let adm = Admission::new(cfg(None, Some(0.5), 10, Duration::from_secs(60)));
        let _first = adm.admit().await.unwrap();
        let start = Instant::now();
        let adm = Arc::new(adm);
        let waiter = tokio::spawn({
            let adm = adm.clone();
            async move { adm.admit().await.map(drop) }
        });
        while adm.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(ms(20)).await;
        // The head's timer is set two seconds out; a rate of 1000/s must not wait for it.
        adm.reconfigure(cfg(None, Some(1000.0), 10, Duration::from_secs(60)));
        waiter.await.unwrap().unwrap();
        assert!(start.elapsed() < ms(1000), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn a_cancelled_head_hands_the_token_timer_on() {
        let start = Instant::now();
        let adm = Arc::new(Admission::new(cfg(
            None,
            Some(20.0),
            10,
            Duration::from_secs(60),
        )));
        let burst: Vec<Permit> = (0..20).map(|_| admitted(pin!(adm.admit()))).collect();
        drop(burst);
        let head = tokio::spawn({
            let adm = adm.clone();
            async move { adm.admit().await.map(drop) }
        });
        while adm.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let next = tokio::spawn({
            let adm = adm.clone();
            async move { adm.admit().await.map(drop) }
        });
        while adm.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        head.abort();
        assert!(head.await.unwrap_err().is_cancelled());
        next.await.unwrap().unwrap();
        let waited = start.elapsed();
        assert!(waited >= ms(50) && waited < ms(1000), "{waited:?}");
        assert_eq!((adm.negotiating(), adm.waiting()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiters_sleep_instead_of_spinning() {
        let adm = Arc::new(Admission::new(cfg(
            None,
            Some(20.0),
            100,
            Duration::from_secs(60),
        )));
        for _ in 0..18 {
            drop(admitted(pin!(adm.admit())));
        }
        // The bucket is now empty and both slots are taken.
        let burst: Vec<Permit> = (0..2).map(|_| admitted(pin!(adm.admit()))).collect();
        adm.reconfigure(cfg(Some(2), Some(20.0), 100, Duration::from_secs(60)));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let adm = adm.clone();
                tokio::spawn(async move {
                    let p = adm.admit().await?;
                    tokio::time::sleep(ms(5)).await;
                    drop(p);
                    Ok::<(), Refused>(())
                })
            })
            .collect();
        tokio::time::sleep(ms(50)).await;
        drop(burst);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // A second of waiting for tokens and slots by 20 clients: each runs its loop once
        // on arrival, once when told it is the head, once when its token is due, and a
        // little more where a slot and a token race; never in a loop while nothing changes.
        let wakeups = adm.inner.wakeups.load(Ordering::Relaxed);
        assert!(wakeups <= 20 * 5, "{wakeups} wake-ups");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_waiters_with_cancellations_and_reloads_keep_counts() {
        let adm = Arc::new(Admission::new(cfg(Some(8), Some(2000.0), 10_000, ms(200))));
        let inside = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..2000u32)
            .map(|i| {
                let (adm, inside) = (adm.clone(), inside.clone());
                tokio::spawn(async move {
                    let admit = adm.admit();
                    let got = if i % 3 == 0 {
                        // Gives up early: drops its future mid-wait, possibly mid-grant.
                        match tokio::time::timeout(Duration::from_micros(u64::from(i % 500)), admit)
                            .await
                        {
                            Ok(r) => r.ok(),
                            Err(_) => None,
                        }
                    } else {
                        admit.await.ok()
                    };
                    if let Some(p) = got {
                        assert!(inside.fetch_add(1, Ordering::SeqCst) < 16);
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                })
            })
            .collect();
        for round in 0..10 {
            tokio::time::sleep(ms(3)).await;
            let n = if round % 2 == 0 { 16 } else { 4 };
            adm.reconfigure(cfg(
                Some(n),
                Some(2000.0 + f64::from(round)),
                10_000,
                ms(200),
            ));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!((adm.negotiating(), adm.waiting()), (0, 0));
        assert!(adm.inner.lock().queue.is_empty());
    }

    #[test]
    fn bucket_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(100.0), t0);
        for _ in 0..100 {
            assert!(b.ready(t0));
            b.take(t0);
        }
        assert!(!b.ready(t0));
        assert_eq!(b.ready_at(t0), Some(t0 + ms(10)));
        // 300 logins at 100/s: the last token is due exactly 2 s after the first.
        let mut now = t0;
        for _ in 100..300 {
            now = b.ready_at(now).unwrap().max(now);
            b.take(now);
        }
        assert_eq!(now - t0, ms(2000));
    }

    #[test]
    fn bucket_fractional_rates() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(0.5), t0);
        b.take(t0);
        assert_eq!(b.ready_at(t0), Some(t0 + ms(2000)));
        // Burst of 2.5: two at once, the third 200 ms later (half a token missing).
        let mut b = Bucket::new(Some(2.5), t0);
        b.take(t0);
        b.take(t0);
        assert_eq!(b.ready_at(t0), Some(t0 + ms(200)));
    }

    #[test]
    fn bucket_refill_caps_at_burst_and_refund_too() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(10.0), t0);
        let later = t0 + Duration::from_secs(3600);
        // An hour idle saved up 10 tokens, not 36 000; refunds to a full bucket add none.
        b.refund(later);
        b.refund(later);
        for _ in 0..10 {
            assert!(b.ready(later));
            b.take(later);
        }
        assert!(!b.ready(later), "more than the burst saved up");
        // A refund after a take gives exactly that token back.
        b.refund(later);
        assert!(b.ready(later));
        b.take(later);
        assert!(!b.ready(later));
    }

    #[test]
    fn bucket_rebuilt_keeps_its_level() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(10.0), t0);
        for _ in 0..10 {
            b.take(t0);
        }
        // Empty stays empty at the new rate: the next token in 1/100 s, not a new burst.
        let r = b.rebuilt(Some(100.0), t0);
        assert_eq!(r.ready_at(t0), Some(t0 + ms(10)));
        // A full bucket is capped to the new, smaller burst.
        let r = Bucket::new(Some(100.0), t0).rebuilt(Some(10.0), t0);
        assert_eq!(r.level(t0), Some(10.0));
        // From no rate limit: full.
        let r = Bucket::Unlimited.rebuilt(Some(5.0), t0);
        assert_eq!(r.level(t0), Some(5.0));
    }

    #[test]
    fn bucket_odd_rates() {
        let t0 = Instant::now();
        assert!(matches!(Bucket::new(None, t0), Bucket::Unlimited));
        assert!(matches!(
            Bucket::new(Some(f64::INFINITY), t0),
            Bucket::Unlimited
        ));
        assert!(matches!(Bucket::new(Some(1e12), t0), Bucket::Unlimited));
        for r in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
            assert!(matches!(Bucket::new(Some(r), t0), Bucket::Closed), "{r}");
        }
        let mut b = Bucket::new(Some(1e-300), t0);
        b.take(t0);
        assert_eq!(b.ready_at(t0), Some(t0 + MAX_INTERVAL));
        b.rebuilt(Some(1e-300), t0);
        let mut b = Bucket::new(Some(1e9), t0);
        for _ in 0..10 {
            b.take(t0);
        }
        assert!(b.ready(t0));
    }
}
