//! contrib/kubernetes: every manifest parses as YAML (PyYAML, as kubectl's YAML would), has
//! the objects the README describes, and the configuration embedded in the ConfigMap passes
//! `xmpp-lb check` with the files it names (certificates generated, keys made here).

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::pki::TestPki;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/kubernetes")
}

/// Parse every `*.yaml` of contrib/kubernetes with PyYAML; the documents as JSON values.
fn documents() -> Vec<serde_json::Value> {
    let script = r#"
import json, pathlib, sys, yaml
docs = []
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    for d in yaml.safe_load_all(p.read_text()):
        if d is not None:
            docs.append(d)
print(json.dumps(docs))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the manifests parse as YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("a {kind} named {name}"))
}

#[test]
fn the_manifests_parse_and_the_embedded_configuration_passes_check() {
    let docs = documents();
    for d in &docs {
        assert!(d["apiVersion"].is_string() && d["kind"].is_string(), "{d}");
    }
    // The backends: a StatefulSet behind a headless Service with a named port, whose SRV
    // name is what the proxies' group asks for.
    let nodes = find(&docs, "Service", "xmpp-nodes");
    assert_eq!(nodes["spec"]["clusterIP"], "None");
    assert_eq!(nodes["spec"]["ports"][0]["name"], "xmpp-client");
    let sts = find(&docs, "StatefulSet", "xmpp");
    assert_eq!(sts["spec"]["serviceName"], "xmpp-nodes");
    // The proxies: readiness on /readyz, a preStop, the keys from a Secret.
    let proxy = find(&docs, "Deployment", "xmpp-lb");
    let container = &proxy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["lifecycle"]["preStop"].is_object());
    let volumes = proxy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "xmpp-lb-keys")
    );

    let toml_text = find(&docs, "ConfigMap", "xmpp-lb-config")["data"]["xmpp-lb.toml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(toml_text.contains("_xmpp-client._tcp.xmpp-nodes.xmpp.svc.cluster.local"));
    // Mount the files where the pod would have them: the paths under /etc/xmpp-lb move to a
    // temporary directory, nothing else changes.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("etc/xmpp-lb");
    std::fs::create_dir_all(root.join("tls")).unwrap();
    std::fs::create_dir_all(root.join("keys")).unwrap();
    let pki = TestPki::new(&["example.test"]);
    std::fs::copy(pki.cert_path("example.test"), root.join("tls/tls.crt")).unwrap();
    std::fs::copy(pki.key_path("example.test"), root.join("tls/tls.key")).unwrap();
    for key in ["sm.key", "tickets.key"] {
        let out = Command::new("openssl")
            .args(["rand", "-base64", "48"])
            .output()
            .expect("openssl");
        std::fs::write(root.join("keys").join(key), &out.stdout).unwrap();
    }
    std::fs::write(root.join("keys/admin.token"), "a-token-of-the-tests\n").unwrap();
    let config = root.join("xmpp-lb.toml");
    std::fs::write(
        &config,
        toml_text.replace("/etc/xmpp-lb/", &format!("{}/", root.display())),
    )
    .unwrap();
    let out = Command::new(testkit::xmpp_lb_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xmpp-lb check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
