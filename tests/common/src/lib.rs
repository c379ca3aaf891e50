//! The integration tests' harness, a crate of its own that every file of `tests/` uses (built
//! once, not once per test file): an environment builder ([`env`]) over real Prosody nodes
//! ([`prosody`]), real ejabberd nodes ([`ejabberd`]), a test PKI ([`pki`]), typed proxy
//! configurations ([`config`]), the proxy in-process or as a process ([`proxy`]), the real
//! slixmpp client run as a subprocess ([`client`]), child-process plumbing ([`process`]), a
//! raw byte-level client ([`raw`]), a SASL2 / stream management client over it ([`sasl2`]),
//! sequence-numbered self-messages that show loss and reordering end to end ([`seq`]), a
//! soak run of logins, resumptions and disconnects that samples the proxy process ([`soak`]),
//! access-log parsing ([`logs`]), and a service manager's notification socket ([`notify`]).

pub mod client;
pub mod config;
pub mod ejabberd;
pub mod env;
pub mod logs;
pub mod notify;
pub mod pki;
pub mod process;
pub mod prosody;
pub mod proxy;
pub mod raw;
pub mod sasl2;
pub mod scram;
pub mod seq;
pub mod soak;
pub mod ws;

use std::path::{Path, PathBuf};

/// The repository's root directory (where `config/`, `contrib/` and `tests/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `xmpp-lb` binary built for the running integration test. Cargo builds it beside the test
/// binaries (`target/<profile>/xmpp-lb`, the tests in `target/<profile>/deps/`); nextest also
/// names it in `NEXTEST_BIN_EXE_xmpp-lb`.
pub fn xmpp_lb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NEXTEST_BIN_EXE_xmpp-lb") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("xmpp-lb"))
        .expect("the test binary lies in target/<profile>/deps");
    assert!(bin.exists(), "no xmpp-lb binary at {}", bin.display());
    bin
}
