use super::direction::{Direction, Filtered, HOLD_CAP};
use super::*;
use std::io;
use std::task::Context;
use tokio::io::ReadBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::oneshot;

/// An interrupt that never comes.
fn never() -> std::future::Pending<Interrupt> {
    std::future::pending()
}

/// An interrupt that comes when `rx` fires (never if its sender is dropped).
async fn on_signal(rx: oneshot::Receiver<()>, order: Interrupt) -> Interrupt {
    if rx.await.is_err() {
        std::future::pending::<()>().await;
    }
    order
}

const TO_CLIENT: &[u8] = b"<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>b.example:5222</see-other-host></stream:error></stream:stream>";
const TO_BACKEND: &[u8] = b"</stream:stream>";

fn drain_order() -> Interrupt {
    Interrupt {
        to_client: Bytes::from_static(TO_CLIENT),
        to_backend: Some(Bytes::from_static(TO_BACKEND)),
        reason: "drain",
    }
}

/// The test's ends of a relay: the client app, the backend app, the trigger and the task.
struct Harness {
    client: DuplexStream,
    backend: DuplexStream,
    trigger: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<RelayStats>,
}

fn start(
    order: Interrupt,
    client_ahead: &'static [u8],
    backend_ahead: &'static [u8],
    boundary_timeout: Duration,
) -> Harness {
    let (client, mut client_proxy) = duplex(64);
    let (mut backend_proxy, backend) = duplex(64);
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        relay(
            &mut client_proxy,
            &mut backend_proxy,
            client_ahead,
            backend_ahead,
            Bounds {
                half_close: Duration::from_secs(5),
                boundary: boundary_timeout,
                write: Duration::from_secs(30),
            },
            |_| {},
            |_| {},
            Watches::default(),
            on_signal(rx, order),
        )
        .await
    });
    Harness {
        client,
        backend,
        trigger: Some(tx),
        task,
    }
}

impl Harness {
    fn interrupt(&mut self) {
        self.trigger.take().unwrap().send(()).unwrap();
    }
}

async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

/// Read to EOF, then close our side so the relay's lingering ends.
async fn read_all_and_close(mut s: DuplexStream) -> Vec<u8> {
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    s.shutdown().await.unwrap();
    got
}

/// Nothing arrives on `s` within a short while.
async fn silent(s: &mut DuplexStream) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(50), s.read(&mut b))
        .await
        .is_err()
}

