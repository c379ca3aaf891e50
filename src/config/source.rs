//! Where a configuration comes from and how its errors are told: the [`ConfigError`] naming
//! FILE:LINE:COLUMN and key, the [`Source`] every section check reports through, and the
//! address and network syntaxes several sections share.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::position;

/// A configuration error, rendered as `FILE:LINE:COLUMN: key: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is wrong at a known place.
    #[error("{file}:{line}:{column}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// The text being checked and the file it came from: turns a span of the text into an error
/// at FILE:LINE:COLUMN, and resolves the paths the text names.
pub(super) struct Source<'a> {
    /// The configuration file: named in errors, and relative paths start from its directory.
    pub(super) path: &'a Path,
    /// Its text, where spans point.
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// The error `message` about `key`, at the start of `span`.
    pub(super) fn err(&self, span: &Range<usize>, key: &str, message: String) -> ConfigError {
        let (line, column) = position::line_col(self.text, span.start);
        ConfigError::Invalid {
            file: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    /// A configured file path, resolved against the configuration's directory; the file must
    /// exist.
    pub(super) fn resolve(&self, p: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, ConfigError> {
        let full = if p.get_ref().is_absolute() {
            p.get_ref().clone()
        } else {
            self.path
                .parent()
                .unwrap_or(Path::new("."))
                .join(p.get_ref())
        };
        if !full.is_file() {
            return Err(self.err(
                &p.span(),
                key,
                format!("file not found: {}", full.display()),
            ));
        }
        Ok(full)
    }
}

/// A socket address written as `IP:PORT` (IPv6 in brackets); names are not resolved,
/// so that the same file means the same thing on every proxy of a fleet.
pub(super) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not an IP:PORT address (IPv6 in brackets, e.g. \"[::1]:5222\")")
    })
}

/// `host:port` as a client would connect to it (a name or an IP; IPv6 in brackets).
pub(super) fn check_host_port(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not host:port (IPv6 in brackets)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// A network written as `ADDRESS/PREFIX`, or a single address.
pub(super) fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| {
            format!("{s:?} is not a network (\"10.0.0.0/8\", \"2001:db8::/32\") or an address")
        })
}
