//! Talking to backends: opening connections (`connect`) and learning their features (`probe`).

pub mod admission;
pub mod connect;
pub mod probe;
pub mod state;