#[tokio::test]
async fn relays_every_byte_in_order_both_ways_and_half_closes() {
    let (mut client_app, mut client_proxy) = duplex(64);
    let (mut backend_proxy, mut backend_app) = duplex(64);
    let relay_task = tokio::spawn(async move {
        relay(
            &mut client_proxy,
            &mut backend_proxy,
            &[],
            &[],
            Bounds {
                half_close: Duration::from_secs(5),
                boundary: Duration::from_secs(5),
                write: Duration::from_secs(30),
            },
            |_| {},
            |_| {},
            Watches::default(),
            never(),
        )
        .await
    });
    let up: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let down: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 253) as u8).collect();
    let up2 = up.clone();
    let writer = tokio::spawn(async move {
        client_app.write_all(&up2).await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut got = Vec::new();
        client_app.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got_up = Vec::new();
    backend_app.read_to_end(&mut got_up).await.unwrap();
    assert_eq!(
        got_up, up,
        "client→backend bytes intact after client half-close"
    );
    backend_app.write_all(&down).await.unwrap();
    backend_app.shutdown().await.unwrap();
    let got_down = writer.await.unwrap();
    assert_eq!(
        got_down, down,
        "backend kept talking after the client's half-close"
    );
    let stats = relay_task.await.unwrap();
    assert_eq!(stats.client_to_backend, up.len() as u64);
    assert_eq!(stats.backend_to_client, down.len() as u64);
    assert_eq!(stats.reason, CloseReason::Closed(Side::Client));
}

#[tokio::test]
async fn half_close_that_lingers_is_cut() {
    let (mut client_app, mut client_proxy) = duplex(64);
    let (mut backend_proxy, _backend_app) = duplex(64);
    client_app.shutdown().await.unwrap();
    let stats = relay(
        &mut client_proxy,
        &mut backend_proxy,
        &[],
        &[],
        Bounds {
            half_close: Duration::from_millis(50),
            boundary: Duration::from_secs(5),
            write: Duration::from_secs(30),
        },
        |_| {},
        |_| {},
        Watches::default(),
        never(),
    )
    .await;
    assert_eq!(stats.reason, CloseReason::HalfCloseTimeout);
}

/// A peer that takes what is written but never lets a close through (as a TLS peer that
/// stopped reading blocks the `close_notify`), and never sends.
struct NeverCloses;

impl AsyncRead for NeverCloses {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for NeverCloses {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

#[tokio::test]
async fn half_close_towards_a_peer_that_never_reads_is_cut_too() {
    // The client closes; the backend never takes the close and never sends. The relay
    // must still end within the half-close timeout, not live on with both sockets.
    let (mut client_app, mut client_proxy) = duplex(64);
    let mut backend = NeverCloses;
    client_app.write_all(b"<presence/>").await.unwrap();
    client_app.shutdown().await.unwrap();
    let relay = relay(
        &mut client_proxy,
        &mut backend,
        &[],
        &[],
        Bounds {
            half_close: Duration::from_millis(50),
            boundary: Duration::from_secs(5),
            write: Duration::from_secs(30),
        },
        |_| {},
        |_| {},
        Watches::default(),
        never(),
    );
    let stats = tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("the relay ended");
    assert_eq!(stats.reason, CloseReason::HalfCloseTimeout);
    assert_eq!(stats.client_to_backend, 11);
}

#[tokio::test]
async fn idle_relay_owns_no_buffer() {
    let mut d = Direction::new(&[], None);
    let (mut a, mut b) = duplex(16);
    let (mut c, mut e) = duplex(16);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(
        d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
            .is_pending()
    );
    assert!(d.pending.is_none(), "an idle direction holds no bytes");
    // A peer that cannot take everything leaves exactly the rest pending, nothing more.
    a.write_all(&[1u8; 16]).await.unwrap();
    assert!(
        d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
            .is_pending()
    );
    let mut sink = [0u8; 16];
    e.read_exact(&mut sink).await.unwrap();
    assert_eq!(sink, [1u8; 16]);
    assert!(d.pending.is_none());
}

#[tokio::test]
async fn idle_tracked_direction_owns_no_buffer_even_mid_stanza() {
    // Read-ahead bytes ending mid-stanza, then more of it, then silence: the tracker keeps
    // its place without keeping any of the bytes.
    let ahead = b"<presence/><message to='a@b'><body>hal";
    let mut d = Direction::new(ahead, None);
    let (mut a, mut b) = duplex(64);
    let (mut c, mut e) = duplex(128);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    a.write_all(b"f of it").await.unwrap();
    assert!(
        d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
            .is_pending()
    );
    assert!(d.ahead.is_empty() && d.pending.is_none() && d.inject.is_none());
    assert!(!d.tracker.at_boundary(), "still inside the message");
    let got = read_n(&mut e, ahead.len() + 7).await;
    assert_eq!(&got[..ahead.len()], ahead);
    // The per-connection state is a handful of words: no buffer hides in it.
    let size = std::mem::size_of::<Direction<'_>>();
    assert!(size <= 192, "{size} bytes");
    a.write_all(b"</body></message>").await.unwrap();
    assert!(
        d.poll_copy(&mut cx, Pin::new(&mut b), Pin::new(&mut c), &mut |_| {})
            .is_pending()
    );
    assert!(d.pending.is_none() && d.tracker.at_boundary());
}

#[tokio::test]
async fn interrupt_while_idle_injects_after_everything_relayed() {
    let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
    h.client.write_all(b"<presence/>").await.unwrap();
    assert_eq!(read_n(&mut h.backend, 11).await, b"<presence/>");
    let msg = b"<message from='a@b'><body>x &gt; y</body></message> ";
    h.backend.write_all(msg).await.unwrap();
    assert_eq!(read_n(&mut h.client, msg.len()).await, msg);
    h.interrupt();
    let client = read_all_and_close(h.client);
    let backend = read_all_and_close(h.backend);
    let (client, backend) = tokio::join!(client, backend);
    assert_eq!(client, TO_CLIENT, "exactly the proxy's bytes, then the end");
    assert_eq!(backend, TO_BACKEND);
    let stats = h.task.await.unwrap();
    assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
    assert_eq!(stats.reason.reason(), "drain");
    assert_eq!(stats.reason.side(), "proxy");
    assert_eq!(stats.client_to_backend, 11);
    assert_eq!(stats.backend_to_client, msg.len() as u64);
}

#[tokio::test]
async fn interrupt_mid_stanza_lets_it_finish_first() {
    let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
    let first = b"<message to='c@d'><body>it's \"half";
    h.backend.write_all(first).await.unwrap();
    assert_eq!(read_n(&mut h.client, first.len()).await, first);
    h.interrupt();
    assert!(
        silent(&mut h.client).await,
        "nothing injected inside the message"
    );
    // The rest of the message, and the start of another one in the same chunk.
    let second = b"</body></message><presence from='e@f/g'";
    h.backend.write_all(second).await.unwrap();
    assert_eq!(read_n(&mut h.client, second.len()).await, second);
    assert!(
        silent(&mut h.client).await,
        "nothing injected inside the presence"
    );
    h.backend.write_all(b"/>").await.unwrap();
    let client = read_all_and_close(h.client).await;
    let mut want = b"/>".to_vec();
    want.extend_from_slice(TO_CLIENT);
    assert_eq!(client, want, "the whole presence, then the stream error");
    assert_eq!(read_all_and_close(h.backend).await, TO_BACKEND);
    let stats = h.task.await.unwrap();
    assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
    assert_eq!(
        stats.backend_to_client,
        (first.len() + second.len() + 2) as u64
    );
}

#[tokio::test]
async fn client_stanza_in_flight_is_finished_before_the_stream_end() {
    let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
    h.client
        .write_all(b"<iq type='get' id='1'><ping")
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut h.backend, 27).await,
        b"<iq type='get' id='1'><ping"
    );
    h.interrupt();
    // The client side is told at once: it was idle.
    let mut client = Vec::new();
    h.client.read_to_end(&mut client).await.unwrap();
    assert_eq!(client, TO_CLIENT);
    assert!(silent(&mut h.backend).await);
    h.client
        .write_all(b" xmlns='urn:xmpp:ping'/></iq>")
        .await
        .unwrap();
    h.client.shutdown().await.unwrap();
    let backend = read_all_and_close(h.backend).await;
    let mut want = b" xmlns='urn:xmpp:ping'/></iq>".to_vec();
    want.extend_from_slice(TO_BACKEND);
    assert_eq!(backend, want);
    assert_eq!(
        h.task.await.unwrap().reason,
        CloseReason::Interrupted("drain")
    );
}

#[tokio::test]
async fn no_stream_end_for_the_backend_leaves_it_a_bare_close() {
    let order = Interrupt {
            to_client: Bytes::from_static(b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"),
            to_backend: None,
            reason: "shutdown",
        };
    let to_client = order.to_client.clone();
    let mut h = start(order, b"", b"", Duration::from_secs(5));
    h.client
        .write_all(b"<r xmlns='urn:xmpp:sm:3'/>")
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut h.backend, 26).await,
        b"<r xmlns='urn:xmpp:sm:3'/>"
    );
    h.interrupt();
    let (client, backend) =
        tokio::join!(read_all_and_close(h.client), read_all_and_close(h.backend));
    assert_eq!(client, to_client);
    assert_eq!(backend, b"", "EOF and not a byte more");
    assert_eq!(
        h.task.await.unwrap().reason,
        CloseReason::Interrupted("shutdown")
    );
}

