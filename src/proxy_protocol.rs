//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), both ways.
//!
//! **Toward the nodes.** A node behind the proxy sees every client coming from the proxy's
//! address, so its logs, its IP-based rules and its session listings are useless, and it
//! cannot tell one client from another. With a PROXY header as the first bytes of each
//! connection it learns the real client address and port. The v2 header can also say which
//! ALPN protocol and server name (SNI) the client asked for, and that it came over TLS.
//!
//! **From a front balancer.** Behind an L4 balancer or an SNI router, the proxy in turn sees
//! only the balancer's address, which would put every client into one subnet for routing.
//! A listener that accepts the PROXY protocol reads the header its trusted balancers send and
//! uses that address everywhere instead: routing, logs and the header sent on to the node.
//! The header is believed only from the configured networks, and required from them: a
//! header from anyone else could forge any address, and a trusted peer sending none would
//! be mistaken for the client.
//!
//! **Channel binding.** On a link with `channel_binding = "pass"`, the v2 header also carries
//! the binding data of the client's TLS session in TLVs of the application-reserved range
//! ([`crate::channel_binding`]), so that the node can check a SCRAM `-PLUS` login against the
//! client's own session. The node must believe them only from the proxy's addresses.
//!
//! Encoding and parsing are the `ppp` crate's; this module decides what goes in and reads
//! exactly the header's bytes off the socket, leaving what follows (TLS or XMPP) unread.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Type, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

use crate::channel_binding::Bindings;
use crate::config::ProxyProtocol;

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What every v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// The most address and TLV bytes accepted after a v2 header's fixed part. The addresses take
/// at most 216 bytes; the rest leaves room for the TLVs a balancer adds.
const V2_MAX_PAYLOAD: usize = 2048;
/// `PP2_CLIENT_SSL`: the client connected over SSL/TLS.
const PP2_CLIENT_SSL: u8 = 0x01;

/// Where a client connection really comes from, and what it negotiated with the proxy: what
/// the header sent to a node says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client's address (learned from a front balancer's header, or the socket's peer).
    pub source: SocketAddr,
    /// The address the client connected to (the balancer's, or the proxy's listener).
    pub destination: SocketAddr,
    /// The ALPN protocol negotiated with the client, if any (the proxy offers only
    /// `xmpp-client`, so this is a constant, and the connection owns no copy of it).
    pub alpn: Option<&'static [u8]>,
    /// The server name (SNI) the client asked for, if any.
    pub sni: Option<String>,
    /// The TLS version negotiated with the client (`TLSv1.3`), if it used TLS.
    pub tls_version: Option<&'static str>,
    /// The channel-binding data of the client's TLS session, computed only when some node's
    /// link passes them (boxed: most connections carry none).
    pub channel_binding: Option<Box<Bindings>>,
}

impl Origin {
    /// A connection of the proxy's own (a probe, a health check): its own socket's addresses
    /// and no TLS facts. ejabberd, for one, refuses the v2 `LOCAL` command and v1 `UNKNOWN`
    /// that the specification suggests for this, so the header names the proxy itself.
    pub fn own(local: SocketAddr, node: SocketAddr) -> Origin {
        Origin {
            source: local,
            destination: node,
            alpn: None,
            sni: None,
            tls_version: None,
            channel_binding: None,
        }
    }
}

/// The header to send a node first, if `version` asks for one.
pub fn encode(version: ProxyProtocol, origin: &Origin) -> io::Result<Option<Vec<u8>>> {
    encode_with(version, origin, None)
}

/// [`encode`], with the channel-binding TLVs of `bindings` in a v2 header (a v1 header has
/// no room for them).
pub fn encode_with(
    version: ProxyProtocol,
    origin: &Origin,
    bindings: Option<&Bindings>,
) -> io::Result<Option<Vec<u8>>> {
    let (source, destination) = same_family(origin.source, origin.destination);
    match version {
        ProxyProtocol::Off => Ok(None),
        ProxyProtocol::V1 => Ok(Some(
            ppp::v1::Addresses::from((source, destination))
                .to_string()
                .into_bytes(),
        )),
        ProxyProtocol::V2 => {
            let mut header = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (source, destination),
            );
            if let Some(alpn) = origin.alpn {
                header = header.write_tlv(Type::ALPN, alpn)?;
            }
            if let Some(sni) = &origin.sni {
                header = header.write_tlv(Type::Authority, sni.as_bytes())?;
            }
            if let Some(version) = origin.tls_version {
                // client flags, then `verify` (non-zero: no client certificate was verified),
                // then the TLS version as a sub-TLV.
                let mut ssl = vec![PP2_CLIENT_SSL, 0, 0, 0, 1, Type::SSLVersion as u8];
                ssl.extend_from_slice(&(version.len() as u16).to_be_bytes());
                ssl.extend_from_slice(version.as_bytes());
                header = header.write_tlv(Type::SSL, &ssl)?;
            }
            for (kind, value) in bindings.map(Bindings::tlvs).unwrap_or_default() {
                header = header.write_tlv(kind, value)?;
            }
            header.build().map(Some)
        }
    }
}

