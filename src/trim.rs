//! Give memory back to the system once a population of connections has left.
//!
//! Freed memory stays in the allocator: glibc's malloc keeps the pages of freed chunks mapped
//! (and counted in RSS) unless they sit at the very top of a heap, so after 10,000 idle
//! devices disconnect the process would go on looking as large as when it held them, and an
//! operator could not tell a leak from a cache. When the number of open descriptors has
//! fallen well below its high-water mark since the last trim, `malloc_trim` hands the free
//! pages of every arena back (`MADV_DONTNEED`). It runs on the blocking pool: walking the
//! arenas of a large heap takes milliseconds, never on a worker thread.

use std::time::{Duration, Instant};

/// Trim when at least this many descriptors (about half as many connections) closed since the
/// high-water mark...
const FALLEN_BY: usize = 512;
/// ...or when their number halved (and at least this many closed): small fleets too.
const FALLEN_AT_LEAST: usize = 64;
/// Never more often than this: a trim is cheap, but churn should not trigger one per sample.
const AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// The high-water mark of open descriptors since the last trim, the last count seen, and
/// when the last trim was.
#[derive(Debug)]
pub(crate) struct Trimmer {
    high: usize,
    previous: usize,
    last: Option<Instant>,
}

impl Trimmer {
    pub(crate) fn new() -> Trimmer {
        Trimmer {
            high: 0,
            previous: 0,
            last: None,
        }
    }

    /// Whether to trim now, with `open` descriptors open at `now` (called at every sample).
    /// Only once the count has stopped falling: thousands of clients leaving take a second
    /// or two, and a trim in the middle would give back only what had closed so far.
    pub(crate) fn due(&mut self, open: usize, now: Instant) -> bool {
        self.high = self.high.max(open);
        let settled = open >= self.previous;
        self.previous = open;
        let fallen = self.high - open;
        let enough = fallen >= FALLEN_BY || (fallen >= FALLEN_AT_LEAST && open <= self.high / 2);
        let rested = self
            .last
            .is_none_or(|t| now.duration_since(t) >= AT_MOST_EVERY);
        if enough && settled && rested {
            self.high = open;
            self.last = Some(now);
            return true;
        }
        false
    }
}

/// Hand free heap pages back to the system (glibc only; other allocators return memory by
/// themselves or not at all, and this is then a no-op).
pub(crate) async fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let before = crate::overload::resident_bytes();
        let _joined = tokio::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
            unsafe { libc::malloc_trim(0) };
        })
        .await;
        let after = crate::overload::resident_bytes();
        if let (Some(before), Some(after)) = (before, after) {
            tracing::info!(
                rss_before_kib = before / 1024,
                rss_after_kib = after / 1024,
                "many connections closed: free memory given back to the system"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_population_has_left_and_not_on_churn() {
        let t0 = Instant::now();
        let mut t = Trimmer::new();
        // Growing, or a little churn: nothing to give back.
        assert!(!t.due(100, t0));
        assert!(!t.due(5_000, t0));
        assert!(!t.due(4_900, t0));
        // 3,000 descriptors closing: not while they are still falling; once they stop, once.
        assert!(!t.due(2_000, t0));
        assert!(t.due(2_000, t0));
        assert!(!t.due(2_000, t0 + Duration::from_secs(1)));
        // Another large fall, but too soon after the last trim; later, it is due.
        assert!(!t.due(100, t0 + Duration::from_secs(2)));
        assert!(!t.due(100, t0 + Duration::from_secs(3)));
        assert!(t.due(100, t0 + Duration::from_secs(11)));
        // A small process: from 200 to 40 descriptors is a population leaving too.
        let mut small = Trimmer::new();
        assert!(!small.due(200, t0));
        assert!(!small.due(150, t0));
        assert!(!small.due(40, t0));
        assert!(small.due(40, t0));
    }
}
