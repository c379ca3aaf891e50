//! A load generator that speaks real XMPP, for comparing xmpp-lb with a direct connection to a
//! server node and with a generic TCP/TLS proxy.
//!
//! Every login is a complete client login: stream header, (STARTTLS or direct TLS,) SASL PLAIN,
//! stream restart, resource bind, optionally initial presence. What happens next depends on
//! `--mode`:
//!
//! - `login`: close the stream (`</stream:stream>`, wait for the server's, TLS close) — a login
//!   rate and login latency test.
//! - `hold`: stay connected and idle (reading and discarding whatever arrives) until SIGTERM,
//!   SIGINT, `--hold-seconds`, stdin EOF (with `--stop-on-stdin-eof`) or the global timeout —
//!   an idle-connection memory test. `--ready-file` is written once every login has finished.
//! - `echo`: `--pairs` pairs of sessions; each pair is two sessions of one account (resources
//!   `a` and `b`), so that any router that keeps a user's sessions together puts both on one
//!   node. `a` sends `--messages` chat messages one at a time to `b`'s full JID, `b` answers
//!   each, and `a` measures the round trip (client → proxy → server → proxy → other client and
//!   back).
//!
//! Users are `PREFIX<i>` for i in FIRST..FIRST+N, all with the same password. With several
//! `--target`s, user (or pair) i uses target i % count. `--source-ips K` binds user (or pair) i
//! to source address 127.0.0.(1 + i % K), so that a proxy balancing on the source address
//! spreads loopback clients and keeps the two sessions of a pair together.
//!
//! The result is one JSON line on stdout: counts, the first few errors, logins/s, login latency
//! percentiles and (echo) round-trip percentiles. Everything is bounded by `--timeout`.
//!
//! ```sh
//! cargo run --release --example loadgen -- --target 127.0.0.1:5223 --tls direct \
//!     --ca ca.pem --domain example.test --users 2000 --concurrency 50 --mode login
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tls {
    /// No TLS at all (straight to a server node that allows it).
    Plain,
    /// Clear-text stream header, <starttls/>, then TLS (RFC 6120).
    Starttls,
    /// TLS from the first byte, ALPN xmpp-client (XEP-0368).
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Log in, then close the stream.
    Login,
    /// Log in, then stay connected idle until told to stop.
    Hold,
    /// Pairs of sessions exchange messages; measures the round trip.
    Echo,
    /// Open loop: in each pair, one session sends to the other at a fixed rate (`--rate`
    /// messages/s over all pairs, for `--seconds`) whatever the answers; measures the one-way
    /// latency of every message (sent and received in this process, one clock).
    Rate,
}

/// An XMPP client load generator (logins, idle connections, message round trips).
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// Server address IP:PORT; repeat for several (user or pair i uses target i % count).
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    /// How the connection is secured.
    #[arg(long, value_enum, default_value = "direct")]
    tls: Tls,
    /// What each session does after logging in.
    #[arg(long, value_enum, default_value = "login")]
    mode: Mode,
    /// The XMPP domain (stream `to`, SNI, certificate name).
    #[arg(long, default_value = "example.test")]
    domain: String,
    /// PEM file with the CA that signed the server certificate (required with TLS).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Number of users (login and hold modes).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Index of the first user.
    #[arg(long, default_value_t = 1)]
    first_user: usize,
    /// Username prefix: users are PREFIX<i>.
    #[arg(long, default_value = "user")]
    user_prefix: String,
    /// The password of every user.
    #[arg(long, default_value = "password")]
    password: String,
    /// Logins (or pairs) in flight at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Send initial presence after binding.
    #[arg(long)]
    presence: bool,
    /// Put `from='user@domain'` in the stream header (else the server learns the user from SASL).
    #[arg(long)]
    from: bool,
    /// Hold mode: stop this many seconds after the last login finished.
    #[arg(long)]
    hold_seconds: Option<f64>,
    /// Hold mode: stop when standard input reaches end of file.
    #[arg(long)]
    stop_on_stdin_eof: bool,
    /// Hold mode: write this file (the login summary as JSON) once every login has finished.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Echo mode: number of session pairs.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Rate mode: messages per second, over all pairs.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Rate mode: how long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Echo mode: messages each pair exchanges (one at a time).
    #[arg(long, default_value_t = 50)]
    messages: usize,
    /// Bind user (or pair) i to source address 127.0.0.(1 + i % K); 0 leaves it to the kernel.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=254))]
    source_ips: u8,
    /// Let the TLS client resume sessions (off: every login pays a full handshake).
    #[arg(long)]
    tls_resume: bool,
    /// Limit for each step of a login (connect, handshake, each answer awaited), in seconds.
    #[arg(long, default_value_t = 15.0)]
    step_timeout: f64,
    /// Limit for the whole run, in seconds; what finished by then is reported.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also write every login latency (ms, in completion order) to this file, one per line.
    #[arg(long)]
    latencies: Option<PathBuf>,
    /// A free-form label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// Any transport a session runs over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Everything shared by the sessions of one run.
