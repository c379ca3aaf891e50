//! The commands an operator installs and looks after the proxy with: `xmpp-lb keygen` makes
//! secrets the proxy accepts (and never silently replaces one), `xmpp-lb check` warns about
//! secret files others may read, and the man pages and shell completions generated from the
//! command line's definition render and name every command.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use testkit::config::strings;
use testkit::env::{DOMAIN, EnvBuilder};
use testkit::raw::Raw;

fn xmpp_lb(args: &[&str]) -> Output {
    Command::new(testkit::xmpp_lb_bin())
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The commands `xmpp-lb --help` lists (not `help` itself).
fn commands() -> Vec<String> {
    let help = String::from_utf8(xmpp_lb(&["--help"]).stdout).unwrap();
    let listed = help
        .split_once("Commands:")
        .and_then(|(_, rest)| rest.split_once("Options:"))
        .map(|(commands, _)| commands)
        .expect("a Commands: section");
    listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn keygen_writes_owner_only_secrets_and_never_replaces_one_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sm.key");
    let path = key.to_str().unwrap();
    let out = xmpp_lb(&["keygen", path]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&key), 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    assert!(
        first.trim().len() >= xmpp_lb::keys::MIN_SECRET_BYTES,
        "{first}"
    );

    let again = xmpp_lb(&["keygen", path]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("--force"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first);

    chmod(&key, 0o644);
    let forced = xmpp_lb(&["keygen", "--force", path]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert_ne!(std::fs::read_to_string(&key).unwrap(), first);
    assert_eq!(mode(&key), 0o600, "a replaced secret is owner-only again");

    let nowhere = xmpp_lb(&["keygen", dir.path().join("no/such/dir/k").to_str().unwrap()]);
    assert_eq!(nowhere.status.code(), Some(1), "{}", text(&nowhere));
}

/// Secrets made by `keygen` serve as they are: the stream-management key, the ticket key and
/// the admin token of a proxy that a real client logs in through; `check` is silent about
/// them, and warns, naming each file, once they are readable by others.
#[test]
fn keygen_secrets_serve_and_check_warns_about_readable_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    for name in ["sm.key", "tickets.key", "admin.token"] {
        let out = xmpp_lb(&["keygen", file(name).to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (sm, tickets, token) = (file("sm.key"), file("tickets.key"), file("admin.token"));
    let env = EnvBuilder::new(1)
        .users(&[("alice", "pw-alice")])
        .config({
            let (sm, tickets, token) = (sm.clone(), tickets.clone(), token.clone());
            move |c| {
                c.set("resumption.sm_key_files", strings(&[sm.to_str().unwrap()]))
                    .set(
                        "resumption.tls_ticket_key_files",
                        strings(&[tickets.to_str().unwrap()]),
                    )
                    .set("metrics.token_file", token.display().to_string())
            }
        })
        .start_process();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut alice = rt.block_on(Raw::login(
        env.proxy.addr("direct"),
        DOMAIN,
        &env.pki.ca_path(),
        "alice",
        "pw-alice",
    ));
    rt.block_on(alice.ping(DOMAIN));
    // The generated token is the admin token.
    let secret = std::fs::read_to_string(&token).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{}/metrics", env.proxy.metrics);
    let status = |bearer: Option<&str>| {
        let mut req = agent.get(&url);
        if let Some(t) = bearer {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        req.call().unwrap().status().as_u16()
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some(secret.trim())), 200);
    drop(alice);

    // The running configuration, checked: its secrets are owner-only, so no warning.
    let config = env.proxy.config_path.to_str().unwrap().to_string();
    let key = env.pki.key_path(DOMAIN);
    chmod(&key, 0o600);
    let quiet = xmpp_lb(&["check", "--config", &config]);
    assert!(quiet.status.success(), "{}", text(&quiet));
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("warning"),
        "{}",
        text(&quiet)
    );
    // Readable by others: still valid (exit 0), with one warning per file.
    chmod(&sm, 0o644);
    chmod(&token, 0o640);
    chmod(&key, 0o604);
    let loud = xmpp_lb(&["check", "--config", &config]);
    assert!(loud.status.success(), "{}", text(&loud));
    let warnings = String::from_utf8_lossy(&loud.stderr).to_string();
    for (file, who) in [
        (&sm, "all users"),
        (&token, "its group"),
        (&key, "all users"),
    ] {
        let line = warnings
            .lines()
            .find(|l| l.starts_with("warning:") && l.contains(&*file.to_string_lossy()))
            .unwrap_or_else(|| panic!("no warning about {}: {warnings}", file.display()));
        assert!(line.contains(who) && line.contains("chmod 600"), "{line}");
    }
    assert!(
        !warnings.contains(&*tickets.to_string_lossy()),
        "the ticket key is still owner-only: {warnings}"
    );
}

#[test]
fn the_man_pages_render_and_name_every_command() {
    let commands = commands();
    assert!(
        [
            "run", "check", "route", "drain", "undrain", "reload", "keygen"
        ]
        .iter()
        .all(|c| commands.iter().any(|k| k == c)),
        "{commands:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = xmpp_lb(&["man", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // Rendered as a reader sees it: man(1) where installed, else groff, else the roff text.
    let render = |page: &Path| -> String {
        for (program, args) in [("man", vec!["-l"]), ("groff", vec!["-man", "-Tutf8"])] {
            if let Ok(out) = Command::new(program)
                .args(&args)
                .arg(page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .output()
            {
                assert!(out.status.success(), "{program}: {}", text(&out));
                return String::from_utf8_lossy(&out.stdout).to_string();
            }
        }
        std::fs::read_to_string(page).unwrap()
    };
    let main = render(&dir.path().join("xmpp-lb.1"));
    assert!(
        main.contains("SYNOPSIS") && main.contains("SUBCOMMANDS"),
        "{main}"
    );
    for c in &commands {
        assert!(
            main.contains(&format!("xmpp-lb-{c}")),
            "xmpp-lb(1) lacks {c}:\n{main}"
        );
        let page = render(&dir.path().join(format!("xmpp-lb-{c}.1")));
        assert!(
            page.contains("NAME") && page.contains(&format!("xmpp-lb-{c}")),
            "{page}"
        );
    }
    // The hidden commands that make these files are not documented as commands.
    assert!(!main.contains("xmpp-lb-man") && !main.contains("xmpp-lb-completions"));
}

#[test]
fn the_completions_load_and_complete_every_command() {
    let commands = commands();
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = xmpp_lb(&["completions", shell]);
        assert!(out.status.success(), "{}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
        std::fs::write(dir.path().join(shell), script).unwrap();
    }
    // bash loads its script, which registers a function for `xmpp-lb`; called as bash would
    // after `xmpp-lb `, it offers the commands.
    let probe = format!(
        "source {}; f=$(complete -p xmpp-lb | sed -E 's/.* -F ([^ ]+) .*/\\1/'); \
         COMP_WORDS=(xmpp-lb ''); COMP_CWORD=1; COMP_LINE='xmpp-lb '; COMP_POINT=8; \
         \"$f\" xmpp-lb '' xmpp-lb; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        dir.path().join("bash").display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let offered = String::from_utf8_lossy(&out.stdout);
    for c in &commands {
        assert!(
            offered.lines().any(|l| l == c),
            "bash offers {c}: {offered}"
        );
    }
}
