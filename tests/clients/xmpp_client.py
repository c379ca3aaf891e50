#!/usr/bin/env python3
"""A real XMPP client (slixmpp) driven by the Rust integration tests.

Every subcommand prints exactly one JSON object on stdout and exits 0 on
success; on failure it prints {"ok": false, "error": ..., "kind": ...} and
exits non-zero.  Everything is bounded by --timeout.

Subcommands:
  login  log in, bind, send presence, disco#info the domain, disconnect
  chat   log two accounts in, A sends a chat message to B's bare JID
  rate   open loop: --pairs pairs (two resources of one account each), in each
         one sends to the other at --rate/--pairs messages/s for --seconds;
         prints the one-way latency percentiles of every message received
  hold   log in, print the result, stay connected --seconds, then leave
         (exit 0 when held the whole time or stopped by SIGTERM/SIGINT,
          exit 3 when the connection was lost earlier; the end status is
          written to stderr as a line starting with "hold-end: ")

TLS styles (--tls):
  starttls  plain TCP, STARTTLS is mandatory (fails if not offered)
  direct    TLS from the first byte (XEP-0368), ALPN xmpp-client, SNI=domain
  none      plain TCP, no TLS at all, plaintext auth allowed (harness only)

Error kinds: usage, connect, tls, starttls, auth, stream, disconnected,
bind, disco, timeout, chat, internal.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import time

try:
    import slixmpp
    from slixmpp.exceptions import IqError, IqTimeout
except Exception as exc:  # pragma: no cover - environment problem
    print(json.dumps({"ok": False, "kind": "internal",
                      "error": "cannot import slixmpp: %s" % exc}))
    sys.stdout.flush()
    os._exit(1)

NS_STREAM = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_DATA = "jabber:x:data"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"


def _speed_up_scram():
    """slixmpp computes SCRAM's Hi() with a pure-Python HMAC loop (~15 ms per
    login at 4096 iterations).  Hi() is exactly PBKDF2 with dkLen = hLen, so
    use hashlib's C implementation; same bytes on the wire."""
    try:
        import hashlib
        from slixmpp.util.sasl import mechanisms as _m
        names = {"SHA-1": "sha1", "SHA-224": "sha224", "SHA-256": "sha256",
                 "SHA-384": "sha384", "SHA-512": "sha512"}
        orig = _m.SCRAM.Hi

        def fast_hi(self, text, salt, iterations):
            name = names.get(getattr(self, "hash_name", None))
            if name is None:
                return orig(self, text, salt, iterations)
            key = text if isinstance(text, (bytes, bytearray)) else str(text).encode("utf-8")
            return hashlib.pbkdf2_hmac(name, key, salt, iterations)
        _m.SCRAM.Hi = fast_hi
    except Exception:  # keep the slow path if slixmpp's internals differ
        pass


_speed_up_scram()


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


class Failure(Exception):
    def __init__(self, kind, error, **extra):
        super().__init__(error)
        self.kind = kind
        self.error = error
        self.extra = extra


