//! Backends found through DNS (A/AAAA and SRV), against a real DNS server on loopback
//! (drove-test-support's): changes in the records change the rotation within the
//! resolver interval, and a name server that stops answering keeps the last good set.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use drove_test_support::dns::DnsServer;
use drove_test_support::{demo, http, wait_until, Demo, Drove};

use crate::drove;

/// The ports of the backends that served `n` requests (from the instance header, whose
/// value for a DNS backend is `NAME@IP:PORT`).
fn serving_ports(d: &Drove, n: usize) -> BTreeSet<u16> {
    let mut c = http::Conn::open(d.addr(), Duration::from_secs(5)).unwrap();
    (0..n)
        .map(|_| {
            let r = c.request("GET", "/whoami", &[], b"").unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let id = r.header("x-drove-instance").unwrap().to_string();
            let addr = id.rsplit_once('@').map(|(_, a)| a).unwrap_or(&id);
            addr.parse::<std::net::SocketAddr>().unwrap().port()
        })
        .collect()
}

fn ports(b: &[&Demo]) -> BTreeSet<u16> {
    b.iter().map(|d| d.addr.port()).collect()
}

#[test]
fn srv_and_a_records_drive_the_rotation() {
    let b: Vec<Demo> = (1..=3).map(|i| demo(drove(), &format!("b{i}"))).collect();
    let dns = DnsServer::start();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    dns.set_ips("b.test", &[lo]);
    // Two primaries (priority 10) and a backup (priority 20).
    dns.set_srv(
        "_http._tcp.web.test",
        &[
            (10, 1, b[0].addr.port(), "b.test"),
            (10, 1, b[1].addr.port(), "b.test"),
            (20, 1, b[2].addr.port(), "b.test"),
        ],
    );
    let cfg = format!(
        r#"[balancer]
listen = "127.0.0.1:0"
workers = 1
instance_header = "X-Drove-Instance"
backends = [{{ srv = "_http._tcp.web.test" }}, {{ dns = "a.test:{p1}", name = "a" }}]
resolver = {{ nameservers = ["{ns}"], interval = "200ms" }}
"#,
        p1 = b[0].addr.port(),
        ns = dns.addr
    );
    let d = Drove::up(drove(), &cfg);
    // Resolved before the first request: the primaries serve, the backup does not.
    assert_eq!(serving_ports(&d, 12), ports(&[&b[0], &b[1]]));

    // The records change: b1 leaves, b3 is promoted. The rotation follows.
    dns.set_srv(
        "_http._tcp.web.test",
        &[
            (10, 1, b[1].addr.port(), "b.test"),
            (10, 1, b[2].addr.port(), "b.test"),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(3), || serving_ports(&d, 12)
            == ports(&[&b[1], &b[2]])),
        "the SRV change was not applied: {:?}",
        serving_ports(&d, 12)
    );

    // An A record appears for the other entry: its address joins.
    dns.set_ips("a.test", &[lo]);
    assert!(
        wait_until(Duration::from_secs(3), || serving_ports(&d, 30)
            == ports(&[&b[0], &b[1], &b[2]])),
        "the A record was not applied: {:?}",
        serving_ports(&d, 30)
    );

    // The name server goes away: lookups fail, the last good addresses stay.
    let queries = dns.queries();
    assert!(
        queries > 3,
        "re-resolved on the interval ({queries} queries)"
    );
    drop(dns);
    // Longer than a failed lookup (resolver timeout = the interval, 2 attempts).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(serving_ports(&d, 30), ports(&[&b[0], &b[1], &b[2]]));
}
