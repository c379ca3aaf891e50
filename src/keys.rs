//! Secrets shared by every proxy of a fleet, read from key files.
//!
//! Two features need the proxies of a fleet to agree on a secret without talking to each other:
//! wrapped XEP-0198 stream-management ids ([`crate::route::resume`]), so that any proxy can
//! verify which node holds a session, and TLS 1.3 session tickets ([`crate::tls::tickets`]), so
//! that any proxy can resume a TLS session another one began.
//!
//! A key file holds one secret: at least [`MIN_SECRET_BYTES`] bytes of text (surrounding
//! whitespace ignored), e.g. the output of `openssl rand -base64 48`. The secret itself is never
//! used as a key: each purpose derives its own keys from it with HKDF-SHA-256 and a label, so
//! one leaked derived key says nothing about the secret or the other purposes.
//!
//! Keys are listed newest first: the first one issues (wraps ids, encrypts tickets), every one
//! verifies. Rotation is therefore: add a new file in front, reload every proxy, and remove the
//! old file once what it issued has expired.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::{digest, hkdf};
use zeroize::Zeroizing;

/// The shortest secret accepted: 256 bits of entropy need 32 random bytes, and base64 text of
/// 32 random bytes is longer still.
pub const MIN_SECRET_BYTES: usize = 32;

/// Secrets that were published, by the SHA-256 of their text (surrounding whitespace
/// removed): the example secrets earlier releases shipped beside `config/example.toml`, so that
/// it validated as shipped. Anyone can read them, so a proxy that uses one protects nothing
/// (forged stream-management ids, decryptable session tickets, an open admin endpoint); they
/// are refused wherever they turn up, since copies of the example live on in deployments.
const PUBLISHED: &[(&str, [u8; 32])] = &[
    (
        "config/example.sm.key",
        [
            0x0d, 0xab, 0xa6, 0x3f, 0x23, 0x7e, 0x08, 0xf5, 0x59, 0x63, 0x85, 0xe6, 0x9a, 0x2d,
            0xff, 0x22, 0x3b, 0x06, 0x30, 0x21, 0x16, 0x96, 0xf9, 0xde, 0x7f, 0x61, 0x40, 0xdc,
            0xa7, 0x40, 0x76, 0x94,
        ],
    ),
    (
        "config/example.tickets.key",
        [
            0x36, 0x10, 0x1d, 0x1c, 0x45, 0xf8, 0xf7, 0x36, 0x7d, 0xbd, 0xc4, 0x19, 0x9f, 0x3d,
            0x04, 0x1c, 0xc2, 0x7c, 0x39, 0x7b, 0x93, 0x9a, 0xb5, 0x92, 0xff, 0xd8, 0xdc, 0x80,
            0xae, 0x38, 0x3a, 0x81,
        ],
    ),
    (
        "config/example.admin-token",
        [
            0xbf, 0xe6, 0x44, 0x8a, 0x1c, 0x9d, 0xde, 0x0c, 0xdf, 0xfe, 0x6a, 0xbe, 0xa4, 0xb0,
            0x48, 0xdd, 0xae, 0xe1, 0xec, 0x04, 0x0e, 0xe3, 0xd2, 0x4e, 0xcf, 0xb0, 0x78, 0x46,
            0x8b, 0x88, 0xbe, 0x14,
        ],
    ),
];

/// The file that published `secret` (its text without surrounding whitespace), if one did.
pub fn published_as(secret: &[u8]) -> Option<&'static str> {
    let hash = digest::digest(&digest::SHA256, secret.trim_ascii());
    PUBLISHED
        .iter()
        .find(|(_, h)| h.as_slice() == hash.as_ref())
        .map(|(name, _)| *name)
}

/// A secret from a key file, with the short id that names it inside what it protects.
#[derive(Clone)]
pub struct FleetKey {
    /// Names the key in tokens and tickets (derived from the secret, so every proxy computes
    /// the same id for the same file without being told).
    id: [u8; 4],
    /// The secret itself; zeroized when the last copy is dropped.
    secret: std::sync::Arc<Zeroizing<Vec<u8>>>,
    /// Where it came from (messages only).
    file: PathBuf,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The secret is too short to be a real secret.
    #[error(
        "key file {} holds {len} bytes; at least {MIN_SECRET_BYTES} are required \
         (create one with: openssl rand -base64 48 > {})",
        file.display(),
        file.display()
    )]
    TooShort { file: PathBuf, len: usize },
    /// The secret is one that was published as an example.
    #[error(
        "key file {} holds the published example secret of {example}, which anyone can read; \
         generate a secret of your own (openssl rand -base64 48 > {})",
        file.display(),
        file.display()
    )]
    Published {
        file: PathBuf,
        example: &'static str,
    },
}

impl FleetKey {
    /// Read a key file.
    pub fn load(file: &Path) -> Result<FleetKey, KeyError> {
        let raw = Zeroizing::new(std::fs::read(file).map_err(|source| KeyError::Read {
            file: file.to_path_buf(),
            source,
        })?);
        FleetKey::from_file_contents(&raw, file)
    }

