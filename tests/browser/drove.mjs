// Helpers for the browser tests: run the real `target/debug/drove up` on free ports and
// headless Chromium from Debian (/usr/bin/chromium). Nothing here downloads a browser.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, "../..");
export const DROVE = process.env.DROVE_BIN || join(ROOT, "target/debug/drove");
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A drove.toml like the built-in demo: `instances` demo instances behind the balancer. */
export function demoConfig(instances = 3) {
  return `[services.web]
command = [${JSON.stringify(DROVE)}, "demo"]
instances = ${instances}
port = "auto"
ready = { http = "/ready", interval = "100ms" }
stop = { signal = "TERM", grace = "5s" }
logs = { dir = "logs" }

[balancer]
listen = "127.0.0.1:0"
service = "web"
algorithm = "round_robin"
instance_header = "X-Drove-Instance"
health = { http = "/health", interval = "250ms", timeout = "200ms", rise = 2, fall = 2 }

[admin]
listen = "127.0.0.1:0"
`;
}

/**
 * Starts `drove up` in its own process group on a temp config; resolves when it has
 * announced its balancer and admin addresses. `stop()` ends it whatever happens.
 */
export async function startDrove(config = demoConfig()) {
  const dir = mkdtempSync(join(tmpdir(), "drove-browser-"));
  const path = join(dir, "drove.toml");
  writeFileSync(path, config);
  const child = spawn(DROVE, ["up", "-c", path, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--quiet"], {
    cwd: dir,
    detached: true, // its own process group: stop() signals the whole group
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (b) => { out += b; });
  child.stderr.on("data", (b) => { err += b; });
  const exited = new Promise((r) => child.on("exit", r));
  // Last resort if the test runner ends this process first (timeout, Ctrl-C): take the
  // group down synchronously; stop() below is the orderly way.
  const instancePids = new Set();
  const reap = () => {
    for (const pid of [child.pid, ...instancePids]) {
      try { process.kill(-pid, "SIGKILL"); } catch (_) { /* gone */ }
    }
  };
  const onSignal = () => { reap(); process.exit(130); };
  process.once("exit", reap);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const drove = { child, dir, path, listen: null, admin: null, pids: instancePids, output: () => out + err };

  drove.stop = async () => {
    // Instances run in process groups of their own: remember them, so a drove that
    // does not stop cleanly leaves none behind.
    try {
      const s = await drove.status();
      for (const i of s.instances) if (i.pid) drove.pids.add(i.pid);
    } catch (_) { /* already gone */ }
    if (child.exitCode === null && child.signalCode === null) {
      try { process.kill(-child.pid, "SIGTERM"); } catch (_) { /* gone */ }
      const done = await Promise.race([exited.then(() => true), sleep(15000).then(() => false)]);
      if (!done) try { process.kill(-child.pid, "SIGKILL"); } catch (_) { /* gone */ }
    }
    for (const pid of drove.pids) {
      try { process.kill(-pid, "SIGKILL"); } catch (_) { /* gone, as it should be */ }
    }
    process.removeListener("exit", reap);
    process.removeListener("SIGINT", onSignal);
    process.removeListener("SIGTERM", onSignal);
  };
  drove.status = async () => {
    const headers = drove.token ? { Authorization: `Bearer ${drove.token}` } : {};
    const r = await fetch(`http://${drove.admin}/api/status`, { headers, signal: AbortSignal.timeout(5000) });
    if (!r.ok) throw new Error(`GET /api/status: HTTP ${r.status}`);
    return r.json();
  };
  /** Runs the drove CLI against this drove's admin API. */
  drove.cli = async (...args) =>
    promisify(execFile)(DROVE, ["--admin", drove.admin, ...(drove.token ? ["--token", drove.token] : []), ...args], { timeout: 60000 });

  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    const l = out.match(/^drove: balancer on https?:\/\/([^/]+)\//m);
    const a = out.match(/^drove: admin API.* on http:\/\/([^/]+)\//m);
    if (l && a) {
      drove.listen = l[1];
      drove.admin = a[1];
      return drove;
    }
    if (child.exitCode !== null) break;
    await sleep(50);
  }
  await drove.stop();
  throw new Error("drove did not start:\n" + drove.output());
}

/** Waits until `n` instances are ready. */
export async function waitReady(drove, n, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let s = null;
  while (Date.now() < deadline) {
    s = await drove.status();
    for (const i of s.instances) if (i.pid) drove.pids.add(i.pid);
    if (s.instances.filter((i) => i.state === "ready" && i.healthy).length === n) return s;
    await sleep(100);
  }
  throw new Error(`not ${n} instances ready: ${JSON.stringify(s && s.instances.map((i) => [i.id, i.state, i.healthy]))}`);
}

/**
 * Headless Chromium with a new, empty profile and no network of its own.
 * `ignoreHTTPSErrors`: accept the tests' self-signed certificates.
 */
export async function launchBrowser(viewport = { width: 1440, height: 900 }, { ignoreHTTPSErrors = false } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "drove-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    ignoreHTTPSErrors,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return context;
}
