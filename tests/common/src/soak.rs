//! A soak run: a steady churn of logins, XEP-0198 resumptions through the proxy, messages and
//! abrupt disconnects against the proxy binary in front of three Prosody nodes, while the
//! proxy process is sampled (resident memory, open descriptors, threads, open-connection
//! gauges) at a fixed period. `tests/soak.rs` runs two minutes of it and asserts the curves
//! stay flat; `benches/soak.sh` runs it for half an hour (`examples/soak.rs`) and prints the
//! table that docs/benchmarks.md shows.
//!
//! Each client repeats visits: it connects (a fresh login with resumable stream management,
//! or a resumption of its previous session), sends a few sequence-numbered messages to itself
//! and waits for them all ([`crate::seq`]), then leaves in one of four ways, in turn: a clean
//! `</stream:stream>`, a vanished connection it resumes next, another one it resumes next, and
//! a vanished connection it abandons (the next visit logs in afresh, and the node expires the
//! hibernating session). Numbers carry on over resumptions, so a resumption that lost or
//! replayed a message shows as a violation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::strings;
use crate::env::{DOMAIN, EnvBuilder, accounts};
use crate::prosody::ProsodyOpts;
use crate::proxy::{ProxyProcess, scrape, sum_where};
use crate::raw::Raw;
use crate::sasl2::Client;
use crate::seq::{Pace, SeqClient};

/// How long a node keeps an abandoned session resumable: short, so that a long run holds a
/// bounded number of them.
const HIBERNATION: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakOpts {
    /// Clients at once (one account each).
    pub clients: usize,
    /// How long the churn lasts.
    pub duration: Duration,
    /// Period of the samples.
    pub sample_every: Duration,
    /// Messages per visit.
    pub messages: u64,
    /// Pace of the messages.
    pub pace: Pace,
    /// Pause between two visits of a client.
    pub pause: Duration,
}

impl Default for SoakOpts {
    fn default() -> SoakOpts {
        SoakOpts {
            clients: 24,
            duration: Duration::from_secs(120),
            sample_every: Duration::from_secs(5),
            messages: 5,
            pace: Pace {
                every: Duration::from_millis(40),
                window: 5,
            },
            pause: Duration::from_millis(400),
        }
    }
}

/// The proxy process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Since the churn started.
    pub at: Duration,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: u64,
    /// `xmpp_lb_connections_open`, summed.
    pub connections_open: u64,
    /// `xmpp_lb_backend_connections_open`, summed: relays running.
    pub relays_open: u64,
    /// Successful logins so far (`xmpp_lb_sasl_outcomes_total{outcome="success"}`).
    pub logins: u64,
    /// Resumptions so far (`xmpp_lb_resumes_total{result="resumed"}`).
    pub resumes: u64,
    /// Messages the clients got back in order so far.
    pub messages: u64,
}

/// What the clients did, as they counted it.
#[derive(Clone, Debug, Default)]
pub struct Churn {
    /// Fresh logins.
    pub logins: u64,
    /// Resumptions that succeeded.
    pub resumes: u64,
    /// Clean stream closes.
    pub closes: u64,
    /// Connections dropped without a close.
    pub vanishes: u64,
    /// Messages sent and received back in order.
    pub messages: u64,
    /// Loss, reordering or duplication seen, by client.
    pub violations: Vec<String>,
    /// Clients that failed (a login or resumption refused, a timeout), with why.
    pub failures: Vec<String>,
}

/// The result of a run.
#[derive(Debug)]
pub struct Soak {
    /// Before any client connected.
    pub idle_before: Sample,
    /// During the churn, one per period.
    pub samples: Vec<Sample>,
    /// After every client left and every connection closed.
    pub idle_after: Sample,
    /// The clients' account.
    pub churn: Churn,
    /// The proxy's own count of resumptions that failed.
    pub resumes_failed: u64,
    /// Every process of the run (proxy and nodes), to check they are gone afterwards.
    pub pids: Vec<u32>,
    /// The nodes' directory, removed at the end.
    pub dir: PathBuf,
}

/// How a visit ends, and so how the next one begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    Close,
    VanishAndResume,
    VanishAndForget,
}

/// The way visit `n` of a client ends: clean close, two resumptions, one abandoned session.
fn leave(n: u64) -> Leave {
    match n % 4 {
        0 => Leave::Close,
        1 | 2 => Leave::VanishAndResume,
        _ => Leave::VanishAndForget,
    }
}

