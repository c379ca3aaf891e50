//! Soak run: a steady churn of logins, XEP-0198 resumptions through the proxy, messages and
//! abrupt disconnects against the xmpp-lb binary built beside this example, in front of three
//! Prosody nodes it starts itself on loopback (the integration tests' harness,
//! `testkit::soak`). It samples the proxy process (resident memory, open descriptors, threads,
//! open-connection gauges) every `--sample-seconds` and prints each sample as a Markdown row
//! as it goes, then the whole table and what the clients did. Exits non-zero if a client saw
//! a message lost, reordered or duplicated, or failed to log in or resume.
//!
//! `benches/soak.sh` builds it in release mode and runs it.
//!
//! ```sh
//! cargo build --release --bin xmpp-lb --example soak
//! target/release/examples/soak --minutes 30 --sample-seconds 60
//! ```

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use testkit::seq::Pace;
use testkit::soak::{self, SoakOpts};

/// Soak run of xmpp-lb: churn of logins, resumptions, messages and disconnects.
#[derive(Parser, Debug)]
#[command(about, long_about = None)]
struct Args {
    /// How long the churn lasts, in minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Clients at once (one account each).
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Period of the samples of the proxy process, in seconds.
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
    /// Messages each client sends itself per visit.
    #[arg(long, default_value_t = 5)]
    messages: u64,
    /// One message per this many milliseconds within a visit.
    #[arg(long, default_value_t = 40)]
    message_ms: u64,
    /// Pause between two visits of a client, in milliseconds.
    #[arg(long, default_value_t = 400)]
    pause_ms: u64,
}

fn main() {
    let args = Args::parse();
    let opts = SoakOpts {
        clients: args.clients,
        duration: Duration::from_secs_f64(args.minutes * 60.0),
        sample_every: Duration::from_secs(args.sample_seconds),
        messages: args.messages,
        pace: Pace {
            every: Duration::from_millis(args.message_ms),
            window: args.messages.max(1),
        },
        pause: Duration::from_millis(args.pause_ms),
    };
    eprint!("{}", soak::TABLE_HEAD);
    let run = soak::run(&opts, |s| {
        eprint!("{}", soak::row(&soak::clock(s.at), s));
        let _ = std::io::stderr().flush();
    });
    println!("{}", soak::table(&run));
    let c = &run.churn;
    println!(
        "{} clients for {:.0} min: {} fresh logins, {} resumptions ({} failed at the node), \
         {} clean closes, {} abrupt disconnects, {} messages, all back in order: {}",
        args.clients,
        args.minutes,
        c.logins,
        c.resumes,
        run.resumes_failed,
        c.closes,
        c.vanishes,
        c.messages,
        c.violations.is_empty()
    );
    for line in c.failures.iter().chain(&c.violations).take(20) {
        println!("  {line}");
    }
    if !c.failures.is_empty() || !c.violations.is_empty() || run.resumes_failed > 0 {
        std::process::exit(1);
    }
}
