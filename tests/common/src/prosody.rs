//! N real Prosody nodes on loopback, all serving one domain, each with its
//! own storage, port, admin socket and log, and a distinct identity that a
//! client can see (`contact_info` admin address `xmpp:node<i>@<domain>`).
//!
//! Nodes are indexed from 0 but NAMED from 1: index `i` is `node<i+1>`
//! everywhere (contact address, directory name), matching the proxy test
//! config, which names the backend at `cluster.addr(i)` `node<i+1>`.
//!
//! Nodes speak plain c2s only (no certificates, no mod_tls, no s2s): the
//! proxy under test terminates TLS and the node link is trusted.
//! Accounts are written straight into each node's data directory in
//! Prosody's internal storage format, so registering is a file write per
//! node, works before or after start, and needs no prosodyctl.
//!
//! Set `XMPP_LB_KEEP_TEST_DIRS=1` to keep the temporary directories
//! (configs, logs, data) after the test for inspection.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{self, run_with_timeout, spawn_child, tail_file};

/// How long to wait for a node to accept connections and answer a stream header.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node gets to shut down after SIGTERM before it is SIGKILLed.
/// Prosody waits up to 6 s for connected clients to close their streams.
pub const STOP_GRACE: Duration = Duration::from_secs(8);
/// Grace used by Drop (the test is over; don't wait long for lingering peers).
pub const DROP_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct ProsodyOpts {
    /// Also listen on [::1] (same port as 127.0.0.1).
    pub ipv6: bool,
    /// Extra modules appended to `modules_enabled`.
    pub extra_modules: Vec<String>,
    /// Lua appended to the global section (before the VirtualHost).
    pub extra_config: String,
    /// Lua appended inside the `VirtualHost` section.
    pub extra_vhost_config: String,
    /// `authentication` provider: "internal_plain" (default; offers PLAIN,
    /// SCRAM-SHA-1, SCRAM-SHA-256) or "internal_hashed" (offers SCRAM-SHA-1,
    /// PLAIN; plaintext account files are upgraded to hashed on first login).
    pub authentication: String,
    /// Minimum log level written to the node's log file ("debug", "info", ...).
    pub log_level: String,
    /// Readiness timeout per start (all nodes start in parallel).
    pub start_timeout: Duration,
    /// Modules shipped with the harness, as (name, Lua source): written to
    /// `mod_<name>.lua` in the node's own plugin directory, which is added to
    /// `plugin_paths`. Name them in `extra_modules` to load them.
    pub plugins: Vec<(String, String)>,
}

impl Default for ProsodyOpts {
    fn default() -> Self {
        ProsodyOpts {
            ipv6: false,
            extra_modules: Vec::new(),
            extra_config: String::new(),
            extra_vhost_config: String::new(),
            authentication: "internal_plain".into(),
            log_level: std::env::var("XMPP_LB_PROSODY_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            start_timeout: DEFAULT_START_TIMEOUT,
            plugins: Vec::new(),
        }
    }
}

/// Source of the harness's `sasl2_compat` module (see [`ProsodyOpts::fast_reconnect`]).
pub const SASL2_COMPAT_LUA: &str = include_str!("../../../contrib/prosody/mod_sasl2_compat.lua");

/// Source of the node's channel-binding module (docs/channel-binding.md).
pub const PROXY_CHANNEL_BINDING_LUA: &str =
    include_str!("../../../contrib/prosody/mod_proxy_channel_binding.lua");

/// How long a vanished smacks session waits for resumption under
/// [`ProsodyOpts::fast_reconnect`].
pub const FAST_RECONNECT_HIBERNATION: Duration = Duration::from_secs(60);

impl ProsodyOpts {
    /// These options plus `contrib/prosody/mod_proxy_channel_binding.lua`, believing the
    /// PROXY v2 channel-binding data of connections from `proxies` (addresses or networks).
    pub fn with_channel_binding(mut self, proxies: &[&str]) -> ProsodyOpts {
        self.extra_modules.push("proxy_channel_binding".into());
        self.plugins.push((
            "proxy_channel_binding".into(),
            PROXY_CHANNEL_BINDING_LUA.into(),
        ));
        let list: Vec<String> = proxies.iter().map(|p| lua_str(p)).collect();
        self.extra_config.push_str(&format!(
            "\nchannel_binding_proxies = {{ {} }}\n",
            list.join(", ")
        ));
        self
    }

