#!/usr/bin/env python3
"""bench/upgrade.py: what `drove upgrade` costs the traffic going through drove.

Runs the demo (3 instances behind drove's balancer, release build) under open-model load
from `drove bench`, twice for the same duration: once untouched (the baseline), once with
`drove upgrade` run every few seconds (the new binary is the same file: what is measured
is the hand-over, not a code change). Compares failed requests, p50/p99/p99.9/max over
each run and the worst per-second p99 in the seconds around each upgrade, and reports
each upgrade's duration (the CLI end to end, and drove's own `took_ms` from the request
to the `execve`). Writes bench/results/<date>-<rev>-upgrade.md.

    bench/upgrade.py                                # release build, 5 upgrades, 2000 req/s
    bench/upgrade.py --upgrades 3 --rate 500        # a quick try
    DROVE_BIN=target/release/drove bench/upgrade.py # skip `cargo build`

Run it on a quiet machine: it waits (up to LOAD_WAIT=300 s) for the 1-minute load
average to drop below MAX_LOAD=1.0 and records the load it ran under. Every process it
starts is in its own process group and is ended by PID; traffic goes to loopback only.
"""

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402
    ROOT, Drove, cpu_model, free_port, release_drove, result_path, wait_quiet,
)


def run_bench(exe, url, a):
    return subprocess.Popen(
        [exe, "bench", url, "--rate", str(a.rate), "-c", str(a.connections),
         "-d", f"{a.duration}s", "--timeout", "5s", "--json", "--quiet"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


def finish(bench):
    out, _ = bench.communicate(timeout=120)
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upgrades", type=int, default=5)
    ap.add_argument("--rate", type=int, default=2000, help="requests per second (open model)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=int, default=20, help="seconds per run")
    ap.add_argument("--out", help="report file (default bench/results/DATE-REV-upgrade.md)")
    a = ap.parse_args()
    if a.duration < a.upgrades + 4:
        sys.exit("--duration must leave a second between upgrades and 2 s at each end")

    exe, rev = release_drove()
    out = a.out or result_path(rev, "upgrade")
    load_before = wait_quiet()
    tmp = tempfile.mkdtemp(prefix="drove-upgrade-bench-")
    listen, admin = free_port(), free_port()
    cfg = os.path.join(tmp, "drove.toml")
    config = f"""[services.web]
command = [{json.dumps(exe)}, "demo"]
instances = 3
port = "auto"
ready = {{ http = "/health/ready", interval = "100ms" }}
logs = {{ dir = "logs" }}

[balancer]
listen = "127.0.0.1:{listen}"
service = "web"
workers = 1
instance_header = "X-Drove-Instance"

[admin]
listen = "127.0.0.1:{admin}"
"""
    with open(cfg, "w") as f:
        f.write(config)
    log = open(os.path.join(tmp, "drove.log"), "w")
    d = Drove(exe, cfg, log, f"127.0.0.1:{admin}")
    url = f"http://127.0.0.1:{listen}/whoami"
    bench = None
    r = {"upgrades": []}
    try:
        d.wait(3, timeout=60)
        pids = sorted(i["pid"] for i in d.status()["instances"])
        print(f"baseline: {a.duration} s at {a.rate} req/s", flush=True)
        bench = run_bench(exe, url, a)
        r["baseline"] = finish(bench)

        print(f"with {a.upgrades} upgrades: {a.duration} s at {a.rate} req/s", flush=True)
        bench = run_bench(exe, url, a)
        t0 = time.monotonic()
        gap = (a.duration - 4) / a.upgrades
        for k in range(a.upgrades):
            at = 2 + k * gap
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            t = time.monotonic() - t0
            p = subprocess.run(
                [exe, "upgrade", "-c", cfg, "--binary", exe],
                capture_output=True, text=True, timeout=120,
            )
            cli_s = time.monotonic() - t0 - t
            st = d.status()
            last = (st.get("upgrades") or {}).get("last") or {}
            r["upgrades"].append({
                "at_s": t, "cli_ms": cli_s * 1000, "ok": p.returncode == 0,
                "took_ms": last.get("took_ms"),
                "connections_handed": last.get("connections_handed"),
                "connections_closed": last.get("connections_closed"),
                "output": (p.stdout + p.stderr).strip()[-300:],
            })
            print(f"  upgrade {k + 1} at {t:.1f} s: {'ok' if p.returncode == 0 else 'FAILED'}"
                  f" in {cli_s * 1000:.0f} ms", flush=True)
        r["with"] = finish(bench)
        bench = None
        r["pids_kept"] = sorted(i["pid"] for i in d.status()["instances"]) == pids
        r["count"] = d.status()["upgrades"]["count"]
    finally:
        if bench is not None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
        d.stop()
        log.close()

    report = render(a, r, exe, rev, load_before, os.getloadavg(), config)
    with open(out, "w") as f:
        f.write(report)
    print(report)
    print(f"wrote {out}")


def render(a, r, exe, rev, load_before, load_after, config):
    base, w = r["baseline"], r["with"]

    def row(name, key):
        return f"| {name} | {base['latency'][key]:.2f} | {w['latency'][key]:.2f} |"

    def worst_second(b, lo, hi):
        xs = [s["p99_ms"] for s in b.get("timeline", []) if lo <= s["t"] <= hi]
        return max(xs) if xs else float("nan")

    # The bench's clock starts with its first request, a few ms before t0 here.
    around = [worst_second(w, int(u["at_s"]), int(u["at_s"] + u["cli_ms"] / 1000) + 1)
              for u in r["upgrades"]]
    base_worst = worst_second(base, 0, a.duration)
    exe_shown = os.path.relpath(exe, ROOT) if exe.startswith(ROOT) else exe
    lines = [
        f"# `drove upgrade` under load: {a.upgrades} upgrades in {a.duration} s",
        "",
        f"`bench/upgrade.py` on {datetime.datetime.now().isoformat(timespec='minutes')}, drove {rev}"
        f" ({exe_shown}), {os.cpu_count()} CPUs ({cpu_model()}), load average"
        f" {load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        f"Load: `drove bench --rate {a.rate} -c {a.connections} -d {a.duration}s` (open model, latency"
        " corrected for coordinated omission) on `/whoami` of 3 `drove demo` instances; one balancer"
        " worker. Two runs of the same length: untouched, then with `drove upgrade --binary` (the"
        " same file) every"
        f" {(a.duration - 4) / a.upgrades:.1f} s.",
        "",
        "## Results",
        "",
        "| | no upgrade | with upgrades |",
        "|---|--:|--:|",
        f"| requests | {base['requests']} | {w['requests']} |",
        f"| **failed** (errors + 5xx) | **{base['errors']['total'] + sum(v for k, v in base['status_counts'].items() if int(k) >= 500)}**"
        f" | **{w['errors']['total'] + sum(v for k, v in w['status_counts'].items() if int(k) >= 500)}** |",
        f"| unsent (the load generator fell behind) | {base['unsent']} | {w['unsent']} |",
        row("p50 (ms)", "p50_ms"),
        row("p99 (ms)", "p99_ms"),
        row("p99.9 (ms)", "p999_ms"),
        row("max (ms)", "max_ms"),
        f"| worst per-second p99 (ms) | {base_worst:.2f} | {max(around) if around else float('nan'):.2f} |",
        "",
        f"Instance PIDs unchanged after the upgrades: **{r['pids_kept']}**; `status.upgrades.count` ="
        f" {r['count']}.",
        "",
        "| upgrade | at (s) | CLI end to end (ms) | drove: request → execve (ms) | connections handed over"
        " | closed | p99 of its seconds (ms) |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for k, (u, p) in enumerate(zip(r["upgrades"], around), 1):
        lines.append(
            f"| {k}{'' if u['ok'] else ' FAILED'} | {u['at_s']:.1f} | {u['cli_ms']:.0f} | {u['took_ms']}"
            f" | {u['connections_handed']} | {u['connections_closed']} | {p:.2f} |"
        )
    lines += [
        "",
        "What an upgrade does to a request: during the hand-over (the request to `execve` column)"
        " the listening socket stays open and new connections wait in its backlog; requests in"
        " flight finish; idle keep-alive connections are handed to the new drove by descriptor."
        " The new drove accepts again once it has re-read the config and adopted the instances."
        " The CLI column adds the new binary's self-check (`__upgrade-check`) and the wait until"
        " the new drove answers on the admin API.",
        "",
        "## Config",
        "",
        "```toml",
        config.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
