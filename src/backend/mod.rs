//! Talking to backends, from the bottom up: the opening of a client stream (`preamble`), how
//! each node is reached (`link`), opening connections (`connect`), learning their features
//! (`probe`), each node's live state (`state`, `admission`), the list of one runtime's backends
//! (`record`), and what runs over them: health checks (`health`) and drain (`drain`).

pub mod admission;
pub mod connect;
pub mod drain;
pub mod health;
pub mod link;
pub mod preamble;
pub mod probe;
pub mod record;
pub mod state;