class Session:
    """One client connection plus everything observed about it."""

    def __init__(self, args, jid, password, label):
        self.args = args
        self.label = label
        self.jid_arg = jid
        self.stage = "init"
        self.failure = None
        self.stream_error = None
        self.sasl_failures = []
        self.mechanisms_offered = None
        self.starttls_offered = None
        self.features_seen = []       # list of lists of child tags, one per <stream:features>
        self.mech_used = None
        self.tls_info = None
        self.t0 = None
        self.login_ms = None
        self.disconnected = False
        self.disconnect_reason = None

        loop = asyncio.get_running_loop()
        self.logged_in = loop.create_future()

        x = slixmpp.ClientXMPP(jid, password, sasl_mech=args.mech)
        self.xmpp = x
        domain = x.boundjid.host
        self.domain = domain

        # TLS style: connect to exactly host:port with exactly one style.
        x.enable_direct_tls = args.tls == "direct"
        x.enable_starttls = args.tls == "starttls"
        x.enable_plaintext = args.tls == "none"
        if args.tls != "none":
            ctx = ssl.create_default_context(cafile=args.ca) if args.ca \
                else ssl.create_default_context()
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
            alpn = args.alpn
            if alpn is None:
                alpn = "xmpp-client" if args.tls == "direct" else ""
            if alpn:
                ctx.set_alpn_protocols([p for p in alpn.split(",") if p])
            x.ssl_context = ctx
        if args.server_name:
            # Used by slixmpp as SNI and for certificate name verification.
            x.default_domain = args.server_name

        mech_cfg = x.plugin["feature_mechanisms"]
        if args.tls == "none":
            mech_cfg.config["unencrypted_plain"] = True
            mech_cfg.config["unencrypted_scram"] = True

        stream_to = args.stream_to or domain
        from_attr = (" from='%s'" % x.boundjid.bare) if args.send_from else ""
        x.stream_header = (
            "<stream:stream to='%s'%s xmlns:stream='%s' xmlns='%s' "
            "xml:lang='en' version='1.0'>"
            % (stream_to, from_attr, NS_STREAM, "jabber:client"))

        x.register_plugin("xep_0030")
        x.register_plugin("xep_0199")
        if args.sm:
            x.register_plugin("xep_0198")

        x.add_filter("in", self._in_filter)
        x.add_event_handler("connection_failed", self._on_connection_failed)
        x.add_event_handler("connected", lambda _e: self._set_stage("stream"))
        x.add_event_handler("ssl_invalid_chain", self._on_ssl_invalid)
        x.add_event_handler("tls_success", lambda _e: self._set_stage("tls-done"))
        x.add_event_handler("failed_auth", self._on_failed_auth)
        x.add_event_handler("failed_all_auth", self._on_failed_all_auth)
        x.add_event_handler("auth_success", self._on_auth_success)
        x.add_event_handler("session_bind", lambda _j: self._set_stage("bound"))
        x.add_event_handler("session_start", self._on_session_start)
        x.add_event_handler("stream_error", self._on_stream_error)
        x.add_event_handler("disconnected", self._on_disconnected)

    # ---- observation -------------------------------------------------
    def _set_stage(self, s):
        self.stage = s

    def _fail(self, kind, error, **extra):
        if self.failure is None:
            if self.stream_error is not None and kind in ("disconnected", "auth"):
                extra.setdefault("stream_error", self.stream_error)
            self.failure = Failure(kind, error, **extra)
        if not self.logged_in.done():
            self.logged_in.set_exception(self.failure)
        self.xmpp.cancel_connection_attempt()

    def _in_filter(self, stanza):
        try:
            xml = stanza.xml
            if xml.tag == "{%s}features" % NS_STREAM:
                children = [c.tag for c in xml]
                self.features_seen.append(children)
                mechs = xml.find("{%s}mechanisms" % NS_SASL)
                if mechs is not None and self.mechanisms_offered is None:
                    self.mechanisms_offered = [m.text for m in mechs.findall("{%s}mechanism" % NS_SASL)]
                if self.starttls_offered is None:
                    self.starttls_offered = xml.find("{%s}starttls" % NS_TLS) is not None
                    if self.starttls_offered and self.args.tls == "starttls":
                        self.stage = "starttls"
                    if self.args.tls == "starttls" and not self.starttls_offered:
                        self._fail("starttls", "server did not offer STARTTLS in its first stream features",
                                   features=children)
        except Exception as exc:  # never break the stream because of observation
            logging.debug("in filter: %s", exc)
        return stanza

    def _on_connection_failed(self, err):
        if isinstance(err, ssl.SSLError):
            self._fail("tls", "TLS handshake failed: %s" % err)
        else:
            self._fail("connect", "connection to %s:%s failed: %s" % (self.args.host, self.args.port, err))

    def _on_ssl_invalid(self, err):
        self._fail("tls", "STARTTLS handshake failed: %s" % err)

    def _on_failed_auth(self, stanza):
        cond = stanza["condition"]
        text = stanza["text"]
        self.sasl_failures.append({"condition": cond, "text": text})

    def _on_failed_all_auth(self, _ev):
        mech = self.args.mech or "(any)"
        if self.sasl_failures:
            f = self.sasl_failures[-1]
            msg = "SASL %s failed: %s%s" % (mech, f["condition"], (" (%s)" % f["text"]) if f["text"] else "")
        else:
            msg = "no acceptable SASL mechanism: requested %s, offered %s, tls=%s" % (
                mech, self.mechanisms_offered, self._tls_active())
        self._fail("auth", msg, sasl_failures=self.sasl_failures,
                   mechanisms_offered=self.mechanisms_offered)

    def _on_auth_success(self, _stanza):
        self.stage = "authenticated"
        try:
            self.mech_used = self.xmpp.plugin["feature_mechanisms"].mech.name
        except Exception:
            self.mech_used = None

    def _on_session_start(self, _ev):
        self.stage = "logged-in"
        self.login_ms = round((time.monotonic() - self.t0) * 1000.0, 1)
        self.tls_info = self._tls_details()
        if not self.logged_in.done():
            self.logged_in.set_result(True)

    def _on_stream_error(self, err):
        self.stream_error = {"condition": err["condition"], "text": err["text"]}
        if err["see_other_host"]:
            self.stream_error["see_other_host"] = err["see_other_host"]
        if not self.logged_in.done():
            self._fail("stream", "stream error from server: %s%s" % (
                err["condition"], (" (%s)" % err["text"]) if err["text"] else ""),
                stream_error=self.stream_error)

    def _on_disconnected(self, reason):
        self.disconnected = True
        self.disconnect_reason = str(reason) if reason is not None else None
        if not self.logged_in.done():
            if self.stream_error:
                self._fail("stream", "stream error from server: %s" % self.stream_error["condition"],
                           stream_error=self.stream_error)
            elif isinstance(reason, ssl.SSLError) or self.stage == "starttls":
                self._fail("tls", "TLS handshake failed: %s" % reason)
            else:
                self._fail("disconnected", "disconnected during stage '%s': %s" % (self.stage, reason))

    def _tls_active(self):
        sock = self.xmpp.socket
        return isinstance(sock, (ssl.SSLSocket, ssl.SSLObject))

    def _tls_details(self):
        sock = self.xmpp.socket
        if not isinstance(sock, (ssl.SSLSocket, ssl.SSLObject)):
            return None
        info = {"version": sock.version(), "alpn": sock.selected_alpn_protocol()}
        try:
            c = sock.cipher()
            info["cipher"] = c[0] if c else None
        except Exception:
            pass
        return info

    # ---- actions -----------------------------------------------------
    async def login(self, timeout):
        self.t0 = time.monotonic()
        self.stage = "connecting"
        self.xmpp.connect(self.args.host, self.args.port)
        try:
            await asyncio.wait_for(asyncio.shield(self.logged_in), timeout)
        except asyncio.TimeoutError:
            self._fail("timeout", "login timed out after %ss in stage '%s'" % (timeout, self.stage))
            raise self.failure
        self.xmpp.send_presence()

    async def node_contact(self, timeout):
        """disco#info on the domain; returns the first admin address (or None)."""
        try:
            iq = await self.xmpp.plugin["xep_0030"].get_info(jid=self.domain, timeout=timeout, cached=False)
        except IqError as exc:
            raise Failure("disco", "disco#info on %s returned an error: %s" % (
                self.domain, exc.iq["error"]["condition"]))
        except IqTimeout:
            raise Failure("disco", "disco#info on %s timed out" % self.domain)
        q = iq.xml.find("{%s}query" % NS_DISCO_INFO)
        if q is None:
            return None
        for form in q.findall("{%s}x" % NS_DATA):
            for field in form.findall("{%s}field" % NS_DATA):
                if field.get("var") == "admin-addresses":
                    vals = [v.text for v in field.findall("{%s}value" % NS_DATA) if v.text]
                    if vals:
                        return vals[0]
        return None

    async def close(self, wait=2.0):
        if self.disconnected or not self.xmpp.is_connected():
            return
        try:
            fut = self.xmpp.disconnect(wait=wait)
            await asyncio.wait_for(asyncio.shield(fut), wait + 1.0)
        except Exception:
            self.xmpp.abort()

    def base_result(self):
        x = self.xmpp
        return {
            "jid": str(x.boundjid.full),
            "mech": self.mech_used,
            "elapsed_ms": self.login_ms,
            "tls": self.tls_info,
            "mechanisms_offered": self.mechanisms_offered,
            "starttls_offered": self.starttls_offered,
            "stream_features": self.features_seen,
        }


