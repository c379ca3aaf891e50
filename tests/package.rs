//! The Debian package, installed on this machine as an operator would install it: it is
//! built (`scripts/package.sh`, packing the binary this test run built), installed with dpkg,
//! checked file by file (binary, unit, configuration, man pages, completions, the xmpp-lb
//! user), its configuration passes `xmpp-lb check` as installed, and the installed binary is
//! started the way the unit starts it — the unit's own ExecStart arguments, as the xmpp-lb
//! user, with a notification socket — on a loopback configuration, where a real client logs
//! in through it to a real Prosody node. Then it is stopped by pid and the package purged.
//!
//! Installing a package needs root. CI runs as root; elsewhere the test says so and returns.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::config::TestConfig;
use testkit::notify::NotifySocket;
use testkit::pki::TestPki;
use testkit::process::{RunOutput, run_with_timeout, signal_pid, spawn_child, wait_timeout};
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::raw::Raw;

const DOMAIN: &str = "example.test";
const UNIT: &str = "/usr/lib/systemd/system/xmpp-lb.service";
const CONFIG: &str = "/etc/xmpp-lb/xmpp-lb.toml";
const SIGTERM: i32 = 15;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `program args…` within `limit`; panics with its output unless it succeeds.
fn run(program: &str, args: &[&str], limit: Duration) -> RunOutput {
    let mut cmd = Command::new(program);
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    let out = run_with_timeout(cmd, limit).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{program} {args:?} failed ({:?} after {:?}):\n{}\n{}",
        out.status,
        out.elapsed,
        out.stdout,
        out.stderr
    );
    out
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Purges the package when dropped, whatever the test did before.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let mut cmd = Command::new("dpkg");
        cmd.args(["--purge", "xmpp-lb"]);
        let _ = run_with_timeout(cmd, Duration::from_secs(60));
    }
}

/// The numeric uid of `user`.
fn uid_of(user: &str) -> u32 {
    let out = run("id", &["-u", user], Duration::from_secs(5));
    out.stdout.trim().parse().unwrap()
}

#[test]
fn the_package_installs_serves_as_its_unit_would_and_purges() {
    if !is_root() {
        eprintln!(
            "SKIPPED: installing the Debian package needs root (CI runs as root); \
             run `sudo -E cargo nextest run --test package` to run it here"
        );
        return;
    }
    let installed_before = Command::new("dpkg")
        .args(["-s", "xmpp-lb"])
        .output()
        .unwrap();
    assert!(
        !installed_before.status.success(),
        "xmpp-lb is installed on this machine already; this test installs and purges its own \
         package and leaves an existing installation alone: `dpkg --purge xmpp-lb` first"
    );

    // Build the package around the binary of this test run (cargo-deb packs the dev build; a
    // release is `bash scripts/package.sh`).
    let bin = testkit::xmpp_lb_bin();
    let target_dir = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lies in target/debug");
    assert!(
        bin.parent().unwrap().ends_with("debug"),
        "{}",
        bin.display()
    );
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.args(["scripts/package.sh", "--profile", "dev", "--no-build"])
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", target_dir);
    let built = run_with_timeout(cmd, Duration::from_secs(120)).unwrap();
    assert!(
        built.status.is_some_and(|s| s.success()),
        "scripts/package.sh: {}\n{}",
        built.stdout,
        built.stderr
    );
    let deb = repo().join(built.stdout.lines().last().unwrap().trim());
    assert!(deb.extension().is_some_and(|e| e == "deb"), "{deb:?}");
    eprintln!(
        "package built in {:?}: {}",
        started.elapsed(),
        deb.display()
    );

    let guard = Installed;
    run(
        "dpkg",
        &["-i", deb.to_str().unwrap()],
        Duration::from_secs(120),
    );

    // Files where Debian expects them.
    let exe = std::fs::metadata("/usr/bin/xmpp-lb").unwrap();
    assert!(exe.is_file() && exe.permissions().mode() & 0o111 != 0);
    for f in [
        UNIT,
        CONFIG,
        "/usr/share/man/man1/xmpp-lb.1.gz",
        "/usr/share/bash-completion/completions/xmpp-lb",
        "/usr/share/zsh/vendor-completions/_xmpp-lb",
        "/usr/share/fish/vendor_completions.d/xmpp-lb.fish",
        "/usr/share/doc/xmpp-lb/operations.md",
        "/usr/share/doc/xmpp-lb/example.toml",
    ] {
        assert!(Path::new(f).is_file(), "{f} is installed");
    }
    let conffiles = run(
        "dpkg-query",
        &["-W", "-f=${Conffiles}", "xmpp-lb"],
        Duration::from_secs(10),
    );
    assert!(conffiles.stdout.contains(CONFIG), "{}", conffiles.stdout);
    // The system user, with no login shell.
    let passwd = run("getent", &["passwd", "xmpp-lb"], Duration::from_secs(5));
    assert!(
        passwd.stdout.trim_end().ends_with("/usr/sbin/nologin"),
        "{}",
        passwd.stdout
    );
    // What the postinst made for the shipped file: a key and a token only xmpp-lb reads.
    let uid = uid_of("xmpp-lb");
    for secret in ["/etc/xmpp-lb/tls/xmpp-lb.key", "/etc/xmpp-lb/admin.token"] {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(secret).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o600), "{secret}");
    }

    // The man page renders and names every command the binary offers; the completions load.
    let help = run("/usr/bin/xmpp-lb", &["--help"], Duration::from_secs(10)).stdout;
    let commands: Vec<&str> = help
        .split_once("Commands:")
        .unwrap()
        .1
        .split_once("Options:")
        .unwrap()
        .0
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.contains(&"keygen") && commands.len() >= 7,
        "{commands:?}"
    );
    let page = run(
        "man",
        &["-l", "/usr/share/man/man1/xmpp-lb.1.gz"],
        Duration::from_secs(20),
    )
    .stdout;
    for c in &commands {
        assert!(
            page.contains(&format!("xmpp-lb-{c}(1)")),
            "man page lacks {c}:\n{page}"
        );
        let sub = format!("/usr/share/man/man1/xmpp-lb-{c}.1.gz");
        assert!(Path::new(&sub).is_file(), "{sub}");
    }
    run(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/xmpp-lb && complete -p xmpp-lb",
        ],
        Duration::from_secs(10),
    );

    // The configuration checks as installed, with no warning about who may read its secrets.
    let check = run(
        "/usr/bin/xmpp-lb",
        &["check", "--config", CONFIG],
        Duration::from_secs(20),
    );
    assert!(check.stdout.contains(": OK ("), "{}", check.stdout);
    assert!(!check.stderr.contains("warning"), "{}", check.stderr);
    let verify = run(
        "systemd-analyze",
        &["verify", UNIT],
        Duration::from_secs(30),
    );
    assert!(
        (verify.stdout.clone() + &verify.stderr).trim().is_empty(),
        "{}{}",
        verify.stdout,
        verify.stderr
    );

    serve_as_the_unit_would(uid);

    drop(guard);
    for gone in ["/usr/bin/xmpp-lb", UNIT, "/etc/xmpp-lb"] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    eprintln!("whole test: {:?}", started.elapsed());
}