#[tokio::test]
async fn no_boundary_in_time_closes_both_without_a_word() {
    let mut h = start(drain_order(), b"", b"", Duration::from_millis(100));
    let half = b"<message><body>never fin";
    h.backend.write_all(half).await.unwrap();
    assert_eq!(read_n(&mut h.client, half.len()).await, half);
    h.interrupt();
    let started = std::time::Instant::now();
    let stats = h.task.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(90));
    assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
    // The relay task is over and its ends are dropped: both apps see the end, and nothing
    // of the proxy's.
    let mut client = Vec::new();
    h.client.read_to_end(&mut client).await.unwrap();
    assert_eq!(client, b"");
    let mut backend = Vec::new();
    h.backend.read_to_end(&mut backend).await.unwrap();
    assert_eq!(backend, b"");
}

#[tokio::test]
async fn ahead_bytes_go_first_in_order_and_are_tracked() {
    let client_ahead: &'static [u8] = b"<presence/><message><body>hi";
    let backend_ahead: &'static [u8] = b"<iq type='result' id='bind'/>\n";
    let (mut client_app, mut client_proxy) = duplex(16);
    let (mut backend_proxy, mut backend_app) = duplex(16);
    let (tx, rx) = oneshot::channel();
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (up_count, down_count) = (counted.clone(), counted.clone());
    let task = tokio::spawn(async move {
        relay(
            &mut client_proxy,
            &mut backend_proxy,
            client_ahead,
            backend_ahead,
            Bounds {
                half_close: Duration::from_secs(5),
                boundary: Duration::from_secs(5),
                write: Duration::from_secs(30),
            },
            move |n| {
                up_count.fetch_add(n << 32, std::sync::atomic::Ordering::Relaxed);
            },
            move |n| {
                down_count.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            },
            Watches::default(),
            on_signal(rx, drain_order()),
        )
        .await
    });
    // Both directions write their ahead bytes without waiting for the peer to speak.
    assert_eq!(
        read_n(&mut client_app, backend_ahead.len()).await,
        backend_ahead
    );
    assert_eq!(
        read_n(&mut backend_app, client_ahead.len()).await,
        client_ahead
    );
    client_app.write_all(b"!</body></message>").await.unwrap();
    backend_app.write_all(b"<message/>").await.unwrap();
    assert_eq!(read_n(&mut backend_app, 18).await, b"!</body></message>");
    assert_eq!(read_n(&mut client_app, 10).await, b"<message/>");
    tx.send(()).unwrap();
    let (client, backend) = tokio::join!(
        read_all_and_close(client_app),
        read_all_and_close(backend_app)
    );
    assert_eq!(client, TO_CLIENT);
    assert_eq!(backend, TO_BACKEND);
    let stats = task.await.unwrap();
    let up = (client_ahead.len() + 18) as u64;
    let down = (backend_ahead.len() + 10) as u64;
    assert_eq!(stats.client_to_backend, up);
    assert_eq!(stats.backend_to_client, down);
    assert_eq!(
        counted.load(std::sync::atomic::Ordering::Relaxed),
        (up << 32) + down,
        "callbacks saw the ahead bytes too"
    );
}