def node_name(contact):
    """'xmpp:node2@example.test' -> 'node2'."""
    if not contact:
        return None
    c = contact[5:] if contact.startswith("xmpp:") else contact
    return c.split("@", 1)[0]


async def cmd_login(args):
    s = Session(args, args.jid, args.password, "a")
    deadline = time.monotonic() + args.timeout
    await s.login(args.timeout)
    contact = await s.node_contact(max(0.5, deadline - time.monotonic()))
    res = {"ok": True}
    res.update(s.base_result())
    res["node_contact"] = contact
    res["node"] = node_name(contact)
    await s.close()
    res["total_ms"] = round((time.monotonic() - s.t0) * 1000.0, 1)
    return res


async def cmd_chat(args):
    a = Session(args, args.a, args.pa, "a")
    b = Session(args, args.b, args.pb, "b")
    start = time.monotonic()
    deadline = start + args.timeout
    loop = asyncio.get_running_loop()
    received = loop.create_future()

    def on_message(msg):
        if msg["type"] in ("chat", "normal") and msg["body"] == args.body and not received.done():
            received.set_result({"body": msg["body"], "from": str(msg["from"])})
    b.xmpp.add_event_handler("message", on_message)

    try:
        await asyncio.gather(a.login(args.timeout), b.login(args.timeout))
        rem = lambda: max(0.5, deadline - time.monotonic())
        # The disco round-trips also guarantee each server processed the
        # initial presence before A sends (so B is "available" on its node).
        a_contact, b_contact = await asyncio.gather(a.node_contact(rem()), b.node_contact(rem()))
        a.xmpp.send_message(mto=b.xmpp.boundjid.bare, mbody=args.body, mtype="chat")
        try:
            got = await asyncio.wait_for(asyncio.shield(received), rem())
        except asyncio.TimeoutError:
            raise Failure("chat", "B did not receive the message within %ss (a_node=%s, b_node=%s)"
                          % (args.timeout, node_name(a_contact), node_name(b_contact)),
                          a_node=node_name(a_contact), b_node=node_name(b_contact))
        return {
            "ok": True,
            "received_by_b": got["body"],
            "from": got["from"],
            "a_jid": str(a.xmpp.boundjid.full),
            "b_jid": str(b.xmpp.boundjid.full),
            "a_node": node_name(a_contact),
            "b_node": node_name(b_contact),
            "a_node_contact": a_contact,
            "b_node_contact": b_contact,
            "a_mech": a.mech_used,
            "b_mech": b.mech_used,
            "elapsed_ms": round((time.monotonic() - start) * 1000.0, 1),
        }
    finally:
        await asyncio.gather(a.close(), b.close(), return_exceptions=True)


