//! A raw XMPP-over-WebSocket client (tokio-tungstenite over real TLS), for tests that must
//! control every message: handshakes with or without the subprotocol or an Origin, binary
//! and garbage messages, oversized ones. Also a raw HTTP/1.1 request over TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
pub use tokio_tungstenite::tungstenite::{Error, Message};

use crate::raw::connector_alpn;

/// The framing namespace of `<open/>` and `<close/>`.
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// TLS to `addr` for `domain`, offering ALPN `http/1.1` as browsers do.
pub async fn tls(addr: SocketAddr, domain: &str, ca: &Path) -> TlsStream<TcpStream> {
    try_tls(addr, domain, ca).await.expect("TLS handshake")
}

/// Like [`tls`]; the handshake's error if it fails (a listener that does not serve
/// WebSocket offers no `http/1.1`).
pub async fn try_tls(
    addr: SocketAddr,
    domain: &str,
    ca: &Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(domain.to_string()).expect("server name");
    connector_alpn(ca, &[b"h2", b"http/1.1"])
        .connect(name, tcp)
        .await
}

/// What a handshake should carry.
pub struct Handshake<'a> {
    /// Request path.
    pub path: &'a str,
    /// `Sec-WebSocket-Protocol`, if any.
    pub protocol: Option<&'a str>,
    /// `Origin`, if any.
    pub origin: Option<&'a str>,
}

impl Default for Handshake<'_> {
    fn default() -> Self {
        Handshake {
            path: "/xmpp-websocket",
            protocol: Some("xmpp"),
            origin: None,
        }
    }
}

/// Any transport a WebSocket runs over (TLS, or plain TCP behind a pretend balancer).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// An open WebSocket.
pub struct Ws {
    /// The socket.
    pub ws: WebSocketStream<Box<dyn Io>>,
}

/// Open a WebSocket over plain TCP (as a TLS-terminating balancer does), with extra request
/// headers.
pub async fn open_plain(
    addr: SocketAddr,
    domain: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, u16> {
    let io: Box<dyn Io> = Box::new(TcpStream::connect(addr).await.expect("connect"));
    let mut req = format!("ws://{domain}/xmpp-websocket")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("xmpp"));
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio_tungstenite::client_async(req, io).await {
        Ok((ws, _)) => Ok(Ws { ws }),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// Open a WebSocket on `addr` over TLS: the socket, or the HTTP status of the refusal.
pub async fn open(
    addr: SocketAddr,
    domain: &str,
    ca: &Path,
    hs: &Handshake<'_>,
) -> Result<Ws, u16> {
    let io: Box<dyn Io> = Box::new(tls(addr, domain, ca).await);
    let mut req = format!("wss://{domain}{}", hs.path)
        .into_client_request()
        .expect("request");
    if let Some(p) = hs.protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
    }
    if let Some(o) = hs.origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).unwrap());
    }
    match tokio_tungstenite::client_async(req, io).await {
        Ok((ws, response)) => {
            assert_eq!(
                response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.as_bytes()),
                Some(&b"xmpp"[..]),
                "the answer names the xmpp subprotocol"
            );
            Ok(Ws { ws })
        }
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// How a WebSocket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A close frame with this code.
    Code(u16),
    /// The connection ended without a close frame.
    NoCloseFrame,
}

