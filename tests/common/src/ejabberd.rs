//! Real ejabberd nodes (the Debian package) on loopback, each with its own configuration,
//! Erlang node name, ports, Mnesia directory and log, and one Erlang port mapper (epmd) of
//! the cluster's own on a free port, so nothing is shared with a system ejabberd or epmd.
//!
//! Every node has two client listeners on 127.0.0.1: `proxied` (`use_proxy_protocol: true`,
//! the one the proxy under test talks to) and `plain` (no PROXY protocol, to see what the
//! node offers a client directly). Neither requires TLS: the proxy terminates it and the
//! link is trusted. Nodes are started as direct children (`erl` execs the VM in place), so
//! they die with the test process and are stopped by pid; so is the epmd.
//!
//! Node `i` is named `ejabberd<i+1>@localhost`. Set `XMPP_LB_KEEP_TEST_DIRS=1` to keep the
//! temporary directory (configurations, logs, Mnesia) after the test.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{self, run_with_timeout, spawn_child, tail_file};

/// How long a node may take to boot (several seconds on an idle machine; far more on a
/// machine busy compiling).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one `ejabberdctl`-style command may take (it boots a small Erlang VM).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// One session as `connected_users_info` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Full JID.
    pub jid: String,
    /// The client IP the node believes in.
    pub ip: String,
    /// The client port the node believes in.
    pub port: u16,
    /// The Erlang node holding the session.
    pub node: String,
}

struct Node {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    proxied: u16,
    plain: u16,
    child: Option<Child>,
}

/// Nodes of one test, and their port mapper.
pub struct EjabberdCluster {
    nodes: Vec<Node>,
    domain: String,
    cookie: String,
    epmd_port: u16,
    epmd: Option<Child>,
    erl_libs: PathBuf,
    disabled_mechanisms: Vec<String>,
    dir: Option<tempfile::TempDir>,
}

