//! Choosing a backend: keys (`key`), which key applies (`policy`), the ring (`ring`, pure), the
//! pool that walks it (`pool`), fleet-wide resumption ids (`resume`), and the explanation of a
//! choice for a person (`explain`).

pub mod explain;
pub mod key;
pub mod policy;
pub mod pool;
pub(crate) mod resume;
pub mod ring;

#[cfg(test)]
mod tests;

/// Where a connection's routing key came from (a metric label and a log field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The `from` attribute of the post-TLS stream header.
    From,
    /// The username in the client's first SASL message.
    Sasl,
    /// The `to` domain (routing key = domain).
    Domain,
    /// The client's subnet (routing key = subnet).
    Subnet,
    /// A static pin.
    Pin,
    /// A tenant group of the localpart.
    Tenant,
    /// A random node (ANONYMOUS, registration).
    Random,
    /// No configured key applied (ANONYMOUS, registration, …): the client's subnet.
    Fallback,
    /// A verified stream-management id named the node holding the session (SASL2 inline
    /// resume).
    Resume,
}

impl KeySource {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::From => "from",
            KeySource::Sasl => "sasl",
            KeySource::Domain => "domain",
            KeySource::Subnet => "subnet",
            KeySource::Pin => "pin",
            KeySource::Tenant => "tenant",
            KeySource::Random => "random",
            KeySource::Fallback => "fallback",
            KeySource::Resume => "resume",
        }
    }
}
