//! TLS session tickets every proxy of a fleet can open: stateless resumption across proxies.
//!
//! A session ticket is the server's own state about a TLS session (its resumption secret, cipher
//! suite, SNI, ALPN), encrypted under a key only servers hold and handed to the client, which
//! presents it on its next connection to skip the certificate and the signature. When every
//! proxy derives the same ticket keys from the secrets in `[resumption] tls_ticket_key_files`,
//! a client may reconnect to any proxy and still resume.
//!
//! Keys, without coordination between proxies: time is cut into periods of
//! `tls_ticket_rotation`; period `p = floor(unix_time / rotation)` has its own AEAD key, derived
//! from a secret with HKDF under the label `"xmpp-lb tls ticket v1" ‖ p` (8 bytes, big-endian).
//! Tickets are encrypted under the first (newest) secret's key of the current period; a ticket
//! is opened if it names any listed secret and the current or the previous period, so a ticket
//! is good for one to two periods and a stolen derived key opens at most two periods' tickets.
//! Once a period is over, nothing can open its tickets any more: the forward secrecy that
//! tickets weaken is bounded by the rotation, not by a lifetime written into the ticket.
//!
//! Wire format: `key name ‖ nonce ‖ ciphertext ‖ tag`, where the key name (12 bytes: the
//! secret's 4-byte id, then the 8-byte period) picks the key without trial decryption and is
//! authenticated as associated data; the nonce is 96 random bits; the AEAD is AES-256-GCM.
//!
//! 0-RTT early data is not possible with these tickets: rustls only offers it with stateful
//! resumption, and the acceptor sets `max_early_data_size = 0` besides.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::keys::FleetKey;

/// HKDF label prefix of ticket keys; the period follows as 8 big-endian bytes.
const LABEL: &[u8] = b"xmpp-lb tls ticket v1";
/// Length of the key name at the start of a ticket: key id (4 bytes) and period (8 bytes).
const NAME_LEN: usize = 4 + 8;
/// AES-256-GCM tag length.
const TAG_LEN: usize = 16;
/// How far ahead of this proxy's clock another proxy's clock may be and still have its fresh
/// tickets accepted: near the start of a period, a proxy whose clock runs a little fast already
/// issues tickets of the next period.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The longest ticket lifetime TLS allows (RFC 8446, section 4.6.1: 7 days); clients cap it.
const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// Seconds since the Unix epoch.
type Clock = Box<dyn Fn() -> u64 + Send + Sync>;
/// Derived AEAD keys by (secret id, period).
type KeyCache = HashMap<([u8; 4], u64), Arc<LessSafeKey>>;

/// A [`rustls::server::ProducesTickets`] whose keys come from the fleet's secrets and the clock,
/// so that tickets one proxy issues are opened by every other.
pub struct FleetTicketer {
    /// The secrets, newest first: the first encrypts, all decrypt.
    keys: Vec<FleetKey>,
    /// The period length in seconds (at least 1).
    rotation: u64,
    /// Now, in seconds since the Unix epoch (the system clock but in tests).
    clock: Clock,
    /// Derived AEAD keys by (secret id, period): per handshake, an AEAD operation and a lookup
    /// rather than an HKDF. Holds only periods still accepted, a handful of entries.
    cache: Mutex<KeyCache>,
    /// Nonces.
    rng: SystemRandom,
}

impl FleetTicketer {
    /// A ticketer over `keys` (newest first) with periods of `rotation`, on the system clock.
    pub fn new(keys: &[FleetKey], rotation: Duration) -> FleetTicketer {
        FleetTicketer::with_clock(keys, rotation, system_clock)
    }

