//! What the latest SASL attempt of a negotiation carries beyond its bytes.

use zeroize::Zeroizing;

use crate::resumption;

/// What the latest SASL attempt carries beyond its bytes.
#[derive(Default)]
pub(super) struct Attempt {
    /// Its mechanism (metric label).
    pub(super) mechanism: String,
    /// Its SASL2 inline resume, if it asked for one.
    pub(super) inline: Option<resumption::Inline>,
    /// A legacy PLAIN `<auth/>` as the node got it, kept until the client's first element
    /// after authentication: if that is a `<resume/>` whose session lives on another node,
    /// the same login is replayed there (PLAIN, unlike SCRAM, can be). Zeroized when dropped.
    pub(super) replay: Option<Zeroizing<Vec<u8>>>,
}

impl Attempt {
    /// Whether this attempt gives a session back rather than starting one: a SASL2 inline
    /// resume, or a FAST token (`HT-*` mechanisms), both cheap for the node.
    pub(super) fn resumes(&self) -> bool {
        self.inline.is_some() || self.mechanism.starts_with("HT-")
    }
}