/// Both addresses in one family, as both header versions require: an IPv4 address next to an
/// IPv6 one is written IPv4-mapped, and a pair of IPv4-mapped addresses as plain IPv4.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// Why a front balancer's header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The peer sent something else first.
    #[error("no PROXY protocol header from a trusted balancer")]
    Missing,
    /// The header is malformed, too long, or of an unknown version or command.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    /// The header did not arrive in time.
    #[error("no complete PROXY protocol header in time")]
    Timeout,
    /// The peer closed, or the socket failed, before the header was complete.
    #[error("connection lost while reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

/// What a front balancer's header says: the client's address and the one it connected to,
/// or `None` for a connection of the balancer's own (v2 `LOCAL`, v1 `UNKNOWN`, such as a
/// health check), which keeps the socket's addresses.
pub type Learned = Option<(SocketAddr, SocketAddr)>;

/// Read a PROXY header (v1 or v2) off `tcp`, consuming exactly its bytes, by `deadline`.
pub async fn read_header(tcp: &mut TcpStream, deadline: Instant) -> Result<Learned, HeaderError> {
    let read = async {
        // 12 bytes tell the versions apart, and the shortest v1 header is longer than that.
        let mut start = [0u8; 12];
        tcp.read_exact(&mut start).await?;
        if &start == V2_SIGNATURE {
            let mut fixed = [0u8; 4];
            tcp.read_exact(&mut fixed).await?;
            let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
            if len > V2_MAX_PAYLOAD {
                return Err(HeaderError::Invalid(format!(
                    "{len} bytes of addresses and TLVs"
                )));
            }
            let mut header = Vec::with_capacity(16 + len);
            header.extend_from_slice(&start);
            header.extend_from_slice(&fixed);
            header.resize(16 + len, 0);
            tcp.read_exact(&mut header[16..]).await?;
            parse(&header)
        } else if start.starts_with(V1_PREFIX) {
            // Byte by byte up to the CRLF: nothing after the header may be consumed.
            let mut header = start.to_vec();
            while !header.ends_with(b"\r\n") {
                if header.len() >= V1_MAX {
                    return Err(HeaderError::Invalid(
                        "v1 header longer than 107 bytes".into(),
                    ));
                }
                header.push(tcp.read_u8().await?);
            }
            parse(&header)
        } else {
            Err(HeaderError::Missing)
        }
    };
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err(HeaderError::Timeout))
}

/// What one complete header (v1 with its CRLF, or v2 with its payload) says. Untrusted
/// input: it never panics (fuzzed by `fuzz/fuzz_targets/proxy_header.rs`).
pub fn parse(bytes: &[u8]) -> Result<Learned, HeaderError> {
    if bytes.starts_with(V2_SIGNATURE) {
        parse_v2(bytes)
    } else if bytes.starts_with(V1_PREFIX) {
        parse_v1(bytes)
    } else {
        Err(HeaderError::Missing)
    }
}

/// A complete v2 header.
fn parse_v2(bytes: &[u8]) -> Result<Learned, HeaderError> {
    let header =
        ppp::v2::Header::try_from(bytes).map_err(|e| HeaderError::Invalid(e.to_string()))?;
    match (header.command, header.addresses) {
        (Command::Local, _) => Ok(None),
        (Command::Proxy, ppp::v2::Addresses::IPv4(a)) => Ok(Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ))),
        (Command::Proxy, ppp::v2::Addresses::IPv6(a)) => Ok(Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ))),
        // The balancer does not know the client's address (or it is not an IP one): keep
        // the socket's, as the specification says.
        (Command::Proxy, _) => Ok(None),
    }
}

