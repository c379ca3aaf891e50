//! Self-test of the SASL2 / stream management client (`testkit::sasl2`)
//! straight against real Prosody nodes (no proxy): SASL2 PLAIN with inline
//! Bind 2, stream management and a FAST token request; a FAST reconnect with
//! inline resume after the client vanished; the legacy XEP-0198 flow.

use std::future::Future;
use std::time::Duration;

use testkit::pki::TestPki;
use testkit::process::wait_for;
use testkit::prosody::{FAST_RECONNECT_HIBERNATION, ProsodyCluster, ProsodyOpts};
use testkit::raw::Raw;
use testkit::sasl2::{
    Authenticate, Client, HT_SHA_256_NONE, NS_BIND2, NS_CLIENT, NS_SASL2, NS_SM, NS_STREAM,
    ht_sha_256_none_server, new_user_agent_id,
};

const DOMAIN: &str = "example.test";
const JULIET: &str = "juliet@example.test";

/// Run a test body on a fresh runtime, bounded in time.
fn run<F: Future<Output = ()>>(limit: Duration, body: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(limit, body)
                .await
                .expect("test timed out");
        });
}

/// Wait (bounded) until the node holds exactly one session for juliet, with
/// stream management, and it is / is not hibernating.
fn wait_hibernating(cluster: &ProsodyCluster, hibernating: bool) {
    let found = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let d = cluster.sessions_detail(0);
        let j: Vec<_> = d.iter().filter(|s| s.bare() == JULIET).collect();
        (j.len() == 1 && j[0].smacks && j[0].hibernating == hibernating).then_some(())
    });
    assert!(
        found.is_some(),
        "juliet's session never became hibernating={hibernating}: {:?}",
        cluster.sessions_detail(0)
    );
}

/// SASL2 PLAIN with inline Bind 2, inline SM enable and a FAST token request,
/// over STARTTLS.
#[test]
fn sasl2_plain_bind2_sm_and_fast_token() {
    let pki = TestPki::new(&[DOMAIN]);
    let mut opts = ProsodyOpts::fast_reconnect();
    opts.extra_modules.push("tls".into());
    opts.extra_vhost_config = format!(
        "ssl = {{ certificate = \"{}\"; key = \"{}\" }}",
        pki.cert_path(DOMAIN).display(),
        pki.key_path(DOMAIN).display()
    );
    let cluster = ProsodyCluster::start(1, DOMAIN, opts).expect("start");
    cluster.register("juliet", "pw");
    let ua = new_user_agent_id();
    run(Duration::from_secs(60), async {
        let raw = Raw::starttls(cluster.addr(0), DOMAIN, &pki.ca_path()).await;
        let mut c = Client::open(raw, DOMAIN, Some(JULIET)).await;
        let f = &c.features;
        assert!(f.sasl2, "{}", f.element.xml);
        assert!(f.sasl2_mechanisms.contains(&"PLAIN".to_string()), "{f:?}");
        assert!(f.bind2 && f.sm_inline, "{}", f.element.xml);
        assert!(
            f.bind2_features.contains(&NS_SM.to_string()),
            "{}",
            f.element.xml
        );
        assert!(
            f.fast_mechanisms.contains(&HT_SHA_256_NONE.to_string()),
            "{}",
            f.element.xml
        );
        eprintln!("FEATURES over TLS: {}", f.element.xml);

        let auth = Authenticate::plain("juliet", "pw")
            .user_agent(&ua)
            .bind("test")
            .enable_sm()
            .request_token(HT_SHA_256_NONE);
        let ok = c.authenticate(&auth).await.expect("SASL2 success");
        eprintln!("SUCCESS: {}", ok.xml());
        let jid = ok.jid.clone().expect("authorization-identifier");
        assert!(jid.starts_with("juliet@example.test/test~"), "{jid}");
        assert!(ok.bound, "{}", ok.xml());
        let enabled = ok.enabled.clone().expect("<bound><enabled/></bound>");
        let sm_id = enabled.id.clone().expect("SM id");
        assert!(!sm_id.is_empty());
        assert!(enabled.resume, "{}", ok.xml());
        assert_eq!(
            enabled.max,
            Some(FAST_RECONNECT_HIBERNATION.as_secs() as u32)
        );
        let token = ok.token.clone().expect("FAST token");
        assert!(token.token.starts_with("secret-token:"), "{token:?}");
        assert!(!token.expiry.is_empty(), "{token:?}");
        assert!(ok.resumed.is_none() && ok.sm_failed.is_none());

        // The SM id is an attribute of <enabled/> inside <bound/>, once in the bytes.
        let bound = ok.element.child("bound", NS_BIND2).unwrap();
        assert_eq!(
            bound.child("enabled", NS_SM).unwrap().attr("id"),
            Some(sm_id.as_str())
        );
        assert_eq!(ok.xml().matches(sm_id.as_str()).count(), 1, "{}", ok.xml());

        // No stream restart: new features follow on the same stream.
        let f = c.expect("features", |e| e.is("features", NS_STREAM)).await;
        eprintln!("FEATURES after success: {}", f.xml);

        // The stream is live and SM counts: one iq each way.
        c.send_stanza(&format!(
            "<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let pong = c
            .expect("pong", |e| {
                e.is("iq", NS_CLIENT) && e.attr("id") == Some("p1")
            })
            .await;
        assert_eq!(pong.attr("type"), Some("result"), "{}", pong.xml);
        assert_eq!(c.request_ack().await, 1);
        assert_eq!(c.h_in, 1);

        let d = cluster.sessions_detail(0);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].jid == jid && d[0].bound && d[0].smacks && d[0].secure && !d[0].hibernating,
            "{d:?}"
        );

        // FAST is offered only when the stream header names the user.
        let raw = Raw::starttls(cluster.addr(0), DOMAIN, &pki.ca_path()).await;
        let anon = Client::open(raw, DOMAIN, None).await;
        assert!(anon.features.sasl2 && anon.features.fast_mechanisms.is_empty());
    });
}

