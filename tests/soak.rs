//! Two minutes of soak (`testkit::soak`): a steady churn of logins, XEP-0198 resumptions
//! through the proxy, messages and abrupt disconnects against the proxy binary and three real
//! Prosody nodes. Nothing is lost or reordered, every resumption succeeds, and after a warm-up
//! the proxy's resident memory, open descriptors and threads stay flat; once the clients are
//! gone, descriptors and connection gauges are back where they started, and every process of
//! the run is gone. The half-hour version is `benches/soak.sh`.

use std::time::Duration;

use testkit::process::pid_alive;
use testkit::soak::{self, Sample, SoakOpts};

/// Samples from the first this much of the run are not judged: the allocator's arenas, the
/// runtime's worker queues and the nodes' session tables grow to their working size first.
const WARM_UP: Duration = Duration::from_secs(30);

/// Allowed growth of resident memory between the first and the last quarter of the judged
/// samples (median against median). Measured with this churn, the debug build's RSS stays
/// within 0.1 MiB of its level after the first seconds; glibc's arenas may still grow or give
/// back a MiB when the number of connections in flight swings. The churn opens about 40
/// connections a second, so the two medians are some 2,700 connections apart: a leak of 1 KiB
/// per connection would add 2.7 MiB, and 2 MiB tells it from noise.
const RSS_GROWTH_KIB: u64 = 2048;

/// Allowed spread of the thread count after warm-up: the runtime's workers are fixed, and the
/// blocking pool may start a thread or two for a moment (it retires them after 10 s idle).
const THREADS_SPREAD: u64 = 4;

/// Descriptors besides the connections' own: the listeners, the admin socket, the log and the
/// runtime's are fixed; health probes (one per node per interval) and a connection accepted
/// but not counted yet come and go.
const FDS_BESIDES_CONNECTIONS: usize = 12;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn two_minutes_of_churn_leave_memory_descriptors_and_threads_flat() {
    let opts = SoakOpts::default();
    let run = soak::run(&opts, |_| {});
    eprintln!("{}", soak::table(&run));
    let c = &run.churn;
    eprintln!(
        "clients: {} logins, {} resumes, {} clean closes, {} vanished, {} messages",
        c.logins, c.resumes, c.closes, c.vanishes, c.messages
    );

    // The churn happened, and lost nothing.
    assert!(c.failures.is_empty(), "clients failed: {:#?}", c.failures);
    assert!(c.violations.is_empty(), "{:#?}", c.violations);
    assert!(c.logins >= 200, "a steady churn of logins: {}", c.logins);
    assert!(
        c.resumes >= 200,
        "a steady churn of resumptions: {}",
        c.resumes
    );
    assert!(c.vanishes >= 300 && c.closes >= 100, "{c:?}");
    // Every visit, fresh or resumed, exchanged its messages.
    assert_eq!(c.messages, opts.messages * (c.logins + c.resumes), "{c:?}");
    let after = &run.idle_after;
    assert_eq!(
        after.resumes, c.resumes,
        "the proxy counted every resumption"
    );
    assert_eq!(run.resumes_failed, 0, "no resumption failed");
    assert_eq!(
        after.logins,
        c.logins + c.resumes,
        "one SASL success per connection (a resumption logs in first)"
    );

    // Flat after warm-up.
    let judged: Vec<&Sample> = run.samples.iter().filter(|s| s.at >= WARM_UP).collect();
    assert!(judged.len() >= 12, "enough samples: {}", judged.len());
    let quarter = judged.len() / 4;
    let rss = |v: &[&Sample]| median(v.iter().map(|s| s.rss_kib).collect());
    let (early, late) = (
        rss(&judged[..quarter]),
        rss(&judged[judged.len() - quarter..]),
    );
    assert!(
        late <= early + RSS_GROWTH_KIB,
        "resident memory grew from {early} KiB to {late} KiB"
    );
    let threads: Vec<u64> = judged.iter().map(|s| s.threads).collect();
    let (lo, hi) = (threads.iter().min().unwrap(), threads.iter().max().unwrap());
    assert!(hi - lo <= THREADS_SPREAD, "threads moved from {lo} to {hi}");
    for s in &judged {
        assert!(
            s.fds
                <= run.idle_before.fds + 2 * s.connections_open as usize + FDS_BESIDES_CONNECTIONS,
            "{} descriptors open with {} connections at {:?} (idle: {})",
            s.fds,
            s.connections_open,
            s.at,
            run.idle_before.fds
        );
    }

    // Back to idle: no connection, descriptor or thread left behind.
    let (before, after) = (&run.idle_before, &run.idle_after);
    assert_eq!(after.connections_open, 0);
    assert_eq!(after.relays_open, 0);
    assert_eq!(
        after.fds, before.fds,
        "descriptors before and after the churn"
    );
    assert!(
        after.threads <= before.threads + THREADS_SPREAD,
        "threads: {} idle before, {} after",
        before.threads,
        after.threads
    );

    // Cleaned up: every process of the run stopped, the nodes' files removed.
    for pid in &run.pids {
        assert!(!pid_alive(*pid), "process {pid} of the run still runs");
    }
    assert!(!run.dir.exists(), "{} still exists", run.dir.display());
}
