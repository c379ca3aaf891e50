//! The command line as an operator uses it: run, check, route, help.

use std::path::Path;
use std::process::Command;

use testkit::config::TestConfig;
use testkit::proxy::ProxyProcess;

fn xmpp_lb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
}

/// `xmpp-lb check` on `config`.
fn check(config: &Path) -> std::process::Output {
    xmpp_lb()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// `xmpp-lb route` on `config` for `jid`.
fn route(config: &Path, jid: &str) -> std::process::Output {
    xmpp_lb()
        .args(["route", "--config"])
        .arg(config)
        .arg(jid)
        .output()
        .unwrap()
}

/// A valid config with real (throwaway) certificate files, in a temp dir. Its listener binds
/// free ports (`:0`), so that `run` can start on it too.
fn write_config(dir: &Path, routing_key: &str, backends: &str) -> std::path::PathBuf {
    write_config_with_pins(dir, routing_key, backends, None)
}

/// The same, with `[routing] pins` naming `pins` (a file beside it), if given.
fn write_config_with_pins(
    dir: &Path,
    routing_key: &str,
    backends: &str,
    pins: Option<&str>,
) -> std::path::PathBuf {
    let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
    std::fs::write(dir.join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), cert.signing_key.serialize_pem()).unwrap();
    let pins = pins
        .map(|p| format!("pins = \"{p}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:0\", \"[::1]:0\"]\ntls = \"starttls\"\ncert = \"c.pem\"\nkey = \"c.key\"\n\n\
         [routing]\n{pins}key = \"{routing_key}\"\ndomains = [\"example.test\"]\n\n{backends}"
    );
    let path = dir.join("xmpp-lb.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const THREE: &str = "[[backend]]\nname = \"node1\"\naddress = \"127.0.0.1:15222\"\n\n\
[[backend]]\nname = \"node2\"\naddress = \"127.0.0.1:15223\"\n\n\
[[backend]]\nname = \"node3\"\naddress = \"127.0.0.1:15224\"\n";

#[test]
fn check_accepts_a_good_file_and_names_file_line_key_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "jid", THREE);
    let out = check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = write_config(
        dir.path(),
        "jid",
        &THREE.replace("127.0.0.1:15223", "localhost:15223"),
    );
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&bad).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("localhost:15223"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("xmpp-lb.toml:{line}:")) && err.contains("backend[1].address"),
        "error must name file, line {line} and key: {err}"
    );

    // A certificate file that holds no certificate is caught by check, naming the file.
    let good = write_config(dir.path(), "jid", THREE);
    std::fs::write(dir.path().join("c.pem"), "not a certificate").unwrap();
    let out = check(&good);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("c.pem") && err.contains("c2s"), "{err}");

    // A pin file naming an unknown node is caught by check too, naming the pin file.
    let good = write_config_with_pins(dir.path(), "jid", THREE, Some("pins.toml"));
    std::fs::write(
        dir.path().join("pins.toml"),
        "[[pin]]\nmatch = \"a@example.test\"\nbackend = \"nosuch\"\n",
    )
    .unwrap();
    let out = check(&good);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pins.toml") && err.contains("nosuch"), "{err}");

    let out = xmpp_lb()
        .args(["check", "--config", "/nonexistent/xmpp-lb.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/xmpp-lb.toml"));
}

