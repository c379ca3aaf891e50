//! The process-wide budget: resident memory and open descriptors, sampled a few times a
//! second, and whether a new connection fits under it.
//!
//! Past either budget the proxy sheds new connections at accept (closing them at once costs a
//! descriptor for a moment, and tells the client to go elsewhere instead of leaving it in the
//! kernel's backlog) while every logged-in user goes on being served: refusing a new login
//! costs a retry, failing an established session costs a reconnect storm.
//!
//! Between two samples each accepted connection counts as two descriptors (client and node),
//! so a burst cannot slip past the descriptor budget before the next sample sees it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::OverloadConfig;

/// How often memory and descriptors are measured.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Share of the open-file limit used as the descriptor budget when none is configured.
const DEFAULT_DESCRIPTOR_SHARE: f64 = 0.9;

/// Which budget is exceeded: the `budget` label of the overload metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Resident memory.
    Memory,
    /// Open file descriptors.
    Descriptors,
}

impl Budget {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Memory => "memory",
            Budget::Descriptors => "descriptors",
        }
    }
}

/// The latest measurements.
pub struct Overload {
    /// Resident set size, bytes.
    rss: AtomicU64,
    /// Open descriptors.
    descriptors: AtomicUsize,
    /// Connections accepted since the last sample.
    accepted: AtomicUsize,
    /// The soft open-file limit at start (None: unknown).
    open_file_limit: Option<usize>,
}

impl Default for Overload {
    fn default() -> Self {
        Overload::new()
    }
}

impl Overload {
    /// Measure once now.
    pub fn new() -> Overload {
        let o = Overload {
            rss: AtomicU64::new(0),
            descriptors: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            open_file_limit: open_file_limit(),
        };
        o.sample();
        o
    }

    /// Measure memory and descriptors again.
    pub fn sample(&self) {
        if let Some(rss) = resident_bytes() {
            self.rss.store(rss, Ordering::Relaxed);
        }
        if let Some(n) = open_descriptors() {
            self.descriptors.store(n, Ordering::Relaxed);
        }
        self.accepted.store(0, Ordering::Relaxed);
    }

    /// Open descriptors at the last sample.
    pub fn descriptors(&self) -> usize {
        self.descriptors.load(Ordering::Relaxed)
    }

    /// A connection was accepted (it counts until the next sample sees it).
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// The descriptor budget under `config`.
    pub fn descriptor_budget(&self, config: &OverloadConfig) -> Option<usize> {
        config.max_descriptors.or_else(|| {
            self.open_file_limit
                .map(|limit| (limit as f64 * DEFAULT_DESCRIPTOR_SHARE) as usize)
        })
    }

    /// The budget a new connection would exceed, if any.
    pub fn over(&self, config: &OverloadConfig) -> Option<Budget> {
        if let Some(max) = config.max_memory
            && self.rss.load(Ordering::Relaxed) > max
        {
            return Some(Budget::Memory);
        }
        let estimate =
            self.descriptors.load(Ordering::Relaxed) + 2 * self.accepted.load(Ordering::Relaxed);
        match self.descriptor_budget(config) {
            Some(max) if estimate > max => Some(Budget::Descriptors),
            _ => None,
        }
    }
}

/// `VmRSS` of this process, in bytes.
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Descriptors open in this process.
fn open_descriptors() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The soft limit on open files (`ulimit -n`, `LimitNOFILE=`).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_this_process_and_applies_both_budgets() {
        let o = Overload::new();
        assert!(o.rss.load(Ordering::Relaxed) > 0);
        assert!(o.descriptors.load(Ordering::Relaxed) >= 3);
        assert!(o.open_file_limit.is_some_and(|l| l > 0));
        let none = OverloadConfig {
            max_memory: None,
            max_descriptors: Some(1_000_000),
        };
        assert_eq!(o.over(&none), None);
        let memory = OverloadConfig {
            max_memory: Some(1024),
            ..none.clone()
        };
        assert_eq!(o.over(&memory), Some(Budget::Memory));
        // Accepted connections count before the next sample sees them.
        let few = o.descriptors.load(Ordering::Relaxed) + 4;
        let descriptors = OverloadConfig {
            max_memory: None,
            max_descriptors: Some(few),
        };
        assert_eq!(o.over(&descriptors), None);
        for _ in 0..3 {
            o.accepted();
        }
        assert_eq!(o.over(&descriptors), Some(Budget::Descriptors));
    }
}
