//! One way to build a test environment: real Prosody nodes serving one domain, a test PKI,
//! accounts, and the proxy (in-process or as a process) in front of them, configured from the
//! usual [`TestConfig`] and the test's own changes.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::TestConfig;
use crate::pki::TestPki;
use crate::prosody::{ProsodyCluster, ProsodyOpts};
use crate::proxy::{Proxy, ProxyProcess};

/// The domain every environment serves unless told otherwise.
pub const DOMAIN: &str = "example.test";

/// A running environment. Fields drop in order: the proxy first, then the nodes.
pub struct Env<P = Proxy> {
    /// The proxy in front of the nodes.
    pub proxy: P,
    /// The nodes, `node1..nodeN` in the proxy's configuration.
    pub cluster: ProsodyCluster,
    /// The PKI whose CA the clients trust and whose certificate the proxy serves.
    pub pki: TestPki,
    /// The admin endpoints' bearer token, with [`EnvBuilder::token`].
    pub token: Option<String>,
    /// The file holding the token, with [`EnvBuilder::token`].
    pub token_path: Option<PathBuf>,
    /// The configuration the proxy started with.
    pub config: TestConfig,
    _dir: tempfile::TempDir,
}

impl<P> Env<P> {
    /// The test CA the clients trust.
    pub fn ca(&self) -> PathBuf {
        self.pki.ca_path()
    }

    /// The admin token (panics unless the environment was built with one).
    pub fn token(&self) -> &str {
        self.token
            .as_deref()
            .expect("an environment built with .token()")
    }
}

/// How to build an [`Env`].
pub struct EnvBuilder {
    nodes: usize,
    backends: Option<usize>,
    dead_backends: usize,
    domain: String,
    prosody: ProsodyOpts,
    users: Vec<(String, String)>,
    token: bool,
    edits: Vec<Box<dyn FnOnce(TestConfig) -> TestConfig>>,
}

impl EnvBuilder {
    /// `nodes` Prosody nodes serving [`DOMAIN`] with default options, every one a backend.
    pub fn new(nodes: usize) -> EnvBuilder {
        EnvBuilder {
            nodes,
            backends: None,
            dead_backends: 0,
            domain: DOMAIN.into(),
            prosody: ProsodyOpts::default(),
            users: Vec::new(),
            token: false,
            edits: Vec::new(),
        }
    }

    /// The nodes' options.
    pub fn prosody(mut self, opts: ProsodyOpts) -> EnvBuilder {
        self.prosody = opts;
        self
    }

    /// Only the first `n` nodes are backends (the others are started, for a test to add).
    pub fn backends(mut self, n: usize) -> EnvBuilder {
        self.backends = Some(n);
        self
    }

    /// One more backend after the nodes, on a loopback port where nothing listens.
    pub fn dead_backend(mut self) -> EnvBuilder {
        self.dead_backends += 1;
        self
    }

    /// Accounts registered on every node before the proxy starts.
    pub fn users<S: AsRef<str>>(mut self, users: &[(S, S)]) -> EnvBuilder {
        self.users.extend(
            users
                .iter()
                .map(|(u, p)| (u.as_ref().to_string(), p.as_ref().to_string())),
        );
        self
    }

    /// A bearer token for the admin endpoints, in a file named by `[metrics] token_file`.
    pub fn token(mut self) -> EnvBuilder {
        self.token = true;
        self
    }

    /// A change to the usual configuration (applied in order, after the backends are set).
    pub fn config(mut self, edit: impl FnOnce(TestConfig) -> TestConfig + 'static) -> EnvBuilder {
        self.edits.push(Box::new(edit));
        self
    }

    /// Start everything, with the proxy in-process.
    pub fn start(self) -> Env<Proxy> {
        self.build(Proxy::start)
    }

    /// Start everything, with the proxy binary as a process of its own.
    pub fn start_process(self) -> Env<ProxyProcess> {
        self.build(ProxyProcess::start)
    }

    /// Like [`EnvBuilder::start_process`], the proxy limited to `open_files` descriptors.
    pub fn start_process_limited(self, open_files: u64) -> Env<ProxyProcess> {
        self.build(|c| ProxyProcess::start_limited(c, open_files))
    }

    fn build<P>(self, start: impl FnOnce(&TestConfig) -> P) -> Env<P> {
        let pki = TestPki::new(&[&self.domain]);
        let cluster =
            ProsodyCluster::start(self.nodes, &self.domain, self.prosody).expect("prosody starts");
        let users: Vec<(&str, &str)> = self
            .users
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect();
        if !users.is_empty() {
            cluster.register_many(&users);
        }
        let mut backends: Vec<SocketAddr> = cluster.addrs();
        backends.truncate(self.backends.unwrap_or(self.nodes));
        for _ in 0..self.dead_backends {
            let port = crate::process::free_port(false).expect("a free port");
            backends.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let mut config = TestConfig::new(
            &pki.cert_path(&self.domain),
            &pki.key_path(&self.domain),
            &self.domain,
            &backends,
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut token, mut token_path) = (None, None);
        if self.token {
            let path = dir.path().join("admin.token");
            let secret = format!("t{:032x}", rand_u128());
            std::fs::write(&path, format!("{secret}\n")).expect("write the token");
            config = config.set("metrics.token_file", path.display().to_string());
            token = Some(secret);
            token_path = Some(path);
        }
        for edit in self.edits {
            config = edit(config);
        }
        Env {
            proxy: start(&config),
            cluster,
            pki,
            token,
            token_path,
            config,
            _dir: dir,
        }
    }
}

/// A token no test chose: the clock's nanoseconds and the process id, hashed.
fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    (u128::from(a) << 64) | u128::from(h.finish())
}

/// Accounts `PREFIXn` with password `pw-PREFIXn`, one for each of `numbers`.
pub fn accounts(prefix: &str, numbers: impl IntoIterator<Item = usize>) -> Vec<(String, String)> {
    numbers
        .into_iter()
        .map(|i| (format!("{prefix}{i}"), format!("pw-{prefix}{i}")))
        .collect()
}
