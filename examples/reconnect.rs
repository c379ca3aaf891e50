//! Reconnect benchmark: how long a client that lost its connection takes to be back in
//! business, three ways, through the same server (normally xmpp-lb in front of Prosody):
//!
//! - `full`: a new login: TCP, direct TLS, stream header, SASL PLAIN, stream restart, resource
//!   bind and XEP-0198 `<enable/>` (what a client does to be usable again);
//! - `resume`: legacy XEP-0198 resumption: TCP, TLS, header, SASL PLAIN, restart, `<resume/>`;
//! - `fast`: SASL2 (XEP-0388) with a FAST token (XEP-0484, `HT-SHA-256-NONE`) and the resume
//!   inline in `<authenticate/>`: TCP, TLS, header, `<authenticate/>` → `<success><resumed/>`.
//!
//! Each of the `--users` users first logs in once for the mode (legacy login with resumable
//! stream management, or SASL2 + Bind 2 + inline enable + a FAST token), then `--rounds` times
//! drops its connection without a stream close (the session hibernates on its node) and
//! reconnects. The time of each reconnect is measured from the TCP connect to the answer that
//! makes the session usable again. Round trips are counted as the client waits for them: TCP,
//! TLS, and one per XMPP request awaited.
//!
//! With `--tls-resume` the client keeps TLS session tickets between its connections, so
//! reconnects resume TLS as well (the proxy must issue tickets: `[resumption]
//! tls_ticket_key_files`, or its own per-process cache). The result is one JSON line per mode.
//!
//! ```sh
//! cargo run --release --example reconnect -- --target 127.0.0.1:5223 --ca ca.pem \
//!     --domain example.test --users 50 --rounds 5 --mode all --tls-resume
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Full,
    Resume,
    Fast,
    /// All three, one after the other.
    All,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Resume => "resume",
            Mode::Fast => "fast",
            Mode::All => "all",
        }
    }
}