    /// A key from what a key file holds (`file` names it in errors): the secret is the text
    /// without surrounding whitespace, and must be long enough and not a published example.
    pub fn from_file_contents(raw: &[u8], file: &Path) -> Result<FleetKey, KeyError> {
        let trimmed = raw.trim_ascii();
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(KeyError::TooShort {
                file: file.to_path_buf(),
                len: trimmed.len(),
            });
        }
        if let Some(example) = published_as(trimmed) {
            return Err(KeyError::Published {
                file: file.to_path_buf(),
                example,
            });
        }
        Ok(FleetKey::from_secret(trimmed, file))
    }

    /// A key from secret bytes (tests, and [`FleetKey::load`]).
    pub fn from_secret(secret: &[u8], file: &Path) -> FleetKey {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"xmpp-lb key id\0");
        ctx.update(secret);
        let hash = ctx.finish();
        let mut id = [0u8; 4];
        id.copy_from_slice(&hash.as_ref()[..4]);
        FleetKey {
            id,
            secret: std::sync::Arc::new(Zeroizing::new(secret.to_vec())),
            file: file.to_path_buf(),
        }
    }

    /// The key's id (4 bytes).
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The key's id as 8 lowercase hex digits (logs, `xmpp-lb check`).
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The file the key was read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Derive `out.len()` bytes of key material for one purpose (`label`) with HKDF-SHA-256.
    pub fn derive(&self, label: &[u8], out: &mut [u8]) {
        /// HKDF output of a requested length.
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"xmpp-lb fleet key v1");
        let prk = salt.extract(&self.secret);
        let info = [label];
        prk.expand(&info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .expect("HKDF output length is within bounds");
    }
}

impl fmt::Debug for FleetKey {
    /// Never the secret: configurations are printed in logs and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetKey")
            .field("id", &self.id_hex())
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The admin bearer token. Its `Debug` never shows it, so a logged configuration or runtime
/// cannot leak it.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token held by a token file: its text without surrounding whitespace (editors add a
    /// final newline). One word of printable ASCII, so it fits an HTTP header as written.
    pub fn new(file_text: &str) -> Result<AdminToken, String> {
        let token = file_text.trim();
        if token.is_empty() {
            return Err("the token file is empty".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be one word of printable ASCII characters".into());
        }
        if let Some(example) = published_as(token.as_bytes()) {
            return Err(format!(
                "the token is the published example token of {example}, which anyone can \
                 read; generate one of your own (openssl rand -hex 32 > TOKEN_FILE)"
            ));
        }
        Ok(AdminToken(token.to_string()))
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ
    /// (a byte-by-byte early exit would let a client guess the token one byte at a time).
    pub fn matches(&self, presented: &str) -> bool {
        let (want, got) = (self.0.as_bytes(), presented.as_bytes());
        let mut diff = want.len() ^ got.len();
        for (i, w) in want.iter().enumerate() {
            diff |= usize::from(w ^ got.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_trimmed_checked_and_never_shown() {
        let t = AdminToken::new("  s3cret-Token_1\n").unwrap();
        assert!(t.matches("s3cret-Token_1"));
        assert!(!t.matches("s3cret-Token_"));
        assert!(!t.matches("s3cret-Token_12"));
        assert!(!t.matches(""));
        assert!(!t.matches("S3cret-Token_1"));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(AdminToken::new("\n \n").is_err());
        assert!(AdminToken::new("two words").is_err());
        let e = AdminToken::new("example-admin-token-throwaway-never-use\n").unwrap_err();
        assert!(e.contains("published example token"), "{e}");
    }

    #[test]
    fn ids_and_derived_keys_depend_only_on_the_secret() {
        let a = FleetKey::from_secret(b"0123456789abcdef0123456789abcdef", Path::new("a"));
        let b = FleetKey::from_secret(b"0123456789abcdef0123456789abcdef", Path::new("b"));
        let c = FleetKey::from_secret(b"0123456789abcdef0123456789abcdeF", Path::new("a"));
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        let (mut ka, mut kb, mut kc, mut other) = ([0u8; 32], [0u8; 32], [0u8; 32], [0u8; 32]);
        a.derive(b"purpose", &mut ka);
        b.derive(b"purpose", &mut kb);
        c.derive(b"purpose", &mut kc);
        a.derive(b"another purpose", &mut other);
        assert_eq!(ka, kb);
        assert_ne!(ka, kc);
        assert_ne!(ka, other);
    }

    #[test]
    fn short_and_missing_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "  too short\n").unwrap();
        let e = FleetKey::load(&short).unwrap_err().to_string();
        assert!(e.contains("short.key") && e.contains("9 bytes"), "{e}");
        let e = FleetKey::load(&dir.path().join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
        let good = dir.path().join("good.key");
        std::fs::write(
            &good,
            "\n  WW91IGNhbm5vdCBndWVzcyB0aGlzIHNlY3JldCwgY2FuIHlvdT8=  \n",
        )
        .unwrap();
        let k = FleetKey::load(&good).unwrap();
        assert_eq!(k.id_hex().len(), 8);
        assert!(!format!("{k:?}").contains("WW91"));
    }

    #[test]
    fn published_secrets_are_known_by_hash_alone() {
        // The hashes are of the published text; nothing else matches.
        assert_eq!(
            published_as(b" example-admin-token-throwaway-never-use\n"),
            Some("config/example.admin-token")
        );
        assert_eq!(
            published_as(b"example-admin-token-throwaway-never-usE"),
            None
        );
        assert_eq!(published_as(b""), None);
        for (name, hash) in PUBLISHED {
            assert!(name.starts_with("config/example."), "{name}");
            assert_eq!(PUBLISHED.iter().filter(|(_, h)| h == hash).count(), 1);
        }
    }
}
