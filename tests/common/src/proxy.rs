//! Run the real proxy in-process (its own runtime) in front of test backends.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;
use xmpp_lb::runtime::{Runtime, Shared, StateRegistry};
use xmpp_lb::{CancellationToken, Config, Server};

/// A running proxy; dropping it shuts it down.
pub struct Proxy {
    /// Bound client addresses by listener name (several per name for IPv4 + IPv6).
    pub listeners: Vec<(String, SocketAddr)>,
    /// The bound metrics address.
    pub metrics: SocketAddr,
    /// The configuration it started with.
    pub config: Config,
    /// The running proxy's state (reload, drain, inspect).
    pub shared: Arc<Shared>,
    /// Where the config file was written.
    pub config_path: PathBuf,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    done: Option<std::sync::mpsc::Receiver<()>>,
    _dir: tempfile::TempDir,
}

/// The usual test configuration: listeners `starttls` (IPv4 + IPv6), `direct`, `auto`, all
/// on free ports; backends `node1..nodeN` at `backends`; routing `key` (a key name, or the
/// lines of [routing] other than `domains`); `extra` appended (more tables).
pub fn config_text(
    cert: &Path,
    key: &Path,
    domain: &str,
    routing_key: &str,
    backends: &[SocketAddr],
    extra: &str,
) -> String {
    let mut s = format!(
        r#"
[[listener]]
name = "starttls"
bind = ["127.0.0.1:0", "[::1]:0"]
tls = "starttls"
cert = "{cert}"
key = "{key}"

[[listener]]
name = "direct"
bind = ["127.0.0.1:0"]
tls = "direct"
cert = "{cert}"
key = "{key}"

[[listener]]
name = "auto"
bind = ["127.0.0.1:0"]
tls = "auto"
cert = "{cert}"
key = "{key}"

[routing]
domains = ["{domain}"]
{routing}

[metrics]
bind = "127.0.0.1:0"
"#,
        cert = cert.display(),
        key = key.display(),
        // A bare key name ("jid"), or the body of [routing] written out ("keys = [...]\n...").
        routing = if routing_key.contains('=') {
            routing_key.to_string()
        } else {
            format!("key = \"{routing_key}\"")
        },
    );
    for (i, addr) in backends.iter().enumerate() {
        s.push_str(&format!(
            "\n[[backend]]\nname = \"node{}\"\naddress = \"{addr}\"\n",
            i + 1
        ));
    }
    s.push_str(extra);
    s
}

impl Proxy {
    /// Write `text` as a config file, check it, bind, and serve in the background.
    pub fn start(text: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("xmpp-lb.toml");
        std::fs::write(&config_path, text).unwrap();
        let config =
            Config::load(&config_path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime
            .block_on(Server::bind(config.clone()))
            .expect("proxy binds");
        let listeners = server.local_addrs();
        let metrics = server.admin_addr().expect("metrics bound");
        let shared = server.shared();
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = shutdown.clone();
        runtime.spawn(async move {
            server.run(stop).await;
            let _ = tx.send(());
        });
        Proxy {
            listeners,
            metrics,
            config,
            shared,
            config_path,
            shutdown,
            runtime: Some(runtime),
            done: Some(rx),
            _dir: dir,
        }
    }

    /// The first bound address of listener `name` with the given IP family.
    pub fn addr(&self, name: &str, ipv6: bool) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, a)| n == name && a.is_ipv6() == ipv6)
            .unwrap_or_else(|| panic!("no listener {name} (ipv6={ipv6})"))
            .1
    }

    /// The backend names a JID would try, home node first (as the proxy computes it).
    pub fn preference(&self, jid: &str) -> Vec<String> {
        let rt = Runtime::build(self.config.clone(), &StateRegistry::default()).expect("runtime");
        let key = xmpp_lb::route::key::normalize_bare_jid(jid).expect("valid JID");
        let domain = key.rsplit_once('@').expect("a domain").1;
        rt.domains[domain]
            .pool
            .ring_order(&key)
            .into_iter()
            .map(|i| rt.names[i].clone())
            .collect()
    }

    /// The node `xmpp-lb route` prints for a JID (runs the real binary on the same file).
    pub fn route_cli(&self, jid: &str) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"))
            .args(["route", "--config"])
            .arg(&self.config_path)
            .arg(jid)
            .output()
            .expect("run xmpp-lb route");
        assert!(
            out.status.success(),
            "route failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The first line is the backend name; the rest explains it.
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The Prometheus text the proxy serves now.
    pub fn scrape(&self) -> String {
        scrape(self.metrics)
    }

    /// The value of one sample line of the scrape (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&self.scrape(), series)
    }

    /// Run a future on the proxy's runtime (for the raw client).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().unwrap().block_on(f)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rx) = self.done.take() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
        }
    }
}

