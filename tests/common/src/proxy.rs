//! Run the real proxy in-process (its own runtime) in front of test backends.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use xmpp_lb::runtime::{Runtime, Shared, StateRegistry};
use xmpp_lb::{CancellationToken, Config, Server};

use crate::config::TestConfig;
use crate::process;

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

impl Proxy {
    /// Write `config` to a file, check it, bind, and serve in the background.
    pub fn start(config: &TestConfig) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("xmpp-lb.toml");
        std::fs::write(&config_path, config.render()).unwrap();
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

    /// The live state of the backend called `name` in the current runtime.
    pub fn backend(&self, name: &str) -> std::sync::Arc<xmpp_lb::backend::state::BackendState> {
        let rt = self.shared.runtime.load();
        let backend = rt.backends().by_name(name);
        backend
            .unwrap_or_else(|| panic!("no backend {name}"))
            .state
            .clone()
    }

    /// The backend names a JID would try, home node first (as the proxy computes it).
    pub fn preference(&self, jid: &str) -> Vec<String> {
        preference(&self.config, jid)
    }

    /// The node `xmpp-lb route` prints for a JID (runs the real binary on the same file).
    pub fn route_cli(&self, jid: &str) -> String {
        let out = std::process::Command::new(crate::xmpp_lb_bin())
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

    /// The value of one series of the scrape (`name{labels}`), `None` if it is absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.scrape(), series)
    }

    /// The value of one series that must exist (`name{labels}`); panics, showing the scrape,
    /// if it does not, so that a renamed metric or label fails the test.
    pub fn metric_value(&self, series: &str) -> f64 {
        require(&self.scrape(), series)
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

/// The proxy binary running as a process of its own: every `:0` bind address of its
/// configuration is given a free port first, so the test knows where the process listens.
/// Dropping it stops it (SIGTERM by pid, then SIGKILL).
pub struct ProxyProcess {
    child: std::process::Child,
    /// Bound addresses, by listener name, in the order the configuration lists them.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The metrics address.
    pub metrics: SocketAddr,
    /// Where the configuration file was written.
    pub config_path: PathBuf,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Start `xmpp-lb run` on `config` (after giving every `:0` bind a free port) and wait
    /// until every listener accepts connections.
    pub fn start(config: &TestConfig) -> ProxyProcess {
        ProxyProcess::start_with(config, None)
    }

    /// Like [`ProxyProcess::start`], the process limited to `open_files` descriptors.
    pub fn start_limited(config: &TestConfig, open_files: u64) -> ProxyProcess {
        ProxyProcess::start_with(config, Some(open_files))
    }

    fn start_with(config: &TestConfig, open_files: Option<u64>) -> ProxyProcess {
        let mut config = config.clone();
        let (listeners, metrics) = config.assign_free_ports();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("xmpp-lb.toml");
        std::fs::write(&config_path, config.render()).unwrap();
        let mut cmd = std::process::Command::new(crate::xmpp_lb_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        if let Some(n) = open_files {
            process::limit_open_files(&mut cmd, n);
        }
        let child = process::spawn_child(cmd).expect("spawn xmpp-lb");
        let mut p = ProxyProcess {
            child,
            listeners,
            metrics,
            config_path,
            dir,
        };
        let all: Vec<SocketAddr> = p.listeners.iter().map(|(_, a)| *a).collect();
        let ready = process::wait_for(
            std::time::Duration::from_secs(15),
            std::time::Duration::from_millis(20),
            || {
                all.iter()
                    .all(|a| std::net::TcpStream::connect(a).is_ok())
                    .then_some(())
            },
        );
        if ready.is_none() {
            let log = p.stderr();
            let _ = process::terminate(&mut p.child, std::time::Duration::from_secs(2));
            panic!("xmpp-lb process did not start listening: {log}");
        }
        p
    }

    /// What the process wrote to its standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The first address of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// The value of one series of its scrape (`name{labels}`), `None` if it is absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&scrape(self.metrics), series)
    }

    /// The value of one series that must exist, as [`Proxy::metric_value`].
    pub fn metric_value(&self, series: &str) -> f64 {
        require(&scrape(self.metrics), series)
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .try_wait()
            .expect("try_wait on the proxy process")
    }

    /// Wait up to `limit` for it to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        process::wait_timeout(&mut self.child, limit).expect("wait for the proxy process")
    }

    /// The process id (to read its memory use from /proc, or signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory in bytes (`VmRSS` of /proc/PID/status).
    pub fn rss_bytes(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
            .and_then(|v| {
                v.strip_suffix("kB")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .expect("a VmRSS line")
            * 1024
    }

    /// Its threads now (`Threads` of /proc/PID/status): the runtime's workers, and the
    /// blocking pool's threads while they live.
    pub fn threads(&self) -> u64 {
        status_field(self.pid(), "Threads:")
            .and_then(|v| v.parse().ok())
            .expect("a Threads line")
    }

    /// Its open file descriptors now (the entries of /proc/PID/fd): sockets, listeners, logs.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd of the proxy")
            .count()
    }

    /// The backend names a JID would try, home node first, as the process computes it (from
    /// the configuration file it runs).
    pub fn preference(&self, jid: &str) -> Vec<String> {
        let config = Config::load(&self.config_path)
            .unwrap_or_else(|e| panic!("the proxy's configuration: {e}"));
        preference(&config, jid)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = super::process::terminate(&mut self.child, std::time::Duration::from_secs(5));
    }
}

/// One field of /proc/PID/status, its value trimmed.
fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status of the proxy");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

/// The backend names a JID would try under `config`, home node first (as the proxy computes
/// it).
pub fn preference(config: &Config, jid: &str) -> Vec<String> {
    let rt = Runtime::build(config.clone(), &StateRegistry::default()).expect("runtime");
    let key = xmpp_lb::route::key::normalize_bare_jid(jid).expect("valid JID");
    let domain = key.rsplit_once('@').expect("a domain").1;
    rt.domain(domain)
        .expect("a served domain")
        .pool
        .ring_order(&key)
        .into_iter()
        .map(|id| rt.backends().name(id).to_string())
        .collect()
}

/// GET /metrics from a proxy's admin address; panics if it takes more than 10 s.
pub fn scrape(admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    let limit = std::time::Duration::from_secs(10);
    let mut s = std::net::TcpStream::connect_timeout(&admin, limit).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("reading /metrics from {admin}: {e}"));
    out
}

/// The value of one series (`name{labels}`) of a scrape, `None` if it is absent.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// The sum of every series of metric `name` whose labels include each of `labels` (`key`,
/// `value` pairs); 0 when none does. `sum_where(s, "xmpp_lb_routed_total", &[("backend",
/// "node1")])` adds up node1's sources.
pub fn sum_where(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|rest| {
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None => ("", rest),
            };
            let value: f64 = value.strip_prefix(' ')?.trim().parse().ok()?;
            let has = |(k, v): &(&str, &str)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
            labels.iter().all(has).then_some(value)
        })
        .sum()
}

/// The value of one series (`name{labels}`) that must be in the scrape; panics, showing the
/// scrape, if it is not.
pub fn require(scrape: &str, series: &str) -> f64 {
    sample(scrape, series).unwrap_or_else(|| panic!("no series {series} in the scrape:\n{scrape}"))
}