/// A complete v1 header: one ASCII line, its CRLF last.
fn parse_v1(bytes: &[u8]) -> Result<Learned, HeaderError> {
    // The header is ASCII by definition; `ppp` slices the text by byte offsets and panics
    // inside a multi-byte character (found by fuzzing), so nothing else may reach it.
    if !bytes.is_ascii() {
        return Err(HeaderError::Invalid("v1 header is not ASCII".into()));
    }
    if bytes.len() > V1_MAX || bytes.windows(2).position(|w| w == b"\r\n") != Some(bytes.len() - 2)
    {
        return Err(HeaderError::Invalid(
            "v1 header is not one line of at most 107 bytes".into(),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| HeaderError::Invalid("v1 header is not ASCII".into()))?;
    let header =
        ppp::v1::Header::try_from(text).map_err(|e| HeaderError::Invalid(e.to_string()))?;
    match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Ok(Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ))),
        ppp::v1::Addresses::Tcp6(a) => Ok(Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ))),
        ppp::v1::Addresses::Unknown => Ok(None),
    }
}

/// Whether a peer that may not send a header starts with one anyway (it is then refused).
/// Looks without consuming anything; waits, until `deadline`, only while the bytes seen so
/// far could still be the start of a header.
pub async fn starts_with_header(tcp: &TcpStream, deadline: Instant) -> bool {
    // A real header arrives in one segment; a peer that stops inside a signature's prefix is
    // not looked at for longer than this (it would otherwise be polled until the pre-routing
    // deadline), and is then read as whatever it sends next.
    let deadline = deadline.min(Instant::now() + PARTIAL_SIGNATURE_WAIT);
    let mut first = [0u8; 12];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        let seen = &first[..n];
        let v1 = V1_PREFIX.starts_with(&seen[..n.min(V1_PREFIX.len())]);
        let v2 = V2_SIGNATURE.starts_with(seen);
        if (v1 && n >= V1_PREFIX.len()) || (v2 && n == V2_SIGNATURE.len()) {
            return true;
        }
        if !v1 && !v2 {
            return false;
        }
        // A prefix of a signature so far: look again once more bytes may have come.
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long [`starts_with_header`] waits for the rest of a signature an untrusted peer began.
const PARTIAL_SIGNATURE_WAIT: Duration = Duration::from_secs(1);

/// Whether `ip` is in one of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn trusted(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn origin(source: &str, destination: &str) -> Origin {
        Origin {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            alpn: None,
            sni: None,
            tls_version: None,
            channel_binding: None,
        }
    }

    #[test]
    fn v1_headers_name_both_families() {
        let h = encode(
            ProxyProtocol::V1,
            &origin("192.0.2.7:40000", "198.51.100.1:5223"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 5223\r\n");
        let h = encode(
            ProxyProtocol::V1,
            &origin("[2001:db8::7]:40000", "[2001:db8::1]:5222"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 5222\r\n");
        // Mixed families are written in one.
        let h = encode(
            ProxyProtocol::V1,
            &origin("192.0.2.7:40000", "[2001:db8::1]:5222"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            h,
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 40000 5222\r\n".to_vec()
        );
        assert_eq!(
            encode(ProxyProtocol::Off, &origin("192.0.2.7:1", "192.0.2.8:2")).unwrap(),
            None
        );
    }

    #[test]
    fn v2_headers_carry_alpn_sni_and_tls() {
        let mut o = origin("[2001:db8::7]:40000", "[2001:db8::1]:5223");
        o.alpn = Some(b"xmpp-client");
        o.sni = Some("example.test".into());
        o.tls_version = Some("TLSv1.3");
        let bytes = encode(ProxyProtocol::V2, &o).unwrap().unwrap();
        let header = ppp::v2::Header::try_from(&bytes[..]).unwrap();
        assert_eq!(header.command, Command::Proxy);
        let tlvs: Vec<_> = header.tlvs().map(|t| t.unwrap()).collect();
        assert_eq!(tlvs[0].kind, Type::ALPN as u8);
        assert_eq!(&tlvs[0].value[..], b"xmpp-client");
        assert_eq!(tlvs[1].kind, Type::Authority as u8);
        assert_eq!(&tlvs[1].value[..], b"example.test");
        assert_eq!(tlvs[2].kind, Type::SSL as u8);
        assert_eq!(tlvs[2].value[0], PP2_CLIENT_SSL);
        assert!(tlvs[2].value.ends_with(b"TLSv1.3"));
        assert_eq!(
            parse_v2(&bytes).unwrap(),
            Some((o.source, o.destination)),
            "what is written reads back"
        );
    }

    #[test]
    fn v2_headers_carry_channel_binding_tlvs_when_asked() {
        let o = origin("192.0.2.7:40000", "198.51.100.1:5222");
        let bindings = Bindings {
            exporter: Some([9; 32]),
            end_point: Some(vec![5; 32].into()),
        };
        let bytes = encode_with(ProxyProtocol::V2, &o, Some(&bindings))
            .unwrap()
            .unwrap();
        let header = ppp::v2::Header::try_from(&bytes[..]).unwrap();
        let tlvs: Vec<_> = header.tlvs().map(|t| t.unwrap()).collect();
        assert_eq!(tlvs.len(), 2);
        assert_eq!(tlvs[0].kind, crate::channel_binding::PP2_TYPE_TLS_EXPORTER);
        assert_eq!(&tlvs[0].value[..], &[9; 32]);
        assert_eq!(
            tlvs[1].kind,
            crate::channel_binding::PP2_TYPE_TLS_SERVER_END_POINT
        );
        assert_eq!(&tlvs[1].value[..], &[5; 32]);
        // Without bindings, or in v1, nothing of them is written.
        let plain = encode(ProxyProtocol::V2, &o).unwrap().unwrap();
        assert_eq!(
            ppp::v2::Header::try_from(&plain[..])
                .unwrap()
                .tlvs()
                .count(),
            0
        );
        let v1 = encode_with(ProxyProtocol::V1, &o, Some(&bindings))
            .unwrap()
            .unwrap();
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 5222\r\n");
    }

    async fn read(bytes: &[u8]) -> (Result<Learned, HeaderError>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let result = read_header(&mut server, Instant::now() + Duration::from_secs(2)).await;
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        (result, rest)
    }

    #[tokio::test]
    async fn reading_takes_exactly_the_header() {
        let (r, rest) =
            read(b"PROXY TCP4 203.0.113.9 192.0.2.1 41000 5222\r\n<stream:stream>").await;
        assert_eq!(
            r.unwrap(),
            Some((
                "203.0.113.9:41000".parse().unwrap(),
                "192.0.2.1:5222".parse().unwrap()
            ))
        );
        assert_eq!(rest, b"<stream:stream>");
        let mut v2 = encode(
            ProxyProtocol::V2,
            &origin("[2001:db8::9]:41000", "[2001:db8::1]:5223"),
        )
        .unwrap()
        .unwrap();
        v2.extend_from_slice(&[0x16, 3, 1]);
        let (r, rest) = read(&v2).await;
        assert_eq!(
            r.unwrap().unwrap().0,
            "[2001:db8::9]:41000".parse().unwrap()
        );
        assert_eq!(rest, [0x16, 3, 1]);
        let (r, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        let (r, _) = read(b"<stream:stream to='example.test'>").await;
        assert!(matches!(r, Err(HeaderError::Missing)), "{r:?}");
        let (r, _) = read(b"PROXY TCP4 999.0.0.1 192.0.2.1 1 2\r\n").await;
        assert!(matches!(r, Err(HeaderError::Invalid(_))), "{r:?}");
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (r, _) = read(long.as_bytes()).await;
        assert!(matches!(r, Err(HeaderError::Invalid(_))), "{r:?}");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (r, _) = read(&v2).await;
        assert!(matches!(r, Err(HeaderError::Invalid(_))), "{r:?}");
        let (r, _) = read(b"PROXY TCP4 1.2.3.4").await;
        assert!(matches!(r, Err(HeaderError::Io(_))), "{r:?}");
    }

    #[test]
    fn what_fuzzing_found_is_refused_not_a_panic() {
        // Non-ASCII in a v1 header made `ppp` slice inside a character.
        let crash = b"PROXY TCP6 2001:db::7 2001:db8::1 40000 0 PROXY P\xc8\xbd5-2\r\xc8\xbd\n\xc8\xbd\xc8\xbd";
        assert!(matches!(parse(crash), Err(HeaderError::Invalid(_))));
        assert!(matches!(
            parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 5222\r\nmore"),
            Err(HeaderError::Invalid(_))
        ));
    }

    #[test]
    fn trust_is_by_network() {
        let nets = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(trusted(&nets, "10.1.2.3".parse().unwrap()));
        assert!(trusted(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(trusted(&nets, "::1".parse().unwrap()));
        assert!(!trusted(&nets, "192.0.2.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_partial_signature_is_not_waited_on_until_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut tcp, _) = listener.accept().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        for start in [&b"PROX"[..], &V2_SIGNATURE[..6]] {
            peer.write_all(start).await.unwrap();
            let began = Instant::now();
            assert!(!starts_with_header(&tcp, deadline).await);
            assert!(
                began.elapsed() < Duration::from_secs(3),
                "waited {:?} on a partial signature",
                began.elapsed()
            );
            let mut drain = vec![0u8; start.len()];
            tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut drain)
                .await
                .unwrap();
        }
        // A whole signature is still recognised.
        peer.write_all(b"PROXY TCP4 ").await.unwrap();
        assert!(starts_with_header(&tcp, deadline).await);
    }
}
