//! Test configurations as values: the usual proxy configuration held as a TOML table, changed
//! key by key, and rendered once when the proxy starts. No test edits configuration text.

use std::net::SocketAddr;
use std::path::Path;

use toml::{Table, Value};

/// A proxy configuration under construction.
#[derive(Clone, Debug)]
pub struct TestConfig {
    table: Table,
}

impl TestConfig {
    /// The usual test configuration: listeners `starttls` (IPv4 + IPv6), `direct` and `auto`
    /// on free loopback ports (`:0`), all with `cert` and `key`; `[routing]` serving `domain`
    /// by `key = "jid"`; backends `node1..nodeN` at `backends`; `[metrics]` on a free
    /// loopback port.
    pub fn new(cert: &Path, key: &Path, domain: &str, backends: &[SocketAddr]) -> TestConfig {
        let listener = |name: &str, binds: &[&str], tls: &str| {
            let mut t = Table::new();
            t.insert("name".into(), name.into());
            t.insert("bind".into(), strings(binds));
            t.insert("tls".into(), tls.into());
            t.insert("cert".into(), cert.display().to_string().into());
            t.insert("key".into(), key.display().to_string().into());
            Value::Table(t)
        };
        let mut table = Table::new();
        table.insert(
            "listener".into(),
            Value::Array(vec![
                listener("starttls", &["127.0.0.1:0", "[::1]:0"], "starttls"),
                listener("direct", &["127.0.0.1:0"], "direct"),
                listener("auto", &["127.0.0.1:0"], "auto"),
            ]),
        );
        let mut routing = Table::new();
        routing.insert("domains".into(), strings(&[domain]));
        routing.insert("key".into(), "jid".into());
        table.insert("routing".into(), Value::Table(routing));
        let mut metrics = Table::new();
        metrics.insert("bind".into(), "127.0.0.1:0".into());
        table.insert("metrics".into(), Value::Table(metrics));
        let mut config = TestConfig { table };
        for (i, addr) in backends.iter().enumerate() {
            config = config.backend(&format!("node{}", i + 1), *addr);
        }
        config
    }

    /// The usual configuration in front of every node of `cluster`, with `pki`'s certificate
    /// for the cluster's domain.
    pub fn for_nodes(
        pki: &crate::pki::TestPki,
        cluster: &crate::prosody::ProsodyCluster,
    ) -> TestConfig {
        let domain = cluster.domain();
        TestConfig::new(
            &pki.cert_path(domain),
            &pki.key_path(domain),
            domain,
            &cluster.addrs(),
        )
    }

    /// A configuration written out whole, for a test whose subject is the file itself.
    pub fn parse(text: &str) -> TestConfig {
        TestConfig {
            table: text
                .parse()
                .unwrap_or_else(|e| panic!("test config is not TOML: {e}")),
        }
    }

    /// For a shipped configuration run by a test: every bind (listeners and metrics) must be a
    /// loopback address, and is moved to port 0 (a free port, see
    /// [`assign_free_ports`](Self::assign_free_ports)); relative certificate and key paths
    /// are made relative to `dir`, the shipped file's directory.
    pub fn on_free_loopback_ports(mut self, dir: &Path) -> TestConfig {
        let zero = |bind: &str| -> Value {
            let addr: SocketAddr = bind.parse().expect("a bind address");
            assert!(addr.ip().is_loopback(), "{bind} is not a loopback address");
            SocketAddr::new(addr.ip(), 0).to_string().into()
        };
        for l in self.tables_mut("listener") {
            for b in l
                .get_mut("bind")
                .and_then(Value::as_array_mut)
                .expect("binds")
            {
                *b = zero(b.as_str().expect("a bind address"));
            }
            for file in ["cert", "key"] {
                if let Some(Value::String(p)) = l.get_mut(file) {
                    *p = dir.join(&*p).display().to_string();
                }
            }
        }
        let metrics = self.table["metrics"]["bind"].as_str().map(zero);
        if let Some(m) = metrics {
            self.table["metrics"]
                .as_table_mut()
                .unwrap()
                .insert("bind".into(), m);
        }
        self
    }

    /// The domains' one routing key (`[routing] key`), instead of the current key or keys.
    pub fn key(self, key: &str) -> TestConfig {
        self.remove("routing.keys").set("routing.key", key)
    }

    /// The domains' routing keys in fallback order (`[routing] keys`), instead of the
    /// current key or keys.
    pub fn keys(self, keys: &[&str]) -> TestConfig {
        self.remove("routing.key")
            .set("routing.keys", strings(keys))
    }

