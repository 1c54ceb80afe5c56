// The dashboard of a running drove with many instances, in Debian's headless Chromium
// (playwright-core from tests/browser: `cd tests/browser && npm ci` once). Used by
// bench/scale100.py. Usage: node bench/dashboard100.mjs http://ADMIN/ OUT.png ROWS
// Prints one JSON line: rows rendered, ms until all ROWS rows were there, the poll's
// duration as the browser saw it, main-thread time per update (Chromium's TaskDuration
// over 10 s divided by the polls in it), the page height; saves a full-page screenshot.

import { launchBrowser, sleep } from "../tests/browser/drove.mjs";

const [url, out, want] = [process.argv[2], process.argv[3], Number(process.argv[4] || 100)];
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

const browser = await launchBrowser({ width: 1440, height: 900 });
try {
  const page = await browser.newPage();
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForFunction(
    (n) => document.querySelectorAll("#rows tr[data-instance]").length >= n,
    want,
    { timeout: 60000 },
  );
  const msToRows = Date.now() - t0;
  // Let it poll for a while, measuring the main thread's work meanwhile.
  const cdp = await browser.newCDPSession(page);
  await cdp.send("Performance.enable");
  const metric = async (name) =>
    (await cdp.send("Performance.getMetrics")).metrics.find((m) => m.name === name).value;
  const polls = () =>
    page.evaluate(() => performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/dashboard")).length);
  const task0 = await metric("TaskDuration");
  const polls0 = await polls();
  await sleep(10000);
  const task1 = await metric("TaskDuration");
  const polls1 = await polls();
  const fetches = await page.evaluate(() =>
    performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/dashboard")).map((e) => e.duration),
  );
  const rows = await page.locator("#rows tr[data-instance]").count();
  const ready = await page.locator('#rows .col-state[data-state="ready"]').count();
  const height = await page.evaluate(() => document.documentElement.scrollHeight);
  await page.screenshot({ path: out, fullPage: true });
  const updates = Math.max(polls1 - polls0, 1);
  const perUpdate = ((task1 - task0) * 1000) / updates;
  console.log(
    JSON.stringify({
      rows,
      all_ready: ready === want,
      ms_to_rows: msToRows,
      fetches: fetches.length,
      fetch_ms_median: median(fetches),
      updates,
      update_ms_avg: perUpdate,
      page_height: height,
    }),
  );
} finally {
  await browser.close().catch(() => {});
}