    /// The same with another clock (seconds since the Unix epoch): tests move time by hand.
    pub fn with_clock(
        keys: &[FleetKey],
        rotation: Duration,
        clock: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> FleetTicketer {
        FleetTicketer {
            keys: keys.to_vec(),
            rotation: rotation.as_secs().max(1),
            clock: Box::new(clock),
            cache: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }

    /// The period a time falls in.
    fn period_at(&self, secs: u64) -> u64 {
        secs / self.rotation
    }

    /// Whether a ticket of `period` may be opened now: the current period, the previous one, or
    /// the next one if this proxy's clock is within [`MAX_CLOCK_SKEW`] of its start.
    fn accepts(&self, period: u64, now: u64) -> bool {
        let current = self.period_at(now);
        period == current
            || current.checked_sub(1) == Some(period)
            || (period == current + 1
                && self.period_at(now.saturating_add(MAX_CLOCK_SKEW.as_secs())) == period)
    }

    /// The AEAD key of secret `key` for `period`, derived once and cached.
    fn key_for(&self, key: &FleetKey, period: u64, now: u64) -> Arc<LessSafeKey> {
        // A poisoned lock only means another thread panicked while holding it; the map itself
        // is always consistent (entries are inserted whole).
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(k) = cache.get(&(key.id(), period)) {
            return k.clone();
        }
        let mut label = Vec::with_capacity(LABEL.len() + 8);
        label.extend_from_slice(LABEL);
        label.extend_from_slice(&period.to_be_bytes());
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        key.derive(&label, raw.as_mut());
        let aead = Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, raw.as_ref()).expect("a 32-byte AES-256 key"),
        ));
        // Drop what no ticket may use any more, so the map stays a handful of entries.
        cache.retain(|&(_, p), _| self.accepts(p, now));
        cache.insert((key.id(), period), aead.clone());
        aead
    }
}

/// Seconds since the Unix epoch on the system clock (0 before 1970: no ticket opens then but
/// those issued at that same broken time).
fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl rustls::server::ProducesTickets for FleetTicketer {
    fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// One rotation period (at most the 7 days TLS allows): a ticket issued at any time of a
    /// period is opened until the end of the next one, so it is good for at least that long.
    fn lifetime(&self) -> u32 {
        self.rotation.min(MAX_LIFETIME_SECS) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let now = (self.clock)();
        let period = self.period_at(now);
        let aead = self.key_for(key, period, now);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&key.id());
        ticket.extend_from_slice(&period.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&ticket[..NAME_LEN]),
            &mut sealed,
        )
        .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let id: [u8; 4] = name[..4].try_into().ok()?;
        let period = u64::from_be_bytes(name[4..].try_into().ok()?);
        let key = self.keys.iter().find(|k| k.id() == id)?;
        let now = (self.clock)();
        if !self.accepts(period, now) {
            return None;
        }
        let aead = self.key_for(key, period, now);
        let mut buf = sealed.to_vec();
        let plain = aead
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(name),
                &mut buf,
            )
            .ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

impl fmt::Debug for FleetTicketer {
    /// Key ids and the period only, never a secret or a derived key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetTicketer")
            .field(
                "keys",
                &self.keys.iter().map(FleetKey::id_hex).collect::<Vec<_>>(),
            )
            .field("rotation_secs", &self.rotation)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    use rustls::server::ProducesTickets;

    use super::*;

    const HOUR: u64 = 3600;
    /// Some time well into a period (periods of an hour start on the hour).
    const T0: u64 = 1_700_000_000 / HOUR * HOUR + 1000;

    fn key(name: &str) -> FleetKey {
        let secret = format!("a secret that is long enough: {name:>16}");
        FleetKey::from_secret(secret.as_bytes(), Path::new(name))
    }