    /// Set the key at a dotted `path` ("health.interval", "metrics.token_file"), creating the
    /// tables on the way.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> TestConfig {
        let (tables, key) = path.rsplit_once('.').unwrap_or(("", path));
        let mut at = &mut self.table;
        for name in tables.split('.').filter(|n| !n.is_empty()) {
            at = at
                .entry(name)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{name} in {path} is not a table"));
        }
        at.insert(key.into(), value.into());
        self
    }

    /// Remove the key at a dotted `path`, if it is there.
    pub fn remove(mut self, path: &str) -> TestConfig {
        let (tables, key) = path.rsplit_once('.').unwrap_or(("", path));
        let mut at = Some(&mut self.table);
        for name in tables.split('.').filter(|n| !n.is_empty()) {
            at = at
                .and_then(|t| t.get_mut(name))
                .and_then(Value::as_table_mut);
        }
        if let Some(t) = at {
            t.remove(key);
        }
        self
    }

    /// Append a `[[backend]]` named `name` at `address`.
    pub fn backend(self, name: &str, address: SocketAddr) -> TestConfig {
        let mut t = Table::new();
        t.insert("name".into(), name.into());
        t.insert("address".into(), address.to_string().into());
        self.push("backend", t)
    }

    /// Set `key` of the `[[backend]]` named `name`.
    pub fn backend_set(mut self, name: &str, key: &str, value: impl Into<Value>) -> TestConfig {
        let backend = self
            .tables_mut("backend")
            .find(|b| b.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no backend {name}"));
        backend.insert(key.into(), value.into());
        self
    }

    /// Append a `[[listener]]` named `name` with `tls` mode, bound to a free IPv4 loopback
    /// port, with the first listener's certificate and `more` keys.
    pub fn listener(self, name: &str, tls: &str, more: Table) -> TestConfig {
        let first = self.tables("listener").next().expect("a listener").clone();
        let mut t = Table::new();
        t.insert("name".into(), name.into());
        t.insert("bind".into(), strings(&["127.0.0.1:0"]));
        t.insert("tls".into(), tls.into());
        t.insert("cert".into(), first["cert"].clone());
        t.insert("key".into(), first["key"].clone());
        t.extend(more);
        self.push("listener", t)
    }

    /// Set `key` of the `[[listener]]` named `name`.
    pub fn listener_set(mut self, name: &str, key: &str, value: impl Into<Value>) -> TestConfig {
        let listener = self
            .tables_mut("listener")
            .find(|l| l.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no listener {name}"));
        listener.insert(key.into(), value.into());
        self
    }

    /// Append `table` to the array of tables at a dotted `path` ("routing.pin", "domain").
    pub fn push(mut self, path: &str, table: Table) -> TestConfig {
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
        let mut at = &mut self.table;
        for name in parent.split('.').filter(|n| !n.is_empty()) {
            at = at
                .entry(name)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{name} in {path} is not a table"));
        }
        at.entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .unwrap_or_else(|| panic!("{path} is not an array of tables"))
            .push(Value::Table(table));
        self
    }

    /// Merge a TOML fragment, parsed: its tables are merged into those of the same name key
    /// by key, its arrays of tables are appended. For the tables a test writes out whole
    /// (`[health]`, `[limits]`, `[[domain]]` blocks).
    pub fn merge(mut self, fragment: &str) -> TestConfig {
        let other: Table = fragment
            .parse()
            .unwrap_or_else(|e| panic!("fragment is not TOML: {e}\n{fragment}"));
        merge_into(&mut self.table, other);
        self
    }

    /// The tables of the array of tables `name` (`listener`, `backend`, `domain`).
    pub fn tables(&self, name: &str) -> impl Iterator<Item = &Table> {
        self.table
            .get(name)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_table)
    }

    fn tables_mut(&mut self, name: &str) -> impl Iterator<Item = &mut Table> {
        self.table
            .get_mut(name)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_table_mut)
    }

    /// The configuration as a table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Give every listener bind and the metrics bind that ends in `:0` a free port of its
    /// own; returns the listeners' addresses by name, in order, and the metrics address.
    pub fn assign_free_ports(&mut self) -> (Vec<(String, SocketAddr)>, SocketAddr) {
        let free = |bind: &str| -> SocketAddr {
            let ipv6 = bind.starts_with('[');
            let zero: SocketAddr = bind.parse().expect("a bind address");
            assert_eq!(zero.port(), 0, "only :0 binds get a free port: {bind}");
            let port = crate::process::free_port(ipv6).expect("a free port");
            SocketAddr::new(zero.ip(), port)
        };
        let mut listeners = Vec::new();
        for l in self.tables_mut("listener") {
            let name = l["name"].as_str().expect("a listener name").to_string();
            let binds = l
                .get_mut("bind")
                .and_then(Value::as_array_mut)
                .expect("a bind list");
            for b in binds {
                let addr = free(b.as_str().expect("a bind address"));
                *b = addr.to_string().into();
                listeners.push((name.clone(), addr));
            }
        }
        let metrics = self.table["metrics"]["bind"]
            .as_str()
            .map(free)
            .expect("a [metrics] bind");
        self.table["metrics"]
            .as_table_mut()
            .unwrap()
            .insert("bind".into(), metrics.to_string().into());
        (listeners, metrics)
    }

    /// The TOML text of the configuration.
    pub fn render(&self) -> String {
        toml::to_string(&self.table).expect("a table renders as TOML")
    }
}

impl std::fmt::Display for TestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// A TOML array of strings.
pub fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

fn merge_into(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(a)), Value::Table(b)) => merge_into(a, b),
            (Some(Value::Array(a)), Value::Array(b))
                if b.iter().all(Value::is_table) && a.iter().all(Value::is_table) =>
            {
                a.extend(b)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}