/// Vanish, get a message while away, come back with the FAST token and an
/// inline resume: `<resumed/>` with the right h, then the message.
#[test]
fn fast_reconnect_with_inline_resume() {
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::fast_reconnect()).expect("start");
    cluster.register_many(&[("juliet", "pw"), ("romeo", "pw-romeo")]);
    let ua = new_user_agent_id();
    run(Duration::from_secs(60), async {
        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        let auth = Authenticate::plain("juliet", "pw")
            .user_agent(&ua)
            .bind("phone")
            .enable_sm()
            .request_token(HT_SHA_256_NONE);
        let ok = c.authenticate(&auth).await.expect("SASL2 success");
        let jid = ok.jid.unwrap();
        let sm_id = ok.enabled.unwrap().id.unwrap();
        let token = ok.token.unwrap().token;

        // Two stanzas each way before vanishing; the client acks what it got.
        for id in ["p1", "p2"] {
            c.send_stanza(&format!(
                "<iq type='get' id='{id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
            c.expect("pong", |e| {
                e.is("iq", NS_CLIENT) && e.attr("id") == Some(id)
            })
            .await;
        }
        assert_eq!(c.request_ack().await, 2);
        c.ack().await;
        let h = c.h_in;
        assert_eq!(h, 2);
        c.vanish();
        wait_hibernating(&cluster, true);

        let mut romeo = Client::legacy_login(
            Raw::tcp(cluster.addr(0)).await,
            DOMAIN,
            "romeo",
            "pw-romeo",
            Some("balcony"),
        )
        .await;
        romeo.send_message(&jid, "m1", "while you were away").await;
        // Romeo's own stream stays healthy (and the message has been routed).
        romeo
            .send(&format!(
                "<iq type='get' id='r1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        romeo.expect("pong", |e| e.attr("id") == Some("r1")).await;

        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        assert_eq!(
            c.features.fast_mechanisms,
            vec![HT_SHA_256_NONE.to_string()]
        );
        let auth = Authenticate::fast("juliet", &token)
            .user_agent(&ua)
            .resume(&sm_id, h)
            .request_token(HT_SHA_256_NONE);
        let ok = c.authenticate(&auth).await.expect("FAST success");
        eprintln!("RESUME SUCCESS: {}", ok.xml());
        let resumed = ok.resumed.clone().expect("<resumed/> in <success/>");
        assert_eq!(resumed.previd, sm_id);
        assert_eq!(resumed.h, 2, "the server handled our two iqs");
        assert_eq!(ok.jid.as_deref(), Some(jid.as_str()));
        assert!(!ok.bound && ok.enabled.is_none());
        assert_eq!(
            ok.additional_data.as_deref(),
            Some(ht_sha_256_none_server(&token).as_slice()),
            "server proof"
        );
        let new_token = ok.token.clone().expect("a new token, as requested").token;
        assert_ne!(new_token, token);
        // previd appears once, in <resumed/>, a direct child of <success/>.
        assert_eq!(ok.xml().matches(sm_id.as_str()).count(), 1, "{}", ok.xml());
        assert!(ok.element.child("resumed", NS_SM).is_some());

        let m = c.expect_message().await;
        eprintln!("AFTER RESUME: {}", m.xml);
        assert_eq!(m.child_text("body", NS_CLIENT), Some("while you were away"));
        assert!(m.attr("from").unwrap().starts_with("romeo@example.test/"));
        assert_eq!(c.h_in, h + 1, "the message is counted");
        let f = c.expect("features", |e| e.is("features", NS_STREAM)).await;
        eprintln!("FEATURES after resume: {}", f.xml);
        assert!(
            c.acks_requested >= 1,
            "Prosody asks for an ack after a resume"
        );

        // The resumed session carries on: the server's h continues from 2.
        c.send_stanza(&format!(
            "<iq type='get' id='p3' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        c.expect("pong", |e| e.attr("id") == Some("p3")).await;
        assert_eq!(c.request_ack().await, 3);
        wait_hibernating(&cluster, false);
        let d = cluster.sessions_detail(0);
        assert!(d.iter().any(|s| s.jid == jid), "{d:?}");
        drop(romeo);
    });
}

/// A resume the server can't honour fails inline while Bind 2 still binds a
/// fresh session in the same round trip; a wrong FAST token fails the
/// authentication; what FAST and inline SM need from the client.
#[test]
fn failed_inline_resume_and_fast_requirements() {
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::fast_reconnect()).expect("start");
    cluster.register("juliet", "pw");
    let ua = new_user_agent_id();
    run(Duration::from_secs(60), async {
        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        let auth = Authenticate::plain("juliet", "pw")
            .user_agent(&ua)
            .bind("phone")
            .enable_sm()
            .resume("no-such-session", 0);
        let ok = c.authenticate(&auth).await.expect("SASL2 success");
        eprintln!("FAILED RESUME SUCCESS: {}", ok.xml());
        let failed = ok.sm_failed.clone().expect("<failed/>");
        assert_eq!(
            failed.condition.as_deref(),
            Some("item-not-found"),
            "{}",
            ok.xml()
        );
        assert!(
            ok.element.child("failed", NS_SM).is_some(),
            "resume failure is a direct child"
        );
        assert!(ok.resumed.is_none());
        let enabled = ok.enabled.clone().expect("fresh session with SM");
        assert!(enabled.id.is_some());
        assert!(
            c.jid
                .as_deref()
                .unwrap()
                .starts_with("juliet@example.test/phone~")
        );

        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        let bad = c
            .authenticate(&Authenticate::fast("juliet", "secret-token:fast-wrong").user_agent(&ua))
            .await
            .expect_err("a wrong token fails");
        eprintln!("BAD TOKEN: {}", bad.element.xml);
        assert_eq!(bad.condition, "not-authorized", "{}", bad.element.xml);
        assert!(bad.element.is("failure", NS_SASL2));

        // Without <user-agent id/> no token is issued (and nothing says why),
        // and an <enable/> outside Bind 2 is ignored.
        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        let mut auth = Authenticate::plain("juliet", "pw").request_token(HT_SHA_256_NONE);
        auth.extra = format!("<enable xmlns='{NS_SM}' resume='true'/>");
        let ok = c.authenticate(&auth).await.expect("SASL2 success");
        assert!(
            ok.token.is_none() && ok.enabled.is_none() && !ok.bound,
            "{}",
            ok.xml()
        );
        assert_eq!(ok.jid.as_deref(), Some(JULIET), "not bound: the bare JID");

        // FAST authentication needs <user-agent id/>...
        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        let no_ua = c
            .authenticate(&Authenticate::fast("juliet", "secret-token:fast-x"))
            .await
            .expect_err("no user agent");
        eprintln!("FAST WITHOUT USER AGENT: {}", no_ua.element.xml);
        assert_eq!(no_ua.condition, "malformed-request");
        // ...and the user's JID as the stream header's 'from'.
        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, None).await;
        assert!(c.features.fast_mechanisms.is_empty());
        let no_from = c
            .authenticate(&Authenticate::fast("juliet", "secret-token:fast-x").user_agent(&ua))
            .await
            .expect_err("no from");
        assert_eq!(no_from.condition, "malformed-request");
    });
}

/// The legacy XEP-0198 flow on a node without the SASL2 modules: PLAIN, bind,
/// `<enable/>`, vanish, a message while away, a new login, `<resume/>`.
#[test]
fn legacy_sm_resume() {
    let opts = ProsodyOpts {
        extra_config: "smacks_hibernation_time = 60".into(),
        ..ProsodyOpts::default()
    };
    let cluster = ProsodyCluster::start(1, DOMAIN, opts).expect("start");
    cluster.register_many(&[("juliet", "pw"), ("romeo", "pw-romeo")]);
    run(Duration::from_secs(60), async {
        let mut c = Client::legacy_login(
            Raw::tcp(cluster.addr(0)).await,
            DOMAIN,
            "juliet",
            "pw",
            Some("legacy"),
        )
        .await;
        let jid = c.jid.clone().unwrap();
        assert!(c.features.sm, "{}", c.features.element.xml);
        let enabled = c.enable_sm().await.expect("enabled");
        eprintln!("LEGACY ENABLED: {}", enabled.element.xml);
        let sm_id = enabled.id.clone().expect("SM id");
        assert!(enabled.resume);
        c.send_stanza(&format!(
            "<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        c.expect("pong", |e| e.attr("id") == Some("p1")).await;
        assert_eq!(c.request_ack().await, 1);
        let h = c.h_in;
        assert_eq!(h, 1);
        c.vanish();
        wait_hibernating(&cluster, true);

        let mut romeo = Client::legacy_login(
            Raw::tcp(cluster.addr(0)).await,
            DOMAIN,
            "romeo",
            "pw-romeo",
            Some("balcony"),
        )
        .await;
        romeo.send_message(&jid, "m1", "while you were away").await;
        romeo
            .send(&format!(
                "<iq type='get' id='r1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        romeo.expect("pong", |e| e.attr("id") == Some("r1")).await;

        let mut c = Client::legacy_login(
            Raw::tcp(cluster.addr(0)).await,
            DOMAIN,
            "juliet",
            "pw",
            None,
        )
        .await;
        let resumed = c.resume(&sm_id, h).await.expect("resumed");
        eprintln!("LEGACY RESUMED: {}", resumed.element.xml);
        assert_eq!(resumed.previd, sm_id);
        assert_eq!(resumed.h, 1);
        let m = c.expect_message().await;
        assert_eq!(m.child_text("body", NS_CLIENT), Some("while you were away"));
        assert_eq!(c.h_in, h + 1);
        assert_eq!(c.request_ack().await, 1);
        wait_hibernating(&cluster, false);

        // An unknown id fails.
        let mut again = Client::legacy_login(
            Raw::tcp(cluster.addr(0)).await,
            DOMAIN,
            "juliet",
            "pw",
            None,
        )
        .await;
        let failed = again
            .resume("no-such-session", 0)
            .await
            .expect_err("unknown id");
        eprintln!("LEGACY FAILED: {}", failed.element.xml);
        assert_eq!(failed.condition.as_deref(), Some("item-not-found"));
        drop(romeo);
    });
}

/// Inline resume after a password login, without FAST tokens anywhere.
#[test]
fn plain_inline_resume_without_tokens() {
    let cluster = ProsodyCluster::start(1, DOMAIN, ProsodyOpts::fast_reconnect()).expect("start");
    cluster.register("juliet", "pw");
    let ua = new_user_agent_id();
    run(Duration::from_secs(60), async {
        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        let ok = c
            .authenticate(
                &Authenticate::plain("juliet", "pw")
                    .user_agent(&ua)
                    .bind("x")
                    .enable_sm(),
            )
            .await
            .expect("SASL2 success");
        assert!(ok.token.is_none());
        let sm_id = ok.enabled.unwrap().id.unwrap();
        c.vanish();
        wait_hibernating(&cluster, true);
        let mut c = Client::open(Raw::tcp(cluster.addr(0)).await, DOMAIN, Some(JULIET)).await;
        let ok = c
            .authenticate(
                &Authenticate::plain("juliet", "pw")
                    .user_agent(&ua)
                    .resume(&sm_id, 0),
            )
            .await
            .expect("SASL2 success");
        eprintln!("PLAIN RESUME: {}", ok.xml());
        assert_eq!(ok.resumed.unwrap().previd, sm_id);
        assert!(ok.token.is_none());
    });
}

/// Without the harness's compatibility module, stock mod_sasl2_fast on
/// Prosody 0.12 kills every stream before its features (see
/// `contrib/prosody/mod_sasl2_compat.lua`). When this starts failing, Prosody or the
/// community modules changed: the compatibility module may no longer be needed.
#[test]
fn stock_sasl2_fast_breaks_prosody_0_12_streams() {
    let opts = ProsodyOpts {
        extra_modules: vec!["sasl2".into(), "sasl2_fast".into()],
        ..ProsodyOpts::default()
    };
    let err = ProsodyCluster::start(1, DOMAIN, opts)
        .err()
        .expect("the readiness probe's stream fails");
    let msg = err.to_string();
    assert!(
        msg.contains("mod_sasl2_fast.lua") && msg.contains("(field 'stream')"),
        "{msg}"
    );
}