/// Start three nodes and the proxy, run the churn, sample, stop everything.
pub fn run(opts: &SoakOpts, mut on_sample: impl FnMut(&Sample)) -> Soak {
    let people = accounts("soak", 0..opts.clients);
    let keys = tempfile::tempdir().expect("a temporary directory");
    let key_file = keys.path().join("sm.key");
    std::fs::write(
        &key_file,
        "the soak run's stream management secret, 48 bytes\n",
    )
    .expect("write the key");
    let key_file = key_file.display().to_string();
    let env = EnvBuilder::new(3)
        .prosody(ProsodyOpts {
            extra_config: format!("smacks_hibernation_time = {}", HIBERNATION.as_secs()),
            log_level: "warn".into(),
            ..ProsodyOpts::default()
        })
        .users(&people)
        .config(move |c| c.set("resumption.sm_key_files", strings(&[&key_file])))
        .start_process();
    let proxy = &env.proxy;
    let addr = proxy.addr("direct");
    let delivered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let take = |at: Duration| sample(proxy, at, delivered.load(Ordering::Relaxed));
    // The proxy's own readiness connections close first.
    wait_closed(proxy);
    let idle_before = idle(proxy, take(Duration::ZERO));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the clients");
    let until = tokio::time::Instant::now() + opts.duration;
    let workers: Vec<_> = people
        .into_iter()
        .map(|account| {
            let (ca, delivered, opts) = (env.ca(), delivered.clone(), opts.clone());
            rt.spawn(async move { client(addr, &ca, account, &opts, delivered, until).await })
        })
        .collect();
    let mut samples = Vec::new();
    let mut next = started + opts.sample_every;
    while next <= started + opts.duration {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let s = take(started.elapsed());
        on_sample(&s);
        samples.push(s);
        next += opts.sample_every;
    }
    let mut churn = Churn::default();
    rt.block_on(async {
        for (i, w) in workers.into_iter().enumerate() {
            match w.await {
                Ok(c) => churn.add(c),
                Err(e) => churn
                    .failures
                    .push(format!("client {i}: {}", panic_text(e))),
            }
        }
    });
    drop(rt);
    // Every connection closed (the nodes close their side of a vanished one at once).
    wait_closed(proxy);
    // Let the runtime's idle blocking threads retire (tokio keeps them 10 s).
    std::thread::sleep(Duration::from_secs(11));
    let idle_after = idle(proxy, take(started.elapsed()));
    let failed = sum_where(
        &scrape(proxy.metrics),
        "xmpp_lb_resumes_total",
        &[("result", "failed")],
    ) as u64;
    let mut pids = env.cluster.pids();
    pids.push(proxy.pid());
    let dir = env.cluster.dir().to_path_buf();
    drop(env);
    Soak {
        idle_before,
        samples,
        idle_after,
        churn,
        resumes_failed: failed,
        pids,
        dir,
    }
}

/// Wait (up to 15 s) until the proxy has no connection open.
fn wait_closed(proxy: &ProxyProcess) {
    crate::process::wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        (sum_where(&scrape(proxy.metrics), "xmpp_lb_connections_open", &[]) == 0.0).then_some(())
    });
}

