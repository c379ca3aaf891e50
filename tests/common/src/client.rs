//! Run the real slixmpp client (tests/clients/xmpp_client.py) from Rust.
//!
//! Interpreter: `$XMPP_LB_PYTHON`, else the project's `.venv/bin/python`
//! if present (scripts/install-deps.sh creates it where pip is refused),
//! else `python3`; it must have slixmpp installed. Every run is bounded in wall time; failures come back
//! as JSON with `"ok": false` (never a panic), with the client's stderr tail
//! under `"stderr"` and its exit code under `"exit_code"`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::process::{self, run_with_timeout, spawn_child};

/// Seconds added to the client's own `--timeout` for interpreter start-up
/// and clean disconnect before the harness kills it.
const WALL_SLACK_S: f64 = 10.0;

pub fn python() -> String {
    if let Ok(p) = std::env::var("XMPP_LB_PYTHON") {
        return p;
    }
    let venv = crate::repo_root().join(".venv").join("bin").join("python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}

pub fn script_path() -> PathBuf {
    crate::repo_root()
        .join("tests")
        .join("clients")
        .join("xmpp_client.py")
}

fn arg_value(args: &[&str], name: &str) -> Option<f64> {
    args.iter()
        .position(|a| *a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn wall_limit(args: &[&str]) -> Duration {
    let t = arg_value(args, "--timeout").unwrap_or(15.0);
    let hold = if args.first() == Some(&"hold") {
        arg_value(args, "--seconds").unwrap_or(60.0)
    } else {
        0.0
    };
    Duration::from_secs_f64(t + hold + WALL_SLACK_S)
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &s[cut..])
}

fn failure(kind: &str, error: String, stderr: &str, exit_code: Option<i32>) -> Value {
    json!({"ok": false, "kind": kind, "error": error, "stderr": tail(stderr, 4000), "exit_code": exit_code})
}

/// Run the client with these arguments (subcommand first) and return its
/// JSON result. Never panics on client failure: look at `["ok"]`.
pub fn run_client(args: &[&str]) -> Value {
    run_script(&script_path(), args)
}

/// Run another client script of `tests/clients/` (by file name) that prints one JSON result
/// the same way.
pub fn run_other(script: &str, args: &[&str]) -> Value {
    run_script(&script_path().with_file_name(script), args)
}

fn run_script(script: &Path, args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(script).args(args);
    let limit = wall_limit(args);
    let out = match run_with_timeout(cmd, limit) {
        Ok(o) => o,
        Err(e) => {
            return failure(
                "harness",
                format!("cannot run {} {}: {e}", python(), script.display()),
                "",
                None,
            );
        }
    };
    let code = out.status.and_then(|s| s.code());
    if out.status.is_none() {
        return failure(
            "harness",
            format!("client exceeded the wall-time limit of {limit:?} and was killed"),
            &out.stderr,
            None,
        );
    }
    let last = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    match serde_json::from_str::<Value>(last) {
        Ok(mut v @ Value::Object(_)) => {
            let ok = v["ok"].as_bool() == Some(true);
            if !ok || code != Some(0) {
                v["ok"] = json!(false);
                v["stderr"] = json!(tail(&out.stderr, 4000));
                v["exit_code"] = json!(code);
            }
            v["wall_ms"] = json!(out.elapsed.as_secs_f64() * 1000.0);
            v
        }
        _ => failure(
            "harness",
            format!(
                "client printed no JSON result (exit {code:?}); stdout: {}",
                tail(&out.stdout, 2000)
            ),
            &out.stderr,
            code,
        ),
    }
}

/// Panic with the whole result unless `v["ok"]` is true; returns `v`.
#[track_caller]
pub fn expect_ok(v: Value, what: &str) -> Value {
    if v["ok"].as_bool() != Some(true) {
        panic!(
            "{what} failed: {}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
    }
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP then mandatory STARTTLS.
    StartTls,
    /// TLS from the first byte (XEP-0368), ALPN "xmpp-client", SNI = domain.
    Direct,
    /// No TLS at all, plaintext SASL allowed (harness self-test, direct-to-node).
    None,
}

impl TlsMode {
    pub fn as_arg(self) -> &'static str {
        match self {
            TlsMode::StartTls => "starttls",
            TlsMode::Direct => "direct",
            TlsMode::None => "none",
        }
    }
}

/// How the client connects: exactly this address, exactly this TLS style.
#[derive(Clone, Debug)]
pub struct Conn {
    pub addr: SocketAddr,
    pub tls: TlsMode,
    pub ca: Option<PathBuf>,
    pub mech: Option<String>,
    pub send_from: bool,
    pub server_name: Option<String>,
    pub stream_to: Option<String>,
    /// ALPN list for the client hello ("" = none); default per TLS style.
    pub alpn: Option<String>,
    pub sm: bool,
    pub timeout_s: f64,
    /// Extra raw arguments appended as-is.
    pub extra: Vec<String>,
}

impl Conn {
    pub fn new(addr: SocketAddr, tls: TlsMode) -> Conn {
        Conn {
            addr,
            tls,
            ca: None,
            mech: None,
            send_from: false,
            server_name: None,
            stream_to: None,
            alpn: None,
            sm: false,
            timeout_s: 15.0,
            extra: Vec::new(),
        }
    }
    /// Plain TCP, no TLS (straight to a Prosody node).
    pub fn plain(addr: SocketAddr) -> Conn {
        Conn::new(addr, TlsMode::None)
    }
    pub fn starttls(addr: SocketAddr, ca: &Path) -> Conn {
        Conn::new(addr, TlsMode::StartTls).ca(ca)
    }
    pub fn direct(addr: SocketAddr, ca: &Path) -> Conn {
        Conn::new(addr, TlsMode::Direct).ca(ca)
    }
    pub fn ca(mut self, ca: &Path) -> Conn {
        self.ca = Some(ca.to_path_buf());
        self
    }
    pub fn mech(mut self, mech: &str) -> Conn {
        self.mech = Some(mech.to_string());
        self
    }
    pub fn send_from(mut self) -> Conn {
        self.send_from = true;
        self
    }
    pub fn server_name(mut self, name: &str) -> Conn {
        self.server_name = Some(name.to_string());
        self
    }
    pub fn stream_to(mut self, to: &str) -> Conn {
        self.stream_to = Some(to.to_string());
        self
    }
    pub fn alpn(mut self, alpn: &str) -> Conn {
        self.alpn = Some(alpn.to_string());
        self
    }
    pub fn sm(mut self) -> Conn {
        self.sm = true;
        self
    }
    pub fn timeout(mut self, secs: f64) -> Conn {
        self.timeout_s = secs;
        self
    }
    pub fn arg(mut self, a: &str) -> Conn {
        self.extra.push(a.to_string());
        self
    }

    /// The connection arguments of the client's CLI.
    pub fn args(&self) -> Vec<String> {
        let mut v = vec![
            "--host".to_string(),
            self.addr.ip().to_string(),
            "--port".into(),
            self.addr.port().to_string(),
            "--tls".into(),
            self.tls.as_arg().into(),
            "--timeout".into(),
            self.timeout_s.to_string(),
        ];
        if let Some(ca) = &self.ca {
            v.push("--ca".into());
            v.push(ca.to_string_lossy().into_owned());
        }
        if let Some(m) = &self.mech {
            v.push("--mech".into());
            v.push(m.clone());
        }
        if self.send_from {
            v.push("--send-from".into());
        }
        if let Some(n) = &self.server_name {
            v.push("--server-name".into());
            v.push(n.clone());
        }
        if let Some(t) = &self.stream_to {
            v.push("--stream-to".into());
            v.push(t.clone());
        }
        if let Some(a) = &self.alpn {
            v.push(format!("--alpn={a}"));
        }
        if self.sm {
            v.push("--sm".into());
        }
        v.extend(self.extra.iter().cloned());
        v
    }
}

fn run_owned(args: Vec<String>) -> Value {
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run_client(&refs)
}

/// The node a client saw, from the `node_contact` of its result (each test node's
/// disco#info contact address is `xmpp:NODE@DOMAIN`); empty if it saw none.
pub fn node_seen(out: &Value) -> String {
    let contact = out["node_contact"].as_str().unwrap_or_default();
    contact
        .trim_start_matches("xmpp:")
        .split('@')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Log in, bind, send presence, disco#info the domain, disconnect.
/// Result: {"ok", "jid", "mech", "node_contact", "node", "elapsed_ms", "tls", ...}.
pub fn login(conn: &Conn, jid: &str, password: &str) -> Value {
    let mut a = vec![
        "login".to_string(),
        "--jid".into(),
        jid.into(),
        "--password".into(),
        password.into(),
    ];
    a.extend(conn.args());
    run_owned(a)
}

/// Log in with stream management (`conn` should have `.sm()`), lose the connection without a
/// stream close, and reconnect through `resume_port`. Result: {"ok", "outcome" ("resumed" or
/// "new session"), "sm_id", "node_before", "node_after", "mech"}.
pub fn resume(conn: &Conn, jid: &str, password: &str, resume_port: u16) -> Value {
    let mut a = vec![
        "resume".to_string(),
        "--jid".into(),
        jid.into(),
        "--password".into(),
        password.into(),
        "--resume-port".into(),
        resume_port.to_string(),
    ];
    a.extend(conn.args());
    run_owned(a)
}

/// Log A and B in concurrently; A sends `body` to B's bare JID; B must get it.
/// Result: {"ok", "received_by_b", "a_node", "b_node", "a_jid", "b_jid", ...}.
pub fn chat(conn: &Conn, a: (&str, &str), b: (&str, &str), body: &str) -> Value {
    let mut v = vec![
        "chat".to_string(),
        "--a".into(),
        a.0.into(),
        "--pa".into(),
        a.1.into(),
        "--b".into(),
        b.0.into(),
        "--pb".into(),
        b.1.into(),
        "--body".into(),
        body.into(),
    ];
    v.extend(conn.args());
    run_owned(v)
}

/// A client that logged in and stays connected until `seconds` pass, it is
/// stopped, or dropped (SIGTERM: it closes its stream, then exits).
pub struct HeldClient {
    child: Option<Child>,
    /// The login result printed by the client (`ok`, `jid`, `node`, ...).
    pub login: Value,
    stderr_rx: Option<mpsc::Receiver<String>>,
}

impl HeldClient {
    pub fn ok(&self) -> bool {
        self.login["ok"].as_bool() == Some(true)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Is the client process still running (i.e. still connected, as the
    /// client exits when its connection is lost)?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Wait (bounded) for the client to exit by itself; returns
    /// (exit code, parsed "hold-end" status). Exit code 3 = connection lost.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(Option<i32>, Value)> {
        let child = self.child.as_mut()?;
        let st = process::wait_timeout(child, timeout).ok()??;
        self.child = None;
        Some((st.code(), self.end_status()))
    }

    /// Ask the client to leave (SIGTERM: it sends </stream:stream> first).
    pub fn stop(&mut self) -> Option<(Option<i32>, Value)> {
        let mut child = self.child.take()?;
        let st = process::terminate(&mut child, Duration::from_secs(5)).ok()?;
        Some((st.code(), self.end_status()))
    }

    fn end_status(&mut self) -> Value {
        let text = self
            .stderr_rx
            .take()
            .and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
            .unwrap_or_default();
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix("hold-end: "))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(Value::Null)
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = process::terminate(&mut c, Duration::from_secs(3));
        }
    }
}

/// Log `jid` in at `addr` with TLS style `tls` ("starttls", "direct" or
/// "none") trusting `ca`, and stay connected up to `seconds`. Returns once
/// the login (bind, presence, disco) is done, so the server holds the
/// session by then. Panics with the client's error if the login fails.
/// Dropping the result makes the client leave.
#[track_caller]
pub fn hold(
    jid: &str,
    password: &str,
    addr: SocketAddr,
    tls: &str,
    ca: &Path,
    seconds: u64,
) -> HeldClient {
    let tls = match tls {
        "starttls" => TlsMode::StartTls,
        "direct" => TlsMode::Direct,
        "none" => TlsMode::None,
        other => panic!("unknown TLS style {other:?} (starttls, direct, none)"),
    };
    let held = hold_conn(&Conn::new(addr, tls).ca(ca), jid, password, seconds as f64);
    if !held.ok() {
        panic!("hold of {jid} at {addr} failed: {}", held.login);
    }
    held
}

/// Start `hold` and wait (bounded) for its login result. If the login fails
/// the returned client has `ok() == false`, `login` holds the error, and
/// the process is already gone.
pub fn hold_conn(conn: &Conn, jid: &str, password: &str, seconds: f64) -> HeldClient {
    let mut args = vec![
        "hold".to_string(),
        "--jid".into(),
        jid.into(),
        "--password".into(),
        password.into(),
        "--seconds".into(),
        seconds.to_string(),
    ];
    args.extend(conn.args());
    let mut cmd = Command::new(python());
    cmd.arg(script_path())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match spawn_child(cmd) {
        Ok(c) => c,
        Err(e) => {
            return HeldClient {
                child: None,
                login: failure("harness", format!("cannot run {}: {e}", python()), "", None),
                stderr_rx: None,
            };
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (line_tx, line_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = line_tx.send(line);
        // keep draining so the client never blocks on a full pipe
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    let (err_tx, err_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        let _ = err_tx.send(String::from_utf8_lossy(&v).into_owned());
    });
    let limit = Duration::from_secs_f64(conn.timeout_s + WALL_SLACK_S);
    let first = line_rx.recv_timeout(limit).ok();
    let parsed: Option<Value> = first
        .as_deref()
        .and_then(|l| serde_json::from_str(l.trim()).ok());
    match parsed {
        Some(v) if v["ok"].as_bool() == Some(true) => HeldClient {
            child: Some(child),
            login: v,
            stderr_rx: Some(err_rx),
        },
        other => {
            let _ = process::terminate(&mut child, Duration::from_secs(2));
            let code = child.try_wait().ok().flatten().and_then(|s| s.code());
            let err_text = err_rx
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            let mut v = other.unwrap_or_else(|| {
                failure(
                    "harness",
                    format!("hold printed no login result within {limit:?}: {:?}", first),
                    &err_text,
                    code,
                )
            });
            v["ok"] = json!(false);
            v["stderr"] = json!(tail(&err_text, 4000));
            v["exit_code"] = json!(code);
            HeldClient {
                child: None,
                login: v,
                stderr_rx: None,
            }
        }
    }
}
