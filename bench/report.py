#!/usr/bin/env python3
"""Helpers of bench/compare.sh.

  report.py parse-wrk WRK_OUTPUT ROUND SCENARIO PROXY CPU_TICKS LOAD1   -> one runs.tsv row
                                             (wrk's output, or h2load's)
  report.py parse-s-client S_CLIENT_OUT S_CLIENT_RESUME_OUT PROXY     -> one tls.tsv row
  report.py parse-strace STRACE_C_OUTPUT WRK_OUTPUT PROXY              -> syscalls.tsv rows
  report.py render TMPDIR OUT.md                                        -> the results file
"""
import os
import re
import statistics
import sys

# drove_alt: a second drove binary (DROVE_ALT_BIN), e.g. another TLS provider.
PROXIES = ["nginx", "haproxy", "drove", "drove_alt"]
SCENARIOS = ["ka64", "ka256", "close64", "gzip64", "tls_ka64", "tls_resume64", "tls_close64", "h2_8x8"]
# The scenarios of issue 11 (TLS, HTTP/2, gzip): target "at or better than nginx".
NEW_SCENARIOS = ["gzip64", "tls_ka64", "tls_resume64", "tls_close64", "h2_8x8"]
SCENARIO_NAMES = {
    "ka64": "keep-alive, 64 conns",
    "ka256": "keep-alive, 256 conns",
    "close64": "Connection: close, 64 conns",
    "gzip64": "gzip 20 KB JSON, keep-alive, 64 conns",
    "tls_ka64": "TLS keep-alive, 64 conns",
    "tls_resume64": "TLS Connection: close, resumed, 64 conns",
    "tls_close64": "TLS Connection: close, full handshake, 64 conns",
    "h2_8x8": "HTTP/2 over TLS, 8 conns × 8 streams",
}
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_duration_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", s)
    if not m:
        raise ValueError("bad latency %r" % s)
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_h2load(text):
    """h2load's summary: request rate and counts (it reports no latency percentiles)."""
    r = {"errors": 0, "p50": float("nan"), "p99": float("nan")}
    m = re.search(r"finished in ([\d.]+)(us|ms|s|m),\s+([\d.]+) req/s", text)
    r["rps"] = float(m.group(3)) if m else 0.0
    r["secs"] = parse_duration_ms(m.group(1) + m.group(2)) / 1000 if m else 0.0
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        r["requests"] = int(m.group(1))
        r["errors"] = int(m.group(1)) - int(m.group(2)) + int(m.group(4)) + int(m.group(5))
    else:
        r["requests"] = 0
    m = re.search(r"status codes: (\d+) 2xx", text)
    if m and r["requests"]:
        r["errors"] = max(r["errors"], r["requests"] - int(m.group(1)))
    # Every request must have gone over HTTP/2 (ALPN h2), or the run is not what it says.
    m = re.search(r"Application protocol: (\S+)", text)
    if not m or m.group(1) != "h2":
        r["errors"] = max(r["errors"], r["requests"] or 1)
    return r