/// A sample of the idle proxy, with its fixed descriptors only: the fewest open over a
/// second. A health probe (one per node per `health.interval`) holds a socket for a moment.
fn idle(proxy: &ProxyProcess, mut s: Sample) -> Sample {
    for _ in 0..20 {
        s.fds = s.fds.min(proxy.open_fds());
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

fn sample(proxy: &ProxyProcess, at: Duration, messages: u64) -> Sample {
    let s = scrape(proxy.metrics);
    let sum = |name: &str, labels: &[(&str, &str)]| sum_where(&s, name, labels) as u64;
    Sample {
        at,
        rss_kib: proxy.rss_bytes() / 1024,
        fds: proxy.open_fds(),
        threads: proxy.threads(),
        connections_open: sum("xmpp_lb_connections_open", &[]),
        relays_open: sum("xmpp_lb_backend_connections_open", &[]),
        logins: sum("xmpp_lb_sasl_outcomes_total", &[("outcome", "success")]),
        resumes: sum("xmpp_lb_resumes_total", &[("result", "resumed")]),
        messages,
    }
}

impl Churn {
    fn add(&mut self, c: Churn) {
        self.logins += c.logins;
        self.resumes += c.resumes;
        self.closes += c.closes;
        self.vanishes += c.vanishes;
        self.messages += c.messages;
        self.violations.extend(c.violations);
        self.failures.extend(c.failures);
    }
}

/// A fresh login with resumable stream management; the (wrapped) id to resume with.
async fn fresh(
    addr: SocketAddr,
    ca: &Path,
    (user, pw): (&str, &str),
    visit: u64,
) -> (Client, String) {
    let raw = Raw::direct_tls(addr, DOMAIN, ca).await;
    let resource = format!("v{visit}");
    let mut c = Client::legacy_login(raw, DOMAIN, user, pw, Some(&resource)).await;
    let enabled = c
        .enable_sm()
        .await
        .unwrap_or_else(|f| panic!("{user}: enable failed: {f:?}"));
    let id = enabled
        .id
        .unwrap_or_else(|| panic!("{user}: no resumable id"));
    (c, id)
}

/// One client's visits until `until`.
async fn client(
    addr: SocketAddr,
    ca: &Path,
    (user, pw): (String, String),
    opts: &SoakOpts,
    delivered: Arc<AtomicU64>,
    until: tokio::time::Instant,
) -> Churn {
    let mut churn = Churn::default();
    let (c, mut previd) = fresh(addr, ca, (&user, &pw), 0).await;
    churn.logins += 1;
    let mut seq = SeqClient::new(c);
    seq.delivered = delivered;
    let mut visit = 0u64;
    loop {
        let before = seq.next_expected;
        assert!(
            seq.exchange(opts.messages, opts.pace, Duration::from_secs(15))
                .await,
            "{user}: messages did not come back: {} in flight",
            seq.in_flight()
        );
        churn.messages += seq.next_expected - before;
        let how = leave(visit);
        visit += 1;
        if how == Leave::Close {
            seq.client.raw.send("</stream:stream>").await;
            seq.client.raw.read_to_close(Duration::from_secs(10)).await;
            churn.closes += 1;
        } else {
            seq.client.raw.cut();
            churn.vanishes += 1;
        }
        tokio::time::sleep(opts.pause).await;
        if tokio::time::Instant::now() >= until {
            break;
        }
        if how == Leave::VanishAndResume {
            let h = seq.client.h_in;
            let sent = seq.client.h_out;
            let raw = Raw::direct_tls(addr, DOMAIN, ca).await;
            let mut c = Client::legacy_login(raw, DOMAIN, &user, &pw, None).await;
            let r = c
                .resume(&previd, h)
                .await
                .unwrap_or_else(|f| panic!("{user}: resume failed: {f:?}"));
            assert_eq!(r.h, sent, "{user}: the node handled every stanza sent");
            seq.switch_to(c);
            churn.resumes += 1;
        } else {
            let (c, id) = fresh(addr, ca, (&user, &pw), visit).await;
            previd = id;
            // A new session: the old one took nothing with it (everything came back).
            seq.switch_to(c);
            churn.logins += 1;
        }
    }
    churn.violations = seq
        .violations
        .iter()
        .map(|v| format!("{user}: {v}"))
        .collect();
    churn
}

/// The text of a client's panic.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let p = e.into_panic();
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// The head of the Markdown table of samples.
pub const TABLE_HEAD: &str = "| time | RSS MiB | open fds | threads | connections open | relays open | logins | resumes | messages |\n\
     | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";

/// One sample as a row of that table.
pub fn row(label: &str, s: &Sample) -> String {
    format!(
        "| {label} | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        s.connections_open,
        s.relays_open,
        s.logins,
        s.resumes,
        s.messages
    )
}

/// The samples as a Markdown table (as docs/benchmarks.md shows them).
pub fn table(soak: &Soak) -> String {
    let mut out = String::from(TABLE_HEAD);
    out.push_str(&row("idle, before", &soak.idle_before));
    for s in &soak.samples {
        out.push_str(&row(&clock(s.at), s));
    }
    out.push_str(&row("idle, after", &soak.idle_after));
    out
}

/// `m:ss`.
pub fn clock(d: Duration) -> String {
    format!("{}:{:02}", d.as_secs() / 60, d.as_secs() % 60)
}
