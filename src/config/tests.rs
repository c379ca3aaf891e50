//! Configuration tests: the shipped files validate, every rejection names the right file,
//! line, column and key, and defaults and path resolution are what the example documents.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::resumption::DEFAULT_TICKET_ROTATION;
use super::*;

/// A valid configuration. Rejection tests edit one line of it, so their expected positions
/// refer to these line numbers:
///
/// ```text
///  1 [[listener]]              10 domains = ["example.test"]
///  2 name = "c2s"              11
///  3 bind = [...]              12 [[backend]]
///  4 tls = "starttls"          13 name = "node1"
///  5 cert = "tls/cert.pem"     14 address = "127.0.0.1:5301"
///  6 key = "tls/cert.key"      15
///  7                           16 [[backend]]
///  8 [routing]                 17 name = "node2"
///  9 key = "jid"               18 address = "127.0.0.1:5302"
/// ```
const BASE: &str = r#"[[listener]]
name = "c2s"
bind = ["127.0.0.1:5222", "[::1]:5222"]
tls = "starttls"
cert = "tls/cert.pem"
key = "tls/cert.key"

[routing]
key = "jid"
domains = ["example.test"]

[[backend]]
name = "node1"
address = "127.0.0.1:5301"

[[backend]]
name = "node2"
address = "127.0.0.1:5302"
"#;

/// A second listener, appended after the backends (lines 19..=24 of `BASE` + this).
const SECOND_LISTENER: &str = r#"
[[listener]]
name = "c2s-direct"
bind = ["127.0.0.1:5223"]
tls = "direct"
cert = "tls/cert.pem"
key = "tls/cert.key"
"#;

/// A directory holding dummy certificate files (validation only checks that they exist) and
/// the configuration under test, `bad.toml`.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        for f in ["cert.pem", "cert.key", "extra.pem", "extra.key"] {
            std::fs::write(dir.path().join("tls").join(f), "not read by validation").unwrap();
        }
        Fixture { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Write `text` as `bad.toml` and load it from disk.
    fn load(&self, text: &str) -> Result<Config, ConfigError> {
        let path = self.root().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    fn ok(&self, text: &str) -> Config {
        self.load(text)
            .unwrap_or_else(|e| panic!("expected a valid configuration, got: {e}\n{text}"))
    }

    /// The rendered error, with the temporary directory removed so that it reads
    /// `bad.toml:LINE:COLUMN: KEY: message` (and paths in messages are relative).
    fn error(&self, text: &str) -> String {
        match self.load(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e
                .to_string()
                .replace(&format!("{}/", self.root().display()), ""),
        }
    }
}

/// `BASE` with `line` (exact, whole line) replaced by `with` (which may hold several lines).
fn edit(line: &str, with: &str) -> String {
    let lines: Vec<&str> = BASE.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| **l == line).count(),
        1,
        "{line:?} must be exactly one line of BASE"
    );
    let mut out = String::new();
    for l in lines {
        out.push_str(if l == line { with } else { l });
        out.push('\n');
    }
    out
}

fn assert_error(text: &str, expected: &str) {
    let got = Fixture::new().error(text);
    assert_eq!(got, expected, "config was:\n{text}");
}

fn assert_error_starts(text: &str, expected_prefix: &str) {
    let got = Fixture::new().error(text);
    assert!(
        got.starts_with(expected_prefix),
        "expected an error starting with\n  {expected_prefix}\ngot\n  {got}\nconfig was:\n{text}"
    );
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn shipped_tomls() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        // Pin files share the extension but are not configurations.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pins"))
        })
        .collect();
    files.sort();
    files
}

// ---- the shipped files ---------------------------------------------------------------------

/// The secrets config/example.toml names, which an operator generates (none is shipped: a
/// secret in the repository is public).
const GENERATED_SECRETS: &[&str] = &["sm.key", "tickets.key", "admin.token"];

/// A copy of config/ in a scratch directory, with the secrets example.toml names generated
/// there as an operator would.
fn config_with_own_secrets() -> TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else if !GENERATED_SECRETS.contains(&entry.file_name().to_str().unwrap()) {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let scratch = tempfile::tempdir().unwrap();
    copy(&config_dir(), scratch.path());
    for (i, name) in GENERATED_SECRETS.iter().enumerate() {
        let secret = format!("a scratch secret of the tests, number {i}, never published");
        std::fs::write(scratch.path().join(name), secret).unwrap();
    }
    scratch
}

#[test]
fn example_toml_as_shipped_lacks_only_the_secrets_an_operator_generates() {
    if GENERATED_SECRETS
        .iter()
        .any(|f| config_dir().join(f).exists())
    {
        // Generated here by someone following the README: nothing to check.
        return;
    }
    let path = config_dir().join("example.toml");
    match Config::load(&path) {
        // The first secret validation reads: the token file.
        Err(ConfigError::Invalid { key, message, .. }) => {
            assert_eq!(key, "metrics.token_file", "{message}");
            let missing = message.strip_prefix("file not found: ").expect(&message);
            assert_eq!(Path::new(missing), config_dir().join("admin.token"));
        }
        other => panic!("{other:?}"),
    }
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in GENERATED_SECRETS {
        let command = if secret.ends_with(".key") {
            format!("openssl rand -base64 48 > config/{secret}")
        } else {
            format!("openssl rand -hex 32 > config/{secret}")
        };
        assert!(text.contains(&command), "example.toml shows {command}");
    }
}

