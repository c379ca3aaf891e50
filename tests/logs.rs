//! The logs of the real binary: `log_format = "json"` writes one Logstash/ECS-style JSON object
//! per line; each connection leaves one access event when it closes, with what an operator
//! needs and never a password, a SASL payload or a stanza; the JID only with `log_jids`; and
//! a log output that stops taking lines never holds up a login.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use testkit::pki::TestPki;
use testkit::process::{free_port, sigterm, spawn_child, terminate, wait_for, wait_timeout};
use testkit::prosody::{ProsodyCluster, ProsodyOpts};
use testkit::raw::Raw;

const DOMAIN: &str = "example.test";
const USER: &str = "alice";
const PASSWORD: &str = "Pw-0f-Alice-Never-Logged";

/// The proxy binary, started on free loopback ports in front of one node.
struct Binary {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Write a configuration (`top` holds the top-level keys) and start `xmpp-lb` with `log`.
fn start(pki: &TestPki, node: SocketAddr, top: &str, log: &str, stdout: Stdio) -> Binary {
    let port = free_port(false).unwrap();
    let admin = free_port(false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xmpp-lb.toml");
    std::fs::write(
        &config,
        format!(
            "{top}\n[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:{port}\"]\ntls = \"direct\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [routing]\nkey = \"jid\"\ndomains = [\"{DOMAIN}\"]\n\n[[backend]]\nname = \"node1\"\naddress = \"{node}\"\n\n\
             [metrics]\nbind = \"127.0.0.1:{admin}\"\n\n[limits]\nshutdown_grace = \"2s\"\n",
            pki.cert_path(DOMAIN).display(),
            pki.key_path(DOMAIN).display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xmpp-lb"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--log")
        .arg(log)
        .env_remove("XMPP_LB_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let child = spawn_child(cmd).expect("start xmpp-lb");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        std::net::TcpStream::connect(addr).ok()
    })
    .expect("the proxy listens");
    Binary {
        child,
        addr,
        _dir: dir,
    }
}

impl Drop for Binary {
    /// A test that panics half-way still stops its proxy (by pid).
    fn drop(&mut self) {
        let _ = terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// A child's output lines, read on a thread of their own until the output closes.
struct Output {
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Output {
    /// The lines read so far.
    fn so_far(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line, once the child has exited and its output closed.
    fn all(self) -> Vec<String> {
        self.reader.join().expect("the output reader");
        Arc::try_unwrap(self.lines)
            .expect("the reader is done")
            .into_inner()
            .unwrap()
    }
}

/// Read a child's output lines on a thread, into a shared list.
fn collect(out: impl std::io::Read + Send + 'static) -> Output {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    Output { lines, reader }
}

/// Log the user in, ping, and close the stream cleanly.
async fn session(addr: SocketAddr, ca: &std::path::Path) {
    let mut raw = Raw::login(addr, DOMAIN, ca, USER, PASSWORD).await;
    raw.ping(DOMAIN).await;
    raw.send("</stream:stream>").await;
    raw.read_to_close(Duration::from_secs(10)).await;
}

#[test]
fn access_events_carry_what_operators_need_and_never_a_secret() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
    cluster.register(USER, PASSWORD);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let payload = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    let jid = format!("{USER}@{DOMAIN}");

    for (top, json, log_jids) in [
        ("log_format = \"json\"", true, false),
        ("log_format = \"json\"\nlog_jids = true", true, true),
        ("", false, false),
    ] {
        let what = format!("[{top}]");
        let mut proxy = start(&pki, cluster.addr(0), top, "debug", Stdio::piped());
        let lines = collect(proxy.child.stdout.take().unwrap());
        let errors = collect(proxy.child.stderr.take().unwrap());
        rt.block_on(session(proxy.addr, &pki.ca_path()));
        let access = |l: &String| l.contains("connection closed");
        // The session's own line (the readiness check's connection has one too).
        wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            lines
                .so_far()
                .iter()
                .any(|l| access(l) && l.contains("node1"))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{what}: no access line in {:?}", lines.so_far()));
        sigterm(proxy.child.id()).unwrap();
        let status = wait_timeout(&mut proxy.child, Duration::from_secs(10))
            .unwrap()
            .expect("the proxy exits on SIGTERM");
        assert!(status.success(), "{what}: {status:?}");
        // Every line the process wrote, up to its last: the readers end when it has exited.
        let lines = lines.all();
        let errors = errors.all();
        assert!(errors.is_empty(), "{what}: stderr: {errors:?}");
        let all = lines.join("\n");

        // Never a secret, a SASL payload or a stanza, at any level up to debug.
        for secret in [
            PASSWORD,
            payload.as_str(),
            "<auth",
            "<iq",
            "<message",
            "urn:xmpp:ping",
        ] {
            assert!(
                !all.contains(secret),
                "{what}: the log shows {secret:?}:\n{all}"
            );
        }
        // The user only when asked for.
        assert_eq!(
            all.contains(USER),
            log_jids,
            "{what}: JID in the log:\n{all}"
        );

        if !json {
            // Text: human-readable key=value lines.
            let line = lines
                .iter()
                .find(|l| access(l) && l.contains("node1"))
                .unwrap();
            assert!(!line.starts_with('{'), "{line}");
            for field in [
                "listener=c2s",
                "tls=\"direct\"",
                "backend=\"node1\"",
                "key_source=\"sasl\"",
            ] {
                assert!(line.contains(field), "{field} in {line}");
            }
            continue;
        }
        let events: Vec<Value> = lines
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}"))
            })
            .collect();
        for e in &events {
            assert!(
                e["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{e}"
            );
            assert!(
                ["trace", "debug", "info", "warn", "error"]
                    .contains(&e["log.level"].as_str().unwrap()),
                "{e}"
            );
            assert!(e["message"].is_string(), "{e}");
            assert!(e["log.logger"].is_string(), "{e}");
        }
        // One event per connection: the readiness check's connection, and the session.
        let access: Vec<&Value> = events
            .iter()
            .filter(|e| e["log.logger"] == "xmpp_lb::access")
            .collect();
        assert_eq!(
            access.len(),
            2,
            "{what}: one event per connection: {access:?}"
        );
        assert_eq!(
            access[0]["close_reason"], "client_gone",
            "{what}: {access:?}"
        );
        let access: Vec<&Value> = access
            .into_iter()
            .filter(|e| e["backend"] == "node1")
            .collect();
        assert_eq!(access.len(), 1, "{what}: {access:?}");
        let a = access[0];
        assert_eq!(a["log.level"], "info");
        assert_eq!(a["message"], "connection closed");
        assert!(
            a["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{a}"
        );
        assert_eq!(a["listener"], "c2s");
        assert_eq!(a["tls"], "direct");
        assert_eq!(a["domain"], DOMAIN);
        assert_eq!(a["key_source"], "sasl");
        assert_eq!(a["backend"], "node1");
        assert!(a["duration_ms"].as_u64().is_some(), "{a}");
        assert!(a["bytes_up"].as_u64().unwrap() > 0, "{a}");
        assert!(a["bytes_down"].as_u64().unwrap() > 0, "{a}");
        // The node ends the stream; the test client then drops its socket without a TLS
        // close_notify, which the relay sees as an I/O error.
        assert!(
            ["closed", "io_error"].contains(&a["close_reason"].as_str().unwrap()),
            "{a}"
        );
        assert!(
            ["client", "backend"].contains(&a["closed_by"].as_str().unwrap()),
            "{a}"
        );
        if log_jids {
            assert_eq!(a["jid"], jid.as_str(), "{a}");
        } else {
            assert!(a.get("jid").is_none(), "{a}");
        }
    }
}

unsafe extern "C" {
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
    fn ioctl(fd: i32, request: u64, ...) -> i32;
}
const F_SETPIPE_SZ: i32 = 1031;
const FIONREAD: u64 = 0x541B;

#[test]
fn a_stuck_log_output_never_holds_up_a_login() {
    let pki = TestPki::new(&[DOMAIN]);
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::default()).expect("prosody");
    cluster.register(USER, PASSWORD);
    // Trace logs everything (TLS included) into a one-page pipe nobody reads: it is full
    // after a few lines, and a blocking logger would stop every connection task there.
    let mut proxy = start(
        &pki,
        cluster.addr(0),
        "log_format = \"json\"",
        "trace",
        Stdio::piped(),
    );
    let stdout = proxy.child.stdout.take().unwrap();
    let fd = stdout.as_raw_fd();
    // SAFETY: plain fcntl on a pipe descriptor this test owns.
    let size = unsafe { fcntl(fd, F_SETPIPE_SZ, 4096) };
    assert!(
        size >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    for _ in 0..5 {
        let done = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), session(proxy.addr, &pki.ca_path())).await
        });
        assert!(done.is_ok(), "a login hung behind the stuck log output");
    }
    // The output really was stuck: the pipe holds all it can take of whole lines, and the
    // proxy's log writer thread sleeps in the kernel, waiting to write more.
    let mut queued: i32 = 0;
    // SAFETY: FIONREAD writes one int for a pipe descriptor this test owns.
    let rc = unsafe { ioctl(fd, FIONREAD, &mut queued as *mut i32) };
    assert_eq!(rc, 0);
    assert!(queued > size / 2, "the log pipe holds only {queued} bytes");
    let pid = proxy.child.id();
    let writer = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "xmpp-lb-log")
        })
        .expect("the log writer thread");
    let wchan = std::fs::read_to_string(writer.path().join("wchan")).unwrap_or_default();
    // Kernels that hide wait channels report "0"; the pipe's fill level then has to do.
    assert!(
        wchan.contains("pipe_write") || wchan == "0",
        "the log writer is not blocked on the pipe: {wchan}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    terminate(&mut proxy.child, Duration::from_secs(5)).unwrap();
    drop(stdout);
}
