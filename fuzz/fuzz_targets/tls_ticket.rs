//! TLS session tickets come back from any client that presents one, and are opened before
//! the handshake completes (`tls::tickets::FleetTicketer`). On any ticket, at any time and
//! rotation period: no panic, and nothing opens but what the fleet sealed. A sealed ticket
//! opens to exactly what was sealed while its period is accepted (the current one, the one
//! before, or the next one within the allowed clock skew) and not otherwise, opens under the
//! fleet's other proxies' order of keys too, never under another fleet's, and any change to
//! it (a byte replaced, removed or added, or a cut) makes it unopenable.
//!
//! Input layout: byte 0 picks the mode (even: the rest is a presented ticket; odd: seal and
//! tamper); then 8 bytes of seal time, 8 of open time (both reduced to a span of centuries),
//! 2 of rotation in minutes, 3 of tampering; the rest is the session state.
#![no_main]

use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use xmpp_lb::fuzzing::{FleetTicketer, ticket_open, ticket_seal};
use xmpp_lb::keys::FleetKey;

/// The clock skew the ticketer allows (`tls::tickets::MAX_CLOCK_SKEW`).
const SKEW: u64 = 60;
/// Times are reduced to this span (about 3000 years from 1970).
const SPAN: u64 = 1 << 36;

fn key(secret: &str) -> FleetKey {
    FleetKey::from_secret(secret.as_bytes(), Path::new("fuzz.key"))
}

fn ticketer(keys: &[FleetKey], rotation: u64, now: u64) -> FleetTicketer {
    FleetTicketer::with_clock(keys, Duration::from_secs(rotation), move || now)
}

fn u64_at(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fuzz_target!(|input: &[u8]| {
    let new = key("the fleet's newest ticket secret, 0123456789");
    let old = key("the fleet's older ticket secret, 0123456789ab");
    let other = key("another fleet's ticket secret, 0123456789abc");
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if rest.len() < 21 {
        return;
    }
    let (sealed_at, opened_at) = (u64_at(&rest[..8]) % SPAN, u64_at(&rest[8..16]) % SPAN);
    let rotation = (u64::from(u16::from_be_bytes([rest[16], rest[17]])) + 1) * 60;
    let tamper = &rest[18..21];
    let data = &rest[21..];

    let opener = ticketer(&[new.clone(), old.clone()], rotation, opened_at);
    if mode % 2 == 0 {
        // Nothing made up opens: an AEAD tag cannot be guessed.
        assert_eq!(ticket_open(&opener, data), None, "a made-up ticket opened");
        return;
    }
    let sealer = ticketer(&[new.clone(), old.clone()], rotation, sealed_at);
    let ticket = ticket_seal(&sealer, data).expect("sealing works");
    let (p_seal, p_now) = (sealed_at / rotation, opened_at / rotation);
    let accepted = p_seal == p_now
        || p_seal + 1 == p_now
        || (p_seal == p_now + 1 && (opened_at + SKEW) / rotation == p_seal);
    let opened = ticket_open(&opener, &ticket);
    if accepted {
        assert_eq!(
            opened.as_deref(),
            Some(data),
            "sealed at {sealed_at}, opened at {opened_at}, rotation {rotation}"
        );
    } else {
        assert_eq!(
            opened, None,
            "sealed at {sealed_at}, opened at {opened_at}, rotation {rotation}"
        );
    }
    // A proxy that lists the keys in the other order (mid-rotation) opens it as well; one
    // with only the older key or another fleet's does not.
    let reordered = ticketer(&[old.clone(), new.clone()], rotation, opened_at);
    assert_eq!(ticket_open(&reordered, &ticket), opened);
    assert_eq!(
        ticket_open(&ticketer(&[old], rotation, opened_at), &ticket),
        None
    );
    assert_eq!(
        ticket_open(&ticketer(&[other], rotation, opened_at), &ticket),
        None
    );

    let mut bad = ticket.clone();
    let at = usize::from(tamper[0]) * bad.len() / 256;
    match tamper[2] % 4 {
        0 => bad[at] ^= tamper[1].max(1),
        1 => {
            bad.remove(at);
        }
        2 => bad.insert(at, tamper[1]),
        _ => bad.truncate(at),
    }
    assert_eq!(ticket_open(&opener, &bad), None, "a tampered ticket opened");
});
