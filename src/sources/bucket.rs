//! The two small clocks of per-source accounting: a token bucket for rates, and a counting
//! window for failures.

use tokio::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` held. Starts full.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    /// Tokens at `at`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(super) fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Add what `rate` earned since the last look, up to `burst`.
    fn refill(&mut self, rate: f64, burst: u32, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(f64::from(burst));
        self.at = now;
    }

    /// Take one token if there is one.
    pub(super) fn take(&mut self, rate: f64, burst: u32, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Give back a token taken for work that turned out not to be needed.
    pub(super) fn refund(&mut self, rate: f64, burst: u32, now: Instant) {
        self.refill(rate, burst, now);
        self.tokens = (self.tokens + 1.0).min(f64::from(burst));
    }

    /// Whether the bucket would be full now (nothing about it is worth remembering).
    pub(super) fn is_full(&self, rate: f64, burst: u32, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, burst, now);
        b.tokens >= f64::from(burst)
    }
}

/// Events counted since the first of them, forgotten once `window` has passed since it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Window {
    /// Events in the window.
    count: u32,
    /// When the window started (its first event).
    since: Option<Instant>,
}

impl Window {
    /// The count now (0 once the window is over).
    pub(super) fn count(&self, window: Duration, now: Instant) -> u32 {
        match self.since {
            Some(since) if now.saturating_duration_since(since) < window => self.count,
            _ => 0,
        }
    }

    /// Count one more event; returns the count with it.
    pub(super) fn add(&mut self, window: Duration, now: Instant) -> u32 {
        if self.count(window, now) == 0 {
            self.since = Some(now);
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count
    }

    /// Forget every event.
    pub(super) fn clear(&mut self) {
        *self = Window::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        assert!((0..3).all(|_| b.take(2.0, 3, t0)));
        assert!(!b.take(2.0, 3, t0));
        // Half a second at 2/s earns one token, no more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(2.0, 3, t1));
        assert!(!b.take(2.0, 3, t1));
        assert!(!b.is_full(2.0, 3, t1));
        assert!(b.is_full(2.0, 3, t1 + Duration::from_secs(2)));
    }

    #[test]
    fn a_refund_gives_back_one_token_and_never_overfills() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2, t0);
        assert!(b.take(0.1, 2, t0));
        assert!(b.take(0.1, 2, t0));
        assert!(!b.take(0.1, 2, t0));
        b.refund(0.1, 2, t0);
        assert!(b.take(0.1, 2, t0));
        assert!(!b.take(0.1, 2, t0));
        b.refund(0.1, 2, t0);
        b.refund(0.1, 2, t0);
        b.refund(0.1, 2, t0);
        assert!(b.is_full(0.1, 2, t0));
        assert!(b.take(0.1, 2, t0) && b.take(0.1, 2, t0) && !b.take(0.1, 2, t0));
    }

    #[test]
    fn a_window_counts_until_it_is_over() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut win = Window::default();
        assert_eq!(win.add(w, t0), 1);
        assert_eq!(win.add(w, t0 + Duration::from_secs(9)), 2);
        assert_eq!(win.count(w, t0 + Duration::from_secs(9)), 2);
        assert_eq!(win.count(w, t0 + Duration::from_secs(10)), 0);
        assert_eq!(win.add(w, t0 + Duration::from_secs(11)), 1);
        win.clear();
        assert_eq!(win.count(w, t0 + Duration::from_secs(11)), 0);
    }
}