    /// A ticketer over `keys` with hourly periods, and the clock it reads.
    fn ticketer(keys: &[FleetKey]) -> (FleetTicketer, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(T0));
        let clock = now.clone();
        let t = FleetTicketer::with_clock(keys, Duration::from_secs(HOUR), move || {
            clock.load(Ordering::Relaxed)
        });
        (t, now)
    }

    const PLAIN: &[u8] = b"the server's session state, whatever rustls puts in it";

    #[test]
    fn a_ticket_round_trips_and_hides_its_content() {
        let (t, _) = ticketer(&[key("a")]);
        assert!(t.enabled());
        let ticket = t.encrypt(PLAIN).unwrap();
        assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + PLAIN.len() + TAG_LEN);
        assert_eq!(ticket[..4], key("a").id());
        assert_eq!(ticket[4..12], (T0 / HOUR).to_be_bytes());
        assert!(!ticket.windows(8).any(|w| w == &PLAIN[..8]));
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(PLAIN));
        // Random nonces: the same state never gives the same ticket twice.
        assert_ne!(t.encrypt(PLAIN).unwrap(), ticket);
        assert_eq!(
            t.decrypt(&t.encrypt(b"").unwrap()).as_deref(),
            Some(&b""[..])
        );
    }

    #[test]
    fn tickets_open_during_their_period_and_the_next_only() {
        let (t, now) = ticketer(&[key("a")]);
        let ticket = t.encrypt(PLAIN).unwrap();
        // Last second of the next period: still good.
        now.store((T0 / HOUR + 2) * HOUR - 1, Ordering::Relaxed);
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(PLAIN));
        // Two periods on: gone, however good the ticket.
        now.store((T0 / HOUR + 2) * HOUR, Ordering::Relaxed);
        assert_eq!(t.decrypt(&ticket), None);
        // A ticket issued in the last second of a period lives one period and a second.
        now.store((T0 / HOUR + 1) * HOUR - 1, Ordering::Relaxed);
        let late = t.encrypt(PLAIN).unwrap();
        now.store((T0 / HOUR + 2) * HOUR - 1, Ordering::Relaxed);
        assert!(t.decrypt(&late).is_some());
        // The hint given to clients never promises more than that.
        assert_eq!(t.lifetime(), HOUR as u32);
    }

    #[test]
    fn tickets_from_the_future_open_only_within_the_clock_skew() {
        let (issuer, issuer_now) = ticketer(&[key("a")]);
        let (opener, opener_now) = ticketer(&[key("a")]);
        let next = (T0 / HOUR + 1) * HOUR;
        // The issuer's clock has just entered the next period; the opener's is 30 s behind.
        issuer_now.store(next, Ordering::Relaxed);
        let ticket = issuer.encrypt(PLAIN).unwrap();
        opener_now.store(next - 30, Ordering::Relaxed);
        assert_eq!(opener.decrypt(&ticket).as_deref(), Some(PLAIN));
        // Ten minutes behind: that is no skew, refused.
        opener_now.store(next - 600, Ordering::Relaxed);
        assert_eq!(opener.decrypt(&ticket), None);
        // Two periods ahead: refused, skew or not.
        issuer_now.store(next + HOUR, Ordering::Relaxed);
        let far = issuer.encrypt(PLAIN).unwrap();
        opener_now.store(next + HOUR - 30, Ordering::Relaxed);
        assert!(opener.decrypt(&far).is_some());
        opener_now.store(next - 30, Ordering::Relaxed);
        assert_eq!(opener.decrypt(&far), None);
    }

    #[test]
    fn rotating_secrets_keeps_old_tickets_until_their_secret_is_removed() {
        let (a, b) = (key("a"), key("b"));
        let (old, _) = ticketer(std::slice::from_ref(&a));
        let ticket = old.encrypt(PLAIN).unwrap();
        // B added in front: B issues, A still opens.
        let (rotated, _) = ticketer(&[b.clone(), a.clone()]);
        assert_eq!(rotated.decrypt(&ticket).as_deref(), Some(PLAIN));
        let fresh = rotated.encrypt(PLAIN).unwrap();
        assert_eq!(fresh[..4], b.id());
        // A proxy not yet reloaded (A only) cannot open B's tickets: a full handshake, no harm.
        assert_eq!(old.decrypt(&fresh), None);
        // A removed: its tickets are refused.
        let (only_b, _) = ticketer(&[b]);
        assert_eq!(only_b.decrypt(&ticket), None);
        assert_eq!(only_b.decrypt(&fresh).as_deref(), Some(PLAIN));
    }

    #[test]
    fn two_proxies_with_the_same_key_files_open_each_others_tickets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tickets.key");
        std::fs::write(&file, "c2hhcmVkIGJ5IGV2ZXJ5IHByb3h5IG9mIHRoZSBmbGVldA==\n").unwrap();
        let (one, _) = ticketer(&[FleetKey::load(&file).unwrap()]);
        let (two, _) = ticketer(&[FleetKey::load(&file).unwrap()]);
        let from_one = one.encrypt(PLAIN).unwrap();
        let from_two = two.encrypt(PLAIN).unwrap();
        assert_eq!(two.decrypt(&from_one).as_deref(), Some(PLAIN));
        assert_eq!(one.decrypt(&from_two).as_deref(), Some(PLAIN));
        // Another secret of the same name opens nothing.
        let (stranger, _) = ticketer(&[key("tickets.key")]);
        assert_eq!(stranger.decrypt(&from_one), None);
    }

    #[test]
    fn damaged_and_foreign_tickets_are_refused_without_panicking() {
        let (t, _) = ticketer(&[key("a")]);
        let ticket = t.encrypt(PLAIN).unwrap();
        // Every single bit flipped: name (id, period), nonce, ciphertext, tag.
        for i in 0..ticket.len() {
            for bit in 0..8 {
                let mut bad = ticket.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(t.decrypt(&bad), None, "byte {i} bit {bit}");
            }
        }
        // Every truncation, and appended bytes.
        for n in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..n]), None, "{n} bytes");
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(t.decrypt(&longer), None);
        // Garbage of every length, including what another ticketer (rustls' own) produces.
        for n in [0, 1, 12, 39, 40, 41, 100, 1000, 70_000] {
            assert_eq!(t.decrypt(&vec![0u8; n]), None, "{n} zeros");
            assert_eq!(t.decrypt(&vec![0xffu8; n]), None, "{n} ones");
        }
        let foreign = rustls::crypto::ring::Ticketer::new().unwrap();
        assert_eq!(t.decrypt(&foreign.encrypt(PLAIN).unwrap()), None);
        // A right name with a forged body: the tag does not verify.
        let mut forged = ticket[..NAME_LEN + NONCE_LEN].to_vec();
        forged.extend_from_slice(&[0u8; 64]);
        assert_eq!(t.decrypt(&forged), None);
    }

    #[test]
    fn no_key_no_tickets() {
        let (t, _) = ticketer(&[]);
        assert!(!t.enabled());
        assert_eq!(t.encrypt(PLAIN), None);
        assert_eq!(t.decrypt(&[0u8; 64]), None);
    }

    #[test]
    fn derived_keys_are_cached_and_old_ones_dropped() {
        let (t, now) = ticketer(&[key("a"), key("b")]);
        let ticket = t.encrypt(PLAIN).unwrap();
        assert!(t.decrypt(&ticket).is_some());
        assert_eq!(t.cache.lock().unwrap().len(), 1);
        for step in 1..=10 {
            now.store(T0 + step * HOUR, Ordering::Relaxed);
            let _ = t.encrypt(PLAIN).unwrap();
            let _ = t.decrypt(&ticket);
            assert!(t.cache.lock().unwrap().len() <= 3, "step {step}");
        }
    }

    #[test]
    fn concurrent_handshakes_share_the_ticketer() {
        let (t, _) = ticketer(&[key("a")]);
        let t = Arc::new(t);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let ticket = t.encrypt(PLAIN).unwrap();
                        assert_eq!(t.decrypt(&ticket).as_deref(), Some(PLAIN));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
    }

    #[test]
    fn lifetime_is_the_rotation_within_what_tls_allows_and_debug_shows_no_secret() {
        let week = FleetTicketer::new(&[key("a")], Duration::from_secs(7 * 24 * HOUR));
        assert_eq!(week.lifetime(), 604_800);
        let long = FleetTicketer::new(&[key("a")], Duration::from_secs(30 * 24 * HOUR));
        assert_eq!(long.lifetime(), 604_800);
        let shown = format!("{week:?}");
        assert!(shown.contains(&key("a").id_hex()), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        // The system clock works too.
        let t = FleetTicketer::new(&[key("a")], Duration::from_secs(60));
        assert_eq!(
            t.decrypt(&t.encrypt(PLAIN).unwrap()).as_deref(),
            Some(PLAIN)
        );
    }
}