async def cmd_hold(args):
    s = Session(args, args.jid, args.password, "a")
    deadline = time.monotonic() + args.timeout
    await s.login(args.timeout)
    contact = await s.node_contact(max(0.5, deadline - time.monotonic()))
    res = {"ok": True, "holding_s": args.seconds}
    res.update(s.base_result())
    res["node_contact"] = contact
    res["node"] = node_name(contact)
    emit(res)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result("signal"))
    s.xmpp.add_event_handler("disconnected", lambda _r: stop.done() or stop.set_result("disconnected"))
    try:
        why = await asyncio.wait_for(asyncio.shield(stop), args.seconds)
    except asyncio.TimeoutError:
        why = "elapsed"
    end = {"held_ms": round((time.monotonic() - s.t0) * 1000.0 - (s.login_ms or 0), 1), "why": why,
           "stream_error": s.stream_error, "disconnect_reason": s.disconnect_reason}
    await s.close(wait=1.0)
    sys.stderr.write("hold-end: " + json.dumps(end) + "\n")
    sys.stderr.flush()
    return None if why != "disconnected" else 3


async def cmd_reply(args):
    """Log in, print the login result, wait for one chat message and answer it with
    'reply: BODY'; then print what was received."""
    s = Session(args, args.jid, args.password, "a")
    deadline = time.monotonic() + args.timeout
    loop = asyncio.get_running_loop()
    received = loop.create_future()

    def on_message(msg):
        if msg["type"] in ("chat", "normal") and msg["body"] and not received.done():
            received.set_result({"body": msg["body"], "from": str(msg["from"])})
    s.xmpp.add_event_handler("message", on_message)
    await s.login(args.timeout)
    contact = await s.node_contact(max(0.5, deadline - time.monotonic()))
    res = {"ok": True, "waiting": True, "node": node_name(contact)}
    res.update(s.base_result())
    emit(res)
    try:
        got = await asyncio.wait_for(asyncio.shield(received), args.wait)
    except asyncio.TimeoutError:
        raise Failure("reply", "no chat message within %ss" % args.wait)
    s.xmpp.send_message(mto=got["from"], mbody="reply: " + got["body"], mtype="chat")
    await asyncio.sleep(0.5)
    await s.close()
    return {"ok": True, "received": got["body"], "from": got["from"], "node": node_name(contact)}


