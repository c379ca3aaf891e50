//! Talking to backends, from the bottom up: the opening of a client stream (`preamble`), how
//! each node is reached (`link`), opening connections (`connect`), learning their features
//! (`probe`), and each node's live state (`state`, `admission`).

pub mod admission;
pub mod connect;
pub mod link;
pub mod preamble;
pub mod probe;
pub mod state;