struct Ctx {
    args: Args,
    direct_tls: Option<TlsConnector>,
    starttls: Option<TlsConnector>,
    step: Duration,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    attempted: usize,
    ok: usize,
    failed: usize,
    errors: Vec<String>,
    login_ms: Vec<f64>,
    rtt_ms: Vec<f64>,
    rtt_failed: usize,
    /// Rate mode: messages sent and received, one-way latencies.
    rate_sent: usize,
    rate_received: usize,
    one_way_ms: Vec<f64>,
    held: usize,
    login_phase: Option<Duration>,
}

/// How many error texts are kept.
const KEEP_ERRORS: usize = 5;

impl Ctx {
    fn fail(&self, e: anyhow::Error) {
        let mut s = self.stats.lock().unwrap();
        s.failed += 1;
        if s.errors.len() < KEEP_ERRORS {
            s.errors.push(format!("{e:#}"));
        }
    }

    fn echo_fail(&self, text: String) {
        let mut s = self.stats.lock().unwrap();
        s.rtt_failed += 1;
        if s.errors.len() < KEEP_ERRORS {
            s.errors.push(text);
        }
    }

    fn user(&self, i: usize) -> String {
        format!("{}{}", self.args.user_prefix, self.args.first_user + i)
    }

    fn target(&self, i: usize) -> SocketAddr {
        self.args.target[i % self.args.target.len()]
    }

    fn source(&self, i: usize) -> Option<IpAddr> {
        let k = self.args.source_ips as usize;
        (k > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % k) as u8)))
    }
}

/// One client session: the transport and what was received and not yet consumed.
struct Session {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    step: Duration,
    /// Full JID after bind.
    jid: String,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn excerpt(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s: String = s.chars().take(300).collect();
    s
}

impl Session {
    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        tokio::time::timeout(self.step, async {
            self.io.write_all(text.as_bytes()).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| anyhow!("timed out sending"))?
        .context("send")
    }