async def cmd_resume(args):
    """Log in with XEP-0198 resumption, lose the connection (no stream close), and come back
    through --resume-port: slixmpp resumes the stream if the server still knows it."""
    s = Session(args, args.jid, args.password, "a")
    x = s.xmpp
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + args.timeout
    rem = lambda: max(0.5, deadline - time.monotonic())
    await s.login(args.timeout)
    sm = x.plugin["xep_0198"]
    while sm.sm_id is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if sm.sm_id is None:
        raise Failure("sm", "stream management was not enabled with resumption")
    sm_id = sm.sm_id
    before = node_name(await s.node_contact(rem()))
    # The connection is cut: no </stream:stream>, the server keeps the session.
    lost = loop.create_future()
    x.add_event_handler("disconnected", lambda _r: lost.done() or lost.set_result(True))
    x.abort()
    await asyncio.wait_for(asyncio.shield(lost), rem())
    await asyncio.sleep(args.away)
    outcome = loop.create_future()
    x.add_event_handler("session_resumed", lambda _e: outcome.done() or outcome.set_result("resumed"))
    x.add_event_handler("session_start", lambda _e: outcome.done() or outcome.set_result("new session"))
    x.connect(args.host, args.resume_port)
    try:
        how = await asyncio.wait_for(asyncio.shield(outcome), rem())
    except asyncio.TimeoutError:
        raise Failure("timeout", "no resumption nor new session after reconnecting")
    after = node_name(await s.node_contact(rem()))
    res = {"ok": True, "outcome": how, "sm_id": sm_id, "node_before": before, "node_after": after,
           "mech": s.mech_used}
    await s.close()
    return res


class JsonArgParser(argparse.ArgumentParser):
    def error(self, message):
        emit({"ok": False, "kind": "usage", "error": message})
        sys.exit(2)


def add_conn_args(p):
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", choices=["starttls", "direct", "none"], default="starttls")
    p.add_argument("--ca", help="PEM CA file to verify the server certificate against")
    p.add_argument("--mech", help="use exactly this SASL mechanism (PLAIN, SCRAM-SHA-1, SCRAM-SHA-256, ...)")
    p.add_argument("--send-from", action="store_true", help="put from='<bare jid>' in the stream header")
    p.add_argument("--server-name", help="TLS server name (SNI and certificate check); default: JID domain")
    p.add_argument("--stream-to", help="override the stream header 'to' (default: JID domain)")
    p.add_argument("--alpn", help="comma list of ALPN protocols; default xmpp-client for direct TLS, none for STARTTLS; '' for none")
    p.add_argument("--sm", action="store_true", help="enable XEP-0198 stream management")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--debug", action="store_true", help="slixmpp debug log on stderr")


