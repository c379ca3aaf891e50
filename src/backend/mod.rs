//! Talking to backends: opening connections (`connect`) and learning their features (`probe`).

pub mod connect;
pub mod probe;