impl Ws {
    /// Send one text message.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send a message");
    }

    /// Send any message; false if the socket is gone.
    pub async fn send_message(&mut self, m: Message) -> bool {
        self.ws.send(m).await.is_ok()
    }

    /// The next text message within `limit` (None: closed, or nothing in time).
    pub async fn next_text(&mut self, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    /// Text messages until one contains `needle` (all of them, joined by newlines).
    pub async fn expect(&mut self, needle: &str, limit: Duration) -> String {
        let mut seen = String::new();
        loop {
            match self.next_text(limit).await {
                Some(t) => {
                    seen.push_str(&t);
                    seen.push('\n');
                    if t.contains(needle) {
                        return seen;
                    }
                }
                None => panic!("no message with {needle:?}; got:\n{seen}"),
            }
        }
    }

    /// Read until the connection ends; the text messages seen and how it ended.
    pub async fn read_to_end(&mut self, limit: Duration) -> (Vec<String>, End) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut texts = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("not closed within {limit:?}; got {texts:?}"),
                Ok(Some(Ok(Message::Text(t)))) => texts.push(t.to_string()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return (texts, End::Code(code));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return (texts, End::NoCloseFrame),
            }
        }
    }

    /// Log in over the open socket: `<open/>` (with `from` if given), SASL PLAIN, restart,
    /// bind. Returns the bind result.
    pub async fn log_in(
        &mut self,
        domain: &str,
        from: Option<&str>,
        user: &str,
        password: &str,
    ) -> String {
        let limit = Duration::from_secs(10);
        self.send(&open_element(domain, from)).await;
        self.expect("<open", limit).await;
        self.expect("mechanisms", limit).await;
        self.send(&crate::raw::plain_auth(user, password)).await;
        self.expect("<success", limit).await;
        self.send(&open_element(domain, from)).await;
        self.expect("urn:ietf:params:xml:ns:xmpp-bind", limit).await;
        self.send("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>ws</resource></bind></iq>").await;
        self.expect("id='b1'", limit).await
    }
}

/// `<open/>` to `domain`, with an optional `from`.
pub fn open_element(domain: &str, from: Option<&str>) -> String {
    let from = from.map(|f| format!(" from='{f}'")).unwrap_or_default();
    format!("<open xmlns='{NS_FRAMING}' to='{domain}'{from} version='1.0'/>")
}

/// The numeric close code of a named code.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// Send `request` (a whole HTTP/1.1 request) over TLS offering `http/1.1`, read the answer
/// to its end (the proxy closes after `Connection: close`); returns the status and the text
/// (status 0 and the error when TLS fails, or no HTTP answer came).
pub async fn http_request(
    addr: SocketAddr,
    domain: &str,
    ca: &Path,
    request: &str,
) -> (u16, String) {
    http_request_alpn(addr, domain, ca, &[b"h2", b"http/1.1"], request).await
}

/// Like [`http_request`], offering the ALPN protocols `alpn` (none if empty).
pub async fn http_request_alpn(
    addr: SocketAddr,
    domain: &str,
    ca: &Path,
    alpn: &[&[u8]],
    request: &str,
) -> (u16, String) {
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(domain.to_string()).expect("server name");
        connector_alpn(ca, alpn).connect(name, tcp).await
    };
    let mut io = match connect.await {
        Ok(io) => io,
        Err(e) => return (0, format!("TLS handshake failed: {e}")),
    };
    io.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The directory of the Node.js web clients (`npm ci` there installs them).
pub fn node_clients_dir() -> std::path::PathBuf {
    crate::repo_root().join("tests/clients/xmpp-js")
}

/// Run `@xmpp/client` (tests/clients/xmpp-js/login.mjs) with `args`; its JSON result. Panics
/// with a hint if the Node packages are not installed (scripts/install-deps.sh does it).
pub fn run_xmpp_js(args: &[&str]) -> serde_json::Value {
    let dir = node_clients_dir();
    assert!(
        dir.join("node_modules/@xmpp/client").is_dir(),
        "@xmpp/client is not installed: run scripts/install-deps.sh (npm ci in {})",
        dir.display()
    );
    let mut cmd = std::process::Command::new("node");
    cmd.arg(dir.join("login.mjs")).args(args).current_dir(&dir);
    let out = crate::process::run_with_timeout(cmd, Duration::from_secs(30)).expect("run node");
    let last = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let mut v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(
        |_| serde_json::json!({"ok": false, "error": "no JSON result", "stdout": out.stdout}),
    );
    if v["ok"] != serde_json::Value::Bool(true) {
        v["stderr"] = out.stderr.into();
    }
    v
}
