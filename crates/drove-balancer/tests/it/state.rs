//! State across reconfiguration: kept for the same id and address, reset otherwise.

use std::time::Duration;

use drove_balancer::{Algorithm, BackendSpec, Balancer, BalancerSettings, Outcome};

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn set_backends_keeps_state_of_same_id_and_addr() {
    let b = balancer(Algorithm::RoundRobin, specs(4));
    let t0 = b.find("web.0").unwrap();
    let guards: Vec<_> = (0..3).map(|_| b.start(&t0)).collect();
    b.set_enabled("web.1", false);
    for _ in 0..3 {
        b.start(&b.find("web.2").unwrap())
            .finish(Outcome::ConnectFailed, Duration::ZERO);
    }
    assert_eq!(b.find("web.2").unwrap().ejections(), 1);

    // Scale 4 → 5 with a new weight on web.0.
    let mut next = specs(5);
    next[0].weight = 3;
    b.set_backends(next);
    let n0 = b.find("web.0").unwrap();
    assert_eq!(n0.in_flight(), 3);
    assert_eq!(n0.weight(), 3);
    assert!(!b.find("web.1").unwrap().is_enabled());
    assert_eq!(b.find("web.2").unwrap().ejections(), 1);
    let ids: std::collections::HashSet<_> = (0..40).map(|_| pick_id(&b)).collect();
    assert!(!ids.contains("web.1") && !ids.contains("web.2"), "{ids:?}");

    // Old guards finish against the kept state.
    drop(guards);
    assert_eq!(n0.in_flight(), 0);
    assert_eq!(t0.in_flight(), 0);
}

#[test]
fn upsert_keeps_state_and_applies_the_new_spec() {
    let b = balancer(Algorithm::RoundRobin, specs(2));
    let t = b.find("web.0").unwrap();
    let g = b.start(&t);
    b.set_enabled("web.0", false);
    b.upsert(BackendSpec {
        weight: 5,
        ..spec(0)
    });
    let n = b.find("web.0").unwrap();
    assert_eq!((n.in_flight(), n.is_enabled(), n.weight()), (1, false, 5));
    assert_eq!(n.sticky_token(), t.sticky_token());
    drop(g);
    assert_eq!(n.in_flight(), 0);
    assert_eq!(b.snapshot().len(), 2);
    b.upsert(spec(2));
    assert_eq!(b.snapshot().len(), 3);
}

#[test]
fn changed_address_resets_state() {
    let b = balancer(Algorithm::RoundRobin, specs(2));
    let old = b.find("web.0").unwrap();
    let g = b.start(&old);
    b.set_enabled("web.0", false);
    // The instance restarted on another port: a new backend as far as state goes.
    b.upsert(BackendSpec {
        addr: addr(99),
        ..spec(0)
    });
    let new = b.find("web.0").unwrap();
    assert_eq!((new.in_flight(), new.is_enabled()), (0, true));
    assert_eq!(new.addr(), addr(99));
    drop(g); // finishes on the old state; the new one does not go negative
    assert_eq!(new.in_flight(), 0);
    assert_eq!(old.in_flight(), 0);
    let g2 = b.start(&new);
    assert_eq!(new.in_flight(), 1);
    drop(g2);

    // Same through set_backends.
    let g = b.start(&new);
    b.set_backends(vec![
        BackendSpec {
            addr: addr(98),
            ..spec(0)
        },
        spec(1),
    ]);
    let newer = b.find("web.0").unwrap();
    assert_eq!(newer.in_flight(), 0);
    drop(g);
    assert_eq!(newer.in_flight(), 0);
}

#[test]
fn remove_while_in_flight_does_not_underflow() {
    let b = balancer(Algorithm::LeastConn, specs(3));
    let t = b.find("web.1").unwrap();
    let g1 = b.start(&t);
    let g2 = b.start(&t);
    let removed = b.remove("web.1").unwrap();
    assert_eq!(removed.in_flight(), 2);
    assert!(b.find("web.1").is_none());
    assert!(b.remove("web.1").is_none());
    assert_eq!(b.snapshot().len(), 2);
    // Re-added with the same address while old attempts still run: a fresh backend.
    b.upsert(spec(1));
    let again = b.find("web.1").unwrap();
    drop(g1);
    drop(g2);
    assert_eq!(removed.in_flight(), 0);
    assert_eq!(again.in_flight(), 0);
    let g3 = b.start(&again);
    assert_eq!(again.in_flight(), 1);
    drop(g3);
    assert_eq!(again.in_flight(), 0);
    let c = counts(&b, 30);
    assert_eq!(c.len(), 3, "{c:?}");
}

#[test]
fn in_flight_is_exact_under_threads() {
    let b = balancer(Algorithm::LeastConn, specs(4));
    std::thread::scope(|s| {
        for _ in 0..8 {
            let b = b.clone();
            s.spawn(move || {
                for i in 0..20_000 {
                    let t = b.pick(&ctx(), &[]).unwrap();
                    let g = b.start(&t);
                    if i % 3 == 0 {
                        g.finish(Outcome::Ok, Duration::from_micros(50));
                    } else {
                        drop(g);
                    }
                }
            });
        }
    });
    for t in b.snapshot() {
        assert_eq!(t.in_flight(), 0, "{}", t.id());
    }
    let total: u64 = b.snapshot().iter().map(|t| t.requests()).sum();
    assert_eq!(total, 8 * 20_000);
}

#[test]
fn concurrent_reconfiguration_while_picking() {
    // Readers never block or panic while the set is swapped under them.
    let b = Balancer::new(BalancerSettings::default());
    b.set_backends(specs(5));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(t) = b.pick(&ctx(), &[]) {
                        drop(b.start(&t));
                    }
                }
            });
        }
        for round in 0..40 {
            b.set_backends(specs(1 + round % 7));
            b.upsert(spec(50));
            b.remove("web.50");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    for t in b.snapshot() {
        assert_eq!(t.in_flight(), 0);
    }
}
