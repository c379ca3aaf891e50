#!/usr/bin/env python3
"""A SCRAM -PLUS login whose SCRAM and channel binding are computed by a library that is not
ours: `scramp` (PyPI; the SCRAM of the pg8000 PostgreSQL driver) over Python's own TLS
(OpenSSL). The channel-binding type is `tls-server-end-point` (RFC 5929): the hash of the
certificate this client received, which scramp computes from the socket itself. Python's ssl
module has no keying-material exporter, so `tls-exporter` cannot be had here.

The XMPP around it is small and plain: direct TLS (XEP-0368) or STARTTLS, the stream header,
SASL with the chosen mechanism, the server's final message checked by scramp (which proves
the server computed the same binding data), a stream restart, resource binding, and a
disco#info of the domain, whose contact address names the node (as the test nodes are set up).

Usage: scram_plus.py --host H --port P --domain D --user U --password PW --ca CA.pem
                     [--tls direct|starttls] [--mechanism SCRAM-SHA-256-PLUS]
Prints one JSON object: {"ok": true, "mechanism", "jid", "node"} or
{"ok": false, "stage", "error", "received"}.
"""

import argparse
import base64
import json
import re
import socket
import ssl
import sys
import time

import scramp

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
DEADLINE = 10.0


class Failed(Exception):
    def __init__(self, stage, error):
        super().__init__(error)
        self.stage = stage
        self.error = error


class Stream:
    def __init__(self, sock):
        self.sock = sock
        self.buf = ""

    def send(self, text):
        self.sock.sendall(text.encode())

    def until(self, stage, pattern):
        """Read until `pattern` (a regex) matches what came since the last call; return the
        match. Everything up to the end of the match is consumed."""
        end = time.monotonic() + DEADLINE
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            if "</stream:stream>" in self.buf or "<stream:error" in self.buf:
                raise Failed(stage, "stream closed: " + self.buf[-400:])
            left = end - time.monotonic()
            if left <= 0:
                raise Failed(stage, "timed out; got " + self.buf[-400:])
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise Failed(stage, "connection closed; got " + self.buf[-400:])
            self.buf += data.decode("utf-8", "replace")


def header(domain):
    return (f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
            f"xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAM}'>")


def features(stream, stage):
    return stream.until(stage, r"<stream:features.*?</stream:features>").group(0)


def login(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["xmpp-client"])
    raw = socket.create_connection((args.host, args.port), timeout=DEADLINE)
    if args.tls == "starttls":
        plain = Stream(raw)
        plain.send(header(args.domain))
        if "<starttls" not in features(plain, "starttls"):
            raise Failed("starttls", "no <starttls/> offered")
        plain.send(f"<starttls xmlns='{NS_TLS}'/>")
        plain.until("starttls", r"<proceed[^>]*/>")
    try:
        tls = ctx.wrap_socket(raw, server_hostname=args.domain)
    except ssl.SSLError as e:
        raise Failed("tls", str(e))
    s = Stream(tls)
    s.send(header(args.domain))
    offered = re.findall(r"<mechanism>([^<]+)</mechanism>", features(s, "features"))
    if args.mechanism not in offered:
        raise Failed("features", f"{args.mechanism} not offered: {offered}")

    client = scramp.ScramClient([args.mechanism], args.user, args.password,
                                channel_binding=("tls-server-end-point", tls))
    first = base64.b64encode(client.get_client_first().encode()).decode()
    s.send(f"<auth xmlns='{NS_SASL}' mechanism='{args.mechanism}'>{first}</auth>")
    m = s.until("sasl", r"<(challenge|failure)[^>]*?(?:/>|>(.*?)</\1>)")
    if m.group(1) == "failure":
        raise Failed("sasl", "refused: " + m.group(0))
    client.set_server_first(base64.b64decode(m.group(2)).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    s.send(f"<response xmlns='{NS_SASL}'>{final}</response>")
    m = s.until("sasl", r"<(success|failure)[^>]*?(?:/>|>(.*?)</\1>)")
    if m.group(1) == "failure":
        raise Failed("sasl", "refused: " + m.group(0))
    try:
        # The server's signature covers the binding data it used: a node that had other data
        # than this client's could not produce it.
        client.set_server_final(base64.b64decode(m.group(2) or "").decode())
    except scramp.ScramException as e:
        raise Failed("sasl", f"server signature rejected: {e}")

    s.send(header(args.domain))
    features(s, "bind")
    s.send(f"<iq type='set' id='b1'><bind xmlns='{NS_BIND}'>"
           f"<resource>scramp</resource></bind></iq>")
    jid = s.until("bind", r"<jid>([^<]+)</jid>").group(1)
    s.send(f"<iq type='get' id='d1' to='{args.domain}'>"
           f"<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    reply = s.until("disco", r"<iq[^>]*id=['\"]d1['\"].*?</iq>").group(0)
    node = re.search(r"xmpp:([^@<]+)@", reply)
    s.send("</stream:stream>")
    tls.close()
    return {"ok": True, "mechanism": args.mechanism, "jid": jid,
            "node": node.group(1) if node else ""}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--tls", choices=["direct", "starttls"], default="direct")
    p.add_argument("--mechanism", default="SCRAM-SHA-256-PLUS")
    args = p.parse_args()
    try:
        out = login(args)
    except Failed as e:
        out = {"ok": False, "stage": e.stage, "error": e.error}
    except (OSError, scramp.ScramException) as e:
        out = {"ok": False, "stage": "connect", "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