    /// Read until one of `needles` is in the buffer; returns its index. Stream errors and end
    /// of stream are errors.
    async fn wait_any(&mut self, needles: &[&str]) -> anyhow::Result<usize> {
        let deadline = Instant::now() + self.step;
        loop {
            if let Some(i) = needles
                .iter()
                .position(|n| find(&self.buf, n.as_bytes()).is_some())
            {
                return Ok(i);
            }
            if find(&self.buf, b"<stream:error").is_some() {
                bail!("stream error: {}", excerpt(&self.buf));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => bail!(
                    "timed out waiting for {:?}; got {:?}",
                    needles,
                    excerpt(&self.buf)
                ),
                Ok(Ok(0)) => bail!(
                    "closed while waiting for {:?}; got {:?}",
                    needles,
                    excerpt(&self.buf)
                ),
                Ok(Err(e)) => bail!("read error waiting for {:?}: {e}", needles),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn wait(&mut self, needle: &str) -> anyhow::Result<()> {
        self.wait_any(&[needle]).await.map(|_| ())
    }

    /// Wait for the end of a `<stream:features>` element and forget everything up to it.
    async fn features(&mut self) -> anyhow::Result<()> {
        self.wait_any(&["</stream:features>", "<stream:features/>"])
            .await
            .context("stream features")?;
        self.buf.clear();
        Ok(())
    }

    /// Close the stream politely: `</stream:stream>`, wait (briefly) for the server's, shut down.
    async fn close(mut self) {
        let _ = self.send("</stream:stream>").await;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut chunk = [0u8; 4096];
        while find(&self.buf, b"</stream:stream>").is_none() {
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => {
                    // Only the tail can hold the closing tag.
                    let keep = self.buf.len().saturating_sub(32);
                    self.buf.drain(..keep);
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                _ => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

fn header(domain: &str, from: Option<&str>) -> String {
    let from = from.map(|f| format!(" from='{f}'")).unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}'{from} version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

/// Connect and log in session `i` of user index `user` with `resource`.
async fn login(ctx: &Ctx, i: usize, user: usize, resource: &str) -> anyhow::Result<Session> {
    let a = &ctx.args;
    let name = ctx.user(user);
    let bare = format!("{name}@{}", a.domain);
    let target = ctx.target(i);
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    if let Some(src) = ctx.source(i) {
        socket
            .bind(SocketAddr::new(src, 0))
            .with_context(|| format!("bind {src}"))?;
    }
    let tcp = tokio::time::timeout(ctx.step, socket.connect(target))
        .await
        .map_err(|_| anyhow!("connect {target}: timed out"))?
        .with_context(|| format!("connect {target}"))?;
    tcp.set_nodelay(true)?;
    let sni = || ServerName::try_from(a.domain.clone()).context("domain as a TLS name");
    let io: Box<dyn Io> = match a.tls {
        Tls::Direct => {
            let tls = tokio::time::timeout(
                ctx.step,
                ctx.direct_tls.as_ref().unwrap().connect(sni()?, tcp),
            )
            .await
            .map_err(|_| anyhow!("TLS handshake timed out"))?
            .context("TLS handshake")?;
            Box::new(tls)
        }
        _ => Box::new(tcp),
    };
    let mut s = Session {
        io,
        buf: Vec::with_capacity(4096),
        step: ctx.step,
        jid: String::new(),
    };
    let from = a.from.then_some(bare.as_str());
    s.send(&header(&a.domain, from)).await?;
    s.features().await?;
    if a.tls == Tls::Starttls {
        s.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        s.wait("<proceed").await.context("STARTTLS")?;
        s.buf.clear();
        let io = std::mem::replace(&mut s.io, Box::new(tokio::io::duplex(1).0));
        let tls =
            tokio::time::timeout(ctx.step, ctx.starttls.as_ref().unwrap().connect(sni()?, io))
                .await
                .map_err(|_| anyhow!("TLS handshake timed out"))?
                .context("TLS handshake")?;
        s.io = Box::new(tls);
        s.send(&header(&a.domain, from)).await?;
        s.features().await?;
    }
    let payload =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{name}\0{}", a.password));
    s.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
    ))
    .await?;
    match s
        .wait_any(&["<success", "<failure"])
        .await
        .context("SASL")?
    {
        0 => {}
        _ => bail!("authentication failed: {}", excerpt(&s.buf)),
    }
    s.buf.clear();
    s.send(&header(&a.domain, from)).await?;
    s.features().await.context("after SASL")?;
    s.send(&format!(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{resource}</resource></bind></iq>"
    ))
    .await?;
    s.wait("</iq>").await.context("bind")?;
    let text = String::from_utf8_lossy(&s.buf).into_owned();
    if !text.contains("type='result'") && !text.contains("type=\"result\"") {
        bail!("bind failed: {}", excerpt(&s.buf));
    }
    s.jid = text
        .split_once("<jid>")
        .and_then(|(_, r)| r.split_once("</jid>"))
        .map(|(j, _)| j.to_string())
        .ok_or_else(|| anyhow!("no <jid> in bind result: {}", excerpt(&s.buf)))?;
    s.buf.clear();
    if a.presence {
        s.send("<presence/>").await?;
    }
    Ok(s)
}

/// Log in session `i`, recording the outcome; `None` on failure.
async fn timed_login(ctx: &Ctx, i: usize, user: usize, resource: &str) -> Option<Session> {
    let t0 = Instant::now();
    ctx.stats.lock().unwrap().attempted += 1;
    match login(ctx, i, user, resource).await {
        Ok(s) => {
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let mut st = ctx.stats.lock().unwrap();
            st.ok += 1;
            st.login_ms.push(ms);
            Some(s)
        }
        Err(e) => {
            ctx.fail(e.context(ctx.user(user)));
            None
        }
    }
}

/// Run `f(i)` for i in 0..n with at most `concurrency` in flight.
async fn for_each<F, Fut>(n: usize, concurrency: usize, f: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1).min(n.max(1)) {
        let next = next.clone();
        let f = f.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i).await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

/// One pair: `a` pings `b` `messages` times; returns when done or failed.
async fn echo_pair(ctx: Arc<Ctx>, p: usize) {
    let Some(mut a) = timed_login(&ctx, p, p, "a").await else {
        return;
    };
    let Some(mut b) = timed_login(&ctx, p, p, "b").await else {
        a.close().await;
        return;
    };
    let k = ctx.args.messages;
    let (a_jid, b_jid) = (a.jid.clone(), b.jid.clone());
    // b answers every message from a, then closes.
    let answerer = tokio::spawn(async move {
        let mut answered = 0;
        while answered < k {
            b.wait("</message>").await?;
            while let Some(end) = find(&b.buf, b"</message>") {
                let stanza = String::from_utf8_lossy(&b.buf[..end]).into_owned();
                b.buf.drain(..end + "</message>".len());
                let start = stanza.rfind("<message").unwrap_or(0);
                let id = attr(&stanza[start..], "id").unwrap_or_default();
                let Some(n) = id.strip_prefix('e') else {
                    continue;
                };
                b.send(&format!(
                    "<message to='{a_jid}' type='chat' id='r{n}'><body>pong {n}</body></message>"
                ))
                .await?;
                answered += 1;
            }
        }
        anyhow::Ok(b)
    });
    let mut failure = None;
    for m in 0..k {
        let t0 = Instant::now();
        let sent = a
            .send(&format!(
                "<message to='{b_jid}' type='chat' id='e{m}'><body>ping {m}</body></message>"
            ))
            .await;
        let got = match sent {
            Ok(()) => {
                a.wait_any(&[&format!("id='r{m}'"), &format!("id=\"r{m}\"")])
                    .await
            }
            Err(e) => Err(e),
        };
        match got {
            Ok(_) => {
                ctx.stats
                    .lock()
                    .unwrap()
                    .rtt_ms
                    .push(t0.elapsed().as_secs_f64() * 1e3);
                // Keep only what follows the answer (drop through its end).
                match find(&a.buf, b"</message>") {
                    Some(end) => {
                        a.buf.drain(..end + "</message>".len());
                    }
                    None => a.buf.clear(),
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        ctx.echo_fail(format!("{}: echo: {e:#}", ctx.user(p)));
        answerer.abort();
        a.close().await;
        return;
    }
    a.close().await;
    match tokio::time::timeout(ctx.step, answerer).await {
        Ok(Ok(Ok(b))) => b.close().await,
        Ok(Ok(Err(e))) => ctx.echo_fail(format!("{}: echo answerer: {e:#}", ctx.user(p))),
        _ => {}
    }
}

/// Rate mode: log every pair in (two resources of one account, so both are on one node
/// whatever the routing), then send at the rate, every pair on its own timer, offset so that
/// the messages of all pairs are spread evenly over each period.
async fn rate_run(ctx: Arc<Ctx>) {
    let a = &ctx.args;
    let pairs = Arc::new(Mutex::new(Vec::new()));
    let (c, ps) = (ctx.clone(), pairs.clone());
    for_each(a.pairs, a.concurrency, move |p| {
        let (c, ps) = (c.clone(), ps.clone());
        async move {
            let Some(s) = timed_login(&c, p, p, "a").await else {
                return;
            };
            match timed_login(&c, p, p, "b").await {
                Some(r) => ps.lock().unwrap().push((p, s, r)),
                None => s.close().await,
            }
        }
    })
    .await;
    let pairs = std::mem::take(&mut *pairs.lock().unwrap());
    if pairs.is_empty() {
        return;
    }
    let n = pairs.len() as f64;
    let period = Duration::from_secs_f64(n / a.rate);
    let count = (a.seconds * a.rate / n).round().max(1.0) as usize;
    let clock = Instant::now();
    let start = clock + Duration::from_millis(500);
    let mut tasks = Vec::new();
    for (k, (_, mut s, mut r)) in pairs.into_iter().enumerate() {
        let to = r.jid.clone();
        let first = start + period.mul_f64(k as f64 / n);
        let c = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..count {
                tick.tick().await;
                let at = clock.elapsed().as_micros();
                let m = format!(
                    "<message to='{to}' type='chat' id='t{at}'><body>load</body></message>"
                );
                if s.send(&m).await.is_err() {
                    break;
                }
                c.stats.lock().unwrap().rate_sent += 1;
            }
            s
        }));
        let c = ctx.clone();
        let until = start + Duration::from_secs_f64(ctx.args.seconds) + Duration::from_secs(5);
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = vec![0u8; 16384];
            while got < count {
                match tokio::time::timeout_at(until, r.io.read(&mut chunk)).await {
                    Ok(Ok(m)) if m > 0 => r.buf.extend_from_slice(&chunk[..m]),
                    _ => break,
                }
                let now = clock.elapsed().as_micros();
                let mut lat = Vec::new();
                while let Some(end) = find(&r.buf, b"</message>") {
                    let stanza = String::from_utf8_lossy(&r.buf[..end]).into_owned();
                    r.buf.drain(..end + "</message>".len());
                    let start = stanza.rfind("<message").unwrap_or(0);
                    let sent = attr(&stanza[start..], "id")
                        .and_then(|id| id.strip_prefix('t').and_then(|t| t.parse::<u128>().ok()));
                    if let Some(sent) = sent {
                        lat.push(now.saturating_sub(sent) as f64 / 1e3);
                    }
                }
                got += lat.len();
                let mut st = c.stats.lock().unwrap();
                st.rate_received += lat.len();
                st.one_way_ms.extend(lat);
            }
            r
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            sessions.push(s);
        }
    }
    for s in sessions {
        s.close().await;
    }
}

/// The value of attribute `name` in the first tag of `tag` (either quote style).
fn attr(tag: &str, name: &str) -> Option<String> {
    let end = tag.find('>').unwrap_or(tag.len());
    let head = &tag[..end];
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = head.find(&pat) {
            let rest = &head[i + pat.len()..];
            return rest.split(q).next().map(|s| s.to_string());
        }
    }
    None
}

/// A held, idle session: read and discard until `stop`, then close.
async fn hold(mut s: Session, stop: CancellationToken) {
    let mut chunk = [0u8; 2048];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = s.io.read(&mut chunk) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
    s.buf.clear();
    s.close().await;
}

fn percentiles(v: &[f64]) -> serde_json::Value {
    if v.is_empty() {
        return json!(null);
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| {
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        (v[idx] * 1000.0).round() / 1000.0
    };
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    json!({
        "p50": p(0.50), "p90": p(0.90), "p99": p(0.99),
        "max": p(1.0), "mean": (mean * 1000.0).round() / 1000.0,
    })
}

fn tls_connector(ca: &std::path::Path, alpn: bool, resume: bool) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Cancel `stop` on SIGTERM, SIGINT or (if asked) end of standard input. The handlers are in
/// place when this returns.
fn watch_stop(stop_on_stdin_eof: bool, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::spawn(async move {
        let stdin_eof = async {
            if stop_on_stdin_eof {
                let mut stdin = tokio::io::stdin();
                let mut b = [0u8; 256];
                while let Ok(n) = stdin.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                }
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stdin_eof => {}
            _ = stop.cancelled() => return,
        }
        stop.cancel();
    });
}

async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let a = &ctx.args;
    let t0 = Instant::now();
    match a.mode {
        Mode::Login => {
            let c = ctx.clone();
            for_each(a.users, a.concurrency, move |i| {
                let c = c.clone();
                async move {
                    if let Some(s) = timed_login(&c, i, i, &format!("lg{i}")).await {
                        s.close().await;
                    }
                }
            })
            .await;
            ctx.stats.lock().unwrap().login_phase = Some(t0.elapsed());
        }
        Mode::Echo => {
            let c = ctx.clone();
            for_each(a.pairs, a.concurrency, move |p| echo_pair(c.clone(), p)).await;
            ctx.stats.lock().unwrap().login_phase = Some(t0.elapsed());
        }
        Mode::Rate => rate_run(ctx.clone()).await,
        Mode::Hold => {
            watch_stop(a.stop_on_stdin_eof, stop.clone());
            let holders = Arc::new(Mutex::new(Vec::new()));
            let (c, h, st) = (ctx.clone(), holders.clone(), stop.clone());
            for_each(a.users, a.concurrency, move |i| {
                let (c, h, st) = (c.clone(), h.clone(), st.clone());
                async move {
                    if st.is_cancelled() {
                        return;
                    }
                    if let Some(s) = timed_login(&c, i, i, &format!("hold{i}")).await {
                        h.lock().unwrap().push(tokio::spawn(hold(s, st)));
                    }
                }
            })
            .await;
            {
                let mut st = ctx.stats.lock().unwrap();
                st.login_phase = Some(t0.elapsed());
                st.held = holders.lock().unwrap().len();
            }
            let summary = summary(&ctx, false);
            eprintln!(
                "loadgen: holding {} sessions",
                ctx.stats.lock().unwrap().held
            );
            if let Some(f) = &a.ready_file {
                let tmp = f.with_extension("tmp");
                if std::fs::write(&tmp, format!("{summary}\n")).is_ok() {
                    let _ = std::fs::rename(&tmp, f);
                }
            }
            let timer = async {
                match a.hold_seconds {
                    Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = timer => {}
                _ = stop.cancelled() => {}
            }
            // Report how many were still connected when told to stop.
            let alive = holders
                .lock()
                .unwrap()
                .iter()
                .filter(|h| !h.is_finished())
                .count();
            ctx.stats.lock().unwrap().held = alive;
            stop.cancel();
            let hs: Vec<_> = std::mem::take(&mut *holders.lock().unwrap());
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                for h in hs {
                    let _ = h.await;
                }
            })
            .await;
        }
    }
}

fn summary(ctx: &Ctx, timed_out: bool) -> serde_json::Value {
    let a = &ctx.args;
    let st = ctx.stats.lock().unwrap();
    let secs = st.login_phase.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    let rate = if secs.is_finite() && secs > 0.0 {
        (st.ok as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    };
    let login_ms = percentiles(&st.login_ms);
    let mut out = json!({
        "label": a.label,
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "tls": format!("{:?}", a.tls).to_lowercase(),
        "targets": a.target.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "concurrency": a.concurrency,
        "attempted": st.attempted,
        "ok": st.ok,
        "failed": st.failed,
        "errors": st.errors,
        "elapsed_s": if secs.is_finite() { (secs * 1000.0).round() / 1000.0 } else { -1.0 },
        "logins_per_s": rate,
        "login_ms": login_ms,
        "timed_out": timed_out,
    });
    match a.mode {
        Mode::Echo => {
            let rtt = percentiles(&st.rtt_ms);
            out["echo"] = json!({
                "pairs": a.pairs,
                "messages_per_pair": a.messages,
                "round_trips": st.rtt_ms.len(),
                "pairs_failed": st.rtt_failed,
                "rtt_ms": rtt,
            });
        }
        Mode::Hold => out["held"] = json!(st.held),
        Mode::Rate => {
            out["rate"] = json!({
                "pairs": a.pairs,
                "rate": a.rate,
                "seconds": a.seconds,
                "sent": st.rate_sent,
                "received": st.rate_received,
                "one_way_ms": percentiles(&st.one_way_ms),
            });
        }
        Mode::Login => {}
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.tls != Tls::Plain && args.ca.is_none() {
        bail!("--ca is required with --tls {:?}", args.tls);
    }
    let (direct_tls, starttls) = match (&args.ca, args.tls) {
        (Some(ca), Tls::Direct) => (Some(tls_connector(ca, true, args.tls_resume)?), None),
        (Some(ca), Tls::Starttls) => (None, Some(tls_connector(ca, false, args.tls_resume)?)),
        _ => (None, None),
    };
    let cpu0 = cpu_seconds();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let total = Duration::from_secs_f64(args.timeout);
    let ctx = Arc::new(Ctx {
        step: Duration::from_secs_f64(args.step_timeout),
        direct_tls,
        starttls,
        args,
        stats: Mutex::new(Stats::default()),
    });
    let stop = CancellationToken::new();
    let timed_out = runtime.block_on(async {
        let r = tokio::time::timeout(total, run(ctx.clone(), stop.clone())).await;
        if r.is_err() {
            // Let held sessions close before the runtime goes.
            stop.cancel();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        r.is_err()
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    if timed_out {
        let mut st = ctx.stats.lock().unwrap();
        if st.login_phase.is_none() {
            st.login_phase = Some(total);
        }
    }
    if let Some(path) = &ctx.args.latencies {
        let st = ctx.stats.lock().unwrap();
        let text: String = st.login_ms.iter().map(|ms| format!("{ms:.3}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    let mut out = summary(&ctx, timed_out);
    out["client_cpu_s"] = json!(cpu_seconds() - cpu0);
    println!("{out}");
    Ok(())
}

/// User + system CPU time this process has used so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on every Linux architecture this runs on.
    ticks / 100.0
}