/// The proxy binary running as a process of its own, from a configuration written like
/// [`config_text`]'s: every `:0` bind address is given a free port first, so the test knows
/// where the process listens. Dropping it stops it (SIGTERM by pid, then SIGKILL).
pub struct ProxyProcess {
    child: std::process::Child,
    /// Bound addresses, by listener name, in the order the configuration lists them.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The metrics address.
    pub metrics: SocketAddr,
    /// Where the configuration file was written.
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Start `xmpp-lb run` on `text` (after giving every `:0` bind a free port) and wait until
    /// every listener accepts connections.
    pub fn start(text: &str) -> ProxyProcess {
        let table: toml::Table = text.parse().expect("config text is TOML");
        let mut text = text.to_string();
        let mut listeners = Vec::new();
        let give_port = |text: &mut String, ipv6: bool| -> SocketAddr {
            let zero = if ipv6 {
                "\"[::1]:0\""
            } else {
                "\"127.0.0.1:0\""
            };
            let port = super::process::free_port(ipv6).expect("a free port");
            let addr: SocketAddr = if ipv6 {
                format!("[::1]:{port}")
            } else {
                format!("127.0.0.1:{port}")
            }
            .parse()
            .unwrap();
            let at = text.find(zero).expect("a :0 bind left to fill");
            text.replace_range(at..at + zero.len(), &format!("\"{addr}\""));
            addr
        };
        for l in table["listener"].as_array().expect("listeners") {
            let name = l["name"].as_str().unwrap().to_string();
            for b in l["bind"].as_array().unwrap() {
                let b = b.as_str().unwrap();
                assert!(b.ends_with(":0"), "ProxyProcess fills :0 binds only: {b}");
                let addr = give_port(&mut text, b.starts_with('['));
                listeners.push((name.clone(), addr));
            }
        }
        let metrics = give_port(&mut text, false);
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("xmpp-lb.toml");
        std::fs::write(&config_path, &text).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-lb"));
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        let child = super::process::spawn_child(cmd).expect("spawn xmpp-lb");
        let mut p = ProxyProcess {
            child,
            listeners,
            metrics,
            config_path,
            _dir: dir,
        };
        let all: Vec<SocketAddr> = p.listeners.iter().map(|(_, a)| *a).collect();
        let ready = super::process::wait_for(
            std::time::Duration::from_secs(15),
            std::time::Duration::from_millis(20),
            || {
                all.iter()
                    .all(|a| std::net::TcpStream::connect(a).is_ok())
                    .then_some(())
            },
        );
        if ready.is_none() {
            let log = std::fs::read_to_string(p._dir.path().join("stderr.log")).unwrap_or_default();
            let _ = super::process::terminate(&mut p.child, std::time::Duration::from_secs(2));
            panic!("xmpp-lb process did not start listening: {log}");
        }
        p
    }

    /// The first address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// The value of one sample line of its scrape (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&scrape(self.metrics), series)
    }

    /// The process id (to read its memory use from /proc, or signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory in bytes (`VmRSS` of /proc/PID/status).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status of the proxy");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a VmRSS line");
        kib * 1024
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = super::process::terminate(&mut self.child, std::time::Duration::from_secs(5));
    }
}

/// GET /metrics from a proxy's admin address.
pub fn scrape(admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of one sample line (`name{labels}`) of a scrape, 0 if absent.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
