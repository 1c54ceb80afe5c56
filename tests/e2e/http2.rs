//! HTTP/2 and compression as users meet them: `curl --http2-prior-knowledge` on a plain
//! listener and `curl --http2` over TLS (ALPN h2) through drove to the demo, `h2load`
//! (nghttp2-client) with 8 connections × 8 streams, and 10 MB bodies through drove with
//! compression on while drove's memory stays flat (its VmHWM from /proc).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use drove_test_support::{demo, tempdir, Drove, Proc};

use crate::{drove, static_config};

/// A self-signed certificate for `localhost` in `dir`: the `tls = {...}` value and the
/// certificate's path (for curl's `--cacert`).
fn certificate(dir: &Path) -> (String, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    (
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            dir.join("key.pem").display()
        ),
        cert,
    )
}

/// Runs curl (bounded by `--max-time`) with `args`; returns its `-w` output.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gzip -dc file`.
fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("gzip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The header lines curl wrote with `-D`, lowercase.
fn headers(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().to_ascii_lowercase()
}

/// Deterministic text that compresses like prose (about 2.5:1 with gzip).
fn words(len: usize) -> Vec<u8> {
    const W: [&str; 10] = [
        "alpha", "beta", "gamma", "delta", "drove", "proxy", "stream", "chunk", "event", "gzip",
    ];
    let mut out = Vec::with_capacity(len + 64);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut n = 0;
    while out.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = x >> 33;
        out.extend_from_slice(W[(r % 10) as usize].as_bytes());
        out.extend_from_slice((r % 100_000).to_string().as_bytes());
        n += 1;
        out.push(if n % 8 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

#[test]
fn curl_gets_http2_by_prior_knowledge_and_by_alpn_over_tls() {
    let dir = tempdir("h2-curl");
    let (tls, cert) = certificate(&dir);
    let b = demo(drove(), "only");
    let plain = Drove::up(drove(), &static_config(&[b.addr], "compress = true"));
    let secure = Drove::up(
        drove(),
        &static_config(&[b.addr], &format!("compress = true\n{tls}")),
    );

    // h2c with prior knowledge.
    let url = format!("http://{}/whoami", plain.addr());
    let out = curl(&[
        "--http2-prior-knowledge",
        "-o",
        dir.join("whoami").to_str().unwrap(),
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert_eq!(out, "2 200");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("whoami")).unwrap()).unwrap();
    assert_eq!(v["instance"], "only", "{v}");

    // TLS: ALPN picks h2; forwarded as https; a body up and a compressed body down.
    let port = secure.addr().port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let out = curl(&[
        "--http2",
        "--cacert",
        cert.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-o",
        dir.join("headers.json").to_str().unwrap(),
        "-w",
        "%{http_version} %{http_code}",
        &format!("https://localhost:{port}/echo/headers"),
    ]);
    assert_eq!(out, "2 200");
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("headers.json")).unwrap()).unwrap();
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    let body = words(64 * 1024);
    std::fs::write(dir.join("body.txt"), &body).unwrap();
    let out = curl(&[
        "--http2",
        "--cacert",
        cert.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-H",
        "Content-Type: text/plain",
        "-H",
        "Accept-Encoding: gzip",
        "--data-binary",
        &format!("@{}", dir.join("body.txt").display()),
        "-D",
        dir.join("echo.h").to_str().unwrap(),
        "-o",
        dir.join("echo.gz").to_str().unwrap(),
        "-w",
        "%{http_version} %{http_code} %{size_download}",
        &format!("https://localhost:{port}/echo"),
    ]);
    let parts: Vec<&str> = out.split(' ').collect();
    assert_eq!(&parts[..2], ["2", "200"], "{out}");
    let downloaded: usize = parts[2].parse().unwrap();
    assert!(downloaded < body.len() / 2, "compressed on the wire: {out}");
    let h = headers(&dir.join("echo.h"));
    assert!(h.contains("content-encoding: gzip\r\n"), "{h}");
    assert!(!h.contains("content-length"), "{h}");
    assert_eq!(gunzip(&dir.join("echo.gz")), body);

    // The same TLS listener still speaks HTTP/1.1 to a client that offers only that.
    let out = curl(&[
        "--http1.1",
        "--cacert",
        cert.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &format!("https://localhost:{port}/whoami"),
    ]);
    assert_eq!(out, "1.1 200");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs h2load (bounded: killed after 120 s) and returns its output.
fn h2load(args: &[&str]) -> String {
    let mut cmd = Command::new("h2load");
    cmd.args(args);
    let mut p = Proc::spawn(cmd);
    let status = p
        .wait_exit(Duration::from_secs(120))
        .expect("h2load finished within 120 s");
    assert!(p.wait_stdout_closed(Duration::from_secs(10)));
    let out = p.stdout.lock().unwrap().join("\n");
    assert!(status.success(), "h2load {args:?}:\n{out}");
    out
}

/// The numbers of h2load's `requests:` line: (total, succeeded, failed, errored).
fn h2load_counts(out: &str) -> (u64, u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line:\n{out}"));
    let n = |word: &str| -> u64 {
        line.split(',')
            .find(|p| p.trim().ends_with(word))
            .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or_else(|| panic!("{word} in {line}"))
    };
    (n("total"), n("succeeded"), n("failed"), n("errored"))
}

#[test]
fn h2load_with_8_connections_by_8_streams_has_no_failure() {
    let dir = tempdir("h2load");
    let (tls, _) = certificate(&dir);
    let b: Vec<_> = (1..=2).map(|i| demo(drove(), &format!("b{i}"))).collect();
    let addrs: Vec<SocketAddr> = b.iter().map(|d| d.addr).collect();
    let plain = Drove::up(drove(), &static_config(&addrs, ""));
    let secure = Drove::up(drove(), &static_config(&addrs, &tls));
    for (url, proto) in [
        (format!("http://{}/whoami", plain.addr()), "h2c"),
        (format!("https://{}/whoami", secure.addr()), "h2"),
    ] {
        let out = h2load(&["-n", "2000", "-c", "8", "-m", "8", &url]);
        assert!(
            out.contains(&format!("Application protocol: {proto}")),
            "{out}"
        );
        let (total, ok, failed, errored) = h2load_counts(&out);
        assert_eq!((total, ok, failed, errored), (2000, 2000, 0, 0), "{out}");
        assert!(out.contains("status codes: 2000 2xx"), "{out}");
    }
    // drove counted them too, per instance.
    let served: u64 = plain
        .status()
        .balancer
        .expect("a balancer")
        .backends
        .iter()
        .map(|b| b.requests)
        .sum();
    assert_eq!(served, 2000);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `/proc/PID/status` field in kB.
fn proc_kb(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

/// A backend of its own that answers each `GET /big?n=N` with N bytes of [`words`],
/// chunked in 64 KiB pieces as it writes them (the body never exists whole in drove's
/// reach); it serves `conns` connections, then stops.
fn big_backend(body: Arc<Vec<u8>>, conns: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().take(conns) {
            let Ok(mut c) = c else { return };
            let body = body.clone();
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let n: usize = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|t| t.split_once("n="))
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or(0);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                );
                for piece in body[..n.min(body.len())].chunks(64 * 1024) {
                    let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                    chunk.extend_from_slice(piece);
                    chunk.extend_from_slice(b"\r\n");
                    if c.write_all(&chunk).is_err() {
                        return;
                    }
                }
                let _ = c.write_all(b"0\r\n\r\n");
                let mut rest = Vec::new();
                let _ = c.read_to_end(&mut rest);
            });
        }
    });
    addr
}

