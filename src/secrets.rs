//! Making secrets and keeping them private: `xmpp-lb keygen` and the permission warnings of
//! `xmpp-lb check`.
//!
//! One format serves every secret file the proxy reads: a line of base64 text encoding
//! [`SECRET_RANDOM_BYTES`] random bytes. It is what the fleet key loader wants
//! ([`crate::keys::FleetKey::load`]: at least [`crate::keys::MIN_SECRET_BYTES`] bytes of text)
//! and what the admin token loader wants ([`crate::keys::AdminToken::new`]: one word of
//! printable ASCII), so `keygen` needs no flag saying which file it makes.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::config::Config;

/// Random bytes in a new secret: 384 bits, more than any key derived from it needs, and a
/// multiple of three so the base64 text has no padding.
pub const SECRET_RANDOM_BYTES: usize = 48;

/// The mode of a file `keygen` writes: read and write for its owner only.
const SECRET_MODE: u32 = 0o600;

/// Why `keygen` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// The file is there already; replacing a fleet key by accident would break every session
    /// and ticket it protects.
    #[error("{} exists; use --force to replace it", .0.display())]
    Exists(PathBuf),
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// The file could not be written.
    #[error("cannot write {}: {source}", file.display())]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// A new secret as a key or token file holds it: base64 text and a final newline.
pub fn generate() -> Result<Zeroizing<String>, KeygenError> {
    let mut bytes = Zeroizing::new([0u8; SECRET_RANDOM_BYTES]);
    SystemRandom::new()
        .fill(&mut bytes[..])
        .map_err(|_| KeygenError::Random)?;
    let mut text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&bytes[..]));
    text.push('\n');
    Ok(text)
}

/// Write a new secret to `path`, mode 0600. An existing file is refused unless `force`; with
/// `force` the new secret goes to a temporary file beside it, renamed over the old one, so the
/// file is never seen half written nor, for a moment, with the old file's wider mode.
pub fn write_new(path: &Path, force: bool) -> Result<(), KeygenError> {
    let secret = generate()?;
    let err = |file: &Path| {
        let file = file.to_path_buf();
        move |source| KeygenError::Write { file, source }
    };
    if !force {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(SECRET_MODE)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeygenError::Exists(path.to_path_buf())
                } else {
                    KeygenError::Write {
                        file: path.to_path_buf(),
                        source: e,
                    }
                }
            })?;
        return file
            .write_all(secret.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(err(path));
    }
    let name = path
        .file_name()
        .map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SECRET_MODE)
        .open(&tmp)
        .and_then(|mut f| f.write_all(secret.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // Nothing of the new secret may stay behind; a missing temporary file is fine.
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path)(e));
    }
    Ok(())
}

/// A secret file that others than its owner may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    /// What the file is for, in the configuration's words.
    pub what: &'static str,
    /// The file.
    pub file: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

impl std::fmt::Display for Exposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} is readable by {} (mode {:04o}); make it readable by the proxy's user only: chmod 600 {}",
            self.what,
            self.file.display(),
            match (self.mode & 0o040 != 0, self.mode & 0o004 != 0) {
                (true, true) => "its group and all users",
                (true, false) => "its group",
                _ => "all users",
            },
            self.mode & 0o7777,
            self.file.display()
        )
    }
}

/// Every secret file `config` names: TLS private keys, fleet key files, the admin token file.
pub fn secret_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut out: Vec<(&'static str, PathBuf)> = Vec::new();
    for l in &config.listeners {
        for pair in &l.certs {
            out.push(("TLS private key", pair.key.clone()));
        }
    }
    for k in &config.resumption.sm_keys {
        out.push(("sm_key_files entry", k.file().to_path_buf()));
    }
    for k in &config.resumption.tls_ticket_keys {
        out.push(("tls_ticket_key_files entry", k.file().to_path_buf()));
    }
    if let Some(t) = &config.metrics_token_file {
        out.push(("admin token file", t.clone()));
    }
    // A pair repeated for several listeners is one file: warn once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, f)| seen.insert(f.clone()));
    out
}

/// The secret files of `config` that their group or all users may read. A file that cannot
/// be inspected is left out: loading it has already failed or succeeded with its own message.
pub fn exposed(config: &Config) -> Vec<Exposed> {
    secret_files(config)
        .into_iter()
        .filter_map(|(what, file)| {
            let mode = std::fs::metadata(&file).ok()?.permissions().mode();
            (mode & 0o044 != 0).then_some(Exposed { what, file, mode })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_secret_is_accepted_by_both_loaders_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.key");
        write_new(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), SECRET_RANDOM_BYTES / 3 * 4, "{text}");
        crate::keys::FleetKey::load(&path).unwrap();
        crate::keys::AdminToken::new(&text).unwrap();
    }

    #[test]
    fn an_existing_file_is_kept_unless_forced_and_forcing_narrows_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = write_new(&path, false).unwrap_err().to_string();
        assert!(e.contains("exists") && e.contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        write_new(&path, true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_ne!(text, "old\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn two_secrets_differ() {
        assert_ne!(*generate().unwrap(), *generate().unwrap());
    }
}
