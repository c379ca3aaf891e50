//! Running under systemd: the unit the package installs passes `systemd-analyze verify`, and
//! the proxy speaks the notification protocol a `Type=notify` unit relies on — READY=1 once
//! every listener is bound, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP
//! reload, STOPPING=1 on SIGTERM — to a notification socket the test binds itself, while
//! real clients log in through it to a real Prosody node.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::config::TestConfig;
use testkit::notify::NotifySocket;
use testkit::pki::TestPki;
use testkit::process::{signal_pid, spawn_child, terminate, wait_timeout};
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::raw::Raw;

const DOMAIN: &str = "example.test";
const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The value of `KEY=` in the unit's `[Service]` section (the last one, as systemd reads it).
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo("debian/xmpp-lb.service")).unwrap();
    for (key, want) in [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/bin/xmpp-lb run --config /etc/xmpp-lb/xmpp-lb.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("User", "xmpp-lb"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(unit_value(&unit, key), Some(want), "{key}");
    }
    assert!(unit.contains("SystemCallFilter=@system-service\n"));
    // Two descriptors per connection at the default limits.max_connections (200000).
    let nofile: u64 = unit_value(&unit, "LimitNOFILE").unwrap().parse().unwrap();
    assert!(nofile >= 2 * 200_000, "{nofile}");

    // Verified as installed, with the binary and man page of this build where the package
    // puts them (systemd-analyze checks that the command exists and runs `man` on the
    // Documentation= page).
    let dir = tempfile::tempdir().unwrap();
    let bin = testkit::xmpp_lb_bin();
    let local = unit.replace("/usr/bin/xmpp-lb", &bin.display().to_string());
    let path = dir.path().join("xmpp-lb.service");
    std::fs::write(&path, local).unwrap();
    let man = dir.path().join("man/man1");
    std::fs::create_dir_all(&man).unwrap();
    let made = Command::new(&bin).arg("man").arg(&man).status().unwrap();
    assert!(made.success());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze runs (the systemd package)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys and bad values are only warnings to systemd: any output is a failure here.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// Connect to `addr` once: a listener that is not bound yet refuses.
fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn ready_after_the_listeners_are_bound_reloading_then_ready_on_sighup_stopping_on_sigterm() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
    cluster.register("juliet", "pw-juliet");
    let mut config = TestConfig::new(
        &pki.cert_path(DOMAIN),
        &pki.key_path(DOMAIN),
        DOMAIN,
        &cluster.addrs(),
    );
    let (listeners, admin) = config.assign_free_ports();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("xmpp-lb.toml");
    std::fs::write(&config_path, config.render()).unwrap();

    let notify = NotifySocket::bind();
    let mut cmd = Command::new(testkit::xmpp_lb_bin());
    cmd.args(["run", "--config"])
        .arg(&config_path)
        .env("NOTIFY_SOCKET", notify.path())
        // Logs go to standard output.
        .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
    let mut child = spawn_child(cmd).expect("spawn xmpp-lb");
    let pid = child.id();
    let log = || {
        ["out.log", "stderr.log"]
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .concat()
    };

    // READY=1, and at that moment every listener and the admin address take a connection on
    // the first try: nothing was polled before the message came.
    let ready = notify
        .until("READY=1", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no READY=1: {}", log()));
    assert_eq!(ready.len(), 1, "READY=1 is the first message: {ready:?}");
    assert!(
        ready[0].iter().any(|l| l.starts_with("STATUS=serving")),
        "{ready:?}"
    );
    for (name, addr) in &listeners {
        assert!(connects(*addr), "listener {name} at {addr} after READY=1");
    }
    assert!(connects(admin), "admin {admin} after READY=1");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let direct = listeners.iter().find(|(n, _)| n == "direct").unwrap().1;
    let mut juliet = rt.block_on(Raw::login(
        direct,
        DOMAIN,
        &pki.ca_path(),
        "juliet",
        "pw-juliet",
    ));
    rt.block_on(juliet.ping(DOMAIN));

    // A reload as `systemctl reload` asks for it: RELOADING=1 with the monotonic time it
    // began, then READY=1 once it is over; the logged-in client is not disturbed.
    signal_pid(pid, SIGHUP).unwrap();
    let reload = notify
        .until("READY=1", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no READY=1 after SIGHUP: {}", log()));
    assert_eq!(reload.len(), 2, "RELOADING=1, then READY=1: {reload:?}");
    assert!(reload[0].iter().any(|l| l == "RELOADING=1"), "{reload:?}");
    let usec = reload[0]
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reload:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{usec}");
    rt.block_on(juliet.ping(DOMAIN));
    assert!(
        log().contains("configuration reloaded"),
        "the reload happened: {}",
        log()
    );

    // SIGTERM: STOPPING=1 at once, then a clean exit within the shutdown grace.
    signal_pid(pid, SIGTERM).unwrap();
    let stop = notify
        .until("STOPPING=1", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no STOPPING=1: {}", log()));
    assert_eq!(stop.len(), 1, "{stop:?}");
    let status = wait_timeout(&mut child, Duration::from_secs(15)).unwrap();
    if status.is_none() {
        let _ = terminate(&mut child, Duration::from_secs(2));
        panic!("the proxy did not exit after SIGTERM: {}", log());
    }
    assert!(status.unwrap().success(), "{}", log());
    drop(juliet);
}
