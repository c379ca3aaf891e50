//! Talking to backends: how each is reached (`link`), opening connections (`connect`) and
//! learning their features (`probe`).

pub mod admission;
pub mod connect;
pub mod link;
pub mod probe;
pub mod state;