def parse_wrk(text):
    if re.search(r"^finished in ", text, re.M):
        return parse_h2load(text)
    r = {"errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    r["requests"] = int(m.group(1)) if m else 0
    r["secs"] = parse_duration_ms(m.group(2) + m.group(3)) / 1000 if m else 0.0
    for pct in ("50", "99"):
        m = re.search(r"^\s+%s(?:\.0+)?%%\s+([\d.]+\w+)" % pct, text, re.M)
        r["p" + pct] = parse_duration_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r["errors"] += int(m.group(1))
    return r


def cmd_parse_wrk(path, rnd, sc, proxy, ticks, load1):
    r = parse_wrk(open(path).read())
    print("\t".join(str(x) for x in (rnd, sc, proxy, "%.1f" % r["rps"], "%.3f" % r["p50"], "%.3f" % r["p99"],
                                     r["requests"], r["errors"], ticks, load1)))


def cmd_parse_s_client(path, path2, proxy):
    """What `openssl s_client` negotiated, and whether the second connection resumed."""
    t = open(path, errors="replace").read()

    def grab(rx, text=t):
        m = re.search(rx, text, re.M)
        return m.group(1).strip() if m else "?"
    # "New, TLSv1.3, Cipher is X" is printed after every handshake; the SSL-Session
    # block only when a session was received before s_client left.
    m = re.search(r"^(?:New|Reused), (\S+), Cipher is (\S+)", t, re.M)
    proto, cipher = (m.group(1), m.group(2)) if m else ("?", "?")
    kex = grab(r"^Server Temp Key: (.+)$")
    alpn = grab(r"^ALPN protocol: (\S+)")
    t2 = open(path2, errors="replace").read()
    resumed = "yes" if re.search(r"^Reused, ", t2, re.M) else "no" if re.search(r"^New, ", t2, re.M) else "?"
    print("\t".join((proxy, proto, cipher, kex, alpn, resumed)))


def cmd_parse_strace(path, wrk_path, proxy):
    requests = parse_wrk(open(wrk_path).read())["requests"]
    for line in open(path):
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and re.match(r"[\d.]+$", parts[0]) and parts[-1] != "total":
            print("%s\t%d\t%s\t%s" % (proxy, requests, parts[-1], parts[3]))


def read_tsv(path):
    rows = []
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    return rows


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(x, nd=0):
    if x != x:
        return "n/a"
    return ("{:,.%df}" % nd).format(x)


def ratio(a, b):
    return a / b if b else float("nan")


def render(tmp, out):
    meta = {}
    for line in open(os.path.join(tmp, "meta.tsv")):
        k, _, v = line.rstrip("\n").partition("\t")
        meta[k] = v
    clk = int(meta.get("clk_tck", "100"))
    runs = read_tsv(os.path.join(tmp, "runs.tsv"))
    cell = {}
    for r in runs:
        key = (r["proxy"], r["scenario"])
        d = cell.setdefault(key, {"rps": [], "p99": [], "p50": [], "cpu": [], "util": [], "err": 0, "load": []})
        req = int(r["requests"])
        ticks = int(r["cpu_ticks"])
        d["rps"].append(float(r["rps"]))
        d["p99"].append(float(r["p99_ms"]))
        d["p50"].append(float(r["p50_ms"]))
        d["cpu"].append(ticks / clk * 1e6 / req if req else float("nan"))
        d["util"].append(ticks / clk / float(meta["duration"]) * 100)
        d["err"] += int(r["errors"])
        d["load"].append(float(r["load1"]))
    M = {k: {m: med(v[m]) for m in ("rps", "p99", "p50", "cpu", "util")} | {"err": v["err"]} for k, v in cell.items()}

    L = []
    w = L.append
    title = "drove vs nginx vs HAProxy" + (" (quick mode: 1 round, 3 s; indicative only)" if meta.get("quick") == "1" else "")
    w("# %s — %s, rev %s\n" % (title, meta["date"], meta["rev"]))
    w("Produced by `%s` (bench/README.md explains the method).\n" % meta["cmdline"])
    w("## Machine\n")
    w("| | |\n|---|---|")
    w("| CPUs (`nproc`) | %s |" % meta["nproc"])
    w("| CPU | %s |" % meta["cpu"])
    w("| kernel | %s |" % meta["kernel"])
    w("| nginx | %s |" % meta["nginx"])
    w("| HAProxy | %s |" % meta["haproxy"])
    w("| wrk | %s |" % meta["wrk"])
    if meta.get("h2load"):
        w("| h2load | %s |" % meta["h2load"])
    if meta.get("openssl"):
        w("| OpenSSL (wrk, h2load, nginx, HAProxy) | %s |" % meta["openssl"])
    dirty = meta.get("dirty", "0")
    w("| drove | %s, rev %s%s |" % (meta["drove"], meta["rev"],
                                     " (+%s uncommitted changed files, see below)" % dirty if dirty not in ("", "0") else ""))
    if meta.get("drove_bin"):
        w("| drove binary | %s |" % meta["drove_bin"])
    if meta.get("drove_alt_bin"):
        w("| drove_alt binary | %s |" % meta["drove_alt_bin"])
    if meta.get("dirty_files"):
        w("| uncommitted changes in the measured tree | %s |" % meta["dirty_files"])
    w("| load average (1/5/15 min) | start: %s · end: %s · 1-min at each run: %s–%s |" % (
        meta.get("load_start", "?"), meta.get("load_end", "?"),
        fmt(min(float(r["load1"]) for r in runs), 2), fmt(max(float(r["load1"]) for r in runs), 2)))
    w("| top at start | `%s` |" % meta.get("top_start", "?"))
    w("| fd limit | %s |" % meta.get("nofile", "?"))
    w("| rounds × duration | %s × %s s (+%s s unmeasured warm-up before each run), interleaved |" % (
        meta["rounds"], meta["duration"], meta["warmup"]))
    w("")
    w("Each proxy: one worker on core 0. wrk (1 thread) and the 3 backends (one nginx, 2 workers, `return 200 \"ok\\n\"`) on core 1. "
      "Numbers are medians over the rounds. CPU µs/req = (utime+stime of all the proxy's processes over the run) / requests. "
      "Core 0 busy = the proxy's CPU time / run time: below ~95 % the proxy was not the bottleneck (core 1 was). "
      "TLS scenarios: one P-256 ECDSA self-signed certificate for all three; drove's TLS listener is a second drove "
      "process (one listener per drove), whose CPU is the one counted; HTTP/2 runs use h2load (no percentiles: p50/p99 n/a).\n")

    w("## Results\n")
    w("| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req | core 0 busy | errors | req/s vs nginx | req/s vs HAProxy | p99 vs nginx | CPU/req vs nginx |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for sc in SCENARIOS:
        for p in PROXIES:
            m = M.get((p, sc))
            if not m:
                continue
            n, h = M.get(("nginx", sc)), M.get(("haproxy", sc))
            if p.startswith("drove") and n:
                h = h or {"rps": float("nan")}
                extra = " | ".join("**%.2f×**" % x if x == x else "n/a" for x in (
                    ratio(m["rps"], n["rps"]), ratio(m["rps"], h["rps"]), ratio(m["p99"], n["p99"]), ratio(m["cpu"], n["cpu"])))
            else:
                extra = " | | | "
            w("| %s | %s | %s | %s | %s | %s | %s %% | %d | %s |" % (
                SCENARIO_NAMES[sc], p, fmt(m["rps"]), fmt(m["p50"], 3), fmt(m["p99"], 3), fmt(m["cpu"], 1),
                fmt(m["util"]), m["err"], extra))
    w("")
    w("Ratios: drove ÷ the other (req/s: higher is better for drove; p99 and CPU: lower is better).\n")

    tp = os.path.join(tmp, "tls.tsv")
    hp = os.path.join(tmp, "handshakes.tsv")
    if os.path.exists(tp) and any(sc.startswith(("tls_", "h2_")) for sc in {r["scenario"] for r in runs}):
        w("## TLS: what was negotiated\n")
        w("`openssl s_client -alpn h2,http/1.1` against each TLS listener (OpenSSL's default client offer, as wrk's "
          "and h2load's), then a second connection offering the first one's session:\n")
        w("| proxy | protocol | suite | key exchange | ALPN | 2nd connection resumed |")
        w("|---|---|---|---|---|---|")
        for r in read_tsv(tp):
            w("| %s | %s | %s | %s | %s | %s |" % (r["proxy"], r["protocol"], r["cipher"], r["kex"], r["alpn"], r["resumed"]))
        w("")
        if os.path.exists(hp):
            hs = read_tsv(hp)
            agg = {}
            for r in hs:
                a = agg.setdefault((r["scenario"], r["proxy"]), {"full": 0, "resumed": 0, "what": set()})
                a["full"] += int(r["full"])
                a["resumed"] += int(r["resumed"])
                a["what"].add("%s %s %s" % (r["protocol"], r["cipher"], r["group"]))
            if agg:
                w("Handshakes wrk made in the measured runs (counted by `bench/wrk_tls.c` inside wrk, all rounds):\n")
                w("| scenario | proxy | full handshakes | resumed | protocol, suite, group |")
                w("|---|---|--:|--:|---|")
                for sc in SCENARIOS:
                    for p in PROXIES:
                        a = agg.get((sc, p))
                        if a:
                            w("| %s | %s | %s | %s | %s |" % (SCENARIO_NAMES[sc], p, fmt(a["full"]), fmt(a["resumed"]),
                                                          "; ".join(sorted(a["what"]))))
                w("")

    gzp = os.path.join(tmp, "gzip.tsv")
    gz = {}
    if os.path.exists(gzp) and any(r["scenario"] == "gzip64" for r in runs):
        w("## gzip: bytes per response\n")
        w("`curl -H 'Accept-Encoding: gzip'` once per proxy for the %s-byte JSON document (%s); "
          "HAProxy's gzip is libslz, which has no levels. \"decodes\" = gunzip gives the backend's bytes.\n" % (
              fmt(float(meta.get("json_bytes", "nan"))), "gzip levels: " + meta.get("gzip_levels", "?")))
        w("| proxy | body bytes | vs nginx | headers bytes | Content-Encoding | decodes |")
        w("|---|--:|--:|--:|---|---|")
        rows = read_tsv(gzp)
        gz = {r["proxy"]: r for r in rows}
        nb = float(gz["nginx"]["body_bytes"]) if "nginx" in gz else float("nan")
        for r in rows:
            b = float(r["body_bytes"])
            w("| %s | %s | %s | %s | %s | %s |" % (r["proxy"], fmt(b), "%.3f×" % ratio(b, nb) if r["proxy"] != "backend" else "",
                                                r["header_bytes"], r["encoding"], r["decodes_ok"]))
        w("")

    idle = []
    ip = os.path.join(tmp, "idle.tsv")
    if os.path.exists(ip):
        idle = read_tsv(ip)
        w("## Idle keep-alive connections\n")
        w("Each proxy freshly started, warmed with a 1 s 64-connection wrk run, then `bench/idle_conns.py` opens %s "
          "connections (64 in flight at a time), sends one GET on each, reads the response and leaves them idle. "
          "RSS = sum of VmRSS over the proxy's processes, sampled 2 s after the last response.\n" % meta.get("idle_conns"))
        w("| proxy | RSS before | RSS with the idle conns | idle conns ok / failed / still open at the end | Δ RSS | Δ per 10,000 conns |")
        w("|---|--:|--:|--:|--:|--:|")
        for r in idle:
            b, a, ok = int(r["rss_before_kb"]), int(r["rss_with_kb"]), int(r["ok"])
            delta_mb = (a - b) * 1024 / 1e6
            per10k = delta_mb * 10000 / ok if ok else float("nan")
            r["per10k"] = per10k
            w("| %s | %s MB | %s MB | %s / %s / %s | %s MB | %s MB |" % (
                r["proxy"], fmt(b * 1024 / 1e6, 1), fmt(a * 1024 / 1e6, 1), r["ok"], r["failed"], r["alive"],
                fmt(delta_mb, 1), fmt(per10k, 1)))
        w("\nMB = 10^6 bytes.\n")

    sp = os.path.join(tmp, "syscalls.tsv")
    if os.path.exists(sp):
        sc_rows = read_tsv(sp)
        per = {}
        names = {}
        for r in sc_rows:
            per.setdefault(r["proxy"], {})[r["syscall"]] = int(r["calls"]) / max(1, int(r["requests"]))
            names[r["syscall"]] = names.get(r["syscall"], 0) + int(r["calls"]) / max(1, int(r["requests"]))
        w("## Syscalls per request (strace -c -f, keep-alive 64 conns, 5 s; strace slows the proxy, so only the counts matter)\n")
        ps = [p for p in PROXIES if p in per]
        w("| syscall | " + " | ".join(ps) + " |")
        w("|---|" + "--:|" * len(ps))
        for name in sorted(names, key=lambda n: -names[n]):
            if names[name] < 0.005:
                continue
            w("| %s | %s |" % (name, " | ".join(fmt(per[p].get(name, 0), 2) for p in ps)))
        w("| **total** | %s |" % " | ".join(fmt(sum(per[p].values()), 2) for p in ps))
        w("")
        for p in ps:
            f = os.path.join(tmp, "perfstat-%s.txt" % p)
            if os.path.exists(f):
                w("`perf stat` of %s during a keep-alive 64 run:\n\n```\n%s\n```\n" % (p, open(f).read().strip()))
        for p in ps:
            f = os.path.join(tmp, "perftop-%s.txt" % p)
            g = os.path.join(tmp, "perfdso-%s.txt" % p)
            if os.path.exists(f) and os.path.getsize(f):
                dso = ""
                if os.path.exists(g):
                    dso = "\n".join(l.rstrip() for l in open(g) if re.match(r"^ +[0-9]", l))
                w("`perf record` (flat, %s, keep-alive 64, 5 s): by object, then the top symbols:\n\n```\n%s\n\n%s\n```\n" % (
                    p, dso, open(f).read().rstrip()))

    # Targets.
    w("## Targets\n")
    w("| target | measured | result |")
    w("|---|---|---|")

    def verdict(ok):
        return "**PASS**" if ok else "**FAIL**"

    for sc in ("ka64", "ka256"):
        d, n, h = M.get(("drove", sc)), M.get(("nginx", sc)), M.get(("haproxy", sc))
        if d and n:
            r = ratio(d["rps"], n["rps"])
            w("| req/s ≥ 1.1× nginx, %s | %s vs %s = %.2f× | %s |" % (SCENARIO_NAMES[sc], fmt(d["rps"]), fmt(n["rps"]), r, verdict(r >= 1.1)))
        if d and h:
            r = ratio(d["rps"], h["rps"])
            w("| req/s > HAProxy, %s | %s vs %s = %.2f× | %s |" % (SCENARIO_NAMES[sc], fmt(d["rps"]), fmt(h["rps"]), r, verdict(d["rps"] > h["rps"])))
    for sc in SCENARIOS:
        d, n = M.get(("drove", sc)), M.get(("nginx", sc))
        if d and n:
            r = ratio(d["cpu"], n["cpu"])
            # The plain HTTP/1.1 scenarios: ≤ 0.85× (issue 1); TLS, HTTP/2, gzip: at or better than nginx (issue 11).
            lim = 1.0 if sc in NEW_SCENARIOS else 0.85
            w("| CPU/request ≤ %s× nginx, %s | %.1f vs %.1f µs = %.2f× | %s |" % (
                "%.2f" % lim if lim != 1.0 else "1", SCENARIO_NAMES[sc], d["cpu"], n["cpu"], r, verdict(r <= lim)))
    d, n = M.get(("drove", "h2_8x8")), M.get(("nginx", "h2_8x8"))
    if d and n:
        r = ratio(d["rps"], n["rps"])
        w("| req/s ≥ nginx, %s | %s vs %s = %.2f× | %s |" % (SCENARIO_NAMES["h2_8x8"], fmt(d["rps"]), fmt(n["rps"]), r, verdict(r >= 1.0)))
    for sc in SCENARIOS:
        d, n = M.get(("drove", sc)), M.get(("nginx", sc))
        if d and n and d["p99"] == d["p99"]:
            w("| p99 ≤ nginx, %s | %.3f vs %.3f ms | %s |" % (SCENARIO_NAMES[sc], d["p99"], n["p99"], verdict(d["p99"] <= n["p99"])))
    if "drove" in gz and "nginx" in gz:
        r = ratio(float(gz["drove"]["body_bytes"]), float(gz["nginx"]["body_bytes"]))
        w("| gzip bytes per response within ±5 %% of nginx's | %s vs %s bytes = %.3f× | %s |" % (
            gz["drove"]["body_bytes"], gz["nginx"]["body_bytes"], r, verdict(0.95 <= r <= 1.05 and gz["drove"]["decodes_ok"] == "yes")))
    for r in idle:
        if r["proxy"] == "drove":
            w("| 10,000 idle keep-alive client conns ≤ 20 MB RSS | %s MB per 10,000 (%s ok) | %s |" % (
                fmt(r["per10k"], 1), r["ok"], verdict(r["per10k"] <= 20 and int(r["ok"]) > 0)))
    w("")

    gp = os.path.join(tmp, "generators.tsv")
    if os.path.exists(gp):
        gens = read_tsv(gp)
        by = {}
        for r in gens:
            by.setdefault(r["tool"], []).append(float(r["rps"]))
        if "wrk" in by and "drove bench" in by:
            wm, dm = med(by["wrk"]), med(by["drove bench"])
            w("## Load generators: `drove bench` against wrk\n")
            w("Each alone on core 0, straight at one backend (core 1), 64 keep-alive connections, "
              "%s-second runs, interleaved; medians of the rounds.\n" % meta["duration"])
            w("| tool | req/s (median) | every round |")
            w("|---|--:|---|")
            for tool in ("wrk", "drove bench"):
                w("| %s | %s | %s |" % (tool, fmt(med(by[tool])), ", ".join(fmt(x) for x in by[tool])))
            w("")
            w("drove bench reaches %.2f× wrk's request rate: %s (target: at least wrk's).\n" % (
                dm / wm if wm else 0, verdict(dm >= wm)))

    analysis = os.environ.get("ANALYSIS_FILE")
    if analysis and os.path.exists(analysis):
        w(open(analysis).read().rstrip() + "\n")

    w("## Every run\n")
    w("| round | scenario | proxy | req/s | p99 ms | CPU µs/req | errors | load1 |")
    w("|--:|---|---|--:|--:|--:|--:|--:|")
    for r in runs:
        req = int(r["requests"])
        w("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["round"], r["scenario"], r["proxy"], fmt(float(r["rps"])), r["p99_ms"],
            fmt(int(r["cpu_ticks"]) / clk * 1e6 / req, 1) if req else "n/a", r["errors"], r["load1"]))
    w("")

    w("## Configurations\n")
    w("`$TMP` is the script's temp dir; ports are picked free at run time.\n")
    for title, rel in (("backends (nginx, core 1)", "backend/nginx.conf"), ("nginx (load balancer)", "nginx/nginx.conf"),
                       ("HAProxy", "haproxy/haproxy.cfg"), ("drove", "drove/drove.toml"),
                       ("drove, TLS listener (a second drove process)", "drove_tls/drove.toml")):
        if not os.path.exists(os.path.join(tmp, rel)):
            continue
        text = open(os.path.join(tmp, rel)).read().replace(tmp, "$TMP")
        lang = "toml" if rel.endswith(".toml") else "nginx" if rel.endswith(".conf") else ""
        w("### %s\n\n```%s\n%s\n```\n" % (title, lang, text.rstrip()))
    w("Command lines (proxy on core 0, load on core 1):\n")
    w("```")
    w("taskset -c 1 nginx -p $TMP/backend -c $TMP/backend/nginx.conf")
    w("taskset -c 0 nginx -p $TMP/nginx -c $TMP/nginx/nginx.conf")
    w("taskset -c 0 haproxy -db -f $TMP/haproxy/haproxy.cfg")
    w("taskset -c 0 drove up -c $TMP/drove/drove.toml")
    w("taskset -c 0 drove up -c $TMP/drove_tls/drove.toml")
    w("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost -keyout key.pem -out cert.pem")
    w("")
    d = meta["duration"]
    w("# ka64, ka256, close64, gzip64")
    w("taskset -c 1 wrk -t1 -c64  -d%ss --latency http://127.0.0.1:PORT/" % d)
    w("taskset -c 1 wrk -t1 -c256 -d%ss --latency http://127.0.0.1:PORT/" % d)
    w("taskset -c 1 wrk -t1 -c64  -d%ss --latency -H 'Connection: close' http://127.0.0.1:PORT/" % d)
    w("taskset -c 1 wrk -t1 -c64  -d%ss --latency -H 'Accept-Encoding: gzip' http://127.0.0.1:PORT/json" % d)
    w("# tls_ka64, tls_resume64, tls_close64 (LD_PRELOAD=wrk_tls.so: bench/wrk_tls.c, counts handshakes)")
    w("taskset -c 1 wrk -t1 -c64  -d%ss --latency https://127.0.0.1:TLSPORT/" % d)
    w("taskset -c 1 wrk -t1 -c64  -d%ss --latency -H 'Connection: close' https://127.0.0.1:TLSPORT/" % d)
    w("WRK_TLS_NO_RESUME=1 taskset -c 1 wrk -t1 -c64 -d%ss --latency -H 'Connection: close' https://127.0.0.1:TLSPORT/" % d)
    w("# h2_8x8")
    w("taskset -c 1 h2load -t1 -c8 -m8 -D %s https://127.0.0.1:TLSPORT/" % d)
    w("python3 bench/idle_conns.py 127.0.0.1 PORT %s 4 64" % meta.get("idle_conns"))
    w("```")

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    cmd = sys.argv[1]
    if cmd == "parse-wrk":
        cmd_parse_wrk(*sys.argv[2:8])
    elif cmd == "parse-s-client":
        cmd_parse_s_client(*sys.argv[2:5])
    elif cmd == "parse-strace":
        cmd_parse_strace(*sys.argv[2:5])
    elif cmd == "render":
        render(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown command %s" % cmd)


if __name__ == "__main__":
    main()