#[test]
fn route_prints_the_ring_node_for_a_jid() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "jid", THREE);
    // Golden placements (see route::ring tests): these must never change silently.
    for (jid, node) in [
        ("juliet@example.test", "node2"),
        ("Juliet@Example.TEST/balcony", "node2"),
        ("romeo@example.test", "node2"),
        ("nurse@example.test", "node2"),
    ] {
        let out = route(&path, jid);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.lines().next().unwrap_or_default(),
            node,
            "{jid}: {stdout}"
        );
        assert!(
            stdout.contains("key:      jid"),
            "route explains its answer: {stdout}"
        );
    }
    let out = route(&path, "@@bad");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn route_by_subnet_needs_and_uses_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "subnet", THREE);
    let out = route(&path, "a@example.test");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ip"));
    let node_of = |ip: &str| {
        let out = xmpp_lb()
            .args(["route", "--config"])
            .arg(&path)
            .args(["--ip", ip, "a@example.test"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    // One /24 (or /64) is one key: every address in it lands together.
    assert_eq!(node_of("192.0.2.1"), node_of("192.0.2.254"));
    assert_eq!(node_of("2001:db8:1:2::1"), node_of("2001:db8:1:2:ffff::9"));
}

/// Every subcommand, with an option its help must show.
const COMMANDS: [(&str, &str); 7] = [
    ("run", "--config"),
    ("check", "--config"),
    ("route", "--ip"),
    ("drain", "--admin"),
    ("undrain", "--admin"),
    ("reload", "--admin"),
    ("keygen", "--force"),
];

#[test]
fn help_documents_every_command() {
    let out = xmpp_lb().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // The "Commands:" section lists exactly these (and clap's own `help`).
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    let mut expected: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
    let mut listed_sorted = listed.clone();
    expected.sort_unstable();
    listed_sorted.sort_unstable();
    assert_eq!(listed_sorted, expected, "{help}");
    assert!(help.contains("--config"), "{help}");
    for (command, option) in COMMANDS {
        let out = xmpp_lb().args([command, "--help"]).output().unwrap();
        assert!(out.status.success(), "{command} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(option),
            "{command} --help lacks {option}: {text}"
        );
    }
}

/// The first line `xmpp-lb route` prints for `jid` with `config`: the node.
fn route_of(config: &Path, jid: &str) -> String {
    let out = route(config, jid);
    assert!(
        out.status.success(),
        "{jid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn the_example_pins_apply_per_domain_as_example_toml_says() {
    let dir = tempfile::tempdir().unwrap();
    let example = example_with_own_secrets(dir.path());
    // Pins reach the users of the domains whose nodes they name ...
    assert_eq!(route_of(&example, "helpdesk@example.test"), "node3");
    assert_eq!(route_of(&example, "bot-7@example.test"), "node3");
    assert_eq!(
        route_of(&example, "globex-00c0ffee@iot.example.test"),
        "iot3"
    );
    assert_eq!(route_of(&example, "acme-00c0ffee@iot.example.test"), "iot2");
    // ... and nobody else: the tenant:globex pin names iot3, which does not serve
    // example.test, so a globex-looking account there goes by its JID to its own nodes.
    let sales = route_of(&example, "globex-sales@example.test");
    assert!(
        ["node1", "node2", "node3"].contains(&sales.as_str()),
        "{sales}"
    );
    let device = route_of(&example, "globex-00c0ffee@example.test");
    assert!(
        ["node1", "node2", "node3"].contains(&device.as_str()),
        "{device}"
    );

    // `check` reads the pin file: a JID pin naming a node outside its domain is refused,
    // naming the file ...
    let pins = dir.path().join("pins.example.toml");
    let shipped = std::fs::read_to_string(&pins).unwrap();
    std::fs::write(
        &pins,
        format!("{shipped}\n[[pin]]\nmatch = \"someone@example.test\"\nbackend = \"iot1\"\n"),
    )
    .unwrap();
    let out = check(&example);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pins.example.toml") && err.contains("does not serve example.test"),
        "{err}"
    );
    // ... and so is a file that does not parse.
    std::fs::write(&pins, "[[pin]]\nmatch = \n").unwrap();
    let out = check(&example);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pins.example.toml"), "{err}");
}

#[test]
fn the_readme_runs_a_loopback_config_that_starts_and_listens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let running = readme
        .split("## Running it")
        .nth(1)
        .expect("a Running it section");
    // The first command that runs the proxy names the config file to run.
    let config = running
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("target/release/xmpp-lb --config ")
                .and_then(|rest| rest.split_whitespace().next())
        })
        .expect("a run command in Running it");
    let path = root.join(config);
    // Valid as shipped, with nothing to generate first.
    let out = check(&path);
    assert!(
        out.status.success(),
        "{config}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It binds loopback addresses only; on free ports of its own it starts and listens.
    let text = std::fs::read_to_string(&path).unwrap();
    let test_config = TestConfig::parse(&text).on_free_loopback_ports(path.parent().unwrap());
    let proxy = ProxyProcess::start(&test_config);
    for (name, addr) in &proxy.listeners {
        assert!(
            std::net::TcpStream::connect(addr).is_ok(),
            "{config}: listener {name} at {addr}"
        );
    }
    let metrics = std::net::TcpStream::connect(proxy.metrics);
    assert!(metrics.is_ok(), "{config}: admin endpoints");
}

