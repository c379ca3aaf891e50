//! Talking to backends, from the bottom up: the opening of a client stream (`preamble`), how
//! each node is reached (`link`), opening connections (`connect`), learning their features
//! (`probe`), each node's live state (`state`, `admission`), the list of one runtime's backends
//! (`record`), and what runs over them: health checks (`health`) and drain (`drain`).

pub(crate) mod admission;
pub(crate) mod connect;
pub mod drain;
pub(crate) mod health;
pub(crate) mod link;
pub(crate) mod preamble;
pub(crate) mod probe;
pub mod record;
pub mod state;
