//! What a direction of the relay may hold back and rewrite; the relay's only extension point,
//! below both the relay and the directions that run it.

/// Top-level elements one direction of the relay holds back until they are complete, to
/// rewrite them (XEP-0198 ids, which must be changed in flight). Everything else streams
/// through untouched, so a watch costs nothing but the name check at each top-level start.
pub(crate) trait Watch: Send {
    /// Whether to hold the top-level element whose qualified name (as written) is `name`.
    fn wants(&self, name: &[u8]) -> bool;
    /// A complete held element; returns the bytes to send in its place.
    fn rewrite(&mut self, element: Vec<u8>) -> Vec<u8>;
}