/// 10 MB through compression, up and down, with drove's peak RSS flat. The bound: a
/// gzip stream holds about 0.4 MiB (window and tables, drove-compress's flat-memory
/// test) and the relay a few 16–64 KiB buffers, all of which a warm-up request has
/// already made drove allocate once; 3 MiB leaves room for allocator slack, and is
/// below what holding either body whole would cost (10 MiB plain, about 4 MiB
/// compressed). Measured on the debug build: +16 kB up, +136 kB down; a relay that
/// held the compressed body until its end grew by 4.4 MB and failed here.
#[test]
fn ten_megabytes_are_compressed_with_flat_memory() {
    const TEN_MB: usize = 10 * 1024 * 1024;
    const BOUND_KB: u64 = 3 * 1024;
    let dir = tempdir("h2-flat");
    let body = Arc::new(words(TEN_MB));
    let big = big_backend(body.clone(), 2);
    let b = demo(drove(), "only");
    // /big goes to the backend of its own, the rest to the demo.
    let d = Drove::up(drove(), &static_config(&[b.addr], "compress = true"));
    let pid = d.proc.pid();
    let big_drove = Drove::up(drove(), &static_config(&[big], "compress = true"));
    let big_pid = big_drove.proc.pid();
    std::fs::write(dir.join("small.txt"), &body[..64 * 1024]).unwrap();
    std::fs::write(dir.join("body.txt"), &body[..]).unwrap();
    let post = |file: &str, out: &str| {
        curl(&[
            "-H",
            "Content-Type: text/plain",
            "-H",
            "Accept-Encoding: gzip",
            "--data-binary",
            &format!("@{}", dir.join(file).display()),
            "-o",
            dir.join(out).to_str().unwrap(),
            "-w",
            "%{http_code}",
            &format!("http://{}/count", d.addr()),
        ])
    };
    let get = |n: usize, out: &str| {
        curl(&[
            "-H",
            "Accept-Encoding: gzip",
            "-D",
            dir.join(format!("{out}.h")).to_str().unwrap(),
            "-o",
            dir.join(out).to_str().unwrap(),
            "-w",
            "%{http_code} %{size_download}",
            &format!("http://{}/big?n={n}", big_drove.addr()),
        ])
    };
    // Warm-up: one request of each kind, so what drove allocates once is allocated.
    assert_eq!(post("small.txt", "small.json"), "200");
    assert!(get(64 * 1024, "warm.gz").starts_with("200 "));
    let before = (proc_kb(pid, "VmHWM"), proc_kb(big_pid, "VmHWM"));

    // 10 MB up: the request body streams through drove to the demo, which counts it.
    assert_eq!(post("body.txt", "count.json"), "200");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("count.json")).unwrap()).unwrap();
    assert_eq!(v["bytes"], TEN_MB, "{v}");
    // 10 MB down, compressed on its way.
    let out = get(TEN_MB, "big.gz");
    let h = headers(&dir.join("big.gz.h"));
    assert!(h.contains("content-encoding: gzip\r\n"), "{h}");
    assert!(h.contains("transfer-encoding: chunked\r\n"), "{h}");
    let wire: usize = out.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(wire < TEN_MB / 2, "compressed: {out}");
    assert!(
        gunzip(&dir.join("big.gz")) == body[..],
        "the body decodes whole"
    );
    let after = (proc_kb(pid, "VmHWM"), proc_kb(big_pid, "VmHWM"));
    eprintln!(
        "drove VmHWM: 10 MB up {} -> {} kB, 10 MB down compressed {} -> {} kB",
        before.0, after.0, before.1, after.1
    );
    assert!(
        after.0 - before.0 < BOUND_KB,
        "request body: peak RSS grew {} kB",
        after.0 - before.0
    );
    assert!(
        after.1 - before.1 < BOUND_KB,
        "compressed response: peak RSS grew {} kB",
        after.1 - before.1
    );
    let _ = std::fs::remove_dir_all(&dir);
}
