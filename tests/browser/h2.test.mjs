// A real browser negotiates HTTP/2 with drove: headless Chromium loads the demo's page
// and fetches /whoami through drove's balancer over TLS (ALPN h2), and the Navigation and
// Resource Timing entries say `h2`; drove's JSON access log records those requests as
// HTTP/2.0. The same page over drove's plain listener is HTTP/1.1 (browsers never use
// h2c), which shows the check can tell the two apart. The certificate is a P-256
// self-signed one made by openssl for 127.0.0.1.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDrove, waitReady, launchBrowser, demoConfig, sleep } from "./drove.mjs";

/** Loads `/` and fetches /whoami 3 times from the page; the protocols Chromium used. */
async function protocols(browser, origin) {
  const page = await browser.newPage();
  try {
    const r = await page.goto(`${origin}/`);
    assert.equal(r.status(), 200);
    return await page.evaluate(async () => {
      for (let k = 0; k < 3; k++) {
        const r = await fetch("/whoami", { cache: "no-store" });
        await r.text();
      }
      const nav = performance.getEntriesByType("navigation")[0].nextHopProtocol;
      const res = performance
        .getEntriesByType("resource")
        .filter((e) => e.name.includes("/whoami"))
        .map((e) => e.nextHopProtocol);
      return { nav, res };
    });
  } finally {
    await page.close();
  }
}

test("Chromium negotiates h2 with drove over TLS, and drove serves it as HTTP/2", { timeout: 120000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "drove-h2-"));
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-days", "2",
    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
  ], { stdio: "ignore" });
  const accessLog = join(dir, "access.log");
  const config = demoConfig(2).replace(
    "[balancer]\n",
    `[balancer]\ntls = { cert = ${JSON.stringify(join(dir, "cert.pem"))}, key = ${JSON.stringify(join(dir, "key.pem"))} }\n` +
      `access_log = "json"\naccess_log_path = ${JSON.stringify(accessLog)}\n`,
  );
  const drove = await startDrove(config);
  const plain = await startDrove(demoConfig(1));
  let browser = null;
  try {
    await waitReady(drove, 2);
    await waitReady(plain, 1);
    browser = await launchBrowser(undefined, { ignoreHTTPSErrors: true });

    const h2 = await protocols(browser, `https://${drove.listen}`);
    assert.equal(h2.nav, "h2", `the page over TLS: ${JSON.stringify(h2)}`);
    assert.deepEqual(h2.res, ["h2", "h2", "h2"], `fetches over TLS: ${JSON.stringify(h2)}`);

    // drove saw them as HTTP/2 (its access log, one JSON line per answer).
    let lines = [];
    for (let k = 0; k < 50 && lines.filter((l) => l.target === "/whoami").length < 3; k++) {
      await sleep(100);
      lines = readFileSync(accessLog, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
    }
    const whoami = lines.filter((l) => l.target === "/whoami");
    assert.equal(whoami.length, 3, readFileSync(accessLog, "utf8"));
    for (const l of whoami) assert.equal(l.version, "HTTP/2.0", JSON.stringify(l));

    // The negative twin: the same page over a plain listener is HTTP/1.1.
    const h1 = await protocols(browser, `http://${plain.listen}`);
    assert.equal(h1.nav, "http/1.1", `the page over plain HTTP: ${JSON.stringify(h1)}`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    await drove.stop();
    await plain.stop();
  }
});
