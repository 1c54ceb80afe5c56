#!/usr/bin/env python3
"""Open N keep-alive client connections to a proxy, send one GET on each, read the
response, then keep them all open and idle.

Usage: idle_conns.py HOST PORT [N] [HOLD_SECONDS] [CONCURRENCY]

Prints `READY <ok> <failed>` (flushed) once every connection got its response and is
idle, holds them for HOLD_SECONDS (the caller samples the proxy's RSS meanwhile), then
prints `ALIVE <n>` (connections the proxy has not closed) and exits, closing them all.
At most CONCURRENCY requests are in flight at once, so the proxy's upstream pool stays
about as large as in a 64-connection load run and the RSS delta is the cost of the
idle client connections.
"""
import errno
import resource
import selectors
import socket
import sys
import time


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, hard):
        if target == resource.RLIM_INFINITY or target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
                return
            except (ValueError, OSError):
                continue


def main():
    host = sys.argv[1]
    port = int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    hold = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    raise_nofile(65536)

    req = ("GET / HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: idle-conns\r\n\r\n" % (host, port)).encode()
    sel = selectors.DefaultSelector()
    idle = []
    failed = 0
    started = 0
    in_flight = 0
    deadline = time.monotonic() + 120

    def start_one():
        nonlocal started, in_flight, failed
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            started += 1
            return
        started += 1
        in_flight += 1
        # state: [phase, buffer]; phase 0 = connecting/sending, 1 = reading
        sel.register(s, selectors.EVENT_WRITE, [0, b""])

    while (started < n or in_flight > 0) and time.monotonic() < deadline:
        while started < n and in_flight < concurrency:
            start_one()
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            st = key.data
            if st[0] == 0:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    failed += 1
                    in_flight -= 1
                    sel.unregister(s)
                    s.close()
                    continue
                try:
                    s.send(req)
                except OSError:
                    failed += 1
                    in_flight -= 1
                    sel.unregister(s)
                    s.close()
                    continue
                st[0] = 1
                sel.modify(s, selectors.EVENT_READ, st)
            else:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    failed += 1
                    in_flight -= 1
                    sel.unregister(s)
                    s.close()
                    continue
                st[1] += data
                buf = st[1]
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head = buf[:head_end].lower()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if len(buf) - head_end - 4 >= length:
                    in_flight -= 1
                    sel.unregister(s)
                    idle.append(s)

    print("READY %d %d" % (len(idle), failed + (n - started) + in_flight), flush=True)
    time.sleep(hold)
    alive = 0
    for s in idle:
        try:
            d = s.recv(1)
            if d:
                alive += 1  # unexpected data, but still open
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    print("ALIVE %d" % alive, flush=True)
    for s in idle:
        s.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
