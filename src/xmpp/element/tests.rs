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
