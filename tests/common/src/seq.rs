//! Sequence-numbered messages a logged-in client sends to its own full JID, through the proxy
//! and its node and back, so that what returns shows loss, reordering and duplication end to
//! end: each body carries its number, and each message received must carry the next number.
//! The nodes are not clustered, so a message to oneself is the one exchange that works on any
//! node a client lands on.
//!
//! A client keeps at most a window of messages unanswered and sends at a steady pace. When its
//! connection is cut, the numbers still in flight are given up explicitly
//! ([`SeqClient::give_up_in_flight`]), never silently, and the count carries on over the next
//! connection.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::sasl2::{Client, NS_CLIENT, Read};

/// The pace and window of [`SeqClient::run`].
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// One message per period.
    pub every: Duration,
    /// At most this many messages sent and not received back; sending waits beyond it.
    pub window: u64,
}

/// A client messaging itself with numbered bodies.
pub struct SeqClient {
    /// The connection (logged in, bound).
    pub client: Client,
    /// The number the next message sent carries.
    pub next_send: u64,
    /// The number the next message received must carry.
    pub next_expected: u64,
    /// Messages received in order so far, shared so that a test can watch progress while the
    /// client runs (on every connection of this client).
    pub delivered: Arc<AtomicU64>,
    /// Each message that broke the order, as a readable line: a gap (loss), a number from the
    /// past (reorder or duplicate), or a body that is no number.
    pub violations: Vec<String>,
    /// Ranges of numbers given up because the connection carrying them was cut.
    pub given_up: Vec<Range<u64>>,
}

impl SeqClient {
    /// Start counting on a bound client, from 1.
    pub fn new(client: Client) -> SeqClient {
        assert!(client.jid.is_some(), "a bound client");
        SeqClient {
            client,
            next_send: 1,
            next_expected: 1,
            delivered: Arc::new(AtomicU64::new(0)),
            violations: Vec::new(),
            given_up: Vec::new(),
        }
    }

    /// Messages sent and not received back yet.
    pub fn in_flight(&self) -> u64 {
        self.next_send - self.next_expected
    }

    /// Whether the connection or its stream ended.
    pub fn ended(&self) -> bool {
        self.client.raw.closed || self.client.stream_closed
    }

    /// Send the next numbered message; false if the connection is gone.
    pub async fn send_next(&mut self) -> bool {
        let jid = self.client.jid.clone().expect("a bound client");
        let n = self.next_send;
        let xml = format!("<message to='{jid}' type='chat' id='q{n}'><body>{n}</body></message>");
        let sent = self.client.try_send_stanza(&xml).await;
        if sent {
            self.next_send += 1;
        }
        sent
    }

    /// Read one element by `deadline` and check it if it is one of ours; false when nothing
    /// came (time is up, or the connection ended: see [`ended`](Self::ended)).
    pub async fn receive(&mut self, deadline: Instant) -> bool {
        let e = match self.client.next_within(deadline).await {
            Read::Element(e) => e,
            Read::TimedOut | Read::Closed => return false,
        };
        if !e.is("message", NS_CLIENT) {
            return true;
        }
        let body = e.child_text("body", NS_CLIENT).unwrap_or_default();
        match body.parse::<u64>() {
            Ok(n) if n == self.next_expected => {
                self.next_expected += 1;
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(n) if n > self.next_expected => {
                self.violations.push(format!(
                    "expected {}, got {n}: {} lost",
                    self.next_expected,
                    n - self.next_expected
                ));
                self.next_expected = n + 1;
            }
            Ok(n) => self.violations.push(format!(
                "expected {}, got {n} again or late",
                self.next_expected
            )),
            Err(_) => self
                .violations
                .push(format!("a message that is not ours: {}", e.xml)),
        }
        true
    }

    /// Send at `pace` and check what comes back until `until`, or until the connection ends.
    pub async fn run(&mut self, pace: Pace, until: Instant) {
        let mut next_tick = Instant::now();
        while !self.ended() && Instant::now() < until {
            let now = Instant::now();
            if now >= next_tick && self.in_flight() < pace.window {
                if !self.send_next().await {
                    // The write failed: read what is left, to the end.
                    while self.receive(until).await {}
                    return;
                }
                next_tick = (next_tick + pace.every).max(now);
                continue;
            }
            let wake = if self.in_flight() < pace.window {
                next_tick.min(until)
            } else {
                until
            };
            self.receive(wake).await;
        }
    }

    /// Send `n` messages at `pace`, then wait for every one to come back; true if they all did
    /// within `limit` of the last one sent.
    pub async fn exchange(&mut self, n: u64, pace: Pace, limit: Duration) -> bool {
        let last = self.next_send + n;
        let deadline = Instant::now() + pace.every * n as u32 + limit;
        let mut next_tick = Instant::now();
        while self.next_send < last && !self.ended() && Instant::now() < deadline {
            if self.in_flight() < pace.window && Instant::now() >= next_tick {
                if !self.send_next().await {
                    break;
                }
                next_tick += pace.every;
                continue;
            }
            let wake = if self.in_flight() < pace.window {
                next_tick
            } else {
                deadline
            };
            self.receive(wake).await;
        }
        self.next_send == last && self.settle(limit).await
    }

    /// Read until every message sent has come back, the connection ends, or `limit` passes;
    /// true if nothing is in flight any more.
    pub async fn settle(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.in_flight() > 0 && !self.ended() && self.receive(deadline).await {}
        self.in_flight() == 0
    }

    /// The connection was cut: the numbers in flight will not come back. Records them and
    /// returns how many; the next message received must carry the next number sent.
    pub fn give_up_in_flight(&mut self) -> u64 {
        let lost = self.next_expected..self.next_send;
        let n = lost.end - lost.start;
        if n > 0 {
            self.given_up.push(lost);
        }
        self.next_expected = self.next_send;
        n
    }

    /// Carry on over another connection (after [`give_up_in_flight`](Self::give_up_in_flight),
    /// or a resumed stream that loses nothing); returns the old one.
    pub fn switch_to(&mut self, mut client: Client) -> Client {
        assert!(
            client.jid.is_some() || client.sm,
            "a bound or resumed client"
        );
        // A resumed stream is the same session: the same full JID.
        if client.jid.is_none() {
            client.jid = self.client.jid.clone();
        }
        std::mem::replace(&mut self.client, client)
    }
}
