#!/usr/bin/env python3
"""bench/scale100.py: the demo at 100 instances, as one of the users' write-ups runs its
app (100 instances on ports 5001-5100 behind nginx).

Scales `drove demo` from 3 to 100 instances and back to 3 under open-model load and
measures: failed requests over the whole run (expect 0), the time until all 100 are
ready and in rotation, drove's own RSS and CPU per request at 100 instances vs 3 (the
pick must stay flat), and whether the dashboard is usable with 100 rows (its JSON, and
a real headless Chromium rendering it). Writes a Markdown report to
bench/results/<date>-<rev>-scale100.md (and a screenshot of the dashboard beside it).

    bench/scale100.py                      # release build, 100 instances, 1000 req/s
    bench/scale100.py --instances 20 --steady 5 --rate 300     # a quick try
    DROVE_BIN=target/release/drove bench/scale100.py           # skip `cargo build`

Run it on a quiet machine: it waits (up to LOAD_WAIT=300 s) for the 1-minute load
average to drop below MAX_LOAD=1.0, then records the load it ran under. Every process it
starts is in its own process group and is ended by PID at the end; traffic goes to
loopback only.

How the numbers are taken:
- drove's CPU: utime+stime of the drove process (/proc/PID/stat; its instances are
  separate processes and not counted), over a steady window of --steady seconds under
  load, divided by the requests the balancer answered in that window (its own counter,
  /api/status). The same over an idle window (no load) gives what the supervisor costs
  by itself (probes, /proc sampling of every instance), reported apart and subtracted
  for the "per request, net" line;
- RSS: VmRSS of the drove process at the end of each window (VmHWM for the peak);
- time to ready: from `POST /api/scale` until /api/status shows every instance `ready`
  and the balancer has them all enabled and healthy (polled every 100 ms);
- failed requests: `drove bench --rate R --json` running through the whole scale-up,
  steady windows and scale-down (errors of every kind, plus requests never sent);
- dashboard: GET /api/dashboard (the page's one poll) timed 20 times; then
  bench/dashboard100.mjs opens the page in Debian's Chromium (playwright-core from
  tests/browser: `cd tests/browser && npm ci` once) and reports the rows rendered, the
  time until all N rows are there, the poll's duration in the browser and the time the
  page spends per update; it saves a full-page screenshot.
"""

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    ROOT, Drove, cpu_model, cpu_seconds, free_port, get, mem_kib, port_block, post,
    release_drove, result_path, wait_quiet,
)


