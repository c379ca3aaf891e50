//! What SREs see, checked against the code that exports it: docs/metrics.md lists exactly the
//! metrics the proxy defines (names, types, labels); every query of the Grafana dashboard and
//! of the alert rules names only exported metrics; a scrape taken after real logins passes
//! `promtool check metrics`; and a real Prometheus server scraping the proxy (with its bearer
//! token) sees the logins and per-backend connections the test caused, loads the alert rules,
//! and evaluates every dashboard query.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::env::{DOMAIN, Env, EnvBuilder};
use testkit::process::{free_port, spawn_child, terminate, wait_for};
use testkit::raw::{Raw, header, plain_auth};
use xmpp_lb::metrics::{Definition, Kind, Metrics};
/// With backends node1..node3 (golden ring placement): alice → node1, bob → node2,
/// carol → node3, juliet and romeo → node2.
const USERS: &[(&str, &str)] = &[
    ("alice", "pw-alice"),
    ("bob", "pw-bob"),
    ("carol", "pw-carol"),
    ("juliet", "pw-juliet"),
    ("romeo", "pw-romeo"),
];
/// Relayed connections each backend holds once every user of `USERS` is logged in.
const EXPECTED_PER_BACKEND: &[(&str, f64)] = &[("node1", 1.0), ("node2", 3.0), ("node3", 1.0)];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn definitions() -> Vec<Definition> {
    Metrics::new().definitions().to_vec()
}

// ---- what the code defines, what the docs say -------------------------------------------------

/// One metric row of docs/metrics.md: `| \`name\` | type | \`label\`, … | meaning |`.
#[derive(Debug, PartialEq, Eq)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
}

fn documented_metrics() -> BTreeMap<String, Documented> {
    let text = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix("| `xmpp_lb_") else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(cells.len() >= 4, "a metric row has 4 cells: {line}");
        let name = format!("xmpp_lb_{}", cells[0].trim_end_matches('`'));
        let labels = if cells[2].trim() == "—" {
            BTreeSet::new()
        } else {
            cells[2]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_string())
                .collect()
        };
        let previous = out.insert(
            name.clone(),
            Documented {
                kind: cells[1].trim().to_string(),
                labels,
            },
        );
        assert!(previous.is_none(), "{name} is documented twice");
    }
    out
}

/// Whether `name` is a series name the proxy can export: a counter or gauge as defined, or a
/// histogram's `_bucket`, `_sum` or `_count` (a histogram's bare name is no series).
fn is_exported_series(name: &str, defs: &[Definition]) -> bool {
    if defs
        .iter()
        .any(|d| d.name == name && d.kind != Kind::Histogram)
    {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix).is_some_and(|stem| {
            defs.iter()
                .any(|d| d.name == stem && d.kind == Kind::Histogram)
        })
    })
}

#[test]
fn docs_list_every_metric_with_its_type_and_labels() {
    let defs = definitions();
    let docs = documented_metrics();
    let defined: BTreeMap<String, Documented> = defs
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                Documented {
                    kind: d.kind.as_str().to_string(),
                    labels: d.labels.iter().cloned().collect(),
                },
            )
        })
        .collect();
    let undocumented: Vec<&String> = defined.keys().filter(|n| !docs.contains_key(*n)).collect();
    assert!(
        undocumented.is_empty(),
        "add these metrics to docs/metrics.md (name, type, labels, meaning, what to alert on): {undocumented:?}"
    );
    let phantom: Vec<&String> = docs.keys().filter(|n| !defined.contains_key(*n)).collect();
    assert!(
        phantom.is_empty(),
        "docs/metrics.md lists metrics the proxy does not define: {phantom:?}"
    );
    for (name, d) in &defined {
        assert_eq!(&docs[name], d, "docs/metrics.md is wrong about {name}");
    }
    // Prose mentions must be real series too, except in the section about what is not there.
    let text = std::fs::read_to_string(repo("docs/metrics.md")).unwrap();
    let (before, rest) = text
        .split_once("## Not exported yet")
        .unwrap_or((text.as_str(), ""));
    let after = rest.split_once("\n## ").map_or("", |(_, a)| a);
    // The other operator documents name real metrics too.
    let mut parts = vec![
        ("docs/metrics.md".to_string(), before.to_string()),
        ("docs/metrics.md".to_string(), after.to_string()),
    ];
    for other in [
        "docs/architecture.md",
        "docs/routing.md",
        "config/example.toml",
        "README.md",
    ] {
        if let Ok(text) = std::fs::read_to_string(repo(other)) {
            parts.push((other.to_string(), text));
        }
    }
    for (file, part) in parts {
        for word in part.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("xmpp_lb_") {
                assert!(
                    defined.contains_key(word) || is_exported_series(word, &defs),
                    "{file} mentions {word}, which the proxy does not export"
                );
            }
        }
    }
}

