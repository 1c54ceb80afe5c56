// Takes docs/dashboard.png: the dashboard of a real drove (3 demo instances, then a
// fourth added with `drove scale`) under `drove bench --rate 300` load.
// Usage: node screenshot.mjs [OUT.png]   (default: ../../docs/dashboard.png)

import { spawn } from "node:child_process";
import { join } from "node:path";
import { startDrove, waitReady, launchBrowser, demoConfig, ROOT, DROVE, sleep } from "./drove.mjs";

const out = process.argv[2] || join(ROOT, "docs/dashboard.png");
const config = demoConfig(3).replace('stop = {', 'max_memory = "64MiB"\nstop = {');
const drove = await startDrove(config);
let browser = null;
let bench = null;
try {
  await waitReady(drove, 3);
  const load = (secs) =>
    spawn(DROVE, ["bench", `http://${drove.listen}/`, "--rate", "300", "-c", "16", "-d", `${secs}s`, "--quiet"], { stdio: "ignore" });
  // A short warm-up first: the first second of a debug build (new connections
  // everywhere) shows a latency spike that would set the p99 chart's scale.
  await new Promise((r) => load(3).on("exit", r));
  bench = load(90);
  browser = await launchBrowser({ width: 1440, height: 900 });
  const page = await browser.newPage();
  await page.goto(`http://${drove.admin}/`);
  await sleep(40000);
  await drove.cli("scale", "web=4");
  await sleep(25000);
  // The 1-minute range shows the scale-up clearly.
  await page.locator('.range[data-chart="rps"] button[data-secs="60"]').click();
  await sleep(1200);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`wrote ${out}`);
} finally {
  if (bench) bench.kill("SIGTERM");
  if (browser) await browser.close().catch(() => {});
  await drove.stop();
}