#[test]
fn every_shipped_toml_validates_or_only_lacks_generated_certificates() {
    let files = shipped_tomls();
    let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap()).collect();
    assert!(names.contains(&"example.toml".as_ref()), "{names:?}");
    assert!(names.contains(&"demo.toml".as_ref()), "{names:?}");

    let scratch = config_with_own_secrets();
    for shipped in &files {
        let text = std::fs::read_to_string(shipped).unwrap();
        let path = &scratch.path().join(shipped.file_name().unwrap());
        match Config::load(path) {
            Ok(config) => assert!(!config.listeners.is_empty()),
            Err(ConfigError::Invalid {
                file,
                line,
                column,
                key,
                message,
            }) => {
                // Only acceptable: the first listener's certificate is generated elsewhere
                // (demo.toml's come from the demo script) and is not there yet.
                let what = format!("{}:{line}:{column}: {key}: {message}", file.display());
                assert_eq!(file, *path, "{what}");
                assert_eq!(key, "listener[0].cert", "{what}");
                let missing = message
                    .strip_prefix("file not found: ")
                    .unwrap_or_else(|| panic!("{what}"));
                assert!(!Path::new(missing).exists(), "{what}");
                let cert_line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with("cert "))
                    .unwrap()
                    + 1;
                assert_eq!(line, cert_line, "{what}");
                let cert_text = text.lines().nth(line - 1).unwrap();
                assert_eq!(column, cert_text.find('"').unwrap() + 1, "{what}");
                assert_ne!(
                    path.file_name().unwrap(),
                    "example.toml",
                    "example.toml must validate as shipped: {what}"
                );
                validates_once_certificates_exist(shipped, &text);
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Every TOML file in config/ parses as what it is: a pin file (`pins*.toml`) as pins whose
/// backends example.toml defines, anything else as a configuration (its files are checked by
/// the test above).
#[test]
fn every_file_in_config_parses() {
    let scratch = config_with_own_secrets();
    let example = Config::load(&scratch.path().join("example.toml")).unwrap();
    let backends: Vec<String> = example.backends.iter().map(|b| b.name.clone()).collect();
    let mut pin_files = 0;
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("pins") {
            let pins = parse_pin_file(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!pins.is_empty(), "{name} pins nobody");
            crate::route::policy::PinTable::new(&pins, &backends)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            pin_files += 1;
        } else {
            toml::from_str::<RawConfig>(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    assert_eq!(pin_files, 1, "config/pins.example.toml is the one pin file");
}

/// Copy a shipped file into a scratch tree, create each certificate or key it says is
/// missing (at the same relative place), and check that nothing else is wrong with it.
fn validates_once_certificates_exist(original: &Path, text: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join(original.file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    for _ in 0..32 {
        match Config::load(&path) {
            Ok(_) => return,
            Err(ConfigError::Invalid { key, message, .. })
                if (key.ends_with(".cert") || key.ends_with(".key"))
                    && message.starts_with("file not found: ") =>
            {
                let missing = PathBuf::from(message.strip_prefix("file not found: ").unwrap());
                assert!(missing.starts_with(scratch.path()), "{message}");
                std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
                std::fs::write(&missing, "placeholder").unwrap();
            }
            Err(e) => panic!("{}: {e}", original.display()),
        }
    }
    panic!("{}: too many missing files", original.display());
}

#[test]
fn example_toml_validates_and_shows_every_mode() {
    let scratch = config_with_own_secrets();
    let path = scratch.path().join("example.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source, path);

    let modes: Vec<TlsMode> = c.listeners.iter().map(|l| l.tls).collect();
    for mode in [TlsMode::Starttls, TlsMode::Direct, TlsMode::Auto] {
        assert!(modes.contains(&mode), "{mode:?} missing from {modes:?}");
    }
    let binds: Vec<SocketAddr> = c.listeners.iter().flat_map(|l| l.bind.clone()).collect();
    assert!(binds.iter().any(|a| a.is_ipv4()), "{binds:?}");
    assert!(binds.iter().any(|a| a.is_ipv6()), "{binds:?}");
    assert!(
        c.listeners.iter().any(|l| l.certs.len() > 1),
        "extra_cert is shown"
    );
    let example_pem = scratch.path().join("certs/example.test.pem");
    let example_key = scratch.path().join("certs/example.test.key");
    for pair in c.listeners.iter().flat_map(|l| &l.certs) {
        assert_eq!(pair.cert, example_pem);
        assert_eq!(pair.key, example_key);
    }
    // Real PEM files that the TLS side loads, not placeholders.
    for l in &c.listeners {
        if let Err(e) = crate::tls::acceptor(&l.certs, &c.resumption) {
            panic!("listener {}: {e}", l.name);
        }
    }

    assert_eq!(c.routing.keys, vec![RouteKey::Jid]);
    assert!(c.routing.domains.contains(&"example.test".to_string()));
    assert!(c.backends.iter().any(|b| b.weight > 1), "weights are shown");
    assert!(c.backends.iter().any(|b| b.address.is_ipv6()));
    assert!(c.metrics_bind.is_some());

    // [limits], [probe] and the prefixes are written out with exactly the defaults.
    let defaults = Fixture::new().ok(BASE);
    assert_eq!(format!("{:?}", c.limits), format!("{:?}", defaults.limits));
    assert_eq!(format!("{:?}", c.probe), format!("{:?}", defaults.probe));
    assert_eq!(c.routing.ipv4_prefix, defaults.routing.ipv4_prefix);
    assert_eq!(c.routing.ipv6_prefix, defaults.routing.ipv6_prefix);
}

/// The keys serde accepts in one table, read from its "unknown field" error, which lists them.
fn accepted_keys(fx: &Fixture, text: &str) -> BTreeSet<String> {
    let e = fx.error(text);
    let (_, expected) = e
        .split_once("unknown field `zz_unknown`, expected ")
        .unwrap_or_else(|| panic!("{e}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn example_toml_writes_out_every_key_of_every_table() {
    let text = std::fs::read_to_string(config_dir().join("example.toml")).unwrap();
    let example: toml::Table = text.parse().unwrap();
    let keys = |t: &toml::Table| t.keys().cloned().collect::<BTreeSet<String>>();
    let table = |name: &str| example[name].as_table().unwrap().clone();
    let array = |t: &toml::Table, name: &str| -> Vec<toml::Table> {
        t[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_table().unwrap().clone())
            .collect()
    };
    let listeners = array(&example, "listener");
    let listener_keys: BTreeSet<String> = listeners.iter().flat_map(keys).collect();
    let extra_cert = listeners
        .iter()
        .find(|l| l.contains_key("extra_cert"))
        .map(|l| array(l, "extra_cert")[0].clone())
        .unwrap();
    let backend_keys: BTreeSet<String> = array(&example, "backend").iter().flat_map(keys).collect();
    let group_keys: BTreeSet<String> = array(&example, "backend_group")
        .iter()
        .flat_map(keys)
        .collect();

    let fx = Fixture::new();
    let unknown = "zz_unknown = 1";
    let cases = [
        ("top level", format!("{unknown}\n{BASE}"), keys(&example)),
        (
            "[[listener]]",
            edit(
                r#"key = "tls/cert.key""#,
                &format!("key = \"tls/cert.key\"\n{unknown}"),
            ),
            listener_keys,
        ),
        (
            "extra_cert",
            edit(
                r#"key = "tls/cert.key""#,
                r#"key = "tls/cert.key"
extra_cert = [{ cert = "tls/cert.pem", key = "tls/cert.key", zz_unknown = 1 }]"#,
            ),
            keys(&extra_cert),
        ),
        (
            "[routing]",
            edit(r#"key = "jid""#, &format!("key = \"jid\"\n{unknown}")),
            one_of_key_keys(keys(&table("routing"))),
        ),
        (
            "[[domain]]",
            format!("{BASE}[[domain]]\nname = \"x.test\"\n{unknown}\n"),
            one_of_key_keys(array(&example, "domain").iter().flat_map(keys).collect()),
        ),
        (
            "[health]",
            format!("{BASE}[health]\n{unknown}\n"),
            keys(&table("health")),
        ),
        (
            "[drain]",
            format!("{BASE}[drain]\n{unknown}\n"),
            keys(&table("drain")),
        ),
        (
            "[admission]",
            format!("{BASE}[admission]\n{unknown}\n"),
            keys(&table("admission")),
        ),
        (
            "[[backend]]",
            edit(r#"name = "node1""#, &format!("name = \"node1\"\n{unknown}")),
            backend_keys,
        ),
        (
            "[[backend_group]]",
            format!("{BASE}[[backend_group]]\nname = \"g\"\n{unknown}\n"),
            group_keys,
        ),
        (
            "[resumption]",
            format!("{BASE}[resumption]\n{unknown}\n"),
            keys(&table("resumption")),
        ),
        (
            "[metrics]",
            format!("{BASE}[metrics]\nbind = \"127.0.0.1:9464\"\n{unknown}\n"),
            keys(&table("metrics")),
        ),
        (
            "[limits]",
            format!("{BASE}[limits]\n{unknown}\n"),
            keys(&table("limits")),
        ),
        (
            "[probe]",
            format!("{BASE}[probe]\n{unknown}\n"),
            keys(&table("probe")),
        ),
    ];
    for (what, config, written) in cases {
        let accepted = accepted_keys(&fx, &config);
        assert!(
            accepted.len() > 1 || what == "[metrics]",
            "{what}: {accepted:?}"
        );
        assert_eq!(
            written, accepted,
            "example.toml must write out every key of {what}"
        );
    }
}

/// `key` and `keys` are two spellings of one setting (exclusive): writing either covers both.
fn one_of_key_keys(mut written: BTreeSet<String>) -> BTreeSet<String> {
    if written.contains("key") || written.contains("keys") {
        written.insert("key".into());
        written.insert("keys".into());
    }
    written
}

#[test]
fn demo_toml_is_unchanged_in_substance() {
    let text = std::fs::read_to_string(config_dir().join("demo.toml")).unwrap();
    let demo: toml::Table = text.parse().unwrap();
    let listeners = demo["listener"].as_array().unwrap();
    assert_eq!(listeners.len(), 2);
    assert_eq!(
        listeners[0]["cert"].as_str(),
        Some("../.demo/certs/example.test.pem")
    );
    assert_eq!(demo["backend"].as_array().unwrap().len(), 3);
    assert_eq!(demo["metrics"]["bind"].as_str(), Some("127.0.0.1:25464"));
}

// ---- rejections: unknown keys ----------------------------------------------------------------

#[test]
fn unknown_key_at_top_level() {
    assert_error_starts(
        &format!("backends = 1\n{BASE}"),
        "bad.toml:1:1: backends: unknown field `backends`, expected one of `listener`,",
    );
}

#[test]
fn unknown_key_in_backend_names_the_backend() {
    assert_error_starts(
        &edit(
            r#"address = "127.0.0.1:5302""#,
            "address = \"127.0.0.1:5302\"\nwieght = 2",
        ),
        "bad.toml:19:1: backend[1].wieght: unknown field `wieght`, expected one of `name`, `address`, `weight`",
    );
}

#[test]
fn unknown_key_in_routing() {
    assert_error_starts(
        &edit(r#"key = "jid""#, "key = \"jid\"\nprefix = 24"),
        "bad.toml:10:1: routing.prefix: unknown field `prefix`, expected one of `key`, `keys`, `domains`,",
    );
}

#[test]
fn unknown_key_in_listener_and_extra_cert() {
    assert_error_starts(
        &edit(r#"tls = "starttls""#, "tls = \"starttls\"\nsni = true"),
        "bad.toml:5:1: listener[0].sni: unknown field `sni`",
    );
    let text = format!(
        "{BASE}{SECOND_LISTENER}\n[[listener.extra_cert]]\ncert = \"tls/extra.pem\"\nkey = \"tls/extra.key\"\nchain = \"x\"\n"
    );
    assert_error_starts(
        &text,
        "bad.toml:30:1: listener[1].extra_cert[0].chain: unknown field `chain`, expected `cert` or `key`",
    );
}

#[test]
fn unknown_table_is_named_in_its_parent() {
    assert_error_starts(
        &format!("{BASE}[routing.weights]\nnode1 = 2\n"),
        "bad.toml:19:10: routing.weights: unknown field `weights`",
    );
    assert_error_starts(
        &format!("{BASE}[metric]\nbind = \"127.0.0.1:9464\"\n"),
        "bad.toml:19:2: metric: unknown field `metric`",
    );
}

/// Found by fuzzing (`fuzz/fuzz_targets/config_toml.rs`): a table header without a name gave
/// an error with an empty key (`bad.toml:19:1: : …`) instead of `-`, the key of an error that
/// names none.
#[test]
fn a_header_without_a_name_names_no_key() {
    for header in ["[]", "[]routing", "[[ ]]"] {
        let got = Fixture::new().error(&format!("{BASE}{header}\nnode1 = 2\n"));
        assert!(got.starts_with("bad.toml:19:"), "{header}: {got}");
        let key = got.split(": ").nth(1).unwrap_or_default();
        assert_eq!(key, "-", "{header}: {got}");
    }
}

// ---- rejections: addresses -----------------------------------------------------------------

#[test]
fn backend_address_must_be_ip_and_port() {
    for bad in [
        "localhost:5222",
        "1.2.3.4",
        "[::1]",
        "::1:5222",
        "1.2.3.4:99999",
        "",
    ] {
        assert_error(
            &edit(
                r#"address = "127.0.0.1:5302""#,
                &format!("address = {bad:?}"),
            ),
            &format!(
                "bad.toml:18:11: backend[1].address: {bad:?} is not an IP:PORT address (IPv6 in brackets, e.g. \"[::1]:5222\")"
            ),
        );
    }
}

#[test]
fn listener_bind_names_the_bad_element() {
    assert_error(
        &edit(
            r#"bind = ["127.0.0.1:5222", "[::1]:5222"]"#,
            r#"bind = ["127.0.0.1:5222", "localhost:5222"]"#,
        ),
        "bad.toml:3:27: listener[0].bind: \"localhost:5222\" is not an IP:PORT address (IPv6 in brackets, e.g. \"[::1]:5222\")",
    );
}

#[test]
fn metrics_bind_is_checked() {
    assert_error(
        &format!("{BASE}\n[metrics]\nbind = \"9464\"\n"),
        "bad.toml:21:8: metrics.bind: \"9464\" is not an IP:PORT address (IPv6 in brackets, e.g. \"[::1]:5222\")",
    );
    // An empty [metrics] serves the admin endpoints on loopback, never beyond by default.
    let c = Fixture::new().ok(&format!("{BASE}\n[metrics]\n"));
    assert_eq!(c.metrics_bind, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(c.metrics_token_file, None);
}

#[test]
fn metrics_allowed_hosts_are_plain_host_names() {
    let c = Fixture::new().ok(&format!(
        "{BASE}\n[metrics]\nallowed_hosts = [\"Metrics.Example.org.\", \"lb-1\"]\n"
    ));
    assert_eq!(c.metrics_allowed_hosts, ["metrics.example.org", "lb-1"]);
    assert!(Fixture::new().ok(BASE).metrics_allowed_hosts.is_empty());
    for bad in [
        "metrics.example.org:9464",
        "http://metrics.example.org",
        "",
        "a..b",
        "-a.example",
    ] {
        assert_error_starts(
            &format!("{BASE}\n[metrics]\nallowed_hosts = [\"ok.example\", \"{bad}\"]\n"),
            &format!("bad.toml:21:32: metrics.allowed_hosts[1]: {bad:?} is not a host name"),
        );
    }
}

#[test]
fn metrics_token_file_and_log_keys() {
    let fx = Fixture::new();
    std::fs::write(fx.root().join("admin.token"), "s3cret\n").unwrap();
    let c = fx.ok(&format!(
        "log_format = \"json\"\nlog_jids = true\n{BASE}\n[metrics]\ntoken_file = \"admin.token\"\n"
    ));
    assert_eq!(c.metrics_token_file, Some(fx.root().join("admin.token")));
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(c.log_jids);
    let c = fx.ok(BASE);
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(
        !c.log_jids,
        "JIDs are personal data: not logged unless asked"
    );
    assert_error(
        &format!("{BASE}\n[metrics]\ntoken_file = \"nope.token\"\n"),
        "bad.toml:21:14: metrics.token_file: file not found: nope.token",
    );
    assert_error_starts(
        &format!("log_format = \"xml\"\n{BASE}"),
        "bad.toml:1:14: log_format: unknown variant `xml`, expected `text` or `json`",
    );
    assert_error_starts(
        &format!("log_jids = \"yes\"\n{BASE}"),
        "bad.toml:1:12: log_jids: invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn same_bind_address_twice() {
    assert_error(
        &edit(
            r#"bind = ["127.0.0.1:5222", "[::1]:5222"]"#,
            r#"bind = ["127.0.0.1:5222", "[::1]:5222", "127.0.0.1:5222"]"#,
        ),
        "bad.toml:3:41: listener[0].bind: 127.0.0.1:5222 is bound twice",
    );
    // Across listeners, too; the second one's line is reported.
    let text = format!("{BASE}{SECOND_LISTENER}")
        .replace(r#"bind = ["127.0.0.1:5223"]"#, r#"bind = ["[::1]:5222"]"#);
    assert_error(
        &text,
        "bad.toml:22:9: listener[1].bind: [::1]:5222 is bound twice",
    );
}

#[test]
fn listener_needs_an_address() {
    assert_error(
        &edit(r#"bind = ["127.0.0.1:5222", "[::1]:5222"]"#, "bind = []"),
        "bad.toml:3:8: listener[0].bind: no address to bind",
    );
}

// ---- rejections: files ---------------------------------------------------------------------

#[test]
fn missing_cert_and_key_files() {
    assert_error(
        &edit(r#"cert = "tls/cert.pem""#, r#"cert = "tls/missing.pem""#),
        "bad.toml:5:8: listener[0].cert: file not found: tls/missing.pem",
    );
    assert_error(
        &edit(r#"key = "tls/cert.key""#, r#"key = "tls/missing.key""#),
        "bad.toml:6:7: listener[0].key: file not found: tls/missing.key",
    );
    // A directory is not a file.
    assert_error(
        &edit(r#"cert = "tls/cert.pem""#, r#"cert = "tls""#),
        "bad.toml:5:8: listener[0].cert: file not found: tls",
    );
    let text = format!(
        "{BASE}{SECOND_LISTENER}\n[[listener.extra_cert]]\ncert = \"tls/extra.pem\"\nkey = \"tls/extra.key\"\n\n[[listener.extra_cert]]\ncert = \"tls/extra.pem\"\nkey = \"tls/gone.key\"\n"
    );
    assert_error(
        &text,
        "bad.toml:33:7: listener[1].extra_cert[1].key: file not found: tls/gone.key",
    );
}

// ---- rejections: names ---------------------------------------------------------------------

#[test]
fn duplicate_backend_names() {
    assert_error(
        &edit(r#"name = "node2""#, r#"name = "node1""#),
        "bad.toml:17:8: backend[1].name: backend \"node1\" is defined twice",
    );
}

#[test]
fn backend_name_characters() {
    assert_error(
        &edit(r#"name = "node2""#, r#"name = "node 2""#),
        "bad.toml:17:8: backend[1].name: \"node 2\": use letters, digits, '-', '_' or '.'",
    );
    assert_error(
        &edit(r#"name = "node1""#, r#"name = """#),
        "bad.toml:13:8: backend[0].name: \"\": use letters, digits, '-', '_' or '.'",
    );
}

#[test]
fn duplicate_listener_names() {
    let text = format!("{BASE}{SECOND_LISTENER}").replace(r#""c2s-direct""#, r#""c2s""#);
    assert_error(
        &text,
        "bad.toml:21:8: listener[1].name: listener name \"c2s\" is empty or used twice",
    );
    assert_error(
        &edit(r#"name = "c2s""#, r#"name = """#),
        "bad.toml:2:8: listener[0].name: listener name \"\" is empty or used twice",
    );
}

// ---- rejections: routing -------------------------------------------------------------------

#[test]
fn empty_domains() {
    assert_error(
        &edit(r#"domains = ["example.test"]"#, "domains = []"),
        "bad.toml:10:11: routing.domains: list at least one domain",
    );
}

#[test]
fn invalid_domains() {
    assert_error(
        &edit(
            r#"domains = ["example.test"]"#,
            r#"domains = ["example.test", "bad domain"]"#,
        ),
        "bad.toml:10:28: routing.domains: \"bad domain\" is not a valid domain",
    );
    assert_error(
        &edit(
            r#"domains = ["example.test"]"#,
            r#"domains = ["juliet@example.test"]"#,
        ),
        "bad.toml:10:12: routing.domains: \"juliet@example.test\" is not a valid domain",
    );
    assert_error(
        &edit(r#"domains = ["example.test"]"#, r#"domains = [""]"#),
        "bad.toml:10:12: routing.domains: \"\" is not a valid domain",
    );
    // Two spellings of one domain.
    assert_error(
        &edit(
            r#"domains = ["example.test"]"#,
            r#"domains = ["example.test", "Example.TEST."]"#,
        ),
        "bad.toml:10:28: routing.domains: example.test is listed twice",
    );
}

#[test]
fn prefix_bounds() {
    assert_error(
        &edit(r#"key = "jid""#, "key = \"jid\"\nipv4_prefix = 33"),
        "bad.toml:10:15: routing.ipv4_prefix: must be 0..=32",
    );
    assert_error(
        &edit(r#"key = "jid""#, "key = \"jid\"\nipv6_prefix = 129"),
        "bad.toml:10:15: routing.ipv6_prefix: must be 0..=128",
    );
    // Out of the integer type's range: serde's message, still on the right key.
    assert_error(
        &edit(r#"key = "jid""#, "key = \"jid\"\nipv6_prefix = 256"),
        "bad.toml:10:15: routing.ipv6_prefix: invalid value: integer `256`, expected u8",
    );
    // The bounds themselves are accepted.
    let c = Fixture::new().ok(&edit(
        r#"key = "jid""#,
        "key = \"subnet\"\nipv4_prefix = 32\nipv6_prefix = 0",
    ));
    assert_eq!((c.routing.ipv4_prefix, c.routing.ipv6_prefix), (32, 0));
}

#[test]
fn bad_routing_key_value() {
    assert_error(
        &edit(r#"key = "jid""#, r#"key = "ip""#),
        "bad.toml:9:7: routing.key: unknown variant `ip`, expected one of `pin`, `jid`, `domain`, `tenant`, `subnet`, `random`",
    );
}

/// The rules of a key list are the routing policy's: the configuration reports them at the
/// table that lists the keys, and the tenant pattern is compiled there once.
#[test]
fn bad_key_lists_are_refused_by_the_policy_rules() {
    assert_error(
        &edit(r#"key = "jid""#, r#"keys = ["jid", "pin", "jid"]"#),
        "bad.toml:8:1: routing.keys: `jid` is listed twice in keys",
    );
    assert_error(
        &edit(r#"key = "jid""#, r#"keys = ["tenant", "jid"]"#),
        "bad.toml:8:1: routing.keys: the `tenant` key needs a tenant pattern (`tenant_pattern`)",
    );
    assert_error_starts(
        &edit(r#"key = "jid""#, r#"keys = ["subnet", "jid"]"#),
        "bad.toml:8:1: routing.keys: `subnet` always applies, so `jid` after it can never be used",
    );
    assert_error_starts(
        &format!("{BASE}\n[[domain]]\nname = \"example.test\"\nkeys = [\"random\", \"pin\"]\n"),
        "bad.toml:21:8: domain[0].keys: `random` always applies",
    );
    let c = Fixture::new().ok(&edit(
        r#"key = "jid""#,
        "keys = [\"tenant\", \"jid\"]\ntenant_pattern = \"^(?<tenant>[a-z]+)-\"",
    ));
    let re = c.domains[0].tenant_pattern.as_ref().unwrap();
    assert_eq!(re.as_str(), "^(?<tenant>[a-z]+)-");
    assert_eq!(&re.captures("acme-1").unwrap()["tenant"], "acme");
}

#[test]
fn missing_routing_table() {
    let text = BASE.replace(
        "[routing]\nkey = \"jid\"\ndomains = [\"example.test\"]\n",
        "",
    );
    assert!(!text.contains("routing"));
    assert_error(&text, "bad.toml:1:1: routing: missing field `routing`");
}

#[test]
fn missing_routing_key() {
    assert_error(
        &edit(r#"key = "jid""#, ""),
        "bad.toml:8:1: routing.key: set `key` (or `keys`)",
    );
}

// ---- rejections: listeners and backends ----------------------------------------------------

#[test]
fn bad_tls_value() {
    assert_error(
        &edit(r#"tls = "starttls""#, r#"tls = "implicit""#),
        "bad.toml:4:7: listener[0].tls: unknown variant `implicit`, expected one of `starttls`, `direct`, `auto`",
    );
    // Case matters: the values are lower-case.
    assert_error_starts(
        &edit(r#"tls = "starttls""#, r#"tls = "STARTTLS""#),
        "bad.toml:4:7: listener[0].tls: unknown variant `STARTTLS`",
    );
}

#[test]
fn missing_listener_and_backend_fields_point_at_their_header() {
    assert_error(
        &edit(r#"tls = "starttls""#, ""),
        "bad.toml:1:1: listener[0].tls: missing field `tls`",
    );
    assert_error(
        &edit(r#"address = "127.0.0.1:5302""#, ""),
        "bad.toml:16:1: backend[1].address: missing field `address`",
    );
}

#[test]
fn weight_bounds() {
    assert_error(
        &edit(
            r#"address = "127.0.0.1:5301""#,
            "address = \"127.0.0.1:5301\"\nweight = 0",
        ),
        "bad.toml:15:10: backend[0].weight: must be 1..=1000",
    );
    assert_error(
        &edit(
            r#"address = "127.0.0.1:5302""#,
            "address = \"127.0.0.1:5302\"\nweight = 1001",
        ),
        "bad.toml:19:10: backend[1].weight: must be 1..=1000",
    );
    assert_error(
        &edit(
            r#"address = "127.0.0.1:5302""#,
            "address = \"127.0.0.1:5302\"\nweight = -1",
        ),
        "bad.toml:19:10: backend[1].weight: invalid value: integer `-1`, expected u32",
    );
    assert_error(
        &edit(
            r#"address = "127.0.0.1:5302""#,
            "address = \"127.0.0.1:5302\"\nweight = \"2\"",
        ),
        "bad.toml:19:10: backend[1].weight: invalid type: string \"2\", expected u32",
    );
}

#[test]
fn no_backend() {
    let text = BASE.split("[[backend]]").next().unwrap();
    assert_error(
        text,
        "bad.toml:1:1: backend: at least one [[backend]] or [[backend_group]] is required",
    );
}

#[test]
fn no_listener() {
    let text = BASE.split_once("[routing]").unwrap().1;
    assert_error(
        &format!("[routing]{text}"),
        "bad.toml:1:1: listener: at least one [[listener]] is required",
    );
}

// ---- rejections: limits and probe ----------------------------------------------------------

#[test]
fn bad_duration_strings() {
    assert_error(
        &format!("{BASE}\n[limits]\nprerouting_timeout = \"20 parsecs\"\n"),
        "bad.toml:21:22: limits.prerouting_timeout: invalid value: string \"20 parsecs\", expected a duration",
    );
    // A bare number has no unit: rejected rather than guessed.
    assert_error(
        &format!("{BASE}\n[limits]\nhalf_close_timeout = 30\n"),
        "bad.toml:21:22: limits.half_close_timeout: invalid type: integer `30`, expected a duration",
    );
    assert_error(
        &format!("{BASE}\n[probe]\ninterval = \"soon\"\n"),
        "bad.toml:21:12: probe.interval: invalid value: string \"soon\", expected a duration",
    );
}

#[test]
fn byte_limits_below_512() {
    for key in [
        "max_header_bytes",
        "max_prerouting_element_bytes",
        "max_negotiation_element_bytes",
    ] {
        let column = key.len() + 4;
        assert_error(
            &format!("{BASE}\n[limits]\nmax_connections = 10\n{key} = 511\n"),
            &format!("bad.toml:22:{column}: limits.{key}: must be at least 512 bytes"),
        );
    }
    let c = Fixture::new().ok(&format!("{BASE}\n[limits]\nmax_header_bytes = 512\n"));
    assert_eq!(c.limits.max_header_bytes, 512);
}

#[test]
fn byte_limits_have_an_upper_bound() {
    for (key, max, max_text) in [
        ("max_header_bytes", 65_536_u64, "65536 bytes (64 KiB)"),
        (
            "max_prerouting_element_bytes",
            1_048_576,
            "1048576 bytes (1 MiB)",
        ),
        (
            "max_negotiation_element_bytes",
            1_048_576,
            "1048576 bytes (1 MiB)",
        ),
    ] {
        let column = key.len() + 4;
        for too_many in [max + 1, 1_u64 << 40] {
            assert_error(
                &format!("{BASE}\n[limits]\nmax_connections = 10\n{key} = {too_many}\n"),
                &format!("bad.toml:22:{column}: limits.{key}: must be at most {max_text}"),
            );
        }
        Fixture::new().ok(&format!("{BASE}\n[limits]\n{key} = {max}\n"));
    }
}

// ---- rejections: syntax and the file itself ------------------------------------------------

#[test]
fn syntax_errors_report_their_line() {
    // An unterminated string: reported where the line ends.
    assert_error_starts(
        &edit(r#"key = "jid""#, r#"key = "jid"#),
        "bad.toml:9:11: routing.key: ",
    );
    // A key without a value.
    assert_error_starts(
        &edit(r#"address = "127.0.0.1:5301""#, "address ="),
        "bad.toml:14:10: backend[0].address: ",
    );
    // The same key twice.
    assert_error(
        &edit(r#"name = "node2""#, "name = \"node2\"\nname = \"node3\""),
        "bad.toml:18:1: backend[1].name: duplicate key",
    );
    // The same table twice.
    assert_error(
        &format!("{BASE}[routing]\nkey = \"domain\"\n"),
        "bad.toml:19:2: routing: duplicate key",
    );
}

#[test]
fn unreadable_file() {
    let fx = Fixture::new();
    let path = fx.root().join("absent.toml");
    let e = Config::load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read: ", path.display())),
        "{e}"
    );
}

// ---- accepted values and defaults ----------------------------------------------------------

#[test]
fn defaults() {
    let c = Fixture::new().ok(BASE);
    assert!(c.backends.iter().all(|b| b.weight == 1));
    assert_eq!(c.routing.ipv4_prefix, 24);
    assert_eq!(c.routing.ipv6_prefix, 64);
    assert_eq!(c.metrics_bind, None);
    assert_eq!(c.listeners[0].certs.len(), 1);

    let l = &c.limits;
    assert_eq!(l.prerouting_timeout, Duration::from_secs(20));
    assert_eq!(l.negotiation_timeout, Duration::from_secs(60));
    assert_eq!(l.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(l.backend_connect_timeout, Duration::from_secs(3));
    assert_eq!(l.half_close_timeout, Duration::from_secs(30));
    assert_eq!(l.shutdown_grace, Duration::from_secs(10));
    assert_eq!(l.max_header_bytes, 4096);
    assert_eq!(l.max_prerouting_element_bytes, 16384);
    assert_eq!(l.max_negotiation_element_bytes, 65536);
    assert_eq!(l.max_connections, 200_000);
    assert_eq!(c.probe.interval, Duration::from_secs(30));
    assert_eq!(c.probe.timeout, Duration::from_secs(3));

    // An empty [limits] or [probe] is all defaults; a partial one keeps the other defaults.
    let c = Fixture::new().ok(&format!(
        "{BASE}\n[limits]\nnegotiation_timeout = \"1m 30s\"\nmax_connections = 0\n\n[probe]\n"
    ));
    assert_eq!(c.limits.negotiation_timeout, Duration::from_secs(90));
    assert_eq!(c.limits.prerouting_timeout, Duration::from_secs(20));
    assert_eq!(c.limits.max_connections, 1, "0 would never admit anyone");
    assert_eq!(c.probe.interval, Duration::from_secs(30));
}

#[test]
fn every_value_is_carried_over() {
    let fx = Fixture::new();
    let text = format!(
        r#"{}
[[listener.extra_cert]]
cert = "tls/extra.pem"
key = "tls/extra.key"

[metrics]
bind = "[::1]:9464"

[limits]
prerouting_timeout = "5s"
negotiation_timeout = "45s"
tls_handshake_timeout = "2500ms"
backend_connect_timeout = "1s"
half_close_timeout = "1m"
shutdown_grace = "2s"
max_header_bytes = 2048
max_prerouting_element_bytes = 8192
max_negotiation_element_bytes = 131072
max_connections = 5000

[probe]
interval = "2m"
timeout = "500ms"
"#,
        edit(r#"tls = "starttls""#, r#"tls = "auto""#)
            .replace(
                r#"key = "jid""#,
                "key = \"domain\"\nipv4_prefix = 16\nipv6_prefix = 48"
            )
            .replace(
                r#"address = "127.0.0.1:5302""#,
                "address = \"[2001:db8::2]:5222\"\nweight = 3",
            )
    );
    let c = fx.ok(&text);
    let l = &c.listeners[0];
    assert_eq!(l.name, "c2s");
    assert_eq!(l.tls, TlsMode::Auto);
    assert_eq!(
        l.bind,
        vec![
            "127.0.0.1:5222".parse::<SocketAddr>().unwrap(),
            "[::1]:5222".parse().unwrap()
        ]
    );
    assert_eq!(l.certs.len(), 2);
    assert_eq!(l.certs[1].cert, fx.root().join("tls/extra.pem"));
    assert_eq!(l.certs[1].key, fx.root().join("tls/extra.key"));
    assert_eq!(c.routing.keys, vec![RouteKey::Domain]);
    assert_eq!((c.routing.ipv4_prefix, c.routing.ipv6_prefix), (16, 48));
    assert_eq!(c.backends[0].name, "node1");
    assert_eq!(c.backends[0].address, "127.0.0.1:5301".parse().unwrap());
    assert_eq!(c.backends[0].weight, 1);
    assert_eq!(c.backends[1].address, "[2001:db8::2]:5222".parse().unwrap());
    assert_eq!(c.backends[1].weight, 3);
    assert_eq!(c.metrics_bind, Some("[::1]:9464".parse().unwrap()));
    let m = &c.limits;
    assert_eq!(m.prerouting_timeout, Duration::from_secs(5));
    assert_eq!(m.negotiation_timeout, Duration::from_secs(45));
    assert_eq!(m.tls_handshake_timeout, Duration::from_millis(2500));
    assert_eq!(m.backend_connect_timeout, Duration::from_secs(1));
    assert_eq!(m.half_close_timeout, Duration::from_secs(60));
    assert_eq!(m.shutdown_grace, Duration::from_secs(2));
    assert_eq!(m.max_header_bytes, 2048);
    assert_eq!(m.max_prerouting_element_bytes, 8192);
    assert_eq!(m.max_negotiation_element_bytes, 131_072);
    assert_eq!(m.max_connections, 5000);
    assert_eq!(c.probe.interval, Duration::from_secs(120));
    assert_eq!(c.probe.timeout, Duration::from_millis(500));
}

#[test]
fn every_tls_mode_and_key_kind_parses() {
    for (text, mode) in [
        ("starttls", TlsMode::Starttls),
        ("direct", TlsMode::Direct),
        ("auto", TlsMode::Auto),
    ] {
        let c = Fixture::new().ok(&edit(r#"tls = "starttls""#, &format!("tls = {text:?}")));
        assert_eq!(c.listeners[0].tls, mode);
    }
    for (text, kind) in [
        ("jid", RouteKey::Jid),
        ("domain", RouteKey::Domain),
        ("subnet", RouteKey::Subnet),
        ("random", RouteKey::Random),
    ] {
        let c = Fixture::new().ok(&edit(r#"key = "jid""#, &format!("key = {text:?}")));
        assert_eq!(c.routing.keys, vec![kind]);
        assert_eq!(c.domains[0].keys, vec![kind]);
    }
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let fx = Fixture::new();
    let sub = fx.root().join("etc");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("lb.toml");
    std::fs::write(
        &path,
        edit(r#"cert = "tls/cert.pem""#, r#"cert = "../tls/cert.pem""#),
    )
    .unwrap();
    // From the configuration's directory, "tls/cert.key" does not exist...
    let e = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:6:7: listener[0].key: file not found: {}",
            path.display(),
            sub.join("tls/cert.key").display()
        )
    );
    // ...and "../tls/cert.key" does, whatever the working directory.
    std::fs::write(
        &path,
        edit(r#"cert = "tls/cert.pem""#, r#"cert = "../tls/cert.pem""#)
            .replace(r#"key = "tls/cert.key""#, r#"key = "../tls/cert.key""#),
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.source, path);
    assert_eq!(c.listeners[0].certs[0].cert, sub.join("../tls/cert.pem"));
    assert_eq!(c.listeners[0].certs[0].key, sub.join("../tls/cert.key"));
    assert!(c.listeners[0].certs[0].cert.is_absolute());

    // from_toml anchors them the same way, at the directory of the path it is given.
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::from_toml(&text, &path).unwrap();
    assert_eq!(c.listeners[0].certs[0].cert, sub.join("../tls/cert.pem"));
}

#[test]
fn absolute_paths_are_kept() {
    let fx = Fixture::new();
    let abs = fx.root().join("tls/cert.pem");
    assert!(abs.is_absolute());
    let text = edit(
        r#"cert = "tls/cert.pem""#,
        &format!("cert = {:?}", abs.display().to_string()),
    );
    // Loaded from elsewhere: the absolute path does not depend on the file's directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let e = Config::from_toml(&text, &elsewhere.path().join("lb.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(": listener[0].key: file not found: "), "{e}");
    let c = fx.ok(&text);
    assert_eq!(c.listeners[0].certs[0].cert, abs);
}

#[test]
fn domains_are_normalized() {
    let c = Fixture::new().ok(&edit(
        r#"domains = ["example.test"]"#,
        r#"domains = ["Example.TEST", "chat.example.test.", "ＥＸＡＭＰＬＥ.org"]"#,
    ));
    assert_eq!(
        c.routing.domains,
        vec!["example.test", "chat.example.test", "example.org"]
    );
}

#[test]
fn front_balancer_settings_need_each_other_and_real_networks() {
    let listener = |extra: &str| {
        edit(
            r#"key = "tls/cert.key""#,
            &format!("key = \"tls/cert.key\"\n{extra}"),
        )
    };
    let c = Fixture::new().ok(&listener(
        "accept_proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::2\", \"192.0.2.9/24\"]",
    ));
    let nets: Vec<String> = c.listeners[0]
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    // A single address is a /32 or /128; host bits of a network are dropped.
    assert_eq!(nets, ["10.0.0.0/8", "fd00::2/128", "192.0.2.0/24"]);
    assert!(
        Fixture::new().ok(BASE).listeners[0]
            .trusted_proxies
            .is_empty()
    );
    assert_error(
        &listener("accept_proxy_protocol = true"),
        "bad.toml:7:25: listener[0].trusted_proxies: list the networks of the front balancers (e.g. [\"10.0.0.0/24\"])",
    );
    assert_error(
        &listener("trusted_proxies = [\"10.0.0.0/8\"]"),
        "bad.toml:7:19: listener[0].trusted_proxies: set accept_proxy_protocol = true, or remove this list",
    );
    assert_error(
        &listener("accept_proxy_protocol = true\ntrusted_proxies = []"),
        "bad.toml:8:19: listener[0].trusted_proxies: list at least one network",
    );
    assert_error(
        &listener("accept_proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/33\"]"),
        "bad.toml:8:20: listener[0].trusted_proxies: \"10.0.0.0/33\" is not a network (\"10.0.0.0/8\", \"2001:db8::/32\") or an address",
    );
}

#[test]
fn backend_links_are_checked_and_inherit_from_their_pool() {
    let fx = Fixture::new();
    let text = format!(
        "{BASE}proxy_protocol = \"v2\"\nbackend_tls = \"direct\"\ntls_server_name = \"node2.example.test\"\ntls_ca = \"tls/cert.pem\"\n\n[[domain]]\nname = \"example.test\"\nproxy_protocol = \"v1\"\nbackend_tls = \"starttls\"\ntls_verify = false\n"
    );
    let c = fx.ok(&text);
    let pool = &c.domains[0].link;
    // node1 says nothing: the pool's settings; node2 overrides some of them.
    let node1 = c.backends[0].link.resolve(pool);
    assert_eq!(
        (
            node1.proxy_protocol,
            node1.tls,
            node1.verify,
            node1.ca.clone()
        ),
        (ProxyProtocol::V1, BackendTls::Starttls, false, None)
    );
    let node2 = c.backends[1].link.resolve(pool);
    assert_eq!(
        (node2.proxy_protocol, node2.tls, node2.verify),
        (ProxyProtocol::V2, BackendTls::Direct, false)
    );
    assert_eq!(node2.server_name.as_deref(), Some("node2.example.test"));
    assert_eq!(node2.ca, Some(fx.root().join("tls/cert.pem")));
    // Nothing set anywhere: plain TCP, no header, verification on.
    let plain = LinkOverrides::default().resolve(&LinkOverrides::default());
    assert_eq!(
        (plain.proxy_protocol, plain.tls, plain.verify),
        (ProxyProtocol::Off, BackendTls::None, true)
    );

    assert_error_starts(
        &format!("{BASE}proxy_protocol = \"v3\"\n"),
        "bad.toml:19:18: backend[1].proxy_protocol: unknown variant `v3`, expected one of `off`, `v1`, `v2`",
    );
    assert_error_starts(
        &format!("{BASE}backend_tls = \"tls\"\n"),
        "bad.toml:19:15: backend[1].backend_tls: unknown variant `tls`, expected one of `none`, `starttls`, `direct`",
    );
    assert_error(
        &format!("{BASE}tls_server_name = \"not a name\"\n"),
        "bad.toml:19:19: backend[1].tls_server_name: \"not a name\" is not a DNS name or an IP address",
    );
    assert_error(
        &format!("{BASE}tls_ca = \"tls/missing.pem\"\n"),
        "bad.toml:19:10: backend[1].tls_ca: file not found: tls/missing.pem",
    );
    assert_error(
        &format!("{BASE}\n[[domain]]\nname = \"example.test\"\ntls_ca = \"tls/missing.pem\"\n"),
        "bad.toml:22:10: domain[0].tls_ca: file not found: tls/missing.pem",
    );
}

// ---- [resumption] ----------------------------------------------------------------------------

#[test]
fn resumption_keys_are_read_and_checked() {
    let fx = Fixture::new();
    let good = "0123456789abcdef0123456789abcdef-one";
    let other = "0123456789abcdef0123456789abcdef-two";
    std::fs::write(fx.root().join("sm-new.key"), format!("{good}\n")).unwrap();
    std::fs::write(fx.root().join("sm-old.key"), other).unwrap();
    std::fs::write(fx.root().join("copy.key"), good).unwrap();
    std::fs::write(fx.root().join("short.key"), "short").unwrap();

    let config = fx.ok(&format!(
        "{BASE}[resumption]\nsm_key_files = [\"sm-new.key\", \"sm-old.key\"]\ntls_ticket_rotation = \"1h\"\n"
    ));
    let r = &config.resumption;
    assert_eq!(r.sm_keys.len(), 2);
    assert!(r.sm_keys[0].file().ends_with("sm-new.key"));
    assert!(r.tls_ticket_keys.is_empty());
    assert_eq!(r.tls_ticket_rotation, Duration::from_secs(3600));
    assert_eq!(
        fx.ok(BASE).resumption.tls_ticket_rotation,
        DEFAULT_TICKET_ROTATION
    );
    // The secret never shows in a printed configuration.
    assert!(!format!("{config:?}").contains("abcdef"));

    let at = |body: &str| fx.error(&format!("{BASE}[resumption]\n{body}\n"));
    let e = at(r#"sm_key_files = ["short.key"]"#);
    assert!(
        e.starts_with("bad.toml:20:17: resumption.sm_key_files[0]: key file ")
            && e.contains("short.key holds 5 bytes"),
        "{e}"
    );
    let e = at(r#"tls_ticket_key_files = ["sm-new.key", "missing.key"]"#);
    assert!(
        e.starts_with("bad.toml:20:39: resumption.tls_ticket_key_files[1]: file not found"),
        "{e}"
    );
    let e = at(r#"sm_key_files = ["sm-new.key", "copy.key"]"#);
    assert!(
        e.starts_with("bad.toml:20:31: resumption.sm_key_files[1]: holds the same secret as"),
        "{e}"
    );
    let e = at(r#"tls_ticket_rotation = "10s""#);
    assert!(
        e.starts_with("bad.toml:20:23: resumption.tls_ticket_rotation: must be between"),
        "{e}"
    );
    let e = at(r#"tls_ticket_rotation = "soon""#);
    assert!(
        e.starts_with("bad.toml:20:23: resumption.tls_ticket_rotation: not a duration"),
        "{e}"
    );
}

/// The secrets config/example.sm.key and config/example.tickets.key held when they shipped with
/// the example configuration: public, so anyone could forge what they protect.
const PUBLISHED_SM_SECRET: &str =
    "SFKYEn55q1GxEOZ5agaUrFENkuFq5XrRcLl2JK59+OWrJ67YXRR2ScU20s4ntYaX";
const PUBLISHED_TICKET_SECRET: &str =
    "KvuJFQG8VVpjjCgDYsgmrdT08oMGYvGaanUyHVlqGTLYh6RPeF3eu0R2JVtgjuOY";

#[test]
fn the_published_example_secrets_are_refused() {
    let fx = Fixture::new();
    // As shipped (with its final newline), or re-indented: the secret is the same.
    std::fs::write(fx.root().join("sm.key"), format!("{PUBLISHED_SM_SECRET}\n")).unwrap();
    std::fs::write(
        fx.root().join("tickets.key"),
        format!("  {PUBLISHED_TICKET_SECRET}"),
    )
    .unwrap();
    std::fs::write(
        fx.root().join("own.key"),
        "0123456789abcdef0123456789abcdef-own",
    )
    .unwrap();
    let at = |body: &str| fx.error(&format!("{BASE}[resumption]\n{body}\n"));
    for (body, start) in [
        (
            r#"sm_key_files = ["sm.key"]"#,
            "bad.toml:20:17: resumption.sm_key_files[0]: ",
        ),
        (
            r#"sm_key_files = ["own.key", "sm.key"]"#,
            "bad.toml:20:28: resumption.sm_key_files[1]: ",
        ),
        (
            r#"tls_ticket_key_files = ["tickets.key"]"#,
            "bad.toml:20:25: resumption.tls_ticket_key_files[0]: ",
        ),
        // Whatever it is used for.
        (
            r#"tls_ticket_key_files = ["sm.key"]"#,
            "bad.toml:20:25: resumption.tls_ticket_key_files[0]: ",
        ),
    ] {
        let e = at(body);
        assert!(e.starts_with(start), "{body}: {e}");
        assert!(
            e.contains("published example secret") && e.contains("openssl rand -base64 48 >"),
            "{e}"
        );
        // The message names the file, never the secret.
        assert!(!e.contains(&PUBLISHED_SM_SECRET[..16]), "{e}");
    }
    fx.ok(&format!(
        "{BASE}[resumption]\nsm_key_files = [\"own.key\"]\n"
    ));
}

#[test]
fn websocket_keys_are_checked_where_they_are_written() {
    assert_error(
        &edit(
            r#"tls = "starttls""#,
            "tls = \"starttls\"\nwebsocket = \"xmpp\"",
        ),
        "bad.toml:5:13: listener[0].websocket: \"xmpp\" is not a request path (e.g. \"/xmpp-websocket\")",
    );
    assert_error(
        &edit(
            r#"tls = "starttls""#,
            "tls = \"starttls\"\nwebsocket = \"/.well-known/host-meta\"",
        ),
        "bad.toml:5:13: listener[0].websocket: /.well-known/host-meta is where the discovery files are served",
    );
    assert_error(
        &edit(
            r#"tls = "starttls""#,
            "tls = \"starttls\"\nwebsocket_origins = [\"https://a.test\"]",
        ),
        "bad.toml:5:21: listener[0].websocket_origins: set websocket = \"/xmpp-websocket\" on this listener first",
    );
    assert_error(
        &edit(
            r#"tls = "starttls""#,
            "tls = \"starttls\"\nwebsocket = \"/ws\"\nwebsocket_origins = [\"https://a.test/page\"]",
        ),
        "bad.toml:6:22: listener[0].websocket_origins: \"https://a.test/page\" is not an origin (e.g. \"https://chat.example.test\")",
    );
    assert_error(
        &edit(
            r#"tls = "starttls""#,
            "tls = \"direct\"\nwebsocket = \"/ws\"\nwebsocket_plain = true",
        ),
        "bad.toml:6:19: listener[0].websocket_plain: a tls = \"direct\" listener starts with TLS; use tls = \"starttls\" or \"auto\"",
    );
    assert_error(
        &edit(
            r#"tls = "starttls""#,
            "tls = \"auto\"\nwebsocket = \"/ws\"\nwebsocket_forwarded_for = [\"10.0.0.0/8\"]",
        ),
        "bad.toml:6:27: listener[0].websocket_forwarded_for: X-Forwarded-For comes from a TLS-terminating balancer: set websocket_plain = true",
    );
    assert_error(
        &format!("{BASE}\n[websocket]\nurls = {{ \"other.test\" = \"wss://x.test/ws\" }}\n"),
        "bad.toml:21:25: websocket.urls.other.test: \"other.test\" is not a served domain",
    );
    assert_error(
        &format!("{BASE}\n[websocket]\nurls = {{ \"example.test\" = \"https://x.test/ws\" }}\n"),
        "bad.toml:21:27: websocket.urls.example.test: \"https://x.test/ws\" is not a WebSocket URL (wss://HOST/PATH)",
    );
    assert_error(
        &format!("{BASE}\n[websocket]\nmax_message_bytes = 10\n"),
        "bad.toml:21:21: websocket.max_message_bytes: must be between 4096 and 16777216",
    );
    assert_error(
        &format!("{BASE}\n[websocket]\nping_timeout = \"0s\"\n"),
        "bad.toml:21:16: websocket.ping_timeout: must be between 1s and 1h",
    );
}

#[test]
fn websocket_is_off_by_default_and_read_when_set() {
    let f = Fixture::new();
    let c = f.ok(BASE);
    assert!(c.listeners[0].websocket.is_none());
    assert_eq!(c.websocket, WebSocketConfig::default());
    let c = f.ok(&format!(
        "{}\n[websocket]\nping_interval = \"10s\"\nurls = {{ \"Example.TEST\" = \"wss://chat.example.test/ws\" }}\n",
        edit(
            r#"tls = "starttls""#,
            "tls = \"auto\"\nwebsocket = \"/ws\"\nwebsocket_origins = [\"HTTPS://Chat.Example.test\"]\nwebsocket_plain = true\nwebsocket_forwarded_for = [\"10.1.2.3\"]",
        )
    ));
    let ws = c.listeners[0].websocket.as_ref().unwrap();
    assert_eq!(ws.path, "/ws");
    assert_eq!(ws.origins, ["https://chat.example.test"]);
    assert!(ws.plain);
    assert_eq!(
        ws.forwarded_for,
        ["10.1.2.3/32".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(c.websocket.ping_interval, Duration::from_secs(10));
    assert_eq!(
        c.websocket.urls.get("example.test").map(String::as_str),
        Some("wss://chat.example.test/ws")
    );
}

#[test]
fn channel_binding_needs_proxy_protocol_v2_and_a_domain_that_agrees() {
    let fx = Fixture::new();
    let c = fx.ok(&format!(
        "{BASE}\n[[domain]]\nname = \"example.test\"\nproxy_protocol = \"v2\"\nchannel_binding = \"pass\"\n"
    ));
    let pool = &c.domains[0].link;
    for b in &c.backends {
        assert_eq!(b.link.resolve(pool).channel_binding, ChannelBinding::Pass);
    }
    // Unset: off, as before the key existed.
    assert_eq!(
        LinkOverrides::default()
            .resolve(&LinkOverrides::default())
            .channel_binding,
        ChannelBinding::Off
    );
    assert_error(
        &format!("{BASE}channel_binding = \"pass\"\n"),
        "bad.toml:17:8: backend[1].channel_binding: \"pass\" needs proxy_protocol = \"v2\" for domain example.test (the binding data travel in the PROXY v2 header)",
    );
    assert_error(
        &format!("{BASE}proxy_protocol = \"v2\"\nchannel_binding = \"pass\"\n"),
        "bad.toml:17:8: backend[1].channel_binding: backends \"node1\" and \"node2\" of domain example.test disagree on channel_binding; all nodes of a domain must pass it or none",
    );
    assert_error_starts(
        &format!("{BASE}channel_binding = \"on\"\n"),
        "bad.toml:19:19: backend[1].channel_binding: unknown variant `on`, expected `off` or `pass`",
    );
}
