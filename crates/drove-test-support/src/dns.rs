//! A tiny authoritative DNS server over UDP, so tests can drive name resolution
//! (A/AAAA/SRV) without touching the host's resolver or the network.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Short TTL so a resolver that caches still sees record changes within a test.
const TTL: u32 = 1;

/// Records of one name. Both kinds live together so "name exists" (NOERROR vs
/// NXDOMAIN) can be decided over all types, as a real authoritative server does.
#[derive(Default)]
struct Entry {
    ips: Vec<IpAddr>,
    srv: Vec<(u16, u16, u16, String)>,
}

type Zone = Arc<Mutex<HashMap<String, Entry>>>;

/// One spelling per name, so "Web.Test." and "web.test" hit the same entry.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A DNS server on 127.0.0.1 (UDP, random free port) answering from records the test sets.
pub struct DnsServer {
    /// Where to send queries (point the resolver under test here).
    pub addr: SocketAddr,
    zone: Zone,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds a free UDP port on 127.0.0.1 and serves from a background thread until dropped.
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS socket");
        let addr = socket.local_addr().expect("DNS socket address");
        // The timeout lets the thread notice the stop flag without any wake-up packet.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set DNS read timeout");
        let zone = Zone::default();
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (z, q, s) = (zone.clone(), queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(socket, z, q, s));
        DnsServer {
            addr,
            zone,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Sets the A/AAAA records of `name` (IPv4 -> A, IPv6 -> AAAA); an empty slice removes them.
    pub fn set_ips(&self, name: &str, ips: &[IpAddr]) {
        let mut zone = self.zone.lock().unwrap();
        let entry = zone.entry(key(name)).or_default();
        entry.ips = ips.to_vec();
        // Drop empty entries so a name with nothing left answers NXDOMAIN again.
        if entry.ips.is_empty() && entry.srv.is_empty() {
            zone.remove(&key(name));
        }
    }

    /// Sets the SRV records of `name` (e.g. "_http._tcp.web.test"): (priority, weight, port, target host).
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let mut zone = self.zone.lock().unwrap();
        let entry = zone.entry(key(name)).or_default();
        entry.srv = records
            .iter()
            .map(|&(p, w, port, t)| (p, w, port, t.to_string()))
            .collect();
        if entry.ips.is_empty() && entry.srv.is_empty() {
            zone.remove(&key(name));
        }
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, zone: Zone, queries: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        // Timeouts and transient errors just loop back to the stop check.
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        // Garbage is dropped silently: a test server has no one to report it to.
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Ok(bytes) = answer(&query, &zone.lock().unwrap()).to_vec() else {
            continue;
        };
        if socket.send_to(&bytes, peer).is_ok() {
            queries.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn answer(query: &Message, zone: &HashMap<String, Entry>) -> Message {
    let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    // Resolvers under test use this as their recursive server, so present as one.
    resp.metadata.recursion_available = true;
    resp.queries = query.queries.clone();
    for q in &query.queries {
        let Some(entry) = zone.get(&key(&q.name().to_ascii())) else {
            resp.metadata.response_code = ResponseCode::NXDomain;
            continue;
        };
        let data: Vec<RData> = match q.query_type() {
            RecordType::A => entry
                .ips
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(RData::A(A(*v4))),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            RecordType::AAAA => entry
                .ips
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            // Targets are made absolute, else the resolver would append its search domain.
            RecordType::SRV => entry
                .srv
                .iter()
                .filter_map(|(prio, weight, port, target)| {
                    let target =
                        Name::from_ascii(format!("{}.", target.trim_end_matches('.'))).ok()?;
                    Some(RData::SRV(SRV::new(*prio, *weight, *port, target)))
                })
                .collect(),
            _ => Vec::new(),
        };
        // Owner name exactly as asked, so the resolver matches the answers to its question.
        let owner = q.name();
        resp.answers.extend(
            data.into_iter()
                .map(|d| Record::from_rdata(owner.clone(), TTL, d)),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn ask(server: &DnsServer, name: &str, ty: RecordType) -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        sock.send_to(&msg.to_vec().unwrap(), server.addr).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        let resp = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(resp.metadata.id, msg.metadata.id);
        assert_eq!(resp.metadata.message_type, MessageType::Response);
        assert!(resp.metadata.authoritative);
        // The wire form is always absolute, so compare names modulo the trailing dot.
        assert_eq!(resp.queries.len(), 1);
        assert_eq!(resp.queries[0].query_type(), ty);
        assert_eq!(
            resp.queries[0].name().to_ascii().trim_end_matches('.'),
            name.trim_end_matches('.')
        );
        resp
    }

    #[test]
    fn answers_a_srv_and_nxdomain() {
        let server = DnsServer::start();
        server.set_ips(
            "web.test",
            &["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
        );
        server.set_srv("_http._tcp.web.test", &[(10, 5, 8080, "web.test")]);

        let a = ask(&server, "WEB.test.", RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 2);
        assert!(a
            .answers
            .iter()
            .all(|r| r.ttl == TTL && matches!(r.data, RData::A(_))));

        let srv = ask(&server, "_http._tcp.web.test", RecordType::SRV);
        assert_eq!(srv.answers.len(), 1);
        let RData::SRV(s) = &srv.answers[0].data else {
            panic!("not SRV: {:?}", srv.answers)
        };
        assert_eq!((s.priority, s.weight, s.port), (10, 5, 8080));
        assert_eq!(s.target.to_ascii(), "web.test.");

        // Existing name, missing type: NOERROR with nothing in it.
        let aaaa = ask(&server, "web.test", RecordType::AAAA);
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());

        let nx = ask(&server, "nope.test", RecordType::A);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty());

        // Removing the last records makes the name vanish entirely.
        server.set_srv("_http._tcp.web.test", &[]);
        let gone = ask(&server, "_http._tcp.web.test", RecordType::SRV);
        assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);

        assert_eq!(server.queries(), 5);
    }
}
