//! A service manager's end of the systemd notification protocol: a unix datagram socket the
//! test binds and names in `NOTIFY_SOCKET` for the proxy process, and what arrives on it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A bound notification socket in a temporary directory of its own.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    /// Bind a new socket. Anyone may send to it (the proxy may run as another user).
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the socket's directory");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notification socket");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod the notification socket");
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next message (its `KEY=VALUE` lines), if one arrives within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Vec<String>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("set a read timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]);
        Some(text.lines().map(str::to_string).collect())
    }

    /// Every message until one holds the line `want` (that one included), within `timeout`;
    /// `None` if it never comes.
    pub fn until(&self, want: &str, timeout: Duration) -> Option<Vec<Vec<String>>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let message = self.next(left)?;
            let done = message.iter().any(|l| l == want);
            seen.push(message);
            if done {
                return Some(seen);
            }
        }
    }
}
