use super::*;

fn messages(out: &mut Outbound) -> Vec<String> {
    let mut v = Vec::new();
    while let Some(m) = out.next_message().unwrap() {
        v.push(m);
    }
    v
}

#[test]
fn open_becomes_a_stream_header() {
    let got = inbound(
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='example.test' from='a@example.test' version='1.0' xml:lang='en'/>",
    )
    .unwrap();
    assert_eq!(
        got,
        Inbound::Header(
            b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='example.test' from='a@example.test' version='1.0' xml:lang='en'>".to_vec()
        )
    );
    let header = got.into_bytes();
    let parsed = StreamHeader::parse(&header).unwrap();
    assert_eq!(parsed.to.as_deref(), Some("example.test"));
    assert_eq!(parsed.from.as_deref(), Some("a@example.test"));
}

#[test]
fn attribute_values_are_escaped_again() {
    let got = inbound(
        "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='a&apos;b&amp;c' version='1.0'/>",
    )
    .unwrap()
    .into_bytes();
    let parsed = StreamHeader::parse(&got).unwrap();
    assert_eq!(parsed.to.as_deref(), Some("a'b&c"));
}

#[test]
fn close_and_elements() {
    assert_eq!(
        inbound(" <close xmlns=\"urn:ietf:params:xml:ns:xmpp-framing\"/>\n").unwrap(),
        Inbound::Close
    );
    assert_eq!(
        inbound("\n<message xmlns='jabber:client' to='b@x'><body>hi</body></message> ").unwrap(),
        Inbound::Element(
            b"<message xmlns='jabber:client' to='b@x'><body>hi</body></message>".to_vec()
        )
    );
    // Another namespace's `open` is an ordinary element.
    assert_eq!(
        inbound("<open xmlns='urn:example'/>").unwrap(),
        Inbound::Element(b"<open xmlns='urn:example'/>".to_vec())
    );
}

#[test]
fn anything_but_one_element_is_refused() {
    for bad in [
        "",
        "   ",
        "hello",
        "<a/><b/>",
        "<a/>text",
        "<a>",
        "<!-- c --><a/>",
        "<?xml version='1.0'?><a/>",
        "<a>&foo;</a>",
        "</stream:stream>",
        "<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
    ] {
        assert!(inbound(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn a_node_stream_becomes_one_message_per_element() {
    let mut out = Outbound::new(65536, "wss://example.test/ws".into());
    let stream = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='example.test' version='1.0' xml:lang='en'> <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>\n<message to='a@example.test'><body>x</body></message><iq xmlns='jabber:client' type='result' id='1'/></stream:stream>";
    // Every split of the bytes gives the same messages.
    let mut expected = None;
    for cut in 0..stream.len() {
        let mut out = Outbound::new(65536, "wss://example.test/ws".into());
        out.push(&stream.as_bytes()[..cut]);
        let mut got = messages(&mut out);
        out.push(&stream.as_bytes()[cut..]);
        got.extend(messages(&mut out));
        match &expected {
            None => expected = Some(got),
            Some(e) => assert_eq!(&got, e, "split at {cut}"),
        }
    }
    out.push(stream.as_bytes());
    assert_eq!(
        messages(&mut out),
        [
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' from='example.test' id='abc' version='1.0' xml:lang='en'/>",
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>",
            "<message xmlns='jabber:client' to='a@example.test'><body>x</body></message>",
            "<iq xmlns='jabber:client' type='result' id='1'/>",
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
        ]
    );
    for m in expected.unwrap() {
        // Each message stands alone: it parses with no context.
        if !m.starts_with("<open") && !m.starts_with("<close") {
            Element::parse(m.as_bytes(), &NsContext::default()).unwrap();
        }
    }
}

#[test]
fn sasl_success_restarts_the_stream() {
    let mut out = Outbound::new(65536, "wss://e/ws".into());
    out.push(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='2' version='1.0'><stream:features/>");
    let got = messages(&mut out);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[2].starts_with("<open ") && got[2].contains("id='2'"));
}

#[test]
fn see_other_host_becomes_close_with_a_uri() {
    let mut out = Outbound::new(65536, "wss://example.test/ws".into());
    out.push(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    out.push(&crate::xmpp::stream_error::render(
        &crate::xmpp::stream_error::Condition::SeeOtherHost("example.test:5222".into()),
        Some("drained"),
    ));
    let got = messages(&mut out);
    assert_eq!(
        got[1..],
        [
            "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing' see-other-uri='wss://example.test/ws'/>"
        ]
    );
    // Other stream errors pass, with the stream prefix declared.
    let mut out = Outbound::new(65536, "wss://example.test/ws".into());
    out.push(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    out.push(&crate::xmpp::stream_error::render(
        &crate::xmpp::stream_error::Condition::SystemShutdown,
        None,
    ));
    let got = messages(&mut out);
    assert!(
        got[1].starts_with("<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"),
        "{got:?}"
    );
    assert_eq!(
        got[2],
        "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
    );
}

#[test]
fn oversized_node_elements_are_an_error() {
    let mut out = Outbound::new(600, "wss://e/ws".into());
    out.push(b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>");
    out.push(format!("<message><body>{}</body></message>", "x".repeat(700)).as_bytes());
    assert!(out.next_message().is_ok());
    assert!(out.next_message().is_err());
}
