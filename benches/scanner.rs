//! Cost of the parsing the proxy does on every connection: framing a stream (the scanner runs
//! over every byte until authentication ends), parsing and filtering a backend's features,
//! and parsing a client's stream header.
//!
//! Inputs are built before timing starts; only the work under test is inside `b.iter`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use xmpp_lb::xmpp::element::{Element, NsContext};
use xmpp_lb::xmpp::features;
use xmpp_lb::xmpp::header::StreamHeader;
use xmpp_lb::xmpp::scanner::Scanner;

/// The header slixmpp sends after TLS.
const SLIXMPP_HEADER: &[u8] = b"<stream:stream to='example.test' xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' xml:lang='en' version='1.0'>";

/// The header Prosody answers with; its declarations are the context features are parsed in.
const PROSODY_HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xml:lang='en' xmlns:stream='http://etherx.jabber.org/streams' id='4f1c2b0e-9a3d-4c6e-8b1f-2d7e5a9c0b13' from='example.test' version='1.0'>";

/// What Prosody offers a client after STARTTLS, before authentication.
const PROSODY_FEATURES: &[u8] = b"<stream:features>\
<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>\
<channel-binding type='tls-server-end-point'/></sasl-channel-binding>\
<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1-PLUS</mechanism>\
<mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
<register xmlns='http://jabber.org/features/iq-register'/></stream:features>";

/// The limit the proxy applies to one frame; large enough never to trigger here.
const MAX_FRAME: usize = 1 << 20;

/// A post-login client stream of about 64 KiB: the header, then the mix a chat session
/// produces (messages with escapes and extensions, presences with caps, iq round trips,
/// whitespace keepalives between them).
fn session_stream() -> Vec<u8> {
    let mut s = SLIXMPP_HEADER.to_vec();
    let mut i = 0;
    while s.len() < 64 * 1024 {
        let part = match i % 6 {
            0 => format!(
                "<message to='bob@example.test/phone' type='chat' id='m{i}' xml:lang='en'>\
<body>Are we still on for {i} o&apos;clock? 1 &lt; 2 &amp; caf\u{e9} \u{263a}</body>\
<active xmlns='http://jabber.org/protocol/chatstates'/>\
<request xmlns='urn:xmpp:receipts'/><origin-id xmlns='urn:xmpp:sid:0' id='o{i}'/></message>"
            ),
            1 => format!(
                "<presence id='p{i}'><show>away</show><status>In a meeting</status><priority>5</priority>\
<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='http://slixmpp.com/ver/1.8.5' \
ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>"
            ),
            2 => format!(
                "<iq type='get' id='ping{i}' to='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"
            ),
            3 => "\n".to_string(),
            4 => format!(
                "<iq type='set' id='r{i}'><query xmlns='jabber:iq:roster'>\
<item jid='carol{i}@example.test' name='Carol &amp; co'><group>Friends</group></item></query></iq>"
            ),
            _ => format!(
                "<message to='room@conference.example.test' type='groupchat' id='g{i}'>\
<body><![CDATA[<code> & stuff]]> and more text to make the body a realistic length</body></message> "
            ),
        };
        s.extend_from_slice(part.as_bytes());
        i += 1;
    }
    s
}

/// Scans `data` as if it arrived `chunk` bytes at a time, dropping each frame from the front
/// as the proxy's reader does. Returns the number of frames.
fn scan_chunked(data: &[u8], chunk: usize) -> usize {
    let mut scanner = Scanner::new(MAX_FRAME);
    let (mut start, mut end, mut frames) = (0, 0, 0);
    while end < data.len() {
        end = (end + chunk).min(data.len());
        while let Some(f) = scanner.next(&data[start..end]).expect("valid stream") {
            start += f.len;
            frames += 1;
        }
    }
    frames
}

fn scanner(c: &mut Criterion) {
    let data = session_stream();
    // Every chunking must frame the whole stream, and the same way.
    let expected = scan_chunked(&data, data.len());
    for chunk in [1, 100, 4096] {
        assert_eq!(scan_chunked(&data, chunk), expected);
    }

    let mut g = c.benchmark_group("scanner");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("one_buffer", |b| {
        b.iter(|| scan_chunked(black_box(&data), data.len()))
    });
    for chunk in [1, 100, 4096] {
        g.bench_with_input(BenchmarkId::new("chunks", chunk), &chunk, |b, &chunk| {
            b.iter(|| scan_chunked(black_box(&data), chunk))
        });
    }
    g.finish();
}

fn features(c: &mut Criterion) {
    let ctx: NsContext = StreamHeader::parse(PROSODY_HEADER)
        .expect("valid header")
        .ns;
    assert_eq!(
        features::filter(PROSODY_FEATURES, &ctx)
            .expect("valid features")
            .mechanisms,
        ["SCRAM-SHA-1", "PLAIN"]
    );

    let mut g = c.benchmark_group("features");
    g.throughput(Throughput::Bytes(PROSODY_FEATURES.len() as u64));
    g.bench_function("element_parse", |b| {
        b.iter(|| Element::parse(black_box(PROSODY_FEATURES), &ctx))
    });
    g.bench_function("filter", |b| {
        b.iter(|| features::filter(black_box(PROSODY_FEATURES), &ctx))
    });
    g.finish();
}

fn header(c: &mut Criterion) {
    StreamHeader::parse(SLIXMPP_HEADER).expect("valid header");
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Bytes(SLIXMPP_HEADER.len() as u64));
    g.bench_function("parse_slixmpp", |b| {
        b.iter(|| StreamHeader::parse(black_box(SLIXMPP_HEADER)))
    });
    g.finish();
}

criterion_group!(benches, scanner, features, header);
criterion_main!(benches);
