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
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The value of one sample line of the scrape (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.scrape()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
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
