use drove_balancer::Algorithm;

use crate::support::*;

/// Each pick (all earlier picks still in flight) goes to a backend whose
/// in_flight/weight is minimal.
fn assert_always_least_loaded(weights: &[u32], picks: usize) -> Vec<u64> {
    let b = balancer(Algorithm::LeastConn, weighted(weights));
    let mut held = Vec::new();
    for _ in 0..picks {
        let chosen = pick(&b);
        for other in b.snapshot() {
            // chosen.in_flight / chosen.weight <= other.in_flight / other.weight
            assert!(
                chosen.in_flight() * other.weight() as u64
                    <= other.in_flight() * chosen.weight() as u64,
                "picked {} ({} in flight, w {}) over {} ({} in flight, w {})",
                chosen.id(),
                chosen.in_flight(),
                chosen.weight(),
                other.id(),
                other.in_flight(),
                other.weight()
            );
        }
        held.push(b.start(&chosen));
    }
    b.snapshot().iter().map(|x| x.in_flight()).collect()
}

#[test]
fn picks_the_least_loaded_with_equal_weights() {
    assert_eq!(assert_always_least_loaded(&[1, 1, 1], 30), vec![10, 10, 10]);
}

#[test]
fn picks_the_least_loaded_relative_to_weight() {
    assert_eq!(assert_always_least_loaded(&[1, 2, 3], 60), vec![10, 20, 30]);
}

#[test]
fn goes_to_the_idle_backend_while_others_are_busy() {
    let b = balancer(Algorithm::LeastConn, specs(3));
    let busy0 = b.find("web.0").unwrap();
    let busy2 = b.find("web.2").unwrap();
    let _g = [b.start(&busy0), b.start(&busy0), b.start(&busy2)];
    for _ in 0..20 {
        assert_eq!(pick_id(&b), "web.1");
    }
}

#[test]
fn ties_rotate_evenly() {
    let b = balancer(Algorithm::LeastConn, specs(3));
    // Idle: plain rotation.
    let c = counts(&b, 300);
    for i in 0..3 {
        assert_eq!(count_of(&c, &format!("web.{i}")), 100, "{c:?}");
    }
    // One busy: the two tied ones share evenly (not 2:1 because of where the scan starts).
    let busy = b.find("web.0").unwrap();
    let _g = b.start(&busy);
    let c = counts(&b, 300);
    assert_eq!(count_of(&c, "web.0"), 0, "{c:?}");
    assert_eq!(count_of(&c, "web.1"), 150, "{c:?}");
    assert_eq!(count_of(&c, "web.2"), 150, "{c:?}");
}

#[test]
fn ties_follow_weights() {
    // Sequential traffic (never two in flight) still honours weights, as nginx does.
    let b = balancer(Algorithm::LeastConn, weighted(&[1, 2, 3]));
    let c = counts(&b, 600);
    assert_eq!(count_of(&c, "web.0"), 100, "{c:?}");
    assert_eq!(count_of(&c, "web.1"), 200, "{c:?}");
    assert_eq!(count_of(&c, "web.2"), 300, "{c:?}");
}

#[test]
fn skips_disabled_even_when_idle() {
    let b = balancer(Algorithm::LeastConn, specs(3));
    let g: Vec<_> = (0..2).map(|_| b.start(&b.find("web.1").unwrap())).collect();
    b.set_enabled("web.0", false);
    b.set_enabled("web.2", false);
    // Only web.1 is available, however loaded.
    for _ in 0..5 {
        assert_eq!(pick_id(&b), "web.1");
    }
    drop(g);
}