    /// SASL2 (XEP-0388) with inline Bind 2 (XEP-0386), inline stream
    /// management (XEP-0198 enable and resume) and FAST tokens (XEP-0484):
    /// the community modules `sasl2`, `sasl2_bind2`, `sasl2_sm`, `sasl2_fast`
    /// next to core `smacks` (always loaded), with smacks sessions hibernating
    /// for [`FAST_RECONNECT_HIBERNATION`] and default FAST token lifetimes.
    ///
    /// With Prosody 0.12 `sasl2_fast` and `sasl2_sm` fail at run time (they
    /// were written for later core APIs; see `mod_sasl2_compat.lua` for the
    /// exact failures), so this also loads the harness's `sasl2_compat`
    /// module, which supplies the missing pieces and nothing else.
    pub fn fast_reconnect() -> ProsodyOpts {
        ProsodyOpts {
            extra_modules: [
                "sasl2",
                "sasl2_bind2",
                "sasl2_sm",
                "sasl2_fast",
                "sasl2_compat",
            ]
            .map(String::from)
            .to_vec(),
            extra_config: format!(
                "smacks_hibernation_time = {}",
                FAST_RECONNECT_HIBERNATION.as_secs()
            ),
            plugins: vec![("sasl2_compat".into(), SASL2_COMPAT_LUA.into())],
            ..Default::default()
        }
    }
}

/// One c2s session as the server itself sees it (from the node's admin socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct C2sSession {
    /// Full JID once bound, otherwise the bare JID of the authenticated user.
    pub jid: String,
    /// Peer IP as seen by the node (the proxy's address when proxied).
    pub ip: String,
    /// A resource is bound.
    pub bound: bool,
    /// XEP-0198 stream management enabled.
    pub smacks: bool,
    /// Smacks session waiting for resumption (no live connection).
    pub hibernating: bool,
    /// Prosody considers the link encrypted.
    pub secure: bool,
    /// Prosody's session id (as in `c2s:show()`).
    pub id: String,
}

impl C2sSession {
    pub fn bare(&self) -> &str {
        self.jid.split('/').next().unwrap_or(&self.jid)
    }
}

struct Node {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    admin_socket: PathBuf,
    data: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Log length when the current process was spawned (to scan only new lines).
    log_offset: u64,
}

pub struct ProsodyCluster {
    // Declared before `dir` so nodes die before the directory is removed
    // (Drop also does it explicitly).
    nodes: Vec<Node>,
    domain: String,
    opts: ProsodyOpts,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
}

enum StartError {
    PortInUse,
    Other(String),
}