def window(d, secs):
    """drove's CPU, requests answered and memory over `secs` seconds."""
    s0 = d.status()
    c0 = cpu_seconds(d.proc.pid)
    t0 = time.monotonic()
    time.sleep(secs)
    c1 = cpu_seconds(d.proc.pid)
    t1 = time.monotonic()
    s1 = d.status()
    per = {}
    before = {b["id"]: b["requests"] for b in s0["balancer"]["backends"]}
    for b in s1["balancer"]["backends"]:
        per[b["id"]] = b["requests"] - before.get(b["id"], 0)
    return {
        "seconds": t1 - t0,
        "cpu_s": c1 - c0,
        "requests": s1["balancer"]["requests"] - s0["balancer"]["requests"],
        "per_backend": per,
        **mem_kib(d.proc.pid),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=100)
    ap.add_argument("--base", type=int, default=3, help="instances before and after")
    ap.add_argument("--rate", type=int, default=1000, help="requests per second (open model)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--steady", type=float, default=20, help="seconds per measuring window")
    ap.add_argument("--idle", type=float, default=10, help="seconds per idle window")
    ap.add_argument("--algorithm", default="least_conn")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--out", help="report file (default bench/results/DATE-REV-scale100.md)")
    a = ap.parse_args()

    exe, rev = release_drove()
    out = a.out or result_path(rev, "scale100")
    png = os.path.splitext(out)[0] + "-dashboard.png"

    load_before = wait_quiet()
    tmp = tempfile.mkdtemp(prefix="drove-scale100-")
    base_port = port_block(a.instances)
    listen, admin = free_port(), free_port()
    cfg = os.path.join(tmp, "drove.toml")
    config = f"""[services.web]
command = [{json.dumps(exe)}, "demo"]
instances = {a.base}
port = {base_port}
ready = {{ http = "/health/ready", interval = "100ms" }}
health = {{ http = "/health/live", interval = "2s" }}
stop = {{ signal = "TERM", grace = "10s" }}
logs = {{ dir = "logs" }}

[balancer]
listen = "127.0.0.1:{listen}"
service = "web"
workers = 1
algorithm = "{a.algorithm}"
instance_header = "X-Drove-Instance"
health = {{ http = "/health", interval = "2s", timeout = "1s" }}

[admin]
listen = "127.0.0.1:{admin}"
"""
    with open(cfg, "w") as f:
        f.write(config)
    log = open(os.path.join(tmp, "drove.log"), "w")
    d = Drove(exe, cfg, log, f"127.0.0.1:{admin}")
    bench = None
    r = {}
    try:
        r["start_ready_s"] = d.wait(a.base, timeout=60)
        print(f"{a.base} instances ready; idle window ({a.idle:.0f} s)", flush=True)
        r["idle_base"] = window(d, a.idle)

        url = f"http://127.0.0.1:{listen}/whoami"
        bench = subprocess.Popen(
            [exe, "bench", url, "--rate", str(a.rate), "-c", str(a.connections),
             "-d", "3600s", "--timeout", "5s", "--json", "--quiet"],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        bench_t0 = time.monotonic()
        time.sleep(3)  # warm-up: connections, pools
        print(f"steady window at {a.base} instances ({a.steady:.0f} s)", flush=True)
        w = window(d, a.steady)
        w["t"] = (time.monotonic() - bench_t0 - w["seconds"], time.monotonic() - bench_t0)
        r["load_base"] = w

        print(f"scaling {a.base} -> {a.instances} under load", flush=True)
        t_up = time.monotonic() - bench_t0
        post(f"http://{d.admin}/api/scale", {"service": "web", "instances": a.instances})
        r["up_s"] = d.wait(a.instances)
        r["up_t"] = (t_up, time.monotonic() - bench_t0)
        time.sleep(3)
        print(f"steady window at {a.instances} instances ({a.steady:.0f} s)", flush=True)
        w = window(d, a.steady)
        w["t"] = (time.monotonic() - bench_t0 - w["seconds"], time.monotonic() - bench_t0)
        r["load_n"] = w
        r["instances_rss_kib"] = sum(
            (i.get("rss_bytes") or 0) for i in d.status()["instances"]
        ) // 1024

        # The dashboard's poll, timed from here, at N rows.
        times = []
        size = 0
        for _ in range(20):
            t0 = time.monotonic()
            body = get(f"http://{d.admin}/api/dashboard?points=300")
            times.append((time.monotonic() - t0) * 1000)
            size = len(body)
        r["dashboard_json"] = {
            "median_ms": statistics.median(times),
            "max_ms": max(times),
            "bytes": size,
            "rows": len(json.loads(body)["instances"]),
        }
        if not a.no_browser:
            script = os.path.join(ROOT, "bench/dashboard100.mjs")
            p = subprocess.run(
                ["node", script, f"http://{d.admin}/", png, str(a.instances)],
                capture_output=True, text=True, timeout=180,
            )
            if p.returncode == 0:
                r["dashboard_browser"] = json.loads(p.stdout.strip().splitlines()[-1])
            else:
                r["dashboard_browser"] = {"error": (p.stderr or p.stdout).strip()[-500:]}

        print(f"scaling {a.instances} -> {a.base} under load", flush=True)
        t_down = time.monotonic() - bench_t0
        t0 = time.monotonic()
        post(f"http://{d.admin}/api/scale", {"service": "web", "instances": a.base})
        r["down_call_s"] = time.monotonic() - t0
        r["down_s"] = d.wait(a.base) + r["down_call_s"]
        r["down_t"] = (t_down, time.monotonic() - bench_t0)
        time.sleep(3)
        bench.send_signal(signal.SIGINT)
        r["bench"] = json.loads(bench.communicate(timeout=60)[0])
        bench = None

        # What the supervisor costs by itself at N instances: an idle window.
        post(f"http://{d.admin}/api/scale", {"service": "web", "instances": a.instances})
        d.wait(a.instances)
        time.sleep(3)
        print(f"idle window at {a.instances} instances ({a.idle:.0f} s)", flush=True)
        r["idle_n"] = window(d, a.idle)
        post(f"http://{d.admin}/api/scale", {"service": "web", "instances": a.base})
    finally:
        if bench is not None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
        d.stop()
        log.close()

    report = render(a, r, exe, rev, load_before, os.getloadavg(), config, png)
    with open(out, "w") as f:
        f.write(report)
    print(report)
    print(f"wrote {out}")


def render(a, r, exe, rev, load_before, load_after, config, png):
    n, b = a.instances, a.base

    def per_req(w, idle):
        gross = w["cpu_s"] / max(w["requests"], 1) * 1e6
        net = (w["cpu_s"] - idle["cpu_s"] / idle["seconds"] * w["seconds"]) / max(w["requests"], 1) * 1e6
        return gross, net

    gb, nb = per_req(r["load_base"], r["idle_base"])
    gn, nn = per_req(r["load_n"], r["idle_n"])
    bench = r["bench"]
    errors = bench["errors"]["total"]
    timeline = bench.get("timeline", [])

    def p99_in(t):
        # Every second of the bench's timeline that overlaps the interval.
        lo, hi = int(t[0]), int(t[1])
        xs = [s["p99_ms"] for s in timeline if lo <= s["t"] <= hi]
        return max(xs) if xs else float("nan")

    def spread(w):
        xs = sorted(w["per_backend"].values())
        if not xs:
            return "-"
        return f"{len(xs)} served, min {xs[0]} / median {xs[len(xs) // 2]} / max {xs[-1]} requests"

    model = cpu_model()
    lines = [
        f"# drove at {n} instances: scale {b} → {n} → {b} under load",
        "",
        f"`bench/scale100.py` on {datetime.datetime.now().isoformat(timespec='minutes')}, drove {rev}"
        f" ({os.path.relpath(exe, ROOT) if exe.startswith(ROOT) else exe}), {os.cpu_count()} CPUs ({model}),"
        f" load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        f"Load: `drove bench --rate {a.rate} -c {a.connections}` (open model) on `/whoami` through the"
        f" whole run; windows of {a.steady:.0f} s (load) and {a.idle:.0f} s (idle); algorithm `{a.algorithm}`;"
        " the balancer has one worker thread.",
        "",
        "## Results",
        "",
        f"| | {b} instances | {n} instances |",
        "|---|---|---|",
        f"| drove RSS (VmRSS, MiB) | {r['load_base']['VmRSS'] / 1024:.1f} | {r['load_n']['VmRSS'] / 1024:.1f} |",
        f"| drove CPU per request, gross (µs) | {gb:.1f} | {gn:.1f} |",
        f"| drove CPU per request, net of idle (µs) | {nb:.1f} | {nn:.1f} |",
        f"| drove CPU idle (supervisor alone, % of a core) | {r['idle_base']['cpu_s'] / r['idle_base']['seconds'] * 100:.1f} | {r['idle_n']['cpu_s'] / r['idle_n']['seconds'] * 100:.1f} |",
        f"| requests answered in the window (req/s) | {r['load_base']['requests'] / r['load_base']['seconds']:.0f} | {r['load_n']['requests'] / r['load_n']['seconds']:.0f} |",
        f"| worst per-second p99 in the window (ms) | {p99_in(r['load_base']['t']):.2f} | {p99_in(r['load_n']['t']):.2f} |",
        f"| spread over instances | {spread(r['load_base'])} | {spread(r['load_n'])} |",
        "",
        f"- **time until all {n} are ready and in rotation** after `drove scale web={n}`: "
        f"**{r['up_s']:.1f} s** (worst per-second p99 meanwhile {p99_in(r['up_t']):.2f} ms)",
        f"- scale back to {b}: {r['down_s']:.1f} s (drained, then stopped; worst per-second p99"
        f" meanwhile {p99_in(r['down_t']):.2f} ms)",
        f"- **failed requests over the whole run: {errors}** of {bench['requests']}"
        f" (unsent: {bench['unsent']}; statuses {bench['status_counts']}; errors {bench['errors']})",
        f"- RSS of the {n} demo instances together: {r['instances_rss_kib'] / 1024:.0f} MiB;"
        f" drove's peak RSS (VmHWM): {r['load_n']['VmHWM'] / 1024:.1f} MiB",
        "",
        f"## Dashboard at {n} rows",
        "",
    ]
    dj = r["dashboard_json"]
    lines.append(
        f"- `GET /api/dashboard?points=300` (the page's poll, every second): median"
        f" {dj['median_ms']:.1f} ms, max {dj['max_ms']:.1f} ms, {dj['bytes'] / 1024:.0f} KiB,"
        f" {dj['rows']} instance rows"
    )
    br = r.get("dashboard_browser")
    if br and "error" not in br:
        lines.append(
            f"- headless Chromium: {br['rows']} rows rendered {br['ms_to_rows']:.0f} ms after navigation"
            f" (state `ready` on all: {br['all_ready']}); the poll takes {br['fetch_ms_median']:.1f} ms"
            f" (median of {br['fetches']}) in the browser; main-thread time per update"
            f" {br['update_ms_avg']:.1f} ms (Chromium's TaskDuration over 10 s / {br['updates']} polls);"
            f" page height {br['page_height']} px"
        )
        lines.append(f"- screenshot: [{os.path.basename(png)}]({os.path.basename(png)})")
    elif br:
        lines.append(f"- browser check failed: {br['error']}")
    else:
        lines.append("- browser check skipped (--no-browser)")
    lines += ["", "## Config", "", "```toml", config.strip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
