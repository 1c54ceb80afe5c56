//! TLS termination: a real TLS client (rustls) against drove with a self-signed
//! certificate (rcgen), requests and bodies through it, keep-alive, and what a plain
//! HTTP client or a bad certificate path gets.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use drove_test_support::{demo, tempdir, Drove};

use crate::{drove, static_config};

/// A TLS client connection to `addr` trusting only `cert_pem`.
fn tls_client(
    addr: std::net::SocketAddr,
    cert_pem: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    tls_client_trusting(addr, &[cert_pem])
}

/// A TLS client connection to `addr` trusting only these certificates.
fn tls_client_trusting(
    addr: std::net::SocketAddr,
    certs: &[&str],
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert_pem in certs {
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads one response with a Content-Length body: (status, head, body).
fn read_response(s: &mut impl Read) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "EOF inside a head");
        data.push(byte[0]);
    }
    let head = String::from_utf8(data).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

#[test]
fn https_requests_keep_alive_bodies_and_forwarded_proto() {
    let dir = tempdir("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let b = demo(drove(), "only");
    let cfg = static_config(
        &[b.addr],
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
    );
    let d = Drove::up(drove(), &cfg);

    let mut s = tls_client(d.addr(), &cert_pem);
    // Two requests on one TLS connection, the second with a body.
    s.write_all(b"GET /echo/headers HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (status, head, body) = read_response(&mut s);
    assert_eq!(status, 200, "{head}{body}");
    let headers: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https", "{body}");
    let payload = "x".repeat(40_000);
    s.write_all(
        format!(
            "POST /count HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["bytes"], 40_000, "the whole body went through TLS");

    // Plain HTTP on the TLS port: no HTTP answer, the connection ends, drove serves on.
    let mut plain = std::net::TcpStream::connect(d.addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(
        !out.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    let mut s = tls_client(d.addr(), &cert_pem);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).0, 200);

    // `drove verify` speaks plain HTTP: it says so instead of failing every drill.
    let out = d.cli(&["verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("terminates TLS"), "{err}");
}

#[test]
fn a_missing_certificate_file_is_a_config_error() {
    let dir = tempdir("tls-missing");
    let path = dir.join("drove.toml");
    std::fs::write(
        &path,
        "[balancer]\nbackends = [\"127.0.0.1:9\"]\ntls = { cert = \"nope.pem\", key = \"nope.key\" }\n",
    )
    .unwrap();
    let out = std::process::Command::new(drove())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("drove.toml:3:16: `tls.cert`: no file"),
        "{err}"
    );
}

#[test]
fn a_renewed_certificate_is_served_to_new_handshakes_at_once() {
    let dir = tempdir("tls-renew");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let old = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let old_pem = old.cert.pem();
    std::fs::write(&cert, &old_pem).unwrap();
    std::fs::write(&key, old.signing_key.serialize_pem()).unwrap();
    let b = demo(drove(), "only");
    let cfg = static_config(
        &[b.addr],
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            cert.display(),
            key.display()
        ),
    );
    let d = Drove::up(drove(), &cfg);
    let get = |s: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| {
        s.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut probe = [0u8; 1];
        // The handshake happens on first use: a certificate not trusted fails here.
        s.read_exact(&mut probe)?;
        let mut rest = Vec::new();
        while !rest.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut probe)?;
            rest.push(probe[0]);
        }
        let len: usize = String::from_utf8_lossy(&rest)
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length: ")
                    .or_else(|| l.strip_prefix("Content-Length: "))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        Ok::<bool, std::io::Error>(rest.starts_with(b"TTP/1.1 200"))
    };
    // A connection open across the renewal, and TLS load trusting both certificates.
    let mut open = tls_client(d.addr(), &old_pem);
    assert!(get(&mut open).unwrap());
    let new = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let new_pem = new.cert.pem();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (addr, stop) = (d.addr(), stop.clone());
        let (a, b) = (old_pem.clone(), new_pem.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut c = tls_client_trusting(addr, &[&a, &b]);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(&mut c) {
                    Ok(true) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                n += 1;
                if n % 10 == 0 {
                    // New connections too: they meet whichever certificate is in force.
                    c = tls_client_trusting(addr, &[&a, &b]);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };

    // The files change under the same paths (a renewal): the plan says so.
    std::fs::write(&cert, &new_pem).unwrap();
    std::fs::write(&key, new.signing_key.serialize_pem()).unwrap();
    let plan = String::from_utf8_lossy(&d.cli(&["reload", "--dry-run"]).stdout).into_owned();
    assert!(
        plan.contains("would apply balancer.tls (certificate files)"),
        "{plan}"
    );
    assert!(get(&mut tls_client(d.addr(), &old_pem)).is_ok(), "dry run");
    let out = d.cli(&["reload"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("applied balancer.tls (certificate files)"),
        "{text}"
    );
    // New handshakes get the new certificate at once; the open connection goes on.
    assert!(get(&mut tls_client(d.addr(), &new_pem)).unwrap());
    assert!(get(&mut tls_client(d.addr(), &old_pem)).is_err());
    assert!(get(&mut open).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 20, "{ok}");
    // Nothing more to apply.
    let out = d.cli(&["reload"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing changed"));
}
