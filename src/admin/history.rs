//! The last quarter of an hour of each node's users and logins, kept in memory for the
//! status page's charts: enough to see a login storm or a node losing its users at a glance,
//! on a proxy whose operators run no Prometheus.
//!
//! One [`Sample`] every [`SAMPLE_EVERY`] holds, for every backend of the running
//! configuration, the values the registry has then ([`Readings`]): nothing is counted here.
//! The buffer is bounded ([`KEPT`] samples, oldest dropped first), and each sample holds the
//! backends of one configuration, which the configuration bounds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::readings::Readings;
use crate::runtime::Shared;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Samples kept: 15 minutes at one every [`SAMPLE_EVERY`].
pub const KEPT: usize = 90;

/// One node's values in one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeSample {
    /// Relayed client connections now (`xmpp_lb_backend_connections_open`).
    pub users: f64,
    /// Successful logins so far (`xmpp_lb_backend_logins_total{result="success"}`).
    pub logins: f64,
    /// Failed logins so far (`xmpp_lb_backend_logins_total{result="failure"}`).
    pub failures: f64,
}

impl NodeSample {
    /// Node `name`'s values in `readings`.
    pub fn read(readings: &Readings, name: &str) -> NodeSample {
        let logins = |result| {
            readings.sum(
                "xmpp_lb_backend_logins_total",
                &[("backend", name), ("result", result)],
            )
        };
        NodeSample {
            users: readings.sum("xmpp_lb_backend_connections_open", &[("backend", name)]),
            logins: logins("success"),
            failures: logins("failure"),
        }
    }
}

/// Every node's values at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: SystemTime,
    /// By backend name.
    pub nodes: BTreeMap<String, NodeSample>,
}

impl Sample {
    /// The values of `names` in `readings`, at `at`.
    pub fn read<'a>(
        readings: &Readings,
        names: impl IntoIterator<Item = &'a str>,
        at: SystemTime,
    ) -> Sample {
        Sample {
            at,
            nodes: names
                .into_iter()
                .map(|n| (n.to_string(), NodeSample::read(readings, n)))
                .collect(),
        }
    }
}

/// Logins of one node over a recent window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recent {
    /// How long the window is (from a kept sample to now).
    pub seconds: f64,
    /// Successful logins in it.
    pub logins: f64,
    /// Failed logins in it.
    pub failures: f64,
}

/// The bounded buffer of samples.
pub struct History {
    /// Oldest first; never more than `capacity`.
    samples: Mutex<VecDeque<Sample>>,
    /// The bound.
    capacity: usize,
    /// When the admin side started, with the process: the page's uptime.
    pub started: SystemTime,
}

impl History {
    /// An empty history of at most `capacity` samples.
    pub fn new(capacity: usize) -> History {
        History {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(1),
            started: SystemTime::now(),
        }
    }

