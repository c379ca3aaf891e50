// Converse.js in headless Chromium, through the proxy: the page is served (by request
// interception) as https://chat.example.test/, Converse discovers the WebSocket endpoint from
// https://DOMAIN/.well-known/host-meta (which the browser's resolver sends to the proxy),
// logs in over wss://, sends a chat message to --to and waits for its answer, then saves a
// screenshot. Prints one JSON line, then stays logged in until its standard input closes.
//
//   node converse.mjs --domain example.test --port PORT --cert CERT.pem --jid juliet@example.test
//                     --password pw --to romeo@example.test --screenshot out.png
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import puppeteer from "puppeteer-core";

const { values: args } = parseArgs({
  options: {
    domain: { type: "string" },
    port: { type: "string" },
    cert: { type: "string" },
    jid: { type: "string" },
    password: { type: "string" },
    to: { type: "string" },
    screenshot: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "40" },
  },
});
const limit = Number(args.timeout) * 1000;
// The proxy's certificate is trusted by its public key (SHA-256 of the SPKI, base64).
const spki = crypto
  .createHash("sha256")
  .update(new crypto.X509Certificate(fs.readFileSync(args.cert)).publicKey.export({ type: "spki", format: "der" }))
  .digest("base64");
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const dist = path.join(path.dirname(new URL(import.meta.url).pathname), "node_modules/converse.js/dist");
const page_origin = "https://chat.example.test";
const types = { ".js": "text/javascript", ".css": "text/css", ".json": "application/json",
  ".wasm": "application/wasm", ".svg": "image/svg+xml", ".png": "image/png",
  ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".map": "application/json" };

const html = `<!doctype html><html><head><meta charset="utf-8">
<link rel="stylesheet" href="/dist/converse.min.css">
</head><body class="converse-fullscreen"><script type="module">
import converse from "/dist/converse.min.js";
converse.plugins.add("lb-test", { initialize() { window.lbConverse = this._converse; } });
converse.initialize({
  assets_path: "/dist/",
  discover_connection_methods: true,
  jid: ${JSON.stringify(args.jid)}, password: ${JSON.stringify(args.password)},
  auto_login: true, view_mode: "fullscreen", play_sounds: false,
  show_desktop_notifications: false, allow_non_roster_messaging: true,
  whitelisted_plugins: ["lb-test"], blacklisted_plugins: ["converse-omemo"], loglevel: "warn",
});
</script></body></html>`;

let browser;
// What the page said and asked for, reported on failure.
const consoleLines = [];
let stage = "start";
const requests = [];
const timer = setTimeout(() => {
  emit({ ok: false, error: `timed out after ${limit} ms`, stage, console: consoleLines.slice(-30), requests: requests.slice(-30) });
  browser?.process()?.kill("SIGKILL");
  process.exit(1);
}, limit);

try {
  browser = await puppeteer.launch({
    executablePath: args.chromium,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      // The page's origin is served by interception (no address), the proxy is on loopback:
      // Local Network Access would refuse the page's requests to it.
      "--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults,BlockInsecurePrivateNetworkRequests",
      `--host-resolver-rules=MAP ${args.domain}:443 127.0.0.1:${args.port}, MAP chat.example.test 127.0.0.1:9`,
      // Trust exactly the proxy's test certificate (its public key), nothing else.
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1200, height: 800 });
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => consoleLines.push(`failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.setRequestInterception(true);
  page.on("request", (req) => {
    const url = new URL(req.url());
    requests.push(req.url());
    // The proxy's name goes to the proxy; nothing else leaves the machine.
    if (url.hostname === args.domain) return req.continue();
    if (url.origin !== page_origin) return req.respond({ status: 404, body: "" });
    if (url.pathname === "/" || url.pathname === "/index.html") {
      return req.respond({ status: 200, contentType: "text/html", body: html });
    }
    const file = path.join(dist, path.normalize(url.pathname.replace(/^\/dist\//, "/")));
    if (file.startsWith(dist) && fs.existsSync(file) && fs.statSync(file).isFile()) {
      return req.respond({ status: 200, contentType: types[path.extname(file)] ?? "application/octet-stream", body: fs.readFileSync(file) });
    }
    return req.respond({ status: 404, body: "" });
  });
  stage = "loading";
  await page.goto(`${page_origin}/`);
  stage = "logging in";
  await page.waitForFunction(
    () => window.lbConverse?.api?.connection?.connected?.() && window.lbConverse?.api?.user?.jid?.(),
    { timeout: limit },
  );
  stage = "logged in, message sent";
  const jid = await page.evaluate(() => window.lbConverse.api.user.jid());
  const service = await page.evaluate(() => window.lbConverse.api.connection.get()?.service ?? null);
  const reply = await page.evaluate(async (to) => {
    const c = window.lbConverse;
    // Initial presence first, so that the server treats the browser session as available.
    await Promise.race([
      c.api.waitUntil("statusInitialized").catch(() => {}),
      new Promise((r) => setTimeout(r, 5000)),
    ]);
    const conn = c.api.connection.get();
    const got = new Promise((resolve) => {
      conn.addHandler((m) => {
        const body = m.querySelector("body")?.textContent;
        if (body?.startsWith("reply:")) { resolve(body); return false; }
        return true;
      }, null, "message", "chat");
    });
    const { $msg } = window.converse.env;
    c.api.send($msg({ to, type: "chat", id: "lb1" }).c("body").t("hello from the browser"));
    return await got;
  }, args.to);
  stage = "answered";
  // Open the conversation so that the screenshot shows the exchange.
  await page
    .evaluate((to) => {
      window.lbConverse.api.chats.open(to, {}, true);
    }, args.to)
    .catch(() => {});
  await new Promise((r) => setTimeout(r, 1500));
  stage = "screenshot";
  await page.screenshot({ path: args.screenshot });
  stage = "done";
  const hostMeta = requests.filter((u) => u.includes("/.well-known/host-meta"));
  emit({ ok: true, jid, service, reply, host_meta: hostMeta, screenshot: args.screenshot });
  clearTimeout(timer);
  // Stay logged in until the test is done looking.
  await new Promise((r) => { process.stdin.on("end", r); process.stdin.on("close", r); process.stdin.resume(); });
  await browser.close();
  process.exit(0);
} catch (e) {
  emit({ ok: false, error: String(e?.stack ?? e), console: consoleLines.slice(-30), requests: requests.slice(-30) });
  await browser?.close().catch(() => {});
  process.exit(1);
}
