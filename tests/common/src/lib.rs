//! Integration-test harness shared by the test files (`mod common;`): real Prosody nodes
//! ([`prosody`]), real ejabberd nodes ([`ejabberd`]), a test PKI ([`pki`]), the real slixmpp client run as a subprocess
//! ([`client`]), child-process plumbing ([`process`]), the proxy run in-process ([`proxy`]),
//! a raw byte-level client ([`raw`]) and a SASL2 / stream management client over it
//! ([`sasl2`]).
#![allow(dead_code)]

pub mod client;
pub mod ejabberd;
pub mod logs;
pub mod pki;
pub mod process;
pub mod prosody;
pub mod proxy;
pub mod raw;
pub mod sasl2;
