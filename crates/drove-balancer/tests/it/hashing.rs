use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use drove_balancer::{hash_bytes, Algorithm, Balancer, PickContext};

use crate::support::*;

const KEYS: usize = 100_000;

fn keys() -> Vec<u64> {
    let mut r = Rng(7);
    (0..KEYS).map(|_| r.next()).collect()
}

fn pick_hash(b: &Balancer, h: u64) -> String {
    let mut c = ctx();
    c.hash = Some(h);
    b.pick(&c, &[]).unwrap().id().to_string()
}

fn mapping(b: &Balancer, keys: &[u64]) -> Vec<String> {
    keys.iter().map(|&h| pick_hash(b, h)).collect()
}

fn shares(map: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in map {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

#[test]
fn same_key_same_backend_in_any_balancer() {
    let a = balancer(Algorithm::Hash, specs(5));
    let b = balancer(Algorithm::Hash, specs(5));
    for i in 0..2_000u32 {
        let h = hash_bytes(format!("user-{i}").as_bytes());
        let first = pick_hash(&a, h);
        for _ in 0..3 {
            assert_eq!(pick_hash(&a, h), first);
        }
        // Another balancer with the same ids agrees (restarts, several balancers).
        assert_eq!(pick_hash(&b, h), first);
    }
    // And every version of drove agrees (a fleet mid-upgrade, a drove before and after
    // `drove upgrade`): the owners of the first keys are pinned. A change here moves
    // every user's session on upgrade.
    let owners: Vec<String> = (0..12u32)
        .map(|i| pick_hash(&a, hash_bytes(format!("user-{i}").as_bytes())))
        .collect();
    assert_eq!(
        owners,
        [
            "web.1", "web.3", "web.3", "web.4", "web.1", "web.4", "web.1", "web.3", "web.0",
            "web.2", "web.4", "web.0"
        ]
    );
}

#[test]
fn ip_hash_is_stable_and_spreads() {
    let b = balancer(Algorithm::IpHash, specs(5));
    let mut r = Rng(11);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..KEYS {
        let ip = IpAddr::V4(Ipv4Addr::from(r.next() as u32));
        let c = PickContext::new(ip);
        let first = b.pick(&c, &[]).unwrap();
        assert_eq!(b.pick(&c, &[]).unwrap().id(), first.id());
        *counts.entry(first.id().to_string()).or_default() += 1;
    }
    assert_within(&counts, 5, 0.05);
    // A v4-mapped v6 client is the same client.
    let v4: IpAddr = "10.1.2.3".parse().unwrap();
    let v6: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert_eq!(
        b.pick(&PickContext::new(v4), &[]).unwrap().id(),
        b.pick(&PickContext::new(v6), &[]).unwrap().id()
    );
}

fn assert_within(counts: &HashMap<String, usize>, n: usize, tolerance: f64) {
    assert_eq!(counts.len(), n, "{counts:?}");
    let total: usize = counts.values().sum();
    let ideal = total as f64 / n as f64;
    for (id, &c) in counts {
        let dev = (c as f64 - ideal).abs() / ideal;
        assert!(
            dev < tolerance,
            "{id}: {c} vs ideal {ideal} ({dev:.3}) {counts:?}"
        );
    }
}

#[test]
fn hash_distribution_is_near_equal() {
    let b = balancer(Algorithm::Hash, specs(5));
    let map = mapping(&b, &keys());
    assert_within(&shares(&map), 5, 0.05);
}

#[test]
fn hash_without_key_falls_back_to_round_robin() {
    let b = balancer(Algorithm::Hash, specs(3));
    let c = counts(&b, 300);
    for i in 0..3 {
        assert_eq!(count_of(&c, &format!("web.{i}")), 100, "{c:?}");
    }
}

/// (share of all keys that moved, share of keys NOT on the removed/added backend that moved)
fn churn(before: &[String], after: &[String], changed: &str) -> (f64, f64) {
    let moved = before.iter().zip(after).filter(|(a, b)| a != b).count();
    let bystanders = before
        .iter()
        .zip(after)
        .filter(|(a, b)| a.as_str() != changed && b.as_str() != changed)
        .collect::<Vec<_>>();
    let bystanders_moved = bystanders.iter().filter(|(a, b)| a != b).count();
    (
        moved as f64 / before.len() as f64,
        bystanders_moved as f64 / before.len() as f64,
    )
}

#[test]
fn removing_one_of_ten_remaps_about_a_tenth() {
    let keys = keys();
    for removed in [0usize, 4, 9] {
        let b = balancer(Algorithm::Hash, specs(10));
        let before = mapping(&b, &keys);
        let nine: Vec<_> = specs(10)
            .into_iter()
            .filter(|s| s.id != format!("web.{removed}"))
            .collect();
        b.set_backends(nine);
        let after = mapping(&b, &keys);
        let gone = format!("web.{removed}");
        assert!(after.iter().all(|id| *id != gone));
        let (moved, bystanders) = churn(&before, &after, &gone);
        println!("remove web.{removed} of 10: moved {moved:.4}, of which not on the removed one {bystanders:.4}");
        assert!(moved > 0.08 && moved < 0.15, "moved {moved}");
        // Every key of the removed backend moved; Maglev moves a few others too (it is
        // "minimal disruption", not zero; ~0.3% measured with the 65521-entry table).
        assert!(bystanders < 0.01, "bystanders moved {bystanders}");
    }
}

#[test]
fn adding_one_back_remaps_about_one_in_n_plus_one() {
    let keys = keys();
    for n in [4usize, 9, 20, 99] {
        let b = balancer(Algorithm::Hash, specs(n));
        let before = mapping(&b, &keys);
        b.upsert(spec(n));
        let after = mapping(&b, &keys);
        let added = format!("web.{n}");
        let (moved, bystanders) = churn(&before, &after, &added);
        let ideal = 1.0 / (n + 1) as f64;
        println!("add 1 to {n}: moved {moved:.4} (ideal {ideal:.4}), bystanders {bystanders:.4}");
        // Maglev's extra churn grows with n at a fixed table size (1.6% for 99 -> 100,
        // ideal 1%): bound it by one point over the ideal.
        assert!(
            moved > ideal * 0.9 && moved < ideal + 0.01,
            "n={n}: moved {moved}, ideal {ideal}"
        );
        assert!(bystanders < 0.01, "bystanders moved {bystanders}");
        // Share of the newcomer is about 1/(n+1).
        let s = shares(&after)[&added] as f64 / keys.len() as f64;
        assert!((s - ideal).abs() / ideal < 0.1, "newcomer share {s}");
    }
}

#[test]
fn disabled_owner_keys_spread_and_come_back() {
    let keys = keys();
    let b = balancer(Algorithm::Hash, specs(5));
    let before = mapping(&b, &keys);
    b.set_enabled("web.2", false);
    let during = mapping(&b, &keys);
    let mut spread: HashMap<&str, usize> = HashMap::new();
    for (a, d) in before.iter().zip(&during) {
        assert_ne!(d, "web.2");
        if a == "web.2" {
            *spread.entry(d.as_str()).or_default() += 1;
        } else {
            // Keys of available backends never move.
            assert_eq!(a, d);
        }
    }
    // The orphaned keys go to all four others, none taking the lot.
    assert_eq!(spread.len(), 4, "{spread:?}");
    let orphans: usize = spread.values().sum();
    for (id, &c) in &spread {
        assert!(
            c as f64 > orphans as f64 * 0.15,
            "{id} got {c} of {orphans}: {spread:?}"
        );
    }
    b.set_enabled("web.2", true);
    assert_eq!(mapping(&b, &keys), before);
}

#[test]
fn weighted_hash_honours_weights() {
    let b = balancer(Algorithm::Hash, weighted(&[1, 1, 2]));
    let s = shares(&mapping(&b, &keys()));
    let share2 = s["web.2"] as f64 / KEYS as f64;
    assert!((share2 - 0.5).abs() < 0.03, "{s:?}");
}

#[test]
fn hash_retry_with_exclusion_goes_elsewhere() {
    let b = balancer(Algorithm::Hash, specs(3));
    for &h in keys().iter().take(1000) {
        let mut c = ctx();
        c.hash = Some(h);
        let first = b.pick(&c, &[]).unwrap();
        let second = b.pick(&c, &[first.key()]).unwrap();
        assert_ne!(first.id(), second.id());
        let third = b.pick(&c, &[first.key(), second.key()]).unwrap();
        assert_ne!(third.id(), first.id());
        assert_ne!(third.id(), second.id());
    }
}