#[tokio::test]
async fn ahead_bytes_ending_mid_stanza_hold_the_interrupt_back() {
    let mut h = start(
        drain_order(),
        b"<message><body>from the client",
        b"<message><body>from the server",
        Duration::from_secs(5),
    );
    h.interrupt();
    assert_eq!(
        read_n(&mut h.client, 30).await,
        b"<message><body>from the server"
    );
    assert_eq!(
        read_n(&mut h.backend, 30).await,
        b"<message><body>from the client"
    );
    assert!(silent(&mut h.client).await && silent(&mut h.backend).await);
    h.backend.write_all(b"</body></message>").await.unwrap();
    h.client.write_all(b"</body></message>").await.unwrap();
    let (client, backend) =
        tokio::join!(read_all_and_close(h.client), read_all_and_close(h.backend));
    assert_eq!(client, [&b"</body></message>"[..], TO_CLIENT].concat());
    assert_eq!(backend, [&b"</body></message>"[..], TO_BACKEND].concat());
    assert_eq!(
        h.task.await.unwrap().reason,
        CloseReason::Interrupted("drain")
    );
}

#[tokio::test]
async fn interrupt_still_works_after_the_other_direction_ended() {
    let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
    // The backend half-closes: the client sees the end, nothing may follow it.
    h.backend.shutdown().await.unwrap();
    let mut client = Vec::new();
    h.client.read_to_end(&mut client).await.unwrap();
    assert_eq!(client, b"");
    h.client.write_all(b"<presence/>").await.unwrap();
    assert_eq!(read_n(&mut h.backend, 11).await, b"<presence/>");
    h.interrupt();
    let mut backend = Vec::new();
    h.backend.read_to_end(&mut backend).await.unwrap();
    assert_eq!(backend, TO_BACKEND);
    h.client.shutdown().await.unwrap();
    let stats = h.task.await.unwrap();
    assert_eq!(stats.reason, CloseReason::Interrupted("drain"));
    assert_eq!(stats.client_to_backend, 11);
}

