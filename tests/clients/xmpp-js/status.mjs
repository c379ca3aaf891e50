// The proxy's status page (GET /status on the admin address) in headless Chromium, driven
// by commands: one JSON object per line on standard input, one JSON answer per line on
// standard output. The page is opened as an operator would: the token is typed into the
// page's login form, never put into the browser by the script.
//
//   node status.mjs --url http://127.0.0.1:PORT/status --token TOKEN
//
// Commands:
//   {"cmd":"open_without_token"}   a fresh tab with no token: the HTTP status, what is shown
//   {"cmd":"open"}                 open the page, log in through the form, wait for data
//   {"cmd":"read","after":N}       wait for a refresh past N, then read what the DOM shows
//   {"cmd":"drain","node":NAME}    press NAME's drain button, read and accept the confirmation
//   {"cmd":"route","jid":JID}      ask "where does this user go?"
//   {"cmd":"screenshot","path":P,"width":W,"height":H}  full-page screenshot at that viewport
//   {"cmd":"quit"}
import readline from "node:readline";
import { parseArgs } from "node:util";
import puppeteer from "puppeteer-core";

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    timeout: { type: "string", default: "20" },
  },
});
const limit = Number(args.timeout) * 1000;
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const problems = [];

const browser = await puppeteer.launch({
  executablePath: args.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage();
await page.setViewport({ width: 1280, height: 900 });
page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
page.on("dialog", (d) => { problems.push(`unexpected ${d.type()} dialog: ${d.message()}`); d.dismiss(); });

// What the page shows, read from the DOM as text.
function readDom() {
  const text = (root, sel) => root.querySelector(sel)?.textContent ?? null;
  const nodes = {};
  for (const card of document.querySelectorAll("section.node")) {
    const fields = {};
    for (const f of card.querySelectorAll("[data-field]")) fields[f.dataset.field] = f.textContent;
    fields.buttons = [...card.querySelectorAll("button[data-action]")].map((b) => b.dataset.action);
    fields.charts = [...card.querySelectorAll("svg[data-chart]")].map((s) => ({
      chart: s.dataset.chart, paths: s.querySelectorAll("path").length,
    }));
    nodes[card.dataset.node] = fields;
  }
  const listeners = {};
  for (const row of document.querySelectorAll("#listeners tr")) {
    const fields = {};
    for (const f of row.querySelectorAll("[data-field]")) fields[f.dataset.field] = f.textContent;
    listeners[row.dataset.listener] = fields;
  }
  const fleet = {};
  for (const f of document.querySelectorAll("[data-fleet]")) fleet[f.dataset.fleet] = f.textContent;
  return {
    refreshes: Number(document.body.dataset.refreshes),
    headline: text(document, "#headline"),
    nodes, listeners, fleet,
    // Anything an injected name could have made: elements, or a script that ran.
    images: document.querySelectorAll("img").length,
    elements_in_listener_names: [...document.querySelectorAll("#listeners [data-field=name]")].reduce((n, e) => n + e.children.length, 0),
    pwned: window.__pwned ?? null,
    kept: window.__kept ?? null,
    action_result: document.querySelector("#action-result.hidden") ? null : text(document, "#action-result"),
    error: document.querySelector("#error.hidden") ? null : text(document, "#error"),
  };
}

async function run(c) {
  switch (c.cmd) {
    case "open_without_token": {
      const ctx = await browser.createBrowserContext();
      const tab = await ctx.newPage();
      const response = await tab.goto(args.url, { waitUntil: "load", timeout: limit });
      await tab.waitForSelector("#login:not(.hidden)", { timeout: limit });
      const seen = await tab.evaluate(() => ({
        login_visible: !document.querySelector("#login").classList.contains("hidden"),
        content_visible: !document.querySelector("#content").classList.contains("hidden"),
        nodes: document.querySelectorAll("section.node").length,
      }));
      await ctx.close();
      problems.splice(0, problems.length, ...problems.filter((p) => !p.includes("status of 401")));
      return { status: response.status(), ...seen };
    }
    case "open": {
      const response = await page.goto(args.url, { waitUntil: "load", timeout: limit });
      await page.waitForSelector("#login:not(.hidden)", { timeout: limit });
      await page.type("#token", args.token);
      await page.click("#login-form button[type=submit]");
      await page.waitForFunction(() => Number(document.body.dataset.refreshes) >= 1
        && !document.querySelector("#content").classList.contains("hidden"), { timeout: limit });
      // Before the token was typed, the page and its first request for data were refused:
      // expected, and the browser logs each such 401.
      // A mark that only survives if the page is never reloaded: it refreshes in place.
      await page.evaluate(() => { window.__kept = true; });
      const refused = problems.filter((p) => p.includes("status of 401")).length;
      problems.splice(0, problems.length, ...problems.filter((p) => !p.includes("status of 401")));
      return { status: response.status(), refused_before_login: refused, stored: await page.evaluate(() => Boolean(sessionStorage.getItem("xmpp-lb-admin-token"))) };
    }
    case "read": {
      await page.waitForFunction((n) => Number(document.body.dataset.refreshes) > n, { timeout: limit }, c.after ?? 0);
      return await page.evaluate(readDom);
    }
    case "drain": {
      const button = `section.node[data-node="${c.node}"] button[data-action="drain"]`;
      await page.click(button);
      await page.waitForFunction(() => document.querySelector("#confirm").open, { timeout: limit });
      const confirm_text = await page.$eval("#confirm-text", (e) => e.textContent);
      await page.click("#confirm-yes");
      await page.waitForFunction(() => !document.querySelector("#action-result").classList.contains("hidden"), { timeout: limit });
      const action_result = await page.$eval("#action-result", (e) => e.textContent);
      return { confirm_text, action_result };
    }
    case "route": {
      await page.$eval("#route-jid", (e, v) => { e.value = v; }, c.jid);
      await page.click("#route-form button[type=submit]");
      await page.waitForSelector("#route-result:not(.hidden)", { timeout: limit });
      return await page.evaluate(() => Object.fromEntries([...document.querySelectorAll("[data-route]")].map((e) => [e.dataset.route, e.textContent])));
    }
    case "screenshot": {
      await page.setViewport({ width: c.width ?? 1280, height: c.height ?? 900 });
      await new Promise((r) => setTimeout(r, 300));
      const fits = await page.evaluate(() => ({ scroll_width: document.documentElement.scrollWidth, width: window.innerWidth }));
      await page.screenshot({ path: c.path, fullPage: true });
      return { path: c.path, ...fits };
    }
    default:
      throw new Error(`unknown command ${c.cmd}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  if (c.cmd === "quit") break;
  try {
    emit({ ok: true, ...(await run(c)), problems: problems.splice(0) });
  } catch (e) {
    emit({ ok: false, error: String(e?.stack ?? e), problems: problems.splice(0) });
  }
}
await browser.close();
process.exit(0);