/// Reconnect times: full login vs XEP-0198 resume vs SASL2 FAST with inline resume.
#[derive(Parser, Debug, Clone)]
#[command(about, long_about = None)]
struct Args {
    /// Server address IP:PORT (direct TLS, XEP-0368).
    #[arg(long)]
    target: std::net::SocketAddr,
    /// PEM file with the CA that signed the server certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The XMPP domain (stream `to`, SNI, certificate name).
    #[arg(long, default_value = "example.test")]
    domain: String,
    /// Which reconnect to measure.
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// Users (each reconnects `rounds` times per mode). Users are PREFIX<i>, i from 1.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Username prefix.
    #[arg(long, default_value = "user")]
    user_prefix: String,
    /// The password of every user.
    #[arg(long, default_value = "password")]
    password: String,
    /// Reconnects per user and mode.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Users reconnecting at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Keep TLS session tickets between connections (TLS resumption on reconnect).
    #[arg(long)]
    tls_resume: bool,
    /// Limit for each awaited answer, in seconds.
    #[arg(long, default_value_t = 15.0)]
    step_timeout: f64,
    /// A free-form label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// One connection: TLS stream and unconsumed input.
struct Conn {
    io: TlsStream<TcpStream>,
    buf: Vec<u8>,
    step: Duration,
    /// Round trips waited for so far (TCP and TLS included).
    round_trips: u32,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    async fn open(ctx: &Ctx) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(ctx.args.target)
            .await
            .context("connect")?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(ctx.args.domain.clone())?;
        let io = tokio::time::timeout(ctx.step, ctx.tls().connect(name, tcp))
            .await
            .map_err(|_| anyhow!("TLS handshake timed out"))?
            .context("TLS handshake")?;
        if io.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            ctx.stats.lock().unwrap().tls_resumed += 1;
        }
        Ok(Conn {
            io,
            buf: Vec::new(),
            step: ctx.step,
            round_trips: 2,
        })
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.io.write_all(text.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Send `text` and wait for the first of `needles`, as one round trip; returns the received
    /// text up to and including the end of the element that holds it (the buffer keeps the rest).
    async fn ask(&mut self, text: &str, needles: &[&str], end: &str) -> anyhow::Result<String> {
        if !text.is_empty() {
            self.send(text).await?;
        }
        self.round_trips += 1;
        let deadline = Instant::now() + self.step;
        loop {
            if let Some(n) = needles
                .iter()
                .find(|n| find(&self.buf, n.as_bytes()).is_some())
            {
                let from = find(&self.buf, n.as_bytes()).unwrap();
                if let Some(e) = find(&self.buf[from..], end.as_bytes()) {
                    let upto = from + e + end.len();
                    let got = String::from_utf8_lossy(&self.buf[..upto]).into_owned();
                    self.buf.drain(..upto);
                    return Ok(got);
                }
            }
            if find(&self.buf, b"<stream:error").is_some() {
                bail!("stream error: {}", String::from_utf8_lossy(&self.buf));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => bail!(
                    "timed out waiting for {needles:?}: {}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(Ok(0)) => bail!("closed waiting for {needles:?}"),
                Ok(Err(e)) => bail!("read error: {e}"),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Open the stream (with `from`, as FAST requires) and read the features.
    async fn header(&mut self, domain: &str, from: &str) -> anyhow::Result<String> {
        let header = format!(
            "<stream:stream to='{domain}' from='{from}' version='1.0' xml:lang='en' \
             xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        );
        self.ask(&header, &["<stream:features"], "</stream:features>")
            .await
    }

    /// Drop the connection without a stream close: the session hibernates on its node.
    fn vanish(self) {
        drop(self);
    }

    async fn close(mut self) {
        let _ = self.send("</stream:stream>").await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

/// The value of attribute `name` in the first `<tag` of `text`.
fn attr(text: &str, tag: &str, name: &str) -> Option<String> {
    let start = find(text.as_bytes(), tag.as_bytes())?;
    let head = &text[start..];
    let head = &head[..head.find('>').unwrap_or(head.len())];
    for q in ['\'', '"'] {
        let pat = format!(" {name}={q}");
        if let Some(i) = head.find(&pat) {
            return head[i + pat.len()..].split(q).next().map(str::to_string);
        }
    }
    None
}

/// Everything shared by the users of one run.
struct Ctx {
    args: Args,
    /// With `--tls-resume`: one connector (one ticket store) for every connection.
    shared_tls: Option<TlsConnector>,
    step: Duration,
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    ms: Vec<f64>,
    round_trips: Vec<u32>,
    failed: usize,
    errors: Vec<String>,
    tls_resumed: usize,
}

impl Ctx {
    fn tls(&self) -> TlsConnector {
        self.shared_tls
            .clone()
            .unwrap_or_else(|| connector(&self.args.ca, false).expect("CA loads"))
    }

    fn fail(&self, e: anyhow::Error) {
        let mut s = self.stats.lock().unwrap();
        s.failed += 1;
        if s.errors.len() < 5 {
            s.errors.push(format!("{e:#}"));
        }
    }
}

/// What a user needs to come back: its session id, and for FAST its token and user agent.
struct Session {
    user: String,
    sm_id: String,
    token: Option<String>,
    agent: String,
}

const PLAIN_END: &[&str] = &["<success", "<failure"];

fn plain(user: &str, password: &str) -> String {
    B64.encode(format!("\0{user}\0{password}"))
}

/// Legacy login with resumable stream management.
async fn legacy_login(ctx: &Ctx, user: &str) -> anyhow::Result<(Conn, String)> {
    let a = &ctx.args;
    let mut c = Conn::open(ctx).await?;
    c.header(&a.domain, &format!("{user}@{}", a.domain)).await?;
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain(user, &a.password)
    );
    let got = c.ask(&auth, PLAIN_END, ">").await?;
    if !got.contains("<success") {
        bail!("login of {user} refused: {got}");
    }
    c.header(&a.domain, &format!("{user}@{}", a.domain)).await?;
    c.ask(
        "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>bench</resource></bind></iq>",
        &["id='b'"],
        "</iq>",
    )
    .await?;
    let got = c
        .ask(
            "<enable xmlns='urn:xmpp:sm:3' resume='true'/>",
            &["<enabled", "<failed"],
            ">",
        )
        .await?;
    let id = attr(&got, "<enabled", "id").ok_or_else(|| anyhow!("no resumption: {got}"))?;
    Ok((c, id))
}

/// A fresh connection that resumes `s` the legacy way.
async fn legacy_resume(ctx: &Ctx, s: &Session) -> anyhow::Result<Conn> {
    let a = &ctx.args;
    let mut c = Conn::open(ctx).await?;
    let from = format!("{}@{}", s.user, a.domain);
    c.header(&a.domain, &from).await?;
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        plain(&s.user, &a.password)
    );
    let got = c.ask(&auth, PLAIN_END, ">").await?;
    if !got.contains("<success") {
        bail!("login refused: {got}");
    }
    c.header(&a.domain, &from).await?;
    let resume = format!("<resume xmlns='urn:xmpp:sm:3' previd='{}' h='0'/>", s.sm_id);
    let got = c.ask(&resume, &["<resumed", "<failed"], ">").await?;
    if !got.contains("<resumed") {
        bail!("resume failed: {got}");
    }
    Ok(c)
}

/// SASL2 PLAIN with Bind 2, inline enable and a FAST token request.
async fn sasl2_login(ctx: &Ctx, user: &str, agent: &str) -> anyhow::Result<(Conn, String, String)> {
    let a = &ctx.args;
    let mut c = Conn::open(ctx).await?;
    let features = c.header(&a.domain, &format!("{user}@{}", a.domain)).await?;
    if !features.contains("urn:xmpp:sasl:2") || !features.contains("HT-SHA-256-NONE") {
        bail!("the server offers no SASL2 with FAST HT-SHA-256-NONE: {features}");
    }
    let auth = format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'><initial-response>{}</initial-response>\
         <user-agent id='{agent}'><software>xmpp-lb reconnect bench</software><device>bench</device></user-agent>\
         <bind xmlns='urn:xmpp:bind:0'><tag>bench</tag><enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>\
         <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/></authenticate>",
        plain(user, &a.password)
    );
    let got = c
        .ask(&auth, &["<success", "<failure"], "</success>")
        .await
        .context("SASL2 login")?;
    let id = attr(&got, "<enabled", "id").ok_or_else(|| anyhow!("no SM id: {got}"))?;
    let token = attr(&got, "<token", "token").ok_or_else(|| anyhow!("no FAST token: {got}"))?;
    Ok((c, id, token))
}

/// A fresh connection that resumes `s` with its FAST token, inline.
async fn fast_resume(ctx: &Ctx, s: &mut Session) -> anyhow::Result<Conn> {
    let a = &ctx.args;
    let token = s.token.clone().ok_or_else(|| anyhow!("no token"))?;
    let mut c = Conn::open(ctx).await?;
    c.header(&a.domain, &format!("{}@{}", s.user, a.domain))
        .await?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let mut response = format!("{}\0", s.user).into_bytes();
    response.extend_from_slice(ring::hmac::sign(&key, b"Initiator").as_ref());
    let auth = format!(
        "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='HT-SHA-256-NONE'><initial-response>{}</initial-response>\
         <user-agent id='{}'><software>xmpp-lb reconnect bench</software><device>bench</device></user-agent>\
         <resume xmlns='urn:xmpp:sm:3' previd='{}' h='0'/><fast xmlns='urn:xmpp:fast:0'/></authenticate>",
        B64.encode(&response),
        s.agent,
        s.sm_id
    );
    let got = c
        .ask(&auth, &["<success", "<failure"], "</success>")
        .await?;
    if !got.contains("<resumed") {
        bail!("inline resume failed: {got}");
    }
    // The server may rotate the token.
    if let Some(t) = attr(&got, "<token", "token") {
        s.token = Some(t);
    }
    Ok(c)
}

/// Log user `i` in for `mode`, then reconnect it `rounds` times, timing each reconnect.
async fn user_run(ctx: Arc<Ctx>, mode: Mode, i: usize) {
    let user = format!("{}{}", ctx.args.user_prefix, i + 1);
    let agent = format!("00000000-0000-4000-8000-{:012x}", i + 1);
    let mut session = Session {
        user: user.clone(),
        sm_id: String::new(),
        token: None,
        agent: agent.clone(),
    };
    let mut conn = match mode {
        Mode::Full => None,
        Mode::Resume => match legacy_login(&ctx, &user).await {
            Ok((c, id)) => {
                session.sm_id = id;
                Some(c)
            }
            Err(e) => return ctx.fail(e),
        },
        Mode::Fast => match sasl2_login(&ctx, &user, &agent).await {
            Ok((c, id, token)) => {
                session.sm_id = id;
                session.token = Some(token);
                Some(c)
            }
            Err(e) => return ctx.fail(e),
        },
        Mode::All => unreachable!("expanded by the caller"),
    };
    for _ in 0..ctx.args.rounds {
        if let Some(c) = conn.take() {
            c.vanish();
        }
        let started = Instant::now();
        let result = match mode {
            Mode::Full => legacy_login(&ctx, &user).await.map(|(c, _)| c),
            Mode::Resume => legacy_resume(&ctx, &session).await,
            Mode::Fast => fast_resume(&ctx, &mut session).await,
            Mode::All => unreachable!(),
        };
        match result {
            Ok(c) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                {
                    let mut s = ctx.stats.lock().unwrap();
                    s.ms.push(ms);
                    s.round_trips.push(c.round_trips);
                }
                if mode == Mode::Full {
                    c.close().await;
                } else {
                    conn = Some(c);
                }
            }
            Err(e) => return ctx.fail(e),
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
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
    json!({ "p50": p(0.50), "p90": p(0.90), "p99": p(0.99), "max": p(1.0) })
}

fn connector(ca: &std::path::Path, resume: bool) -> anyhow::Result<TlsConnector> {
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
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Run every user of one mode, `concurrency` at a time; one JSON line.
async fn run_mode(args: &Args, mode: Mode) -> anyhow::Result<serde_json::Value> {
    let ctx = Arc::new(Ctx {
        args: args.clone(),
        shared_tls: args
            .tls_resume
            .then(|| connector(&args.ca, true))
            .transpose()?,
        step: Duration::from_secs_f64(args.step_timeout),
        stats: Mutex::new(Stats::default()),
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::new();
    for i in 0..args.users {
        let permit = sem.clone().acquire_owned().await?;
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            user_run(ctx, mode, i).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let s = ctx.stats.lock().unwrap();
    let reconnects = s.ms.len();
    let rts: Vec<f64> = s.round_trips.iter().map(|&r| f64::from(r)).collect();
    Ok(json!({
        "label": args.label,
        "mode": mode.name(),
        "tls_resume": args.tls_resume,
        "reconnects": reconnects,
        "failed_users": s.failed,
        "errors": s.errors,
        "tls_resumed": s.tls_resumed,
        "round_trips": rts.iter().copied().fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r)))),
        "ms": percentiles(&s.ms),
    }))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let modes = match args.mode {
        Mode::All => vec![Mode::Full, Mode::Resume, Mode::Fast],
        m => vec![m],
    };
    rt.block_on(async {
        for mode in modes {
            let line = run_mode(&args, mode).await?;
            println!("{line}");
        }
        anyhow::Ok(())
    })
}
