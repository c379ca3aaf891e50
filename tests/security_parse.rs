//! Elements shaped to make the proxy's parser allocate far more than they weigh, sent to the
//! real proxy binary with a real Prosody node behind it: the proxy refuses them with a stream
//! error, and its resident memory does not grow.
//!
//! The attack as reported: a client names itself in its stream header (`from`), so it is
//! routed at once, without logging in; the proxy then parses every element it sends until
//! authentication ends. One element of 62 KB (under the default
//! `limits.max_negotiation_element_bytes`) declares a 30 KB namespace and holds 8,000 empty
//! children; when each parsed child held its own copy of the namespace, that was 240 MB per
//! element, and three connections one after another left the proxy hundreds of megabytes
//! larger.

use std::time::Duration;

use testkit::env::{DOMAIN, EnvBuilder};
use testkit::proxy::ProxyProcess;
use testkit::raw::{Raw, header};

struct Env {
    env: testkit::env::Env<ProxyProcess>,
    rt: tokio::runtime::Runtime,
}

/// One node with alice, and the proxy binary as a process of its own (its memory is its own).
fn env() -> Env {
    let env = EnvBuilder::new(1)
        .users(&[("alice", "pw-alice")])
        .start_process();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Env { env, rt }
}

/// The condition of the stream error in `got`, and its text.
fn stream_error(got: &str) -> Option<(String, String)> {
    let (_, err) = got.split_once("<stream:error>")?;
    let name = err
        .strip_prefix('<')?
        .split(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .next()?
        .to_string();
    let text = err
        .split_once("<text")
        .and_then(|(_, t)| t.split_once('>'))
        .and_then(|(_, t)| t.split_once("</text>"))
        .map(|(t, _)| t.to_string())
        .unwrap_or_default();
    Some((name, text))
}

/// A client routed by its header's `from` (no login) sends `element` once the node's
/// features have come through; returns the stream error it gets before the close.
fn routed_client_sends(env: &Env, element: &str) -> (String, String) {
    let addr = env.env.proxy.addr("direct");
    let ca = env.env.pki.ca_path();
    env.rt.block_on(async {
        let mut raw = Raw::direct_tls(addr, DOMAIN, &ca).await;
        raw.send(&header(DOMAIN, Some("alice@example.test"))).await;
        raw.expect("</stream:features>").await;
        raw.clear();
        raw.send(element).await;
        let got = raw.read_to_close(Duration::from_secs(15)).await;
        stream_error(&got).unwrap_or_else(|| panic!("no stream error, got {got:?}"))
    })
}

/// The proxy still logs users in.
fn still_serves(env: &Env) {
    let addr = env.env.proxy.addr("direct");
    let ca = env.env.pki.ca_path();
    env.rt.block_on(async {
        let mut raw = Raw::login(addr, DOMAIN, &ca, "alice", "pw-alice").await;
        raw.ping(DOMAIN).await;
    });
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[test]
fn a_long_namespace_with_thousands_of_children_does_not_grow_the_proxy() {
    let env = env();
    // Warm up: a login and a small refused element, so that what every connection needs
    // (TLS, buffers, the node's connection) is counted before the baseline.
    still_serves(&env);
    routed_client_sends(&env, &format!("<q xmlns='urn:x:{}'/>", "a".repeat(2000)));
    std::thread::sleep(Duration::from_millis(200));
    let before = env.env.proxy.rss_bytes();

    let namespace = format!("urn:x:{}", "a".repeat(30_000));
    let element = format!("<q xmlns='{namespace}'>{}</q>", "<a/>".repeat(8000));
    assert!(element.len() < 64 * 1024, "{}", element.len());
    let answers: Vec<(String, String)> = (0..3)
        .map(|_| routed_client_sends(&env, &element))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = env.env.proxy.rss_bytes();
    let grown = after.saturating_sub(before);
    eprintln!(
        "proxy RSS: {:.1} MiB before, {:.1} MiB after three 62 KB elements (+{:.1} MiB)",
        mib(before),
        mib(after),
        mib(grown)
    );
    assert!(
        grown < 20 * 1024 * 1024,
        "the proxy grew by {:.1} MiB ({:.1} -> {:.1})",
        mib(grown),
        mib(before),
        mib(after)
    );
    for (condition, text) in answers {
        // A parser bound (XmlError::Limit): <policy-violation/>, the text names the bound.
        assert_eq!(condition, "policy-violation", "{text}");
        assert!(
            text.contains("longer than 1024 bytes"),
            "{condition}: {text}"
        );
    }
    still_serves(&env);
}

#[test]
fn deep_nesting_and_floods_of_elements_or_attributes_are_refused() {
    let env = env();
    // Nesting is bounded by the scanner, on every frame: <policy-violation/>.
    let deep = format!("{}{}", "<a>".repeat(200), "</a>".repeat(200));
    let (condition, text) = routed_client_sends(&env, &deep);
    assert_eq!(condition, "policy-violation", "{text}");

    // The parser's bounds (XmlError::Limit).
    for (element, why) in [
        (format!("<q>{}</q>", "<a/>".repeat(8000)), "elements"),
        (
            format!(
                "<q{}/>",
                (0..3000).map(|i| format!(" a{i}=''")).collect::<String>()
            ),
            "attributes",
        ),
        (format!("<q a='{}'/>", "v".repeat(2000)), "longer than"),
    ] {
        let (condition, text) = routed_client_sends(&env, &element);
        assert_eq!(condition, "policy-violation", "{text}");
        assert!(text.contains(why), "{condition}: {text}");
    }
    still_serves(&env);
}