impl EjabberdCluster {
    /// Start `n` nodes serving `domain` in parallel (not clustered yet) and wait until each
    /// answers a stream header on its plain listener.
    pub fn start(n: usize, domain: &str) -> io::Result<EjabberdCluster> {
        let dir = tempfile::Builder::new()
            .prefix("xmpp-lb-ejabberd-")
            .tempdir()?;
        let erl_libs = erl_libs()?;
        let epmd_port = process::free_port(false)?;
        let mut cmd = Command::new("epmd");
        cmd.args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let epmd = spawn_child(cmd)?;
        let mut cluster = EjabberdCluster {
            nodes: Vec::new(),
            domain: domain.to_string(),
            cookie: format!("xmpplb{}", rand_suffix()),
            epmd_port,
            epmd: Some(epmd),
            erl_libs,
            disabled_mechanisms: vec!["x-oauth2".into()],
            dir: Some(dir),
        };
        let root = cluster.dir.as_ref().expect("dir").path().to_path_buf();
        for i in 0..n {
            let name = format!("ejabberd{}@localhost", i + 1);
            let ndir = root.join(format!("ejabberd{}", i + 1));
            std::fs::create_dir_all(ndir.join("db"))?;
            cluster.nodes.push(Node {
                name,
                config: ndir.join("ejabberd.yml"),
                log: ndir.join("ejabberd.log"),
                dir: ndir,
                proxied: process::free_port(false)?,
                plain: process::free_port(false)?,
                child: None,
            });
        }
        // epmd must listen before the nodes register with it.
        let epmd_addr = SocketAddr::from(([127, 0, 0, 1], epmd_port));
        process::wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
            std::net::TcpStream::connect(epmd_addr).ok()
        })
        .ok_or_else(|| io::Error::other("epmd did not start"))?;
        for i in 0..n {
            cluster.write_config(i)?;
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..n {
            cluster.wait_ready(i, deadline)?;
        }
        Ok(cluster)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The Erlang node name of node `i` (`ejabberd1@localhost`).
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The listener of node `i` that expects a PROXY protocol header.
    pub fn proxied_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].proxied))
    }

    /// The listener of node `i` without PROXY protocol.
    pub fn plain_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].plain))
    }

    /// Last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let n = &self.nodes[i];
        format!(
            "{}\n--- stderr ---\n{}",
            tail_file(&n.log, 40),
            tail_file(&n.dir.join("stderr.log"), 20)
        )
    }

    /// Run an `ejabberdctl` command against node `i` (the same `ejabberd_ctl` module the
    /// script runs, reached through this cluster's epmd and cookie); returns its stdout.
    pub fn ctl(&self, i: usize, args: &[&str]) -> io::Result<String> {
        let mut cmd = Command::new("erl");
        cmd.args([
            "-sname",
            &format!("ctl{}@localhost", rand_suffix()),
            "-setcookie",
            &self.cookie,
            "-start_epmd",
            "false",
            "-hidden",
            "-noinput",
            "-s",
            "ejabberd_ctl",
            "-extra",
            &self.nodes[i].name,
        ])
        .args(args)
        .env("ERL_EPMD_PORT", self.epmd_port.to_string())
        .env("ERL_LIBS", &self.erl_libs)
        .env("HOME", &self.nodes[i].dir)
        .env("ERL_CRASH_DUMP_BYTES", "0");
        let out = run_with_timeout(cmd, CTL_TIMEOUT)?;
        match out.status {
            Some(st) if st.success() => Ok(out.stdout),
            Some(st) => Err(io::Error::other(format!(
                "ejabberdctl {args:?} on {} failed ({st}): {}{}",
                self.nodes[i].name, out.stdout, out.stderr
            ))),
            None => Err(io::Error::other(format!(
                "ejabberdctl {args:?} on {} timed out",
                self.nodes[i].name
            ))),
        }
    }

    /// `ejabberdctl register USER DOMAIN PASSWORD` on node `i`.
    pub fn register(&self, i: usize, user: &str, password: &str) {
        let domain = self.domain.clone();
        if let Err(e) = self.ctl(i, &["register", user, &domain, password]) {
            panic!("register {user}: {e}\n{}", self.log_tail(i));
        }
    }

    /// Join every other node to node 0's cluster (`ejabberdctl join_cluster`), and wait until
    /// node 0 lists them all.
    pub fn join_all(&self) {
        let first = self.nodes[0].name.clone();
        for i in 1..self.len() {
            if let Err(e) = self.ctl(i, &["join_cluster", &first]) {
                panic!("join_cluster: {e}\n{}", self.log_tail(i));
            }
        }
        let joined = process::wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
            let list = self.ctl(0, &["list_cluster"]).ok()?;
            self.nodes
                .iter()
                .all(|n| list.contains(&n.name))
                .then_some(())
        });
        assert!(joined.is_some(), "the cluster did not form");
    }

    /// Every c2s session of the cluster, as node `i` reports it (`connected_users_info`).
    pub fn sessions(&self, i: usize) -> Vec<Session> {
        let out = self
            .ctl(i, &["connected_users_info"])
            .unwrap_or_else(|e| panic!("connected_users_info: {e}\n{}", self.log_tail(i)));
        out.lines()
            .filter_map(|line| {
                // jid, connection, ip, port, priority, node, uptime, status, resource, text
                let f: Vec<&str> = line.split('\t').collect();
                (f.len() >= 6).then(|| Session {
                    jid: f[0].to_string(),
                    ip: f[2].to_string(),
                    port: f[3].parse().unwrap_or(0),
                    node: f[5].to_string(),
                })
            })
            .collect()
    }

    /// Wait (bounded) for a session whose full JID is `jid` and return it.
    pub fn wait_session(&self, i: usize, jid: &str) -> Session {
        process::wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
            self.sessions(i).into_iter().find(|s| s.jid == jid)
        })
        .unwrap_or_else(|| panic!("no session {jid}; sessions: {:?}", self.sessions(i)))
    }

    /// Change the SASL mechanisms every node disables, and reload their configuration
    /// (`ejabberdctl reload_config`): what a node offers changes under a running proxy.
    pub fn disable_mechanisms(&mut self, mechanisms: &[&str]) {
        self.disabled_mechanisms = mechanisms.iter().map(|m| m.to_string()).collect();
        for i in 0..self.len() {
            self.write_config(i).expect("write config");
            if let Err(e) = self.ctl(i, &["reload_config"]) {
                panic!("reload_config: {e}\n{}", self.log_tail(i));
            }
        }
    }

    fn write_config(&self, i: usize) -> io::Result<()> {
        let n = &self.nodes[i];
        let mut c = String::new();
        let _ = writeln!(c, "# Generated by the xmpp-lb test harness for {}.", n.name);
        let _ = writeln!(c, "loglevel: info");
        let _ = writeln!(c, "hosts:\n  - {}", self.domain);
        let _ = writeln!(c, "listen:");
        for (port, proxied) in [(n.proxied, true), (n.plain, false)] {
            let _ = writeln!(
                c,
                "  -\n    port: {port}\n    ip: \"127.0.0.1\"\n    module: ejabberd_c2s\n    starttls_required: false\n    use_proxy_protocol: {proxied}"
            );
        }
        let _ = writeln!(c, "auth_method: internal\nauth_password_format: plain");
        let _ = writeln!(c, "disable_sasl_mechanisms:");
        for m in &self.disabled_mechanisms {
            let _ = writeln!(c, "  - \"{m}\"");
        }
        let _ = writeln!(
            c,
            "acl:\n  local:\n    user_regexp: \"\"\naccess_rules:\n  local:\n    allow: local\n  c2s:\n    allow: all"
        );
        let _ = writeln!(
            c,
            "api_permissions:\n  \"console commands\":\n    from:\n      - ejabberd_ctl\n    who: all\n    what: \"*\""
        );
        let _ = writeln!(
            c,
            "modules:\n  mod_admin_extra: {{}}\n  mod_disco: {{}}\n  mod_ping: {{}}\n  mod_roster: {{}}\n  mod_stream_mgmt: {{}}"
        );
        std::fs::write(&n.config, c)
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let n = &self.nodes[i];
        let stderr = std::fs::File::create(n.dir.join("stderr.log"))?;
        let stdout = std::fs::File::create(n.dir.join("stdout.log"))?;
        let mut cmd = Command::new("erl");
        cmd.args([
            "-sname",
            &n.name,
            "-setcookie",
            &self.cookie,
            "-start_epmd",
            "false",
            "-noinput",
            // Distribution on loopback only.
            "-kernel",
            "inet_dist_use_interface",
            "{127,0,0,1}",
            "-mnesia",
            "dir",
            &format!("\"{}\"", n.dir.join("db").display()),
            "-s",
            "ejabberd",
        ])
        .env("ERL_EPMD_PORT", self.epmd_port.to_string())
        .env("ERL_LIBS", &self.erl_libs)
        .env("EJABBERD_CONFIG_PATH", &n.config)
        .env("EJABBERD_LOG_PATH", &n.log)
        .env("HOME", &n.dir)
        .env("ERL_CRASH_DUMP_BYTES", "0")
        .current_dir(&n.dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
        let child = spawn_child(cmd)?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, i: usize, deadline: Instant) -> io::Result<()> {
        let addr = self.plain_addr(i);
        loop {
            if let Some(c) = self.nodes[i].child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(io::Error::other(format!(
                    "{} exited during startup ({st})\n{}",
                    self.nodes[i].name,
                    self.log_tail(i)
                )));
            }
            if super::prosody::probe_stream(addr, &self.domain, Duration::from_millis(500)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{} not ready within {START_TIMEOUT:?}\n{}",
                    self.nodes[i].name,
                    self.log_tail(i)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EjabberdCluster {
    fn drop(&mut self) {
        let mut children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .collect();
        let mut refs: Vec<&mut Child> = children.iter_mut().collect();
        process::terminate_all(&mut refs, Duration::from_secs(5));
        if let Some(mut epmd) = self.epmd.take() {
            let _ = process::terminate(&mut epmd, Duration::from_secs(1));
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("XMPP_LB_KEEP_TEST_DIRS").is_some() {
                eprintln!("keeping ejabberd test dir {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
    }
}

/// The directory holding ejabberd's Erlang applications (`ejabberd-VERSION/ebin`), which the
/// package's own script passes as `ERL_LIBS`.
fn erl_libs() -> io::Result<PathBuf> {
    for base in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ] {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("ejabberd-") && e.path().join("ebin").is_dir() {
                return Ok(Path::new(base).to_path_buf());
            }
        }
    }
    Err(io::Error::other(
        "ejabberd is not installed (scripts/install-deps.sh installs it)",
    ))
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}x{}x{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