#[tokio::test]
async fn nothing_is_added_after_a_peer_ended_its_stream() {
    let mut h = start(drain_order(), b"", b"", Duration::from_secs(5));
    h.backend
        .write_all(b"<message/></stream:stream>")
        .await
        .unwrap();
    assert_eq!(
        read_n(&mut h.client, 26).await,
        b"<message/></stream:stream>"
    );
    h.client.write_all(b"</stream:stream>").await.unwrap();
    assert_eq!(read_n(&mut h.backend, 16).await, b"</stream:stream>");
    h.interrupt();
    let (client, backend) =
        tokio::join!(read_all_and_close(h.client), read_all_and_close(h.backend));
    assert_eq!(client, b"", "no stream error after the server's stream end");
    assert_eq!(backend, b"", "no second stream end");
    assert_eq!(
        h.task.await.unwrap().reason,
        CloseReason::Interrupted("drain")
    );
}

/// Holds `<enabled>` and `<sm:resumed>` and writes them back marked, so tests can see that
/// exactly those elements, whole, went through the watch.
struct Marker {
    seen: Vec<String>,
}

impl Watch for Marker {
    fn wants(&self, name: &[u8]) -> bool {
        name == b"enabled" || name == b"sm:resumed"
    }
    fn rewrite(&mut self, element: Vec<u8>) -> Vec<u8> {
        let text = String::from_utf8(element).unwrap();
        self.seen.push(text.clone());
        format!("[{text}]").into_bytes()
    }
}

const WATCHED: &str = "<r xmlns='urn:xmpp:sm:3'/><enabled xmlns='urn:xmpp:sm:3' id='a>b' resume='true'/><!-- c --><message to='x'><body>enabled</body></message><enabledx/><sm:resumed xmlns:sm='urn:xmpp:sm:3' previd='p' h='1'></sm:resumed> <iq/>";
const MARKED: &str = "<r xmlns='urn:xmpp:sm:3'/>[<enabled xmlns='urn:xmpp:sm:3' id='a>b' resume='true'/>]<!-- c --><message to='x'><body>enabled</body></message><enabledx/>[<sm:resumed xmlns:sm='urn:xmpp:sm:3' previd='p' h='1'></sm:resumed>] <iq/>";

/// Run `chunks` through a watching direction as the relay would, end of input included.
fn filtered(chunks: &[&[u8]]) -> (String, Vec<String>) {
    let mut marker = Marker { seen: Vec::new() };
    let mut out = Vec::new();
    {
        let mut d = Direction::new(chunks[0], Some(&mut marker));
        out.extend_from_slice(d.ahead);
        if let Some((p, _)) = d.pending.take() {
            out.extend_from_slice(&p);
        }
        for chunk in &chunks[1..] {
            match d.filter(chunk) {
                Filtered::Pass => out.extend_from_slice(chunk),
                Filtered::Replace(v) => out.extend_from_slice(&v),
            }
        }
        if let Some(h) = d.hold.take() {
            out.extend_from_slice(&h.buf);
        }
    }
    (String::from_utf8(out).unwrap(), marker.seen)
}

#[test]
fn a_watch_sees_exactly_its_elements_whatever_the_chunking() {
    let bytes = WATCHED.as_bytes();
    let (whole, seen) = filtered(&[bytes]);
    assert_eq!(whole, MARKED);
    assert_eq!(seen.len(), 2);
    for i in 0..=bytes.len() {
        let (out, seen) = filtered(&[&bytes[..i], &bytes[i..]]);
        assert_eq!(out, MARKED, "split at {i}");
        assert_eq!(seen.len(), 2, "split at {i}");
    }
    // Three chunks, the middle one short: names split across three reads.
    for i in 0..bytes.len() {
        for len in 1..4 {
            let j = (i + len).min(bytes.len());
            let (out, _) = filtered(&[b"", &bytes[..i], &bytes[i..j], &bytes[j..]]);
            assert_eq!(out, MARKED, "chunks at {i}, {j}");
        }
    }
}

#[test]
fn a_held_element_is_let_through_when_it_cannot_complete() {
    // Input ends inside a watched element: its bytes still go out, unchanged.
    let (out, seen) = filtered(&[b"", b"<iq/><enabled id='x", b"y'"]);
    assert_eq!(out, "<iq/><enabled id='xy'");
    assert!(seen.is_empty());
    // An element larger than the cap is not held without bound.
    let big = format!("<enabled>{}</enabled><iq/>", "x".repeat(HOLD_CAP + 10));
    let (head, tail) = big.as_bytes().split_at(HOLD_CAP + 5);
    let (out, seen) = filtered(&[b"", head, tail]);
    assert_eq!(out, big);
    assert!(seen.is_empty());
}

