//! Logs: human-readable text by default, or one JSON object per line (`log_format = "json"`)
//! in the Logstash/ECS style, so they go straight into Elasticsearch, Loki or a document
//! store without a parsing stage:
//!
//! ```json
//! {"@timestamp":"2025-01-31T09:15:02.123456Z","log.level":"info","log.logger":"xmpp_lb::access","message":"connection closed","backend":"node2",...}
//! ```
//!
//! Every line goes through a bounded in-memory queue to a writer thread. A full queue (the
//! output is stuck: a full pipe, a stalled log shipper) drops the line and counts it
//! ([`dropped_lines`], exported as `xmpp_lb_log_lines_dropped_total`) instead of making a
//! connection task wait: logging never blocks the relay.

use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub use crate::config::LogFormat;

/// Lines held while the output is slow; beyond this they are dropped. About a few MiB.
pub const QUEUE_LINES: usize = 16_384;

/// The dropped-line counter of the process's log writer, once logging is set up.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped so far because the output could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Keeps the writer thread; dropping it flushes what is queued (waiting a moment at most).
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Set up the process's logging to stdout: `filter` in `RUST_LOG` syntax, in `format`.
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<LogGuard> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let (writer, worker) = non_blocking(std::io::stdout(), QUEUE_LINES);
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder
                .with_ansi(ansi)
                .try_init()
                .map_err(|e| anyhow::anyhow!(e))?
        }
        LogFormat::Json => builder
            .event_format(EcsJson)
            .try_init()
            .map_err(|e| anyhow::anyhow!(e))?,
    }
    Ok(LogGuard { _worker: worker })
}

/// A writer that queues whole lines (the formatter writes each event in one call) for a
/// thread that writes them to `out`, dropping lines rather than waiting when `lines` are
/// already queued.
pub fn non_blocking<W: std::io::Write + Send + 'static>(
    out: W,
    lines: usize,
) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(lines)
        .thread_name("xmpp-lb-log")
        .finish(out)
}

/// The JSON line format: `@timestamp` (RFC 3339, UTC), `log.level`, `log.logger` (the
/// target, e.g. `xmpp_lb::access`), `message`, then the event's own fields with their types
/// kept (numbers stay numbers).
pub struct EcsJson;

impl<S, N> FormatEvent<S, N> for EcsJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert("@timestamp".into(), Value::String(timestamp));
        line.insert(
            "log.level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        // Events bridged from the `log` crate (rustls) carry their real target as a field.
        let logger = fields
            .log_target
            .take()
            .unwrap_or_else(|| meta.target().to_string());
        line.insert("log.logger".into(), Value::String(logger));
        line.insert(
            "message".into(),
            Value::String(fields.message.take().unwrap_or_default()),
        );
        for (key, value) in fields.values {
            // An event field never overwrites the envelope.
            let key = if line.contains_key(&key) {
                format!("field.{key}")
            } else {
                key
            };
            line.insert(key, value);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields, collected with their types.
#[derive(Default)]
struct Fields {
    /// The `message` field (the format string of the event).
    message: Option<String>,
    /// The target of an event bridged from the `log` crate.
    log_target: Option<String>,
    /// Every other field, in the order they were recorded.
    values: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => {
                if let Value::String(s) = value {
                    self.log_target = Some(s);
                }
            }
            // The rest of the `log` bridge's metadata says where in a dependency the line
            // came from: noise in a document store.
            name if name.starts_with("log.") => {}
            name => self.values.push((name.to_string(), value)),
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
        );
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// A writer that collects what is written, shared with the test.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Collect {
        type Writer = Collect;
        fn make_writer(&'a self) -> Collect {
            self.clone()
        }
    }

    #[test]
    fn json_lines_have_the_ecs_envelope_and_typed_fields() {
        let out = Collect::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .event_format(EcsJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "xmpp_lb::access",
                client = %"192.0.2.7:40000",
                bytes_up = 1234u64,
                ok = true,
                message_count = 3i64,
                "connection closed"
            );
            tracing::warn!(backend = "node1", "backend health changed");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let a = &lines[0];
        assert_eq!(a["log.level"], "info");
        assert_eq!(a["log.logger"], "xmpp_lb::access");
        assert_eq!(a["message"], "connection closed");
        assert_eq!(a["client"], "192.0.2.7:40000");
        assert_eq!(a["bytes_up"], 1234);
        assert_eq!(a["ok"], true);
        assert_eq!(a["message_count"], 3);
        let ts = a["@timestamp"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'),
            "RFC 3339 UTC: {ts}"
        );
        assert_eq!(lines[1]["log.level"], "warn");
        assert_eq!(lines[1]["backend"], "node1");
    }

    /// An output that takes nothing until told to: a full pipe.
    struct Stuck(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_lines_instead_of_blocking() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (writer, worker) = non_blocking(Stuck(gate.clone()), 8);
        let counter = writer.error_counter();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .event_format(EcsJson)
            .finish();
        let started = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::info!(i, "a line nobody reads");
            }
        });
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "logging waited for the output"
        );
        assert!(
            counter.dropped_lines() >= 900,
            "{}",
            counter.dropped_lines()
        );
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
        drop(worker);
    }
}
