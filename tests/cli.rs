//! The command line as an operator uses it: run, check, route, help.

use std::path::Path;
use std::process::Command;

fn xmpp_lb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
}

/// A valid config with real (throwaway) certificate files, in a temp dir.
fn write_config(dir: &Path, routing_key: &str, backends: &str) -> std::path::PathBuf {
    let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
    std::fs::write(dir.join("c.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), cert.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:5222\", \"[::1]:5222\"]\ntls = \"starttls\"\ncert = \"c.pem\"\nkey = \"c.key\"\n\n\
         [routing]\nkey = \"{routing_key}\"\ndomains = [\"example.test\"]\n\n{backends}"
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
    let out = xmpp_lb()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
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
    let out = xmpp_lb()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
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
    let out = xmpp_lb()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("c.pem") && err.contains("c2s"), "{err}");

    // A pin file naming an unknown node is caught by check too, naming the pin file.
    let good = write_config(dir.path(), "jid", THREE);
    std::fs::write(
        dir.path().join("pins.toml"),
        "[[pin]]\nmatch = \"a@example.test\"\nbackend = \"nosuch\"\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("[routing]\n", "[routing]\npins = \"pins.toml\"\n");
    std::fs::write(&good, text).unwrap();
    let out = xmpp_lb()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
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
fn route_prints_the_pinned_node_for_a_jid() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "jid", THREE);
    // Golden placements (see route::ring tests): these must never change silently.
    for (jid, node) in [
        ("juliet@example.test", "node2"),
        ("Juliet@Example.TEST/balcony", "node2"),
        ("romeo@example.test", "node2"),
        ("nurse@example.test", "node2"),
    ] {
        let out = xmpp_lb()
            .args(["route", "--config"])
            .arg(&path)
            .arg(jid)
            .output()
            .unwrap();
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
    let out = xmpp_lb()
        .args(["route", "--config"])
        .arg(&path)
        .arg("@@bad")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn route_by_subnet_needs_and_uses_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "subnet", THREE);
    let out = xmpp_lb()
        .args(["route", "--config"])
        .arg(&path)
        .arg("a@example.test")
        .output()
        .unwrap();
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

#[test]
fn help_documents_every_command() {
    let out = xmpp_lb().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["check", "route", "run", "--config"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
    let out = xmpp_lb().args(["route", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--ip"));
}

#[test]
fn check_names_the_fleet_keys_by_id_never_by_secret() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
        .args(["check", "--config"])
        .arg(root.join("example.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let sm = xmpp_lb::keys::FleetKey::load(&root.join("example.sm.key")).unwrap();
    let tickets = xmpp_lb::keys::FleetKey::load(&root.join("example.tickets.key")).unwrap();
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
    let secret = std::fs::read_to_string(root.join("example.sm.key")).unwrap();
    assert!(!text.contains(secret.trim()));
}
