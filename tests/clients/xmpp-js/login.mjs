// Log in with @xmpp/client over wss:// through the proxy, then ask the domain for its
// disco#info (whose admin address names the node the session is on). Prints one JSON line:
// {"ok": true, "jid": ..., "mech": ..., "node_contact": ...} or {"ok": false, "error": ...}.
//
//   node login.mjs --service wss://example.test:PORT/xmpp-websocket --connect 127.0.0.1
//                  --ca CA.pem --user alice --password pw [--from] [--mech SCRAM-SHA-1]
//                  [--origin https://chat.example.test]
import fs from "node:fs";
import { parseArgs } from "node:util";
import { WebSocket as NodeWebSocket } from "ws";
import { client, xml } from "@xmpp/client";

const { values: args } = parseArgs({
  options: {
    service: { type: "string" },
    connect: { type: "string" },
    ca: { type: "string" },
    user: { type: "string" },
    password: { type: "string" },
    from: { type: "boolean", default: false },
    mech: { type: "string" },
    origin: { type: "string" },
    timeout: { type: "string", default: "15" },
  },
});

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const domain = new URL(args.service).hostname;
const ca = fs.readFileSync(args.ca);
// The service's host name resolves to the proxy's loopback address; TLS still checks the
// certificate against the name.
const lookup = (host, options, callback) => {
  if (options && options.all) callback(null, [{ address: args.connect, family: 4 }]);
  else callback(null, args.connect, 4);
};
// The browser API @xmpp/websocket uses, from the `ws` package (Node 20 has none built in).
globalThis.WebSocket = class extends NodeWebSocket {
  constructor(url, protocols) {
    super(url, protocols, {
      ca,
      lookup,
      headers: args.origin ? { Origin: args.origin } : {},
    });
  }
};

let offered = null;
let used = null;
const xmpp = client({
  service: args.service,
  domain,
  resource: "web",
  credentials: async (authenticate, mechanisms) => {
    offered = mechanisms;
    used = args.mech ?? mechanisms[0];
    await authenticate({ username: args.user, password: args.password }, used);
  },
});
if (args.from) {
  // @xmpp/client names nobody in <open/>; a client that does lets the proxy route at once.
  const header = xmpp.headerElement.bind(xmpp);
  xmpp.headerElement = () => {
    const el = header();
    el.attrs.from = `${args.user}@${domain}`;
    return el;
  };
}
xmpp.on("error", () => {});

const limit = Number(args.timeout) * 1000;
const timer = setTimeout(() => {
  emit({ ok: false, error: `timed out after ${limit} ms`, offered, mech: used });
  process.exit(1);
}, limit);

try {
  const address = await xmpp.start();
  const info = await xmpp.iqCaller.request(
    xml("iq", { type: "get", to: domain }, xml("query", { xmlns: "http://jabber.org/protocol/disco#info" })),
    limit,
  );
  let contact = null;
  for (const form of info.getChild("query")?.getChildren("x", "jabber:x:data") ?? []) {
    for (const field of form.getChildren("field")) {
      if (field.attrs.var === "admin-addresses") contact ??= field.getChildText("value");
    }
  }
  await xmpp.stop();
  clearTimeout(timer);
  emit({ ok: true, jid: address.toString(), mech: used, offered, node_contact: contact });
  process.exit(0);
} catch (e) {
  clearTimeout(timer);
  emit({ ok: false, error: String(e?.message ?? e), condition: e?.condition ?? null, offered, mech: used });
  process.exit(1);
}