#[tokio::test]
async fn watches_rewrite_in_a_live_relay_and_count_the_new_bytes() {
    let (mut client_app, mut client_proxy) = duplex(64);
    let (mut backend_proxy, mut backend_app) = duplex(64);
    let task = tokio::spawn(async move {
        let mut down = Marker { seen: Vec::new() };
        let mut up = Marker { seen: Vec::new() };
        let stats = relay(
            &mut client_proxy,
            &mut backend_proxy,
            b"<enab",
            b"",
            Bounds {
                half_close: Duration::from_secs(5),
                boundary: Duration::from_secs(5),
                write: Duration::from_secs(30),
            },
            |_| {},
            |_| {},
            Watches {
                up: Some(&mut up),
                down: Some(&mut down),
            },
            never(),
        )
        .await;
        (stats, up.seen.len(), down.seen.len())
    });
    let client_side = async {
        client_app.write_all(b"led/><message/>").await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut to_client = Vec::new();
        client_app.read_to_end(&mut to_client).await.unwrap();
        to_client
    };
    let backend_side = async {
        backend_app.write_all(WATCHED.as_bytes()).await.unwrap();
        backend_app.shutdown().await.unwrap();
        let mut to_backend = Vec::new();
        backend_app.read_to_end(&mut to_backend).await.unwrap();
        to_backend
    };
    let (to_client, to_backend) = tokio::join!(client_side, backend_side);
    let (stats, up, down) = task.await.unwrap();
    assert_eq!(to_backend, b"[<enabled/>]<message/>");
    assert_eq!(String::from_utf8(to_client).unwrap(), MARKED);
    assert_eq!((up, down), (1, 2));
    assert_eq!(stats.client_to_backend, 22);
    assert_eq!(stats.backend_to_client, MARKED.len() as u64);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_write_timeout_not_before() {
    let (_client, mut client_proxy) = duplex(64);
    let (mut backend_proxy, mut backend) = duplex(64);
    let started = tokio::time::Instant::now();
    let relay = tokio::spawn(async move {
        relay(
            &mut client_proxy,
            &mut backend_proxy,
            &[],
            &[],
            Bounds {
                half_close: Duration::from_secs(5),
                boundary: Duration::from_secs(5),
                write: Duration::from_millis(300),
            },
            |_| {},
            |_| {},
            Watches::default(),
            std::future::pending(),
        )
        .await
    });
    // The node keeps talking; the client never reads. The node's writes block once the
    // pipes are full (bounded buffering), and the relay gives up on the client.
    let writer = tokio::spawn(async move {
        let chunk = [b' '; 32];
        let mut written = 0usize;
        while backend.write_all(&chunk).await.is_ok() {
            written += chunk.len();
        }
        written
    });
    let stats = relay.await.unwrap();
    assert_eq!(stats.reason, CloseReason::WriteTimeout(Side::Client));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // What the relay held for the client is at most one read, not everything the node sent.
    assert!(stats.backend_to_client <= 64, "{}", stats.backend_to_client);
    let written = writer.await.unwrap();
    assert!(written < 64 * 1024, "{written}");
}

#[tokio::test]
async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut() {
    let (mut client, mut client_proxy) = duplex(64);
    let (mut backend_proxy, mut backend) = duplex(64);
    let relay = tokio::spawn(async move {
        relay(
            &mut client_proxy,
            &mut backend_proxy,
            &[],
            &[],
            Bounds {
                half_close: Duration::from_secs(5),
                boundary: Duration::from_secs(5),
                write: Duration::from_millis(200),
            },
            |_| {},
            |_| {},
            Watches::default(),
            std::future::pending(),
        )
        .await
    });
    let payload: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        backend.write_all(&sent).await.unwrap();
        backend.shutdown().await.unwrap();
        backend
    });
    // Reads 16 bytes every 5 ms: the whole takes over a second, each stall far below 200 ms.
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        match client.read(&mut buf).await.unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got, payload);
    let backend = writer.await.unwrap();
    drop(client);
    drop(backend);
    let stats = relay.await.unwrap();
    assert_ne!(stats.reason, CloseReason::WriteTimeout(Side::Client));
}