#[test]
fn metric_names_and_labels_follow_the_conventions() {
    let defs = definitions();
    assert!(defs.len() >= 20, "{defs:?}");
    let mut seen = BTreeSet::new();
    for d in &defs {
        assert!(seen.insert(&d.name), "{} defined twice", d.name);
        assert!(d.name.starts_with("xmpp_lb_"), "{}", d.name);
        assert!(!d.help.is_empty(), "{} has no help", d.name);
        assert_eq!(
            d.kind == Kind::Counter,
            d.name.ends_with("_total"),
            "{}: counters, and only counters, end in _total",
            d.name
        );
        if d.kind == Kind::Histogram {
            assert!(d.name.ends_with("_seconds"), "{}: base unit", d.name);
        }
        // Unbounded values (users, addresses) must never be labels.
        for label in &d.labels {
            assert!(
                ![
                    "jid", "user", "username", "ip", "address", "client", "peer", "resource"
                ]
                .contains(&label.as_str()),
                "{}: label {label} would be unbounded",
                d.name
            );
        }
    }
}

// ---- PromQL: which metrics a query selects -----------------------------------------------------

/// The metric names an expression selects: every identifier that is not a function or an
/// aggregation (followed by `(`), a keyword, a label (inside `{}` or a `by (…)` list), a
/// Grafana variable (`$x`, `${x}`), a string, a number or a duration.
fn promql_metrics(expr: &str) -> Vec<String> {
    promql_selectors(expr)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The instant-vector selectors of an expression, as (metric name, selector text with its
/// label matchers, without any range or offset).
fn promql_selectors(expr: &str) -> Vec<(String, String)> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    let b = expr.as_bytes();
    let n = b.len();
    let skip_string = |mut i: usize| -> usize {
        let q = b[i];
        i += 1;
        while i < n && b[i] != q {
            if b[i] == b'\\' && q != b'`' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    // Index just past the bracket closing the one at `i`, strings respected.
    let skip_group = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < n {
            match b[i] {
                b'"' | b'\'' | b'`' => {
                    i = skip_string(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        n
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = skip_string(i);
        } else if c == b'{' {
            i = skip_group(i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(i, b'[', b']');
        } else if c == b'$' {
            i += 1;
            if i < n && b[i] == b'{' {
                i = skip_group(i, b'{', b'}');
            } else {
                while i < n && ident(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == b'.' {
            // Numbers, exponents and durations (1e-9, 0.99, 5m).
            while i < n
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < n && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < n && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            // `sum by (x) (…)`: an aggregation whose grouping comes first.
            let next_word: String = expr[j..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
                .to_ascii_lowercase();
            let aggregation = next_word == "by" || next_word == "without";
            if GROUPING.contains(&lower.as_str()) {
                if j < n && b[j] == b'(' {
                    i = skip_group(j, b'(', b')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || aggregation || (j < n && b[j] == b'(') {
                // A keyword, or a function or aggregation being called.
            } else if j < n && b[j] == b'{' {
                let end = skip_group(j, b'{', b'}');
                out.push((word.to_string(), format!("{word}{}", &expr[j..end])));
                i = end;
            } else {
                out.push((word.to_string(), word.to_string()));
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_promql_reader_finds_metrics_and_nothing_else() {
    assert_eq!(
        promql_metrics(
            r#"sum by (backend, le) (rate(xmpp_lb_a_total{instance=~"$instance",b="x{y}"}[$__rate_interval])) / ignoring (backend) group_left () sum(up) * 1e-9 > bool 0.5 offset 5m"#
        ),
        vec!["xmpp_lb_a_total", "up"]
    );
    assert_eq!(
        promql_metrics(
            "histogram_quantile(0.99, sum(rate(m_bucket[5m])) by (le)) or on(x) group_left n"
        ),
        vec!["m_bucket", "n"]
    );
    assert_eq!(promql_metrics("clamp_min(sum(x), ${v}) and Inf"), vec!["x"]);
    assert_eq!(
        promql_selectors(r#"sum(rate(a{b="}",c=~"$x"}[5m])) / sum(d) > bool up {e="f"}"#),
        vec![
            ("a".to_string(), r#"a{b="}",c=~"$x"}"#.to_string()),
            ("d".to_string(), "d".to_string()),
            ("up".to_string(), r#"up{e="f"}"#.to_string()),
        ]
    );
}

/// Every PromQL expression of the dashboard, with the panel it belongs to: panel targets
/// (rows included) and the queries of template variables.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((title.clone(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap();
        // label_values(SELECTOR, LABEL): the selector is the PromQL part.
        let selector = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map_or(q, |(sel, _)| sel);
        out.push((format!("variable {}", v["name"]), selector.to_string()));
    }
    out
}

fn load_dashboard() -> Value {
    let text = std::fs::read_to_string(repo("grafana/xmpp-lb.json")).unwrap();
    serde_json::from_str(&text).expect("grafana/xmpp-lb.json is JSON")
}

#[test]
fn dashboard_queries_only_exported_metrics_and_is_importable() {
    let defs = definitions();
    let dash = load_dashboard();
    // What an import needs: no fixed id, a stable uid, a schema version, panels with ids and
    // places, every query on the data-source variable so it works with any data source name.
    assert!(dash["id"].is_null(), "id must be null to import");
    assert_eq!(dash["uid"], "xmpp-lb");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30);
    assert!(
        dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data-source variable"
    );
    let mut ids = BTreeSet::new();
    let mut all = Vec::new();
    fn flat(v: &Value, out: &mut Vec<Value>) {
        for p in v.as_array().into_iter().flatten() {
            out.push(p.clone());
            flat(&p["panels"], out);
        }
    }
    flat(&dash["panels"], &mut all);
    for p in &all {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id repeats: {title}"
        );
        let g = &p["gridPos"];
        assert!(
            g["w"].as_u64().unwrap() + g["x"].as_u64().unwrap() <= 24,
            "{title} fits the grid"
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            assert!(!p["targets"].as_array().unwrap().is_empty(), "{title}");
        }
    }
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "{queries:?}");
    let mut used = BTreeSet::new();
    for (panel, expr) in &queries {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "{panel}: no metric in {expr}");
        for name in names {
            assert!(
                is_exported_series(&name, &defs),
                "panel {panel:?} queries {name}, which the proxy does not export: {expr}"
            );
            used.insert(name);
        }
    }
    // What the issue asks the dashboard to show.
    for needed in [
        "xmpp_lb_connections_total",
        "xmpp_lb_sasl_outcomes_total",
        "xmpp_lb_negotiation_duration_seconds_bucket",
        "xmpp_lb_backend_connections_open",
        "xmpp_lb_backend_healthy",
        "xmpp_lb_backend_ring_share",
        "xmpp_lb_stream_errors_sent_total",
        "xmpp_lb_relayed_bytes_total",
        "xmpp_lb_routed_total",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
}

/// Every `expr:` of a Prometheus rules file (single line or a `|` block).
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let indent = line.len() - line.trim_start().len();
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let mut block = String::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push_str(lines[i].trim());
                    block.push(' ');
                    i += 1;
                }
                out.push(block);
                continue;
            }
            out.push(rest.to_string());
        }
        i += 1;
    }
    out
}

#[test]
fn alert_rules_pass_promtool_and_query_only_exported_metrics() {
    let path = repo("grafana/alerts.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .expect("promtool runs (scripts/install-deps.sh installs the prometheus package)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let defs = definitions();
    let exprs = rule_exprs(&std::fs::read_to_string(&path).unwrap());
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in exprs {
        for name in promql_metrics(&expr) {
            // `up` is Prometheus' own series for the scrape itself.
            assert!(
                name == "up" || is_exported_series(&name, &defs),
                "alert queries {name}, which the proxy does not export: {expr}"
            );
        }
    }
}

// ---- a live proxy ------------------------------------------------------------------------------

/// Three Prosody nodes with `USERS`, and the proxy in front routing by JID, with an admin
/// token.
fn env() -> Env {
    EnvBuilder::new(3).users(USERS).token().start()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET `url` with an optional bearer token: (status, body).
fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// Log every user of `USERS` in (held open), fail one login, and send one bad stream header,
/// so counters of each kind have series.
async fn traffic(env: &Env) -> Vec<Raw> {
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    let mut held = Vec::new();
    for (user, pw) in USERS {
        let mut raw = Raw::login(addr, DOMAIN, &ca, user, pw).await;
        raw.ping(DOMAIN).await;
        held.push(raw);
    }
    let mut wrong = Raw::direct_tls(addr, DOMAIN, &ca).await;
    wrong.send(&header(DOMAIN, None)).await;
    wrong.expect("</stream:features>").await;
    wrong.send(&plain_auth("alice", "not-her-password")).await;
    wrong.expect("<failure").await;
    drop(wrong);
    let mut unknown = Raw::direct_tls(addr, DOMAIN, &ca).await;
    unknown.send(&header("elsewhere.test", None)).await;
    unknown.read_to_close(Duration::from_secs(10)).await;
    held
}

/// `# TYPE` lines of an exposition: family name → type.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect()
}

#[test]
fn a_scrape_after_real_logins_passes_promtool_and_every_family_is_documented() {
    let env = env();
    let url = format!("http://{}/metrics", env.proxy.metrics);
    let held = env.proxy.block_on(traffic(&env));
    let (status, scrape) = get(&url, Some(env.token()));
    assert_eq!(status, 200, "{scrape}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/install-deps.sh installs the prometheus package)");
    {
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
    }
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {report}\n{scrape}");
    assert!(report.trim().is_empty(), "promtool reports: {report}");

    let docs = documented_metrics();
    let live = families(&scrape);
    for (name, kind) in &live {
        let d = docs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is exported but not in docs/metrics.md"));
        assert_eq!(&d.kind, kind, "{name}");
    }
    // The traffic above reached the families the dashboard's main panels are built on.
    for family in [
        "xmpp_lb_connections_total",
        "xmpp_lb_connections_open",
        "xmpp_lb_routed_total",
        "xmpp_lb_sasl_outcomes_total",
        "xmpp_lb_stream_errors_sent_total",
        "xmpp_lb_negotiation_duration_seconds",
        "xmpp_lb_backend_connect_duration_seconds",
        "xmpp_lb_backend_connections_open",
        "xmpp_lb_relayed_bytes_total",
        "xmpp_lb_backend_ring_share",
        "xmpp_lb_connections_closed_total",
    ] {
        assert!(live.contains_key(family), "{family} missing:\n{scrape}");
    }
    // No JID and no address ever appears in a scrape.
    assert!(!scrape.contains('@'), "{scrape}");
    assert!(!scrape.contains("127.0.0.1"), "{scrape}");
    drop(held);
}

/// A Prometheus server run for one test: its own storage in a temporary directory, on a free
/// loopback port, killed by pid when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start `prometheus` with `config` (prometheus.yml text) and any extra files written
    /// next to it; wait until it is ready.
    fn start(config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        // A free port may be taken between the probe and Prometheus' bind: only that clash
        // is retried, on another port; any other failure is the test's.
        for _attempt in 0..5 {
            let port = free_port(false).unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let log_path = dir.path().join("prometheus.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log);
            let mut child = spawn_child(cmd).expect(
                "prometheus runs (scripts/install-deps.sh installs the prometheus package)",
            );
            let ready = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                let (status, _) = get_quiet(&format!("http://{addr}/-/ready"));
                (status == 200).then_some(true)
            });
            if ready == Some(true) {
                return Prometheus {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            let _ = terminate(&mut child, Duration::from_secs(2));
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                log.contains("address already in use"),
                "prometheus did not start: {log}"
            );
        }
        panic!("prometheus found its port taken five times in a row");
    }

    /// An instant query; the `data.result` array (panics on a query error).
    fn query(&self, expr: &str) -> Vec<Value> {
        let mut resp = agent()
            .get(&format!("http://{}/api/v1/query", self.addr))
            .query("query", expr)
            .call()
            .unwrap();
        let body: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of a query that yields one sample, if it does.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        let v = result.first()?["value"][1].as_str()?.parse().ok()?;
        (result.len() == 1).then_some(v)
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = get_quiet(&format!("http://{}{path}", self.addr));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// GET without a token, and without panicking when nothing listens yet.
fn get_quiet(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(mut resp) => (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// A real Prometheus scraping `env`'s proxy every second with its token, with the alert rules
/// of `grafana/alerts.yml` loaded.
fn scraping(env: &Env) -> Prometheus {
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: xmpp-lb
    authorization:
      credentials_file: {token}
    static_configs:
      - targets: ["{target}"]
"#,
        token = env.token_path.as_ref().unwrap().display(),
        target = env.proxy.metrics,
    );
    let alerts = std::fs::read_to_string(repo("grafana/alerts.yml")).unwrap();
    Prometheus::start(&config, &[("alerts.yml", &alerts)])
}

#[test]
fn a_real_prometheus_scrapes_the_logins_and_connections_the_test_caused() {
    let env = env();
    // The admin endpoints want the token: without it a scrape is refused.
    let (status, _) = get(&format!("http://{}/metrics", env.proxy.metrics), None);
    assert_eq!(status, 401);
    let prom = scraping(&env);
    let held = env.proxy.block_on(traffic(&env));
    let logins = USERS.len() as f64;

    // Wait for scrapes that saw everything, then read the values through the HTTP API.
    let settled = wait_for(Duration::from_secs(30), Duration::from_millis(250), || {
        let done = prom.scalar(r#"up{job="xmpp-lb"}"#) == Some(1.0)
            && prom.scalar(r#"sum(xmpp_lb_sasl_outcomes_total{outcome="success"})"#)
                == Some(logins)
            && EXPECTED_PER_BACKEND.iter().all(|(b, n)| {
                prom.scalar(&format!(
                    r#"xmpp_lb_backend_connections_open{{job="xmpp-lb",backend="{b}"}}"#
                )) == Some(*n)
            })
            // The failed login and the refused stream are closed by now: only the held
            // logins are open.
            && prom.scalar(r#"sum(xmpp_lb_connections_open{instance=~".*"})"#) == Some(logins);
        done.then_some(())
    });
    if settled.is_none() {
        panic!(
            "Prometheus never saw the expected values: up={:?} logins={:?} per backend={:?} targets={}",
            prom.scalar(r#"up{job="xmpp-lb"}"#),
            prom.query(r#"xmpp_lb_sasl_outcomes_total"#),
            prom.query("xmpp_lb_backend_connections_open"),
            prom.api("/api/v1/targets")
        );
    }
    assert_eq!(
        prom.scalar(r#"sum(xmpp_lb_sasl_outcomes_total{mechanism="PLAIN",outcome="success"})"#),
        Some(logins)
    );
    assert_eq!(
        prom.scalar(r#"sum(xmpp_lb_sasl_outcomes_total{outcome="failure"})"#),
        Some(1.0)
    );
    assert_eq!(
        prom.scalar(r#"xmpp_lb_stream_errors_sent_total{condition="host-unknown"}"#),
        Some(1.0)
    );
    let targets = prom.api("/api/v1/targets");
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{targets}");
    assert_eq!(target["lastError"], "", "{targets}");

    // The shipped alert rules load and evaluate without error.
    let rules = wait_for(Duration::from_secs(15), Duration::from_millis(250), || {
        let rules = prom.api("/api/v1/rules");
        let all: Vec<Value> = rules["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !all.is_empty()
            && all.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
        evaluated.then_some(all)
    })
    .expect("the alert rules were evaluated");
    assert!(rules.len() >= 8);
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // Nothing is wrong, so no rule is pending or firing. Most rules wait a minute or more
    // (`for:`) before they would, longer than this test runs, so their state alone proves
    // little: each rule's expression must also select nothing right now.
    for r in &rules {
        assert_eq!(r["state"], "inactive", "{r}");
        let expr = r["query"].as_str().expect("a rule's query");
        let now = prom.query(expr);
        assert!(now.is_empty(), "{}: {expr} selects {now:?}", r["name"]);
    }

    // Every dashboard query runs as Grafana would send it (variables at "All").
    let dash = load_dashboard();
    for (panel, expr) in dashboard_queries(&dash) {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$backend", ".*")
            .replace("$domain", ".*");
        assert!(!expr.contains('$'), "{panel}: unknown variable in {expr}");
        prom.query(&expr);
    }
    // A few panels show what the test caused.
    let ring = prom.query(
        r#"max by (domain, backend) (xmpp_lb_backend_ring_share{domain=~".*",backend=~".*"})"#,
    );
    assert_eq!(ring.len(), 3, "{ring:?}");
    let total: f64 = ring
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-6, "{ring:?}");
    drop(held);
}

/// Grafana's variables at "All", as a panel sends them.
fn grafana_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$backend", ".*")
        .replace("$domain", ".*")
}

/// A quiet proxy leaves no panel and no alert without data: after a single login, every
/// metric selector of every dashboard query and of every alert rule returns at least one
/// series from a real Prometheus, because the proxy exports every series whose labels it
/// knows at zero from the first scrape (failures, refusals, errors, reloads, resumptions…).
///
/// The selectors are checked, not the expressions: an alert such as `increase(x[15m]) > 0`
/// rightly returns nothing while nothing is wrong, and a ratio of two zero rates is empty too;
/// what must never be empty is each series the expression reads, or the rule could not fire
/// when it should and the panel would show "no data" instead of 0.
#[test]
fn after_one_login_every_dashboard_and_alert_selector_has_a_series() {
    // One node and one user; a WebSocket listener, so that its HTTP panel has series too.
    let env = EnvBuilder::new(1)
        .users(&[("alice", "pw-alice")])
        .token()
        .config(|c| {
            // A backend group whose DNS server does not answer: its panels and alerts have
            // series too (lookups failing, no members), as on a fleet whose DNS is down.
            let mut group = toml::Table::new();
            group.insert("name".into(), "dns".into());
            group.insert("host".into(), "nodes.example.test".into());
            group.insert("port".into(), 5222.into());
            group.insert(
                "nameservers".into(),
                testkit::config::strings(&[&format!("127.0.0.1:{}", free_port(false).unwrap())]),
            );
            c.listener_set("direct", "websocket", "/xmpp-websocket")
                .push("backend_group", group)
        })
        .start();
    // Before anything happens, the scrape already holds the series of what has not happened.
    let (status, scrape) = get(
        &format!("http://{}/metrics", env.proxy.metrics),
        Some(env.token()),
    );
    assert_eq!(status, 200, "{scrape}");
    for series in [
        r#"xmpp_lb_stream_errors_sent_total{condition="remote-connection-failed"}"#,
        r#"xmpp_lb_config_reloads_total{result="failed"}"#,
        r#"xmpp_lb_sasl_outcomes_total{mechanism="PLAIN",outcome="failure"}"#,
        r#"xmpp_lb_resumes_total{backend="node1",kind="inline",result="failed"}"#,
        r#"xmpp_lb_admission_refused_total{backend="node1"}"#,
        r#"xmpp_lb_accept_errors_total{error="emfile",listener="direct"}"#,
        r#"xmpp_lb_http_requests_total{listener="direct",result="forbidden_origin"}"#,
        r#"xmpp_lb_routed_total{backend="node1",source="sasl"}"#,
    ] {
        assert_eq!(
            testkit::proxy::sample(&scrape, series),
            Some(0.0),
            "{series} at zero before any traffic"
        );
    }

    let prom = scraping(&env);
    let addr = env.proxy.addr("direct", false);
    let ca = env.pki.ca_path();
    let mut alice = env
        .proxy
        .block_on(Raw::login(addr, DOMAIN, &ca, "alice", "pw-alice"));
    env.proxy.block_on(alice.ping(DOMAIN));
    let scraped = wait_for(Duration::from_secs(30), Duration::from_millis(250), || {
        (prom.scalar(r#"sum(xmpp_lb_sasl_outcomes_total{outcome="success"})"#) == Some(1.0))
            .then_some(())
    });
    assert!(
        scraped.is_some(),
        "Prometheus never saw the login: {}",
        prom.api("/api/v1/targets")
    );

    let mut selectors = BTreeMap::new();
    for (panel, expr) in dashboard_queries(&load_dashboard()) {
        for (_, selector) in promql_selectors(&grafana_expr(&expr)) {
            selectors
                .entry(selector)
                .or_insert_with(|| format!("panel {panel:?}"));
        }
    }
    let alerts = std::fs::read_to_string(repo("grafana/alerts.yml")).unwrap();
    for expr in rule_exprs(&alerts) {
        for (_, selector) in promql_selectors(&expr) {
            selectors
                .entry(selector)
                .or_insert_with(|| format!("alert {expr}"));
        }
    }
    assert!(selectors.len() >= 30, "{selectors:?}");
    let empty: Vec<String> = selectors
        .iter()
        .filter(|(selector, _)| prom.query(selector).is_empty())
        .map(|(selector, used_by)| format!("{selector} (in {used_by})"))
        .collect();
    assert!(
        empty.is_empty(),
        "selectors with no series after one login:\n{}",
        empty.join("\n")
    );
    drop(alice);
}
