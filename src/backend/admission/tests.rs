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
async fn resumptions_go_ahead_of_full_logins_and_keep_their_own_order() {
    let adm = Admission::new(cfg(Some(1), None, 3, ms(60_000)));
    let mut permit = Some(admitted(pin!(adm.admit())));
    // Arrival order: full, full, resume, full, resume.
    let kinds = [false, false, true, false, true];
    let adm = &adm;
    let mut waiters: Vec<_> = kinds
        .iter()
        .map(|&resume| {
            Box::pin(async move {
                if resume {
                    adm.admit_resume().await
                } else {
                    adm.admit().await
                }
            })
        })
        .collect();
    for w in &mut waiters {
        assert!(poll_once(w.as_mut()).is_pending());
    }
    // Three full logins fill their queue; a fourth is refused, a resumption still queues.
    assert!(matches!(
        poll_once(pin!(adm.admit())),
        Poll::Ready(Err(Refused::QueueFull))
    ));
    let mut order = Vec::new();
    while order.len() < kinds.len() {
        permit = None;
        for (i, w) in waiters.iter_mut().enumerate() {
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
    assert_eq!(order, vec![2, 4, 0, 1, 3]);
    drop(permit);
    assert_eq!((adm.negotiating(), adm.waiting()), (0, 0));
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
