//! TLS termination for client connections (`[balancer] tls = { cert, key }`): rustls over
//! a [`Sock`], behind the same [`ClientIo`] interface as a plain socket, so the rest of
//! the data path does not know which it serves. ALPN offers `h2` (then the connection
//! goes to the HTTP/2 engine, `h2.rs`) and `http/1.1`.
//!
//! rustls is driven by hand (no tokio-rustls): ciphertext is read from the socket into a
//! scratch buffer, fed to the session, and the session's output (handshake messages,
//! records) is written back before waiting for more. Everything runs on the worker's
//! thread; the `RefCell` borrows never span an await.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConnection;

/// The TLS configuration a proxy serves with (rustls'), as built by [`server_config`].
pub use rustls::ServerConfig;

use crate::sock::{Buf, ClientIo, Sock};

/// Ciphertext read at once: one TLS record at most.
const RAW_READ: usize = 16 * 1024 + 512;

/// Loads a certificate chain and its private key (PEM) into a server config; `http2`
/// offers ALPN `h2` (preferred) besides `http/1.1`.
pub fn server_config(cert: &Path, key: &Path, http2: bool) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    // AES-128-GCM with SHA-256 first, chosen over the client's order: the SHA-384 key
    // schedule of AES-256 suites costs noticeably more per handshake (measured).
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            && s.suite() != rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            && s.suite() != rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    });
    let provider = Arc::new(provider);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    // HTTP/2 preferred when the client offers it (browsers do), else HTTP/1.1.
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    config.ignore_client_order = true;
    // Session tickets (rotating keys, as nginx's default): returning clients resume
    // without a full handshake, whichever worker they reach.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// A TLS session over an accepted socket.
pub(crate) struct TlsSock {
    sock: Sock,
    tls: RefCell<ServerConnection>,
    /// Ciphertext scratch (taken out while a read or write awaits).
    raw: RefCell<Vec<u8>>,
}

impl TlsSock {
    pub(crate) fn new(sock: Sock, config: Arc<ServerConfig>) -> io::Result<TlsSock> {
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsSock {
            sock,
            tls: RefCell::new(tls),
            raw: RefCell::new(Vec::new()),
        })
    }

    /// Writes whatever the session has to send (handshake messages, records, alerts).
    async fn flush(&self) -> io::Result<()> {
        loop {
            let mut out = std::mem::take(&mut *self.raw.borrow_mut());
            out.clear();
            {
                let mut tls = self.tls.borrow_mut();
                while tls.wants_write() {
                    tls.write_tls(&mut out)?;
                }
            }
            if out.is_empty() {
                *self.raw.borrow_mut() = out;
                return Ok(());
            }
            let r = self.sock.write_all(&out).await;
            *self.raw.borrow_mut() = out;
            r?;
        }
    }

    /// Plaintext already decrypted, without reading the socket. `Ok(None)`: none yet.
    fn read_plain(&self, buf: &mut Buf) -> io::Result<Option<usize>> {
        let mut tls = self.tls.borrow_mut();
        match buf.fill_with(|room| tls.reader().read(room)) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            // The peer closed the TCP connection without close_notify: EOF all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// Reads ciphertext from the socket into the session (waits for it); false at EOF.
    /// (The scratch buffer is per read, not kept: an idle TLS connection holds no
    /// 16 KiB buffer, at the cost of one allocation per read.)
    async fn read_records(&self) -> io::Result<bool> {
        let mut raw = Buf::with_capacity(RAW_READ);
        let n = self.sock.read(&mut raw).await?;
        let mut tls = self.tls.borrow_mut();
        if n == 0 {
            // Tells the session the stream ended (the reader then reports EOF).
            let _ = tls.read_tls(&mut io::empty());
            return Ok(false);
        }
        let mut data = raw.filled();
        while !data.is_empty() {
            tls.read_tls(&mut data)?;
            if let Err(e) = tls.process_new_packets() {
                // Leave the alert rustls queued to be sent by the caller's flush.
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        Ok(true)
    }
}

impl ClientIo for TlsSock {
    fn handoff_stream(&self) -> Option<std::net::TcpStream> {
        None
    }
    fn try_read(&self, _buf: &mut Buf) -> io::Result<Option<usize>> {
        // The handshake comes first: nothing to read before it is driven by `read`.
        Ok(None)
    }

    async fn read(&self, buf: &mut Buf) -> io::Result<usize> {
        loop {
            if let Some(n) = self.read_plain(buf)? {
                return Ok(n);
            }
            let more = self.read_records().await;
            // Handshake replies, alerts: out before waiting for the next bytes.
            let flushed = self.flush().await;
            match more {
                Ok(true) => flushed?,
                Ok(false) => return self.read_plain(buf).map(|n| n.unwrap_or(0)),
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_fresh(&self, make: impl FnOnce() -> Buf) -> io::Result<(Buf, Option<usize>)> {
        // An idle connection holds no buffer while it waits, as with plain sockets.
        let pending = self
            .tls
            .borrow_mut()
            .process_new_packets()
            .map(|s| s.plaintext_bytes_to_read() > 0)
            .unwrap_or(true);
        if !pending {
            self.sock.wait_readable().await?;
        }
        let mut buf = make();
        let n = self.read(&mut buf).await?;
        Ok((buf, Some(n)))
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.tls.borrow_mut().writer().write(data)?;
            data = &data[n..];
            self.flush().await?;
            if n == 0 && !data.is_empty() {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    fn set_nodelay(&self) {
        self.sock.set_nodelay();
    }

    fn shutdown_write(&self) {
        // close_notify, best effort and without waiting, then the TCP half-close.
        let mut tls = self.tls.borrow_mut();
        tls.send_close_notify();
        let mut out = Vec::new();
        while tls.wants_write() {
            if tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        let _ = self.sock.try_write(&out);
        self.sock.shutdown_write();
    }

    fn peer_gone(&self) -> impl std::future::Future<Output = ()> {
        // The TCP close; a client that sends close_notify first is not seen (its alert
        // is bytes to read), and the exchange ends when the backend's next bytes fail
        // to be written.
        self.sock.peer_gone()
    }
    fn is_tls(&self) -> bool {
        true
    }

    fn alpn_h2(&self) -> bool {
        self.tls.borrow().alpn_protocol() == Some(b"h2")
    }

    fn into_h2_io(self, read: Buf) -> crate::http2::H2Io {
        crate::http2::H2Io::new(self.sock, Some(self.tls.into_inner()), read)
    }
}