    /// Keep `sample`, dropping the oldest past the bound.
    pub fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("history lock");
        while samples.len() >= self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("history lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Node `name`'s logins from the newest kept sample at least `window` before `now` (or the
    /// oldest one, while the process is younger than that) to `now`. `None` without one.
    pub fn recent(
        samples: &[Sample],
        now: &Sample,
        name: &str,
        window: Duration,
    ) -> Option<Recent> {
        let current = now.nodes.get(name)?;
        let limit = now.at.checked_sub(window)?;
        let since = samples
            .iter()
            .rev()
            .find(|s| s.at <= limit)
            .or_else(|| samples.first())?;
        let then = since.nodes.get(name).copied().unwrap_or_default();
        let seconds = now.at.duration_since(since.at).ok()?.as_secs_f64();
        Some(Recent {
            seconds,
            logins: (current.logins - then.logins).max(0.0),
            failures: (current.failures - then.failures).max(0.0),
        })
    }

    /// The chart data: the sample times (Unix milliseconds) and, for each of `names`, its
    /// users at each sample and its logins and failures per second since the sample before
    /// (`null` where the node had no value: not configured then, or the first sample).
    pub fn chart(samples: &[Sample], names: &[&str]) -> Value {
        let times: Vec<u64> = samples.iter().map(|s| unix_ms(s.at)).collect();
        let mut nodes = serde_json::Map::new();
        for &name in names {
            let mut users = Vec::with_capacity(samples.len());
            let mut logins = Vec::with_capacity(samples.len());
            let mut failures = Vec::with_capacity(samples.len());
            for (i, s) in samples.iter().enumerate() {
                let here = s.nodes.get(name);
                users.push(here.map(|n| n.users));
                let before = i
                    .checked_sub(1)
                    .and_then(|p| Some((&samples[p], samples[p].nodes.get(name)?)));
                let rate = |f: fn(&NodeSample) -> f64| {
                    let (prev, was) = before?;
                    let now = here?;
                    let dt = s.at.duration_since(prev.at).ok()?.as_secs_f64();
                    (dt > 0.0).then(|| ((f(now) - f(was)).max(0.0)) / dt)
                };
                logins.push(rate(|n| n.logins));
                failures.push(rate(|n| n.failures));
            }
            nodes.insert(
                name.to_string(),
                json!({ "users": users, "logins_per_second": logins, "failures_per_second": failures }),
            );
        }
        json!({
            "interval_seconds": SAMPLE_EVERY.as_secs(),
            "kept": KEPT,
            "times": times,
            "nodes": nodes,
        })
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Take a sample now and every [`SAMPLE_EVERY`] until `shutdown`.
pub async fn run(shared: Arc<Shared>, history: Arc<History>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let readings = Readings::take(&shared.metrics);
        let rt = shared.runtime.load();
        let names = rt.backends().iter().map(|(_, b)| b.name.as_str());
        history.record(Sample::read(&readings, names, SystemTime::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secs: u64, nodes: &[(&str, f64, f64, f64)]) -> Sample {
        Sample {
            at: UNIX_EPOCH + Duration::from_secs(secs),
            nodes: nodes
                .iter()
                .map(|&(n, users, logins, failures)| {
                    (
                        n.to_string(),
                        NodeSample {
                            users,
                            logins,
                            failures,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn the_buffer_never_holds_more_than_its_bound_and_drops_the_oldest() {
        let h = History::new(KEPT);
        for i in 0..(KEPT as u64 * 3 + 7) {
            h.record(sample(i * 10, &[("node1", i as f64, 0.0, 0.0)]));
            assert!(h.samples().len() <= KEPT);
        }
        let kept = h.samples();
        assert_eq!(kept.len(), KEPT);
        let last = KEPT as u64 * 3 + 6;
        assert_eq!(kept.last().unwrap().nodes["node1"].users, last as f64);
        assert_eq!(
            kept.first().unwrap().nodes["node1"].users,
            (last + 1 - KEPT as u64) as f64,
            "the oldest went first"
        );
        // 15 minutes of samples, one every 10 s.
        assert_eq!(KEPT as u64 * SAMPLE_EVERY.as_secs(), 15 * 60);
        let tiny = History::new(0);
        tiny.record(sample(0, &[]));
        tiny.record(sample(1, &[]));
        assert_eq!(
            tiny.samples().len(),
            1,
            "a bound of 0 still keeps the newest"
        );
    }

    #[test]
    fn the_chart_gives_users_and_per_second_rates_with_gaps_as_null() {
        let samples = vec![
            sample(100, &[("node1", 1.0, 10.0, 0.0)]),
            sample(110, &[("node1", 3.0, 30.0, 5.0), ("node2", 1.0, 0.0, 0.0)]),
            sample(120, &[("node1", 2.0, 30.0, 5.0), ("node2", 4.0, 40.0, 0.0)]),
        ];
        let chart = History::chart(&samples, &["node1", "node2"]);
        assert_eq!(chart["times"], json!([100_000, 110_000, 120_000]));
        assert_eq!(chart["interval_seconds"], 10);
        let n1 = &chart["nodes"]["node1"];
        assert_eq!(n1["users"], json!([1.0, 3.0, 2.0]));
        assert_eq!(n1["logins_per_second"], json!([null, 2.0, 0.0]));
        assert_eq!(n1["failures_per_second"], json!([null, 0.5, 0.0]));
        let n2 = &chart["nodes"]["node2"];
        assert_eq!(n2["users"], json!([null, 1.0, 4.0]));
        assert_eq!(n2["logins_per_second"], json!([null, null, 4.0]));
    }

    #[test]
    fn recent_logins_span_at_least_the_window_when_the_history_allows() {
        let samples = vec![
            sample(0, &[("node1", 0.0, 0.0, 0.0)]),
            sample(40, &[("node1", 0.0, 4.0, 1.0)]),
            sample(60, &[("node1", 0.0, 10.0, 1.0)]),
            sample(100, &[("node1", 0.0, 20.0, 3.0)]),
        ];
        let now = sample(130, &[("node1", 0.0, 26.0, 3.0)]);
        let r = History::recent(&samples, &now, "node1", Duration::from_secs(60)).unwrap();
        assert_eq!(
            r,
            Recent {
                seconds: 70.0,
                logins: 16.0,
                failures: 2.0
            }
        );
        // Younger than the window: from the first sample.
        let young = sample(30, &[("node1", 0.0, 3.0, 0.0)]);
        let r = History::recent(&samples[..1], &young, "node1", Duration::from_secs(60)).unwrap();
        assert_eq!((r.seconds, r.logins), (30.0, 3.0));
        assert_eq!(
            History::recent(&[], &now, "node1", Duration::from_secs(60)),
            None
        );
        assert_eq!(
            History::recent(&samples, &now, "node9", Duration::from_secs(60)),
            None
        );
    }
}