/// A copy of config/ in `to`, with the secrets example.toml names generated there as an
/// operator would (none is shipped).
fn example_with_own_secrets(to: &Path) -> std::path::PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    copy(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config"), to);
    let out = Command::new("openssl")
        .args(["rand", "-base64", "48"])
        .output()
        .expect("openssl");
    std::fs::write(to.join("sm.key"), &out.stdout).unwrap();
    let out = Command::new("openssl")
        .args(["rand", "-base64", "48"])
        .output()
        .expect("openssl");
    std::fs::write(to.join("tickets.key"), &out.stdout).unwrap();
    std::fs::write(to.join("admin.token"), "a-token-of-the-tests\n").unwrap();
    to.join("example.toml")
}

#[test]
fn check_names_the_fleet_keys_by_id_never_by_secret() {
    let dir = tempfile::tempdir().unwrap();
    let example = example_with_own_secrets(dir.path());
    let out = check(&example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let sm = xmpp_lb::keys::FleetKey::load(&dir.path().join("sm.key")).unwrap();
    let tickets = xmpp_lb::keys::FleetKey::load(&dir.path().join("tickets.key")).unwrap();
    assert!(
        text.contains(&format!("stream-management id keys: {}\n", sm.id_hex())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "TLS ticket keys: {} (a new ticket key every 12h)",
            tickets.id_hex()
        )),
        "{text}"
    );
    let secret = std::fs::read_to_string(dir.path().join("sm.key")).unwrap();
    assert!(!text.contains(secret.trim()));
}

/// What config/example.sm.key and config/example.admin-token held when they shipped.
const PUBLISHED_SM_SECRET: &str =
    "SFKYEn55q1GxEOZ5agaUrFENkuFq5XrRcLl2JK59+OWrJ67YXRR2ScU20s4ntYaX";
const PUBLISHED_ADMIN_TOKEN: &str = "example-admin-token-throwaway-never-use";

#[test]
fn check_and_run_refuse_the_published_example_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "jid", THREE);
    // `run` binds (its free ports) before it reads the token.
    let base = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        dir.path().join("sm.key"),
        format!("{PUBLISHED_SM_SECRET}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("admin.token"),
        format!("{PUBLISHED_ADMIN_TOKEN}\n"),
    )
    .unwrap();
    let refused = |extra: &str, needles: &[&str]| {
        std::fs::write(&path, format!("{base}\n{extra}\n")).unwrap();
        for command in ["check", "run"] {
            let mut cmd = xmpp_lb();
            cmd.args([command, "--config"])
                .arg(&path)
                .args(["--log", "off"]);
            let out = run_for_at_most(cmd, std::time::Duration::from_secs(10));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} with {extra}: {err}");
            for needle in needles {
                assert!(err.contains(needle), "{command}: {needle:?} not in {err}");
            }
        }
    };
    let line = base.lines().count() + 3;
    refused(
        "[resumption]\nsm_key_files = [\"sm.key\"]",
        &[
            &format!("xmpp-lb.toml:{line}:17: resumption.sm_key_files[0]: "),
            "published example secret",
            "openssl rand -base64 48 >",
        ],
    );
    refused(
        "[metrics]\nbind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"",
        &[
            "metrics.token_file",
            "published example token",
            "openssl rand",
        ],
    );
}

/// Run `cmd` to its end, or kill it (by its pid) after `limit`: a proxy that should have
/// refused to start must not hang the test.
fn run_for_at_most(mut cmd: Command, limit: std::time::Duration) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = tx.send(());
    out
}