/// Start `/usr/bin/xmpp-lb` with the installed unit's ExecStart (its configuration swapped for
/// one on loopback ports, in front of a real Prosody node) as the xmpp-lb user, wait for its
/// READY=1, log a real client in through it, ask /healthz, and stop it by pid.
fn serve_as_the_unit_would(uid: u32) {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let exec: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(exec[0], "/usr/bin/xmpp-lb");
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("User=");

    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
    cluster.register("juliet", "pw-juliet");
    // Files the service user can read, the key its alone.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("cert.key"));
    std::fs::copy(pki.cert_path(DOMAIN), &cert).unwrap();
    std::fs::copy(pki.key_path(DOMAIN), &key).unwrap();
    std::os::unix::fs::chown(&key, Some(uid), None).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = TestConfig::new(&cert, &key, DOMAIN, &cluster.addrs());
    let (listeners, admin) = config.assign_free_ports();
    let config_path = dir.path().join("xmpp-lb.toml");
    std::fs::write(&config_path, config.render()).unwrap();
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut args = exec.clone();
    let at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    assert_eq!(args[at], CONFIG);
    args[at] = config_path.display().to_string();
    let notify = NotifySocket::bind();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={user}"),
        &format!("--regid={user}"),
        "--init-groups",
        "--no-new-privs",
        "--",
    ])
    .args(&args)
    .env("NOTIFY_SOCKET", notify.path())
    .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
    .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap());
    let mut child = spawn_child(cmd).expect("setpriv runs (util-linux)");
    let pid = child.id();
    let log = || {
        ["out.log", "err.log"]
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .concat()
    };
    notify
        .until("READY=1", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the installed proxy never said READY=1: {}", log()));
    // The process is the installed binary, running as the service user.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, Path::new("/usr/bin/xmpp-lb"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let real_uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .unwrap();
    assert_eq!(real_uid, uid.to_string(), "{status}");

    let direct = listeners.iter().find(|(n, _)| n == "direct").unwrap().1;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut juliet = rt.block_on(Raw::login(
        direct,
        DOMAIN,
        &pki.ca_path(),
        "juliet",
        "pw-juliet",
    ));
    rt.block_on(juliet.ping(DOMAIN));
    assert!(
        cluster.wait_session(0, "juliet@example.test", true, Duration::from_secs(5)),
        "the login reached the node"
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let health = agent
        .get(&format!("http://{admin}/healthz"))
        .call()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    signal_pid(pid, SIGTERM).unwrap();
    let exit = wait_timeout(&mut child, Duration::from_secs(20)).unwrap();
    if exit.is_none() {
        let _ = testkit::process::terminate(&mut child, Duration::from_secs(2));
        panic!("the installed proxy did not stop on SIGTERM: {}", log());
    }
    assert!(exit.unwrap().success(), "{}", log());
    drop(juliet);
}
