use super::*;

const BASE: &str = r#"[[listener]]
name = "c2s"
bind = ["127.0.0.1:5222"]
tls = "starttls"
cert = "c.pem"
key = "c.key"

[routing]
key = "jid"
domains = ["example.test"]

[[backend]]
name = "a"
address = "127.0.0.1:1"

[[backend]]
name = "b"
address = "127.0.0.1:2"
"#;

#[test]
fn explore() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), "x").unwrap();
    std::fs::write(dir.path().join("c.key"), "x").unwrap();
    let p = dir.path().join("bad.toml");
    let cases: Vec<String> = vec![
        format!("bogus = 1\n{BASE}"),
        BASE.replace(
            "address = \"127.0.0.1:2\"",
            "address = \"127.0.0.1:2\"\nfoo = 3",
        ),
        BASE.replace("key = \"jid\"", "key = \"jid\"\nfoo = 3"),
        BASE.replace("tls = \"starttls\"", "tls = \"tlsx\""),
        BASE.replace("key = \"jid\"", "key = \"ip\""),
        format!("{BASE}\n[limits]\nprerouting_timeout = \"5 parsecs\"\n"),
        format!("{BASE}\n[limits]\nprerouting_timeout = 5\n"),
        format!("{BASE}\n[limits]\nmax_header_bytes = 100\n"),
        format!("{BASE}\n[limits]\nmax_header_bytes = -1\n"),
        BASE.replace(
            "[routing]\nkey = \"jid\"\ndomains = [\"example.test\"]\n",
            "",
        ),
        BASE.replace("domains = [\"example.test\"]\n", ""),
        BASE.replace("name = \"b\"\n", ""),
        BASE.replace("tls = \"starttls\"\n", ""),
        BASE.replace("bind = [\"127.0.0.1:5222\"]", "bind = [\"127.0.0.1:5222\""),
        BASE.replace("key = \"jid\"", "key = \"jid"),
        format!("{BASE}\n[routing.x]\na=1\n"),
        BASE.replace("weight", "x").replace(
            "address = \"127.0.0.1:2\"",
            "address = \"127.0.0.1:2\"\nweight = 0",
        ),
        BASE.replace(
            "address = \"127.0.0.1:2\"",
            "address = \"127.0.0.1:2\"\nweight = -1",
        ),
        BASE.replace("key = \"jid\"", "key = \"jid\"\nipv4_prefix = 300"),
        format!("{BASE}\n[probe]\ninterval = \"1x\"\n"),
        BASE.replace(
            "cert = \"c.pem\"",
            "cert = \"c.pem\"\nextra_cert = [{cert = \"c.pem\", key = \"c.key\", x = 1}]",
        ),
        format!("{BASE}\n[[listener.extra_cert]]\ncert = \"c.pem\"\nkey = \"c.key\"\nx = 1\n"),
        format!("{BASE}\n[metrics]\nbind = \"x\"\n"),
        format!("{BASE}\n[metrics]\n"),
        "".to_string(),
        BASE.replace("name = \"b\"", "name = \"b\"\nname = \"c\""),
        format!("{BASE}\n[routing]\nkey = \"jid\"\n"),
        BASE.replace(
            "cert = \"c.pem\"",
            "cert = \"c.pem\"\nextra_cert = [{cert = \"c.pem\"}]",
        ),
        format!("{BASE}\n[limits]\nmax_header_bytes = 100\n")
            .replace("[[listener]]", "[ [listener] ]"),
        format!("{BASE}\nweight = \n"),
        format!("{BASE}\n= 3\n"),
    ];
    for c in cases {
        if let Err(e) = toml::from_str::<RawConfig>(&c) {
            println!("span {:?} len {}", e.span(), c.len());
        }
        match Config::from_toml(&c, &p) {
            Ok(_) => println!("OK"),
            Err(e) => println!("{e}"),
        }
    }
}
