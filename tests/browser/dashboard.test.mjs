// The dashboard end to end: the real drove with 3 demo instances, headless Chromium.
// Sees 3 instances and their traffic, drains one with its button (and undrains it),
// scales to 4 with the CLI and sees the fourth appear; saves a screenshot. drove's process group is ended whatever happens.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDrove, waitReady, launchBrowser, demoConfig } from "./drove.mjs";

test("dashboard shows instances, drains one, follows a scale", { timeout: 180000 }, async () => {
  const drove = await startDrove();
  let browser = null;
  try {
    await waitReady(drove, 3);
    // Some traffic, so the rates and charts have data.
    for (let k = 0; k < 30; k++) await fetch(`http://${drove.listen}/whoami`);

    browser = await launchBrowser();
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://${drove.admin}/`);

    const rows = page.locator("#rows tr[data-instance]");
    await rows.nth(2).waitFor({ timeout: 15000 });
    assert.equal(await rows.count(), 3);
    for (const id of ["web.1", "web.2", "web.3"]) {
      await page.locator(`tr[data-instance="${id}"] .col-state[data-state="ready"]`).waitFor({ timeout: 15000 });
    }
    await page.locator("#live-text", { hasText: "live" }).waitFor();

    // Traffic shows up: req/s in the table, the share bar, a line in the chart.
    for (let k = 0; k < 60; k++) await fetch(`http://${drove.listen}/whoami`);
    await page.locator('#share div[title^="web.1:"]').waitFor({ timeout: 10000 });
    await page.waitForFunction(() => {
      const c = document.querySelector('tr[data-instance="web.1"] .col-rps');
      return c && parseFloat(c.textContent) > 0;
    }, null, { timeout: 10000 });
    assert.ok((await page.locator("#chart-rps path").count()) >= 3, "one line per instance");

    // Drain web.2 with its button: the row shows it drained, the API agrees.
    await page.locator('tr[data-instance="web.2"] button[data-action="drain"]').click();
    await page.locator('tr[data-instance="web.2"] .col-state[data-state="drained"]').waitFor({ timeout: 20000 });
    await page.locator('tr[data-instance="web.2"] button[data-action="undrain"]').waitFor({ timeout: 5000 });
    const s = await drove.status();
    assert.equal(s.instances.find((i) => i.id === "web.2").in_rotation, false);

    // And back.
    await page.locator('tr[data-instance="web.2"] button[data-action="undrain"]').click();
    await page.locator('tr[data-instance="web.2"] .col-state[data-state="ready"]').waitFor({ timeout: 20000 });
    await page.locator('tr[data-instance="web.2"] button[data-action="drain"]').waitFor({ timeout: 5000 });

    // Scale with the CLI: the fourth instance appears without a reload.
    const { stdout } = await drove.cli("scale", "web=4");
    assert.match(stdout, /web: scaled to 4/);
    await page.locator('tr[data-instance="web.4"]').waitFor({ timeout: 20000 });
    await page.locator('tr[data-instance="web.4"] .col-state[data-state="ready"]').waitFor({ timeout: 20000 });
    assert.equal(await rows.count(), 4);

    const dir = mkdtempSync(join(tmpdir(), "drove-dashboard-"));
    const shot = join(dir, "dashboard.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`screenshot: ${shot}`);
    assert.deepEqual(errors, [], "no script errors on the page");
  } finally {
    if (browser) await browser.close().catch(() => {});
    await drove.stop();
  }
});

test("dashboard asks for the admin token and uses it", { timeout: 120000 }, async () => {
  const drove = await startDrove(demoConfig(2).replace("[admin]\n", '[admin]\ntoken = "let-me-in"\n'));
  let browser = null;
  try {
    drove.token = "let-me-in";
    browser = await launchBrowser();
    const page = await browser.newPage();
    await page.goto(`http://${drove.admin}/`);
    await page.locator("#banner", { hasText: "admin token" }).waitFor({ timeout: 10000 });
    assert.equal(await page.locator("#rows tr").count(), 0);
    await page.locator("#token").fill("let-me-in");
    await page.locator("#token").press("Enter");
    await page.locator('tr[data-instance="web.2"]').waitFor({ timeout: 15000 });
    assert.equal(await page.locator("#banner").isVisible(), false);
  } finally {
    if (browser) await browser.close().catch(() => {});
    await drove.stop();
  }
});

test("dashboard says why an instance is not ready and how it last exited", { timeout: 120000 }, async () => {
  // A service that exits at once: it backs off, then crash-loops; the page shows the
  // exit, the crash-loop rule and the next try, as /api/status does.
  const bad = `
[services.bad]
command = "echo starting; exit 3"
port = "none"
restart = { initial_delay = "50ms", max_delay = "3s", reset_after = "10s", crashloop_after = 2 }
`;
  const drove = await startDrove(demoConfig(1).replace("[balancer]", bad + "\n[balancer]"));
  let browser = null;
  try {
    await waitReady(drove, 1);
    browser = await launchBrowser();
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://${drove.admin}/`);
    const state = page.locator('tr[data-instance="bad.1"] .col-state[data-state="crashloop"]');
    await state.waitFor({ timeout: 20000 });
    const why = state.locator(".why");
    await why.filter({ hasText: "exited (exit code 3)" }).waitFor({ timeout: 10000 });
    const text = await why.textContent();
    assert.match(text, /crashloop: \d+ failed runs in a row/);
    assert.match(text, /next try in \d+\.\ds/);
    assert.match(await page.locator('tr[data-instance="bad.1"] .col-exit').textContent(), /^exit 3, \d+s ago$/);
    // A ready instance has nothing to explain.
    assert.equal(await page.locator('tr[data-instance="web.1"] .col-state .why').textContent(), "");
    const s = await drove.status();
    const row = s.instances.find((i) => i.id === "bad.1");
    assert.equal(row.last_exit.code, 3);
    assert.ok(row.retry_at_ms > 0 && row.why.includes("exit code 3"), JSON.stringify(row));
    assert.deepEqual(errors, [], "no script errors on the page");
  } finally {
    if (browser) await browser.close().catch(() => {});
    await drove.stop();
  }
});