def parse_args(argv):
    ap = JsonArgParser(description="slixmpp test client")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=JsonArgParser)
    p = sub.add_parser("login")
    p.add_argument("--jid", required=True)
    p.add_argument("--password", required=True)
    add_conn_args(p)
    p = sub.add_parser("chat")
    p.add_argument("--a", required=True)
    p.add_argument("--pa", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--pb", required=True)
    p.add_argument("--body", default="hello from a")
    add_conn_args(p)
    p = sub.add_parser("resume")
    p.add_argument("--jid", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--resume-port", type=int, required=True, help="where to reconnect")
    p.add_argument("--away", type=float, default=0.3, help="seconds between losing the connection and reconnecting")
    add_conn_args(p)
    p = sub.add_parser("reply")
    p.add_argument("--jid", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the message")
    add_conn_args(p)
    p = sub.add_parser("rate")
    p.add_argument("--ports", help="comma list of ports; pair i uses port i %% count (default: --port)")
    p.add_argument("--domain", required=True)
    p.add_argument("--user-prefix", default="user")
    p.add_argument("--first-user", type=int, default=1)
    p.add_argument("--password", required=True, help="'{i}' is replaced by the user's number")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--rate", type=float, default=500.0, help="messages per second over all pairs")
    p.add_argument("--seconds", type=float, default=10.0)
    add_conn_args(p)
    p = sub.add_parser("hold")
    p.add_argument("--jid", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--seconds", type=float, default=60.0)
    add_conn_args(p)
    return ap.parse_args(argv)


def percentiles(xs):
    if not xs:
        return None
    import math
    xs = sorted(xs)
    pick = lambda q: round(xs[min(len(xs), max(1, math.ceil(q * len(xs)))) - 1], 3)
    return {"p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "max": round(xs[-1], 3),
            "mean": round(sum(xs) / len(xs), 3)}


async def cmd_rate(args):
    """Pair i is account PREFIX<first+i> with resources a and b, on port i % len(ports).
    Every message carries its send time (perf_counter_ns, this process's clock) in its id;
    b records now minus that when it arrives. Senders keep their schedule whatever arrives
    (open loop), each offset within the period so the pairs' messages are spread evenly."""
    import copy
    ports = [int(p) for p in args.ports.split(",")] if args.ports else [args.port]
    sessions = []
    for i in range(args.pairs):
        conn = copy.copy(args)
        conn.port = ports[i % len(ports)]
        n = args.first_user + i
        jid = "%s%d@%s" % (args.user_prefix, n, args.domain)
        password = args.password.replace("{i}", str(n))
        sessions.append((Session(conn, jid + "/a", password, "a%d" % i),
                         Session(conn, jid + "/b", password, "b%d" % i)))
    latencies = []

    def on_message(msg):
        mid = msg["id"] or ""
        if mid.startswith("t") and mid[1:].isdigit():
            latencies.append((time.perf_counter_ns() - int(mid[1:])) / 1e6)

    try:
        for k in range(0, len(sessions), 10):
            batch = sessions[k:k + 10]
            await asyncio.gather(*(s.login(args.timeout) for pair in batch for s in pair))
        for _a, b in sessions:
            b.xmpp.add_event_handler("message", on_message)
        period = args.pairs / args.rate
        count = max(1, round(args.seconds * args.rate / args.pairs))
        start = time.perf_counter() + 0.5
        sent = [0]

        async def sender(k, a, to):
            due = start + period * k / args.pairs
            for _ in range(count):
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                m = a.xmpp.make_message(mto=to, mbody="load", mtype="chat")
                m["id"] = "t%d" % time.perf_counter_ns()
                m.send()
                sent[0] += 1
                due += period

        await asyncio.gather(*(sender(k, a, b.xmpp.boundjid.full)
                               for k, (a, b) in enumerate(sessions)))
        expected = count * len(sessions)
        deadline = time.perf_counter() + 5.0
        while len(latencies) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return {"ok": True, "pairs": args.pairs, "rate": args.rate, "seconds": args.seconds,
                "sent": sent[0], "received": len(latencies),
                "one_way_ms": percentiles(latencies)}
    finally:
        await asyncio.gather(*(s.close() for pair in sessions for s in pair),
                             return_exceptions=True)


async def run(args):
    cmds = {"login": cmd_login, "chat": cmd_chat, "hold": cmd_hold, "resume": cmd_resume,
            "reply": cmd_reply, "rate": cmd_rate}
    return await cmds[args.cmd](args)


def main(argv):
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.CRITICAL,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    # Hard backstop: whatever happens, never outlive the budget.
    budget = args.timeout + (args.seconds if args.cmd in ("hold", "rate") else 0.0) \
        + (args.timeout * (1 + args.pairs / 5) if args.cmd == "rate" else 0.0) \
        + (args.wait if args.cmd == "reply" else 0.0) + 5.0

    def on_alarm(_sig, _frm):
        emit({"ok": False, "kind": "timeout", "error": "hard timeout after %.1fs" % budget})
        os._exit(1)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)

    code = 0
    try:
        res = asyncio.run(run(args))
        if isinstance(res, dict):
            emit(res)
        elif isinstance(res, int):
            code = res
    except Failure as f:
        out = {"ok": False, "kind": f.kind, "error": f.error}
        out.update(f.extra)
        emit(out)
        code = 1
    except Exception as exc:
        emit({"ok": False, "kind": "internal", "error": "%s: %s" % (type(exc).__name__, exc)})
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
