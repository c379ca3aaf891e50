//! The configuration snippets of docs/backends.md are meant to be copied: every `toml` block
//! must validate as part of a configuration, and the HAProxy block must pass HAProxy's own
//! check. (The Prosody and ejabberd snippets hold the options the harnesses in
//! tests/common give the real servers.)

use std::path::Path;
use std::process::Command;

fn doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/backends.md")).unwrap()
}

/// The fenced blocks of the page with their language tag.
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

#[test]
fn every_toml_snippet_validates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/certs");
    // The files the snippets name, as an operator would have them.
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    for (name, from) in [
        ("internal-ca.pem", "example.test.pem"),
        ("example.test.pem", "example.test.pem"),
        ("example.test.key", "example.test.key"),
    ] {
        std::fs::copy(certs.join(from), etc.join(name)).unwrap();
    }
    let listener = format!(
        "[[listener]]\nname = \"c2s\"\nbind = [\"127.0.0.1:5222\"]\ntls = \"starttls\"\ncert = \"{0}/example.test.pem\"\nkey = \"{0}/example.test.key\"\n\n[routing]\ndomains = [\"example.test\"]\nkey = \"jid\"\n",
        etc.display()
    );
    let snippets: Vec<String> = blocks(&doc())
        .into_iter()
        .filter(|(lang, _)| lang == "toml")
        .map(|(_, body)| body.replace("/etc/xmpp-lb", &etc.display().to_string()))
        .collect();
    assert!(snippets.len() >= 4, "{snippets:?}");
    for snippet in snippets {
        let mut text = listener.clone();
        if !snippet.lines().any(|l| l.trim() == "[[backend]]") {
            text.push_str("\n[[backend]]\nname = \"node1\"\naddress = \"10.0.0.11:5222\"\n");
        }
        text.push('\n');
        text.push_str(&snippet);
        let path = dir.path().join("snippet.toml");
        std::fs::write(&path, &text).unwrap();
        let config = xmpp_lb::Config::load(&path).unwrap_or_else(|e| {
            panic!("docs/backends.md snippet does not validate: {e}\n{snippet}")
        });
        // Certificates and CA files load as the proxy would load them.
        xmpp_lb::runtime::Runtime::build(config, &xmpp_lb::runtime::StateRegistry::default())
            .unwrap_or_else(|e| panic!("snippet cannot be put in service: {e}\n{snippet}"));
    }
}

#[test]
fn the_haproxy_snippet_passes_haproxys_check() {
    let binary = if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    };
    let snippet = blocks(&doc())
        .into_iter()
        .find(|(_, body)| body.contains("send-proxy-v2"))
        .expect("a HAProxy snippet")
        .1;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n{snippet}"
        ),
    )
    .unwrap();
    let out = Command::new(binary)
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("haproxy is installed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
