use super::*;

const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const STREAMS: &str = "http://etherx.jabber.org/streams";

fn stream_ctx() -> NsContext {
    NsContext {
        default_ns: "jabber:client".into(),
        prefixes: vec![("stream".into(), STREAMS.into())],
    }
}

const FEATURES: &[u8] = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>";

#[test]
fn namespaces_resolve_through_context_and_declarations() {
    let f = Element::parse(FEATURES, &stream_ctx()).unwrap();
    assert_eq!(f.name, "stream:features");
    assert!(f.is("features", STREAMS));
    let tls = f.child("starttls", TLS).unwrap();
    assert!(
        tls.child("required", TLS).is_some(),
        "default namespace is inherited"
    );
    let mechs = f.child("mechanisms", SASL).unwrap();
    let names: Vec<&str> = mechs
        .children_named("mechanism", SASL)
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(names, ["SCRAM-SHA-1", "PLAIN"]);
    assert!(f.child("mechanisms", TLS).is_none());

    let m = Element::parse(
        b"<message to='a@b'><body>hi</body><x:y xmlns:x='urn:x'><z/></x:y><w xmlns=''/></message>",
        &stream_ctx(),
    )
    .unwrap();
    assert_eq!(m.ns, "jabber:client");
    assert_eq!(m.children[0].ns, "jabber:client");
    assert_eq!(m.children[1].ns, "urn:x");
    assert_eq!(m.children[1].local_name(), "y");
    assert_eq!(
        m.children[1].children[0].ns, "jabber:client",
        "prefix declaration leaves the default alone"
    );
    assert_eq!(m.children[2].ns, "");
    assert_eq!(m.attr("to"), Some("a@b"));
    assert_eq!(m.attr("from"), None);

    // Declarations go out of scope with their element.
    let e = Element::parse(b"<a xmlns:p='urn:p'><p:b/></a>", &stream_ctx()).unwrap();
    assert_eq!(e.children[0].ns, "urn:p");
    assert!(matches!(
        Element::parse(b"<a><b xmlns:p='urn:p'/><p:c/></a>", &stream_ctx()),
        Err(XmlError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse(b"<q:a/>", &stream_ctx()),
        Err(XmlError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse(b"<a q:b='1'/>", &stream_ctx()),
        Err(XmlError::NotWellFormed(_))
    ));
    assert!(matches!(
        Element::parse(b"<a xmlns:p=''/>", &stream_ctx()),
        Err(XmlError::NotWellFormed(_))
    ));
    let e = Element::parse(b"<a xml:lang='en'/>", &NsContext::default()).unwrap();
    assert_eq!(e.ns, "");
    assert_eq!(e.attr("xml:lang"), Some("en"));
}

#[test]
fn spans_are_exact() {
    let f = Element::parse(FEATURES, &stream_ctx()).unwrap();
    assert_eq!(f.span, 0..FEATURES.len());
    let tls = &f.children[0];
    assert_eq!(
        &FEATURES[tls.span.clone()],
        b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    );
    assert_eq!(&FEATURES[tls.children[0].span.clone()], b"<required/>");
    let mech = &f.children[1].children[1];
    assert_eq!(
        &FEATURES[mech.span.clone()],
        b"<mechanism>PLAIN</mechanism>"
    );

    let src = b"<iq type='set' id='x'>\n  <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>a&amp;b</resource ></bind>\n  <e a='/>' /></iq>";
    let iq = Element::parse(src, &stream_ctx()).unwrap();
    assert_eq!(
        &src[iq.children[0].span.clone()],
        &b"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>a&amp;b</resource ></bind>"[..]
    );
    assert_eq!(
        &src[iq.children[0].children[0].span.clone()],
        b"<resource>a&amp;b</resource >"
    );
    assert_eq!(iq.children[0].children[0].text, "a&b");
    assert_eq!(&src[iq.children[1].span.clone()], b"<e a='/>' />");
    assert_eq!(iq.children[1].attr("a"), Some("/>"));
    assert_eq!(iq.text, "\n  \n  ");
}

#[test]
fn without_spans_drops_only_those_bytes() {
    let f = Element::parse(FEATURES, &stream_ctx()).unwrap();
    let tls = f.child("starttls", TLS).unwrap();
    let out = without_spans(FEATURES, std::slice::from_ref(&tls.span));
    assert_eq!(
        out,
        b"<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>"
    );
    let reparsed = Element::parse(&out, &stream_ctx()).unwrap();
    assert!(reparsed.child("starttls", TLS).is_none());

    let mechs = &f.children[1];
    let spans: Vec<_> = mechs.children.iter().map(|m| m.span.clone()).collect();
    let out = without_spans(FEATURES, &spans);
    assert!(out.ends_with(
        b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></mechanisms></stream:features>"
    ));
    assert_eq!(without_spans(b"abcdef", &[]), b"abcdef");
    assert_eq!(without_spans(b"abcdef", &[0..1, 5..6]), b"bcde");
    assert_eq!(without_spans(b"abcdef", &[4..9, 2..3]), b"abcd");
}

#[test]
fn text_is_unescaped_and_includes_cdata() {
    let src = b"<body>1 &lt; 2 &amp;&amp; &quot;q&apos; &#x263A;&#65;<![CDATA[<raw>&amp;]]>\r\nend</body>";
    let e = Element::parse(src, &stream_ctx()).unwrap();
    assert_eq!(e.text, "1 < 2 && \"q' \u{263A}A<raw>&amp;\nend");
    let e = Element::parse(b"<a v='x&lt;&#x41;&quot;' w=\"'\"/>", &stream_ctx()).unwrap();
    assert_eq!(e.attr("v"), Some("x<A\""));
    assert_eq!(e.attr("w"), Some("'"));
}

#[test]
fn escape_round_trips() {
    let s = "a<b>&c'd\"e \u{e9}";
    let esc = escape(s);
    assert_eq!(esc, "a&lt;b&gt;&amp;c&apos;d&quot;e \u{e9}");
    let xml = format!("<a v='{esc}' w=\"{esc}\">{esc}</a>");
    let e = Element::parse(xml.as_bytes(), &stream_ctx()).unwrap();
    assert_eq!(e.text, s);
    assert_eq!(e.attr("v"), Some(s));
    assert_eq!(e.attr("w"), Some(s));
}

#[test]
fn exact_escape_keeps_whitespace_in_attributes_and_text() {
    let s = "a\tb\nc\r\nd <&>'\"";
    let esc = escape(s);
    assert!(!esc.contains(['\t', '\n', '\r']), "{esc:?}");
    let xml = format!("<a v='{esc}' w=\"{esc}\">{esc}</a>");
    let e = Element::parse(xml.as_bytes(), &stream_ctx()).unwrap();
    assert_eq!(e.text, s);
    assert_eq!(e.attr("v"), Some(s));
    assert_eq!(e.attr("w"), Some(s));
    // The stream header parser reads the same value back.
    let header = format!(
        "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{esc}'>"
    );
    let h = crate::xmpp::header::StreamHeader::parse(header.as_bytes()).unwrap();
    assert_eq!(h.to.as_deref(), Some(s));
}

#[test]
fn rejections() {
    let ctx = stream_ctx();
    let nwf = |b: &[u8]| {
        assert!(
            matches!(Element::parse(b, &ctx), Err(XmlError::NotWellFormed(_))),
            "{:?}",
            String::from_utf8_lossy(b)
        )
    };
    let restricted = |b: &[u8]| {
        assert!(
            matches!(Element::parse(b, &ctx), Err(XmlError::Restricted(_))),
            "{:?}",
            String::from_utf8_lossy(b)
        )
    };
    nwf(b"<a>\xff</a>");
    nwf(b"<a>\xc3</a>");
    nwf(b"<a></b>");
    nwf(b"<a><b></a>");
    nwf(b"<a>");
    nwf(b"<a/><b/>");
    nwf(b"<a/> ");
    nwf(b" <a/>");
    nwf(b"");
    nwf(b"<a b='1' b='2'/>");
    nwf(b"<a b='<'/>");
    nwf(b"<a>&#1;</a>");
    nwf(b"<a>& b</a>");
    restricted(b"<a><!-- c --></a>");
    restricted(b"<a><?pi?></a>");
    restricted(b"<a><!DOCTYPE x></a>");
    restricted(b"<a>&foo;</a>");
    restricted(b"<a b='&foo;'/>");
    // Multi-byte UTF-8 is fine.
    let e = Element::parse("<a é='ü'>日本</a>".as_bytes(), &ctx).unwrap();
    assert_eq!(e.attr("é"), Some("ü"));
    assert_eq!(e.text, "日本");
}

// ---- bounds: what one frame may cost ---------------------------------------------------------

fn policy_violation(frame: &[u8]) {
    let e = Element::parse(frame, &stream_ctx())
        .err()
        .unwrap_or_else(|| panic!("accepted {} bytes", frame.len()));
    assert_eq!(
        crate::xmpp::stream_error::Condition::from(&e),
        crate::xmpp::stream_error::Condition::PolicyViolation,
        "{e}"
    );
}

#[test]
fn a_namespace_name_or_attribute_value_over_the_cap_is_a_policy_violation() {
    let at_cap = "a".repeat(1024);
    let over = "a".repeat(1025);
    for value in [&at_cap, &over] {
        let ok = value.len() <= 1024;
        let frames = [
            format!("<q xmlns='{value}'/>"),
            format!("<q xmlns:p='{value}'><p:r/></q>"),
            format!("<q a='{value}'/>"),
            format!("<q><r b=\"{value}\"/></q>"),
        ];
        for frame in frames {
            if ok {
                Element::parse(frame.as_bytes(), &stream_ctx()).unwrap();
            } else {
                policy_violation(frame.as_bytes());
            }
        }
    }
    // The cap is on the value as the application sees it: escapes do not count twice.
    let escaped = "&amp;".repeat(1024);
    let e = Element::parse(format!("<q a='{escaped}'/>").as_bytes(), &stream_ctx()).unwrap();
    assert_eq!(e.attr("a").map(str::len), Some(1024));
    // The attack as reported: a 30 KB namespace with thousands of children.
    let ns = format!("urn:x:{}", "a".repeat(30_000));
    policy_violation(format!("<q xmlns='{ns}'>{}</q>", "<a/>".repeat(8000)).as_bytes());
}

#[test]
fn more_elements_than_the_cap_is_a_policy_violation() {
    let frame = |children: usize| format!("<q>{}</q>", "<a/>".repeat(children));
    Element::parse(frame(255).as_bytes(), &stream_ctx()).unwrap();
    policy_violation(frame(256).as_bytes());
    policy_violation(frame(8000).as_bytes());
    // Nested ones count the same.
    let nested = format!("<q>{}</q>", "<b><a/><a/><a/></b>".repeat(64));
    policy_violation(nested.as_bytes());
}

#[test]
fn more_attributes_than_the_cap_is_a_policy_violation() {
    // Namespace declarations count: they are attributes too.
    let attrs = |n: usize| (0..n).map(|i| format!(" a{i}=''")).collect::<String>();
    Element::parse(format!("<q{}/>", attrs(1023)).as_bytes(), &stream_ctx()).unwrap();
    policy_violation(format!("<q xmlns='urn:x'{}/>", attrs(1024)).as_bytes());
    let spread = format!("<q>{}</q>", format!("<a{}/>", attrs(8)).repeat(200));
    policy_violation(spread.as_bytes());
}

#[test]
fn nesting_over_the_cap_is_a_policy_violation() {
    let frame = |depth: usize| format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
    let e = Element::parse(frame(128).as_bytes(), &stream_ctx()).unwrap();
    let mut deepest = &e;
    let mut depth = 1;
    while let Some(child) = deepest.children.first() {
        deepest = child;
        depth += 1;
    }
    assert_eq!(depth, 128);
    policy_violation(frame(129).as_bytes());
    policy_violation(frame(100_000).as_bytes());
}

// ---- secrets -------------------------------------------------------------------------------

#[test]
fn debug_output_never_shows_text_or_attribute_values() {
    // A SASL payload (base64 of "\0juliet\0secret"), a FAST token, a resumption id.
    let frames: [&[u8]; 3] = [
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGp1bGlldABzZWNyZXQ=</auth>",
        b"<success xmlns='urn:xmpp:sasl:2'><token xmlns='urn:xmpp:fast:0' expiry='2026-01-01T00:00:00Z' token='s3cr3t-fast-token'/></success>",
        b"<resume xmlns='urn:xmpp:sm:3' previd='wrapped-previd-value' h='3'/>",
    ];
    for frame in frames {
        let el = Element::parse(frame, &stream_ctx()).unwrap();
        for shown in [format!("{el:?}"), format!("{el:#?}")] {
            for secret in [
                "AGp1bGlldABzZWNyZXQ=",
                "s3cr3t-fast-token",
                "wrapped-previd-value",
                "2026-01-01",
            ] {
                assert!(!shown.contains(secret), "{shown}");
            }
            // Structure and namespaces still show.
            assert!(shown.contains(&el.name), "{shown}");
            assert!(shown.contains("urn:"), "{shown}");
        }
    }
}

#[test]
fn text_built_piece_by_piece_is_whole() {
    // Each reference and each CDATA section is appended on its own, growing the buffer.
    let body = "ab&amp;&#x263A;<![CDATA[<c>]]>".repeat(500);
    let e = Element::parse(format!("<a>{body}</a>").as_bytes(), &stream_ctx()).unwrap();
    assert_eq!(e.text, "ab&\u{263A}<c>".repeat(500).as_str());
    assert_eq!(format!("{:?}", e.text), format!("<{} bytes>", e.text.len()));
}