impl ProsodyCluster {
    /// Start `n` nodes serving `domain` in parallel and wait until each one
    /// accepts a TCP connection and answers a stream header with
    /// `<stream:features>` (and its admin socket exists).
    pub fn start(n: usize, domain: &str, opts: ProsodyOpts) -> io::Result<ProsodyCluster> {
        let dir = tempfile::Builder::new()
            .prefix("xmpp-lb-prosody-")
            .tempdir_in(short_tmp())?;
        let dir_path = dir.path().to_path_buf();
        let mut cluster = ProsodyCluster {
            nodes: Vec::new(),
            domain: domain.to_string(),
            opts,
            dir: Some(dir),
            dir_path,
        };
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let ndir = cluster.dir_path.join(&name);
            std::fs::create_dir_all(ndir.join("data"))?;
            std::fs::create_dir_all(ndir.join("certs"))?;
            cluster.nodes.push(Node {
                name,
                config: ndir.join("prosody.cfg.lua"),
                log: ndir.join("prosody.log"),
                stdout: ndir.join("stdout.log"),
                stderr: ndir.join("stderr.log"),
                admin_socket: ndir.join("admin.sock"),
                data: ndir.join("data"),
                dir: ndir,
                port: process::free_port(cluster.opts.ipv6)?,
                child: None,
                log_offset: 0,
            });
        }
        // Spawn all, then wait for all: the nodes boot concurrently.
        for i in 0..n {
            cluster.write_config(i)?;
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + cluster.opts.start_timeout;
        for i in 0..n {
            let mut attempts = 0;
            loop {
                match cluster.wait_ready(i, deadline) {
                    Ok(()) => break,
                    Err(StartError::PortInUse) if attempts < 3 => {
                        // Someone grabbed the port between probe and bind: new port.
                        attempts += 1;
                        cluster.kill_child(i);
                        cluster.nodes[i].port = process::free_port(cluster.opts.ipv6)?;
                        cluster.write_config(i)?;
                        cluster.spawn(i)?;
                    }
                    Err(StartError::PortInUse) => {
                        return Err(cluster.start_error(i, "port still in use after 3 retries"));
                    }
                    Err(StartError::Other(msg)) => return Err(cluster.start_error(i, &msg)),
                }
            }
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// "node<i+1>" (the name the proxy test config gives `addr(i)`).
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The admin contact address node `i` publishes in disco#info
    /// (XEP-0157), e.g. "xmpp:node1@example.test" for `i == 0`.
    pub fn contact(&self, i: usize) -> String {
        format!("xmpp:{}@{}", self.nodes[i].name, self.domain)
    }

    /// Plain c2s address of node `i` on 127.0.0.1.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].port))
    }

    /// Plain c2s address of node `i` on [::1] (only with `opts.ipv6`).
    pub fn addr_v6(&self, i: usize) -> Option<SocketAddr> {
        self.opts
            .ipv6
            .then(|| SocketAddr::from((Ipv6Addr::LOCALHOST, self.nodes[i].port)))
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        (0..self.len()).map(|i| self.addr(i)).collect()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    /// Pids of all running nodes.
    pub fn pids(&self) -> Vec<u32> {
        (0..self.len()).filter_map(|i| self.pid(i)).collect()
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The cluster's temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn config_path(&self, i: usize) -> &Path {
        &self.nodes[i].config
    }

    pub fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data
    }

    /// Last lines of node `i`'s log file, plus its stderr if not empty.
    pub fn log_tail(&self, i: usize) -> String {
        let n = &self.nodes[i];
        let mut s = tail_file(&n.log, 40);
        let err = tail_file(&n.stderr, 20);
        if !err.trim().is_empty() {
            let _ = write!(s, "\n--- {} stderr ---\n{}", n.name, err);
        }
        let out = tail_file(&n.stdout, 20);
        if !out.trim().is_empty() {
            let _ = write!(s, "\n--- {} stdout ---\n{}", n.name, out);
        }
        s
    }

    // ---- accounts ------------------------------------------------------

    /// Create (or overwrite) an account on every node.
    pub fn register(&self, user: &str, password: &str) {
        self.register_many(&[(user, password)]);
    }

    /// Create (or overwrite) many accounts on every node: one small file per
    /// account per node in Prosody's internal storage format
    /// (`data/<host>/accounts/<user>.dat`). Works while the nodes run.
    pub fn register_many(&self, users: &[(&str, &str)]) {
        for i in 0..self.len() {
            self.register_on(i, users);
        }
    }

    /// Create accounts on node `i` only.
    pub fn register_on(&self, i: usize, users: &[(&str, &str)]) {
        let dir = self.accounts_dir(i);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for (user, password) in users {
            let file = dir.join(format!(
                "{}.dat",
                prosody_path_encode(&normalize_user(user))
            ));
            let body = format!(
                "return {{\n\t[\"password\"] = {};\n}};\n",
                lua_str(password)
            );
            atomic_write(&file, body.as_bytes())
                .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        }
    }

    /// Delete an account from every node (live sessions are not kicked).
    pub fn unregister(&self, user: &str) {
        for i in 0..self.len() {
            let file = self.accounts_dir(i).join(format!(
                "{}.dat",
                prosody_path_encode(&normalize_user(user))
            ));
            let _ = std::fs::remove_file(file);
        }
    }

    fn accounts_dir(&self, i: usize) -> PathBuf {
        self.nodes[i]
            .data
            .join(prosody_path_encode(&self.domain))
            .join("accounts")
    }

    // ---- server-side view ----------------------------------------------

    /// JIDs (full when bound, bare before bind) of the authenticated c2s
    /// sessions node `i` holds right now, as reported by the node itself.
    /// Panics (with the node's log tail) if the node can't be asked.
    pub fn sessions(&self, i: usize) -> Vec<String> {
        self.sessions_detail(i).into_iter().map(|s| s.jid).collect()
    }

    /// Like [`sessions`](Self::sessions) with more detail per session.
    /// Hibernating smacks sessions are included (flagged).
    pub fn sessions_detail(&self, i: usize) -> Vec<C2sSession> {
        match self.try_sessions_detail(i) {
            Ok(v) => v,
            Err(e) => panic!(
                "asking {} for its sessions failed: {e}\n--- log tail ---\n{}",
                self.nodes[i].name,
                self.log_tail(i)
            ),
        }
    }

    pub fn try_sessions_detail(&self, i: usize) -> io::Result<Vec<C2sSession>> {
        const LUA: &str = concat!(
            ">local seen, out = {}, {} ",
            "local function add(s) if type(s) ~= 'table' or seen[s] or not s.username then return end seen[s] = true ",
            "out[#out+1] = table.concat({'@@S', s.full_jid or (s.username..'@'..tostring(s.host)), tostring(s.ip), ",
            "tostring(s.full_jid ~= nil), tostring(s.smacks and true or false), tostring(s.hibernating and true or false), ",
            "tostring(s.secure and true or false), tostring(s.id)}, '\\t') end ",
            "for _, s in pairs(prosody.full_sessions) do add(s) end ",
            "local m = require'core.modulemanager'.get_module('*', 'c2s') ",
            "local api = m and rawget(m, 'module') if api then for _, s in pairs(api:shared('sessions')) do add(s) end end ",
            "return '\\n'..table.concat(out, '\\n')"
        );
        let out = self.admin(i, LUA)?;
        let mut v = Vec::new();
        for line in out.lines() {
            let Some(rest) = line.strip_prefix("@@S\t") else {
                continue;
            };
            let f: Vec<&str> = rest.split('\t').collect();
            if f.len() < 7 {
                continue;
            }
            v.push(C2sSession {
                jid: f[0].to_string(),
                ip: f[1].to_string(),
                bound: f[2] == "true",
                smacks: f[3] == "true",
                hibernating: f[4] == "true",
                secure: f[5] == "true",
                id: f[6].to_string(),
            });
        }
        v.sort_by(|a, b| a.jid.cmp(&b.jid));
        Ok(v)
    }

    /// Does node `i` hold a session for this bare JID?
    pub fn has_session(&self, i: usize, bare_jid: &str) -> bool {
        self.sessions_detail(i)
            .iter()
            .any(|s| s.bare().eq_ignore_ascii_case(bare_jid))
    }

    /// Indexes of the running nodes holding a session for this bare JID.
    pub fn nodes_with_session(&mut self, bare_jid: &str) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.is_running(i) && self.has_session(i, bare_jid))
            .collect()
    }

    /// Wait (bounded) until node `i` holds / no longer holds a session for
    /// `bare_jid`. Sessions come and go asynchronously w.r.t. clients.
    #[must_use = "assert what the node holds"]
    pub fn wait_session(&self, i: usize, bare_jid: &str, present: bool, timeout: Duration) -> bool {
        process::wait_for(timeout, Duration::from_millis(25), || {
            (self.has_session(i, bare_jid) == present).then_some(())
        })
        .is_some()
    }

    /// Run one admin-shell line on node `i` via `prosodyctl shell` against
    /// its admin socket (e.g. "c2s:show()", or ">lua code" for raw Lua in
    /// the global environment) and return its stdout.
    pub fn admin(&self, i: usize, line: &str) -> io::Result<String> {
        let mut cmd = Command::new("prosodyctl");
        cmd.arg("--config")
            .arg(&self.nodes[i].config)
            .arg("shell")
            .arg(line);
        let out = run_with_timeout(cmd, Duration::from_secs(10))?;
        match out.status {
            Some(st) if st.success() => Ok(out.stdout),
            Some(st) => Err(io::Error::other(format!(
                "prosodyctl shell {line:?} on {} failed ({st}): {}{}",
                self.nodes[i].name, out.stdout, out.stderr
            ))),
            None => Err(io::Error::other(format!(
                "prosodyctl shell on {} timed out",
                self.nodes[i].name
            ))),
        }
    }

    // ---- lifecycle -----------------------------------------------------

    /// Graceful stop: SIGTERM, wait until the node has exited or has logged
    /// "Shutdown complete" (after which Prosody only idles until its next
    /// timer, up to several seconds, so it is SIGKILLed), at most
    /// [`STOP_GRACE`]. Clients get `<system-shutdown/>` stream errors.
    pub fn stop_node(&mut self, i: usize) {
        self.stop_nodes(&[i], STOP_GRACE);
    }

    /// Crash: SIGKILL right away (no stream close sent to clients).
    pub fn kill_node(&mut self, i: usize) {
        self.kill_child(i);
    }

    /// Start a stopped node again on the same port with the same data,
    /// waiting for readiness as in [`start`](Self::start).
    pub fn start_node(&mut self, i: usize) -> io::Result<()> {
        if self.is_running(i) {
            return Ok(());
        }
        self.kill_child(i); // reap an exited child, if any
        self.spawn(i)?;
        let deadline = Instant::now() + self.opts.start_timeout;
        loop {
            match self.wait_ready(i, deadline) {
                Ok(()) => return Ok(()),
                // The old socket may linger briefly; try again until the deadline.
                Err(StartError::PortInUse) if Instant::now() < deadline => {
                    self.kill_child(i);
                    std::thread::sleep(Duration::from_millis(100));
                    self.spawn(i)?;
                }
                Err(StartError::PortInUse) => return Err(self.start_error(i, "port in use")),
                Err(StartError::Other(m)) => return Err(self.start_error(i, &m)),
            }
        }
    }

    /// `stop_node` then `start_node`; panics if the node does not come back.
    pub fn restart_node(&mut self, i: usize) {
        self.stop_node(i);
        if let Err(e) = self.start_node(i) {
            panic!("restart of node {i} failed: {e}");
        }
    }

    /// Stop every node (in parallel), as [`stop_node`](Self::stop_node).
    pub fn stop_all(&mut self) {
        let all: Vec<usize> = (0..self.len()).collect();
        self.stop_nodes(&all, STOP_GRACE);
    }

    fn stop_nodes(&mut self, which: &[usize], grace: Duration) {
        for &i in which {
            if let Some(c) = self.nodes[i].child.as_mut()
                && let Ok(None) = c.try_wait()
            {
                let _ = process::sigterm(c.id());
            }
        }
        let deadline = Instant::now() + grace;
        let mut pending: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        while !pending.is_empty() {
            let past = Instant::now() >= deadline;
            pending.retain(|&i| {
                let n = &mut self.nodes[i];
                let Some(c) = n.child.as_mut() else {
                    return false;
                };
                if matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
                    n.child = None;
                    return false;
                }
                if past || read_from(&n.log, n.log_offset).contains("Shutdown complete") {
                    let _ = c.kill();
                    let _ = c.wait();
                    n.child = None;
                    return false;
                }
                true
            });
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Connect to node `i`, send a stream header and return everything the
    /// node sent up to the end of its first `<stream:features>`.
    pub fn probe(&self, i: usize, timeout: Duration) -> io::Result<String> {
        probe_stream(self.addr(i), &self.domain, timeout)
    }

    // ---- internals -----------------------------------------------------

    fn kill_child(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let n = &mut self.nodes[i];
        let _ = std::fs::remove_file(&n.admin_socket);
        n.log_offset = std::fs::metadata(&n.log).map(|m| m.len()).unwrap_or(0);
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.stdout)?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.stderr)?;
        let mut cmd = Command::new("prosody");
        cmd.arg("--config").arg(&n.config).arg("-F");
        cmd.current_dir(&n.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        n.child =
            Some(spawn_child(cmd).map_err(|e| {
                io::Error::new(e.kind(), format!("spawn prosody for {}: {e}", n.name))
            })?);
        Ok(())
    }

    fn wait_ready(&mut self, i: usize, deadline: Instant) -> Result<(), StartError> {
        let addr = self.addr(i);
        let addr6 = self.addr_v6(i);
        loop {
            let n = &mut self.nodes[i];
            if let Some(c) = n.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(StartError::Other(format!(
                        "prosody exited during startup ({st})"
                    )));
                }
            } else {
                return Err(StartError::Other("not running".into()));
            }
            let new_log = read_from(&n.log, n.log_offset);
            if new_log.contains("Failed to open server port") {
                return Err(StartError::PortInUse);
            }
            if let Some(line) = new_log.lines().find(|l| {
                l.contains("Unable to load module") || l.contains("Error initializing module")
            }) {
                return Err(StartError::Other(format!(
                    "a module failed to load: {line}"
                )));
            }
            // A module that loads but breaks streams shows on the readiness probe.
            if let Some(line) = new_log.lines().find(|l| l.contains("Traceback[c2s]")) {
                return Err(StartError::Other(format!("a client stream failed: {line}")));
            }
            let sock_ok = n.admin_socket.exists();
            if sock_ok && probe_stream(addr, &self.domain, Duration::from_millis(500)).is_ok() {
                match addr6 {
                    None => return Ok(()),
                    Some(a6)
                        if probe_stream(a6, &self.domain, Duration::from_millis(500)).is_ok() =>
                    {
                        return Ok(());
                    }
                    Some(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Other(format!(
                    "not ready within {:?} (admin socket present: {sock_ok})",
                    self.opts.start_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_error(&mut self, i: usize, msg: &str) -> io::Error {
        let tail = self.log_tail(i);
        let name = self.nodes[i].name.clone();
        let port = self.nodes[i].port;
        self.stop_all();
        io::Error::other(format!(
            "prosody {name} (port {port}) failed to start: {msg}\n--- {name} log tail ---\n{tail}"
        ))
    }

    fn write_config(&self, i: usize) -> io::Result<()> {
        let n = &self.nodes[i];
        let o = &self.opts;
        let mut c = String::new();
        let _ = writeln!(
            c,
            "-- Generated by the xmpp-lb integration-test harness for {}.",
            n.name
        );
        let _ = writeln!(c, "run_as_root = true");
        let _ = writeln!(
            c,
            "pidfile = {}",
            lua_str(&n.dir.join("prosody.pid").to_string_lossy())
        );
        let _ = writeln!(c, "data_path = {}", lua_str(&n.data.to_string_lossy()));
        let _ = writeln!(
            c,
            "certificates = {}",
            lua_str(&n.dir.join("certs").to_string_lossy())
        );
        let _ = writeln!(
            c,
            "admin_socket = {}",
            lua_str(&n.admin_socket.to_string_lossy())
        );
        if !o.plugins.is_empty() {
            let dir = n.dir.join("plugins");
            std::fs::create_dir_all(&dir)?;
            for (name, source) in &o.plugins {
                std::fs::write(dir.join(format!("mod_{name}.lua")), source)?;
            }
            let _ = writeln!(
                c,
                "plugin_paths = {{ {} }}",
                lua_str(&dir.to_string_lossy())
            );
        }
        let _ = writeln!(c, "c2s_ports = {{ {} }}", n.port);
        let ifaces = if o.ipv6 {
            r#"{ "127.0.0.1", "::1" }"#
        } else {
            r#"{ "127.0.0.1" }"#
        };
        let _ = writeln!(c, "c2s_interfaces = {ifaces}");
        let _ = writeln!(c, "c2s_direct_tls_ports = {{ }}\nlegacy_ssl_ports = {{ }}");
        let _ = writeln!(
            c,
            "s2s_ports = {{ }}\ns2s_direct_tls_ports = {{ }}\ncomponent_ports = {{ }}"
        );
        let _ = writeln!(c, "http_ports = {{ }}\nhttps_ports = {{ }}");
        let _ = writeln!(c, "modules_disabled = {{ \"s2s\" }}");
        let _ = writeln!(
            c,
            "c2s_require_encryption = false\nallow_unencrypted_plain_auth = true"
        );
        let _ = writeln!(c, "authentication = {}", lua_str(&o.authentication));
        let _ = writeln!(c, "storage = \"internal\"");
        let _ = writeln!(
            c,
            "network_settings = {{ nagle = false; tcp_backlog = 1024 }}"
        );
        let _ = writeln!(
            c,
            "log = {{ {{ levels = {{ min = {} }}, to = \"file\", filename = {} }} }}",
            lua_str(&o.log_level),
            lua_str(&n.log.to_string_lossy())
        );
        let mut mods: Vec<String> = [
            "roster",
            "saslauth",
            "disco",
            "ping",
            "smacks",
            "admin_shell",
            "admin_socket",
            "server_contact_info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for m in &o.extra_modules {
            if !mods.contains(m) {
                mods.push(m.clone());
            }
        }
        let mods: Vec<String> = mods.iter().map(|m| lua_str(m)).collect();
        let _ = writeln!(c, "modules_enabled = {{ {} }}", mods.join("; "));
        let _ = writeln!(
            c,
            "contact_info = {{ admin = {{ {} }} }}",
            lua_str(&self.contact(i))
        );
        if !o.extra_config.is_empty() {
            let _ = writeln!(c, "-- extra_config\n{}", o.extra_config);
        }
        let _ = writeln!(c, "\nVirtualHost {}", lua_str(&self.domain));
        if !o.extra_vhost_config.is_empty() {
            let _ = writeln!(c, "-- extra_vhost_config\n{}", o.extra_vhost_config);
        }
        std::fs::write(&n.config, c)
    }
}

impl Drop for ProsodyCluster {
    fn drop(&mut self) {
        let all: Vec<usize> = (0..self.len()).collect();
        self.stop_nodes(&all, DROP_GRACE);
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("XMPP_LB_KEEP_TEST_DIRS").is_some() {
                eprintln!("keeping prosody test dir {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
    }
}

/// Open a plain stream to `addr` for `domain` and return the server's bytes
/// up to and including the end of the first `<stream:features>` element
/// (or a stream error). Errors if nothing complete arrives within `timeout`.
pub fn probe_stream(addr: SocketAddr, domain: &str, timeout: Duration) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    let hdr = format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    );
    s.write_all(hdr.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no stream features from {addr} within {timeout:?}"),
            ));
        }
        s.set_read_timeout(Some(deadline - now))?;
        let n = match s.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{addr} closed the stream early: {}",
                        String::from_utf8_lossy(&buf)
                    ),
                ));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if text.contains("</stream:features>") || text.contains("<stream:features/>") {
            let _ = s.write_all(b"</stream:stream>");
            return Ok(text.into_owned());
        }
        if text.contains("</stream:error>") {
            return Err(io::Error::other(format!(
                "stream error from {addr}: {text}"
            )));
        }
    }
}

/// Prosody's datamanager path encoding: every non-alphanumeric byte
/// becomes `%xx` (lowercase hex). "example.test" -> "example%2etest".
pub fn prosody_path_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02x}");
        }
    }
    out
}

/// Approximation of nodeprep for test account names (ASCII lowercase).
fn normalize_user(user: &str) -> String {
    user.to_lowercase()
}

/// A Lua string literal for arbitrary bytes (decimal escapes for anything unusual).
fn lua_str(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                let _ = write!(out, "\\{b:03}");
            }
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("dat~tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

fn read_from(path: &Path, offset: u64) -> String {
    use std::io::Seek;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    if f.seek(io::SeekFrom::Start(offset)).is_err() {
        return String::new();
    }
    let mut v = Vec::new();
    let _ = f.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// A temp root short enough for unix-socket paths (108-byte limit).
fn short_tmp() -> PathBuf {
    let t = std::env::temp_dir();
    if t.as_os_str().len() <= 40 {
        t
    } else {
        PathBuf::from("/tmp")
    }
}
