"""bench/benchlib.py: what the Python benchmarks share: free ports, the admin API, a
drove process in its own process group, /proc readings and waiting for a quiet machine.
"""

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_block(n, prefer=5001):
    """A base port with n consecutive bindable ports; the users' 5001 when it is free."""
    if all(bindable(prefer + i) for i in range(n)):
        return prefer
    for _ in range(200):
        base = free_port()
        if base + n < 65000 and all(bindable(base + i) for i in range(n)):
            return base
    sys.exit(f"no block of {n} free ports")


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def post(url, body, timeout=600):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS


def mem_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def release_drove():
    """(executable, revision): $DROVE_BIN, or a fresh `cargo build --release`."""
    exe = os.environ.get("DROVE_BIN")
    if not exe:
        subprocess.run(["cargo", "build", "--release", "--bin", "drove"], cwd=ROOT, check=True)
        exe = os.path.join(ROOT, "target/release/drove")
    rev = os.environ.get("DROVE_REV") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return os.path.abspath(exe), rev


def result_path(rev, name):
    date = datetime.date.today().isoformat()
    return os.path.join(ROOT, "bench/results", f"{date}-{rev}-{name}.md")


def cpu_model():
    cpu = open("/proc/cpuinfo").read()
    return next(
        (l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name")), "?"
    )


class Drove:
    """`drove up -c CFG --quiet` in its own process group; `admin` is its admin address."""

    def __init__(self, exe, cfg, log, admin):
        self.admin = admin
        self.proc = subprocess.Popen(
            [exe, "up", "-c", cfg, "--quiet"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=os.path.dirname(cfg),
        )

    def status(self):
        return json.loads(get(f"http://{self.admin}/api/status"))

    def counts(self):
        s = self.status()
        web = [i for i in s["instances"] if i["service"] == "web"]
        ready = sum(1 for i in web if i["state"] == "ready")
        rotation = sum(
            1 for b in s["balancer"]["backends"] if b["enabled"] and b["healthy"]
        )
        return len(web), ready, rotation, s

    def wait(self, n, timeout=300):
        """Seconds until exactly n web instances exist, all ready and in rotation."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                total, ready, rotation, _ = self.counts()
                if total == ready == rotation == n:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit(f"not {n} ready instances after {timeout}s: {self.counts()[:3]}")

    def stop(self):
        try:
            post(f"http://{self.admin}/api/down", {}, timeout=10)
            self.proc.wait(timeout=60)
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_quiet(max_load=None, wait_s=None):
    """Waits (up to LOAD_WAIT s) for the 1-minute load average to drop below MAX_LOAD."""
    max_load = max_load if max_load is not None else float(os.environ.get("MAX_LOAD", "1.0"))
    wait_s = wait_s if wait_s is not None else float(os.environ.get("LOAD_WAIT", "300"))
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait_s:
        if os.getloadavg()[0] < max_load:
            break
        time.sleep(5)
    return os.getloadavg()
