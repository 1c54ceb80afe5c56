use drove_balancer::Algorithm;

use crate::support::*;

#[test]
fn equal_weights_give_exactly_equal_shares() {
    for n in [1, 2, 3, 7, 100] {
        let b = balancer(Algorithm::RoundRobin, specs(n));
        let k = 13;
        let c = counts(&b, k * n);
        for i in 0..n {
            assert_eq!(count_of(&c, &format!("web.{i}")), k, "n={n}: {c:?}");
        }
    }
}

#[test]
fn weights_give_exact_shares_over_each_period() {
    let b = balancer(Algorithm::RoundRobin, weighted(&[1, 2, 3]));
    for _period in 0..50 {
        let c = counts(&b, 6);
        assert_eq!(count_of(&c, "web.0"), 1, "{c:?}");
        assert_eq!(count_of(&c, "web.1"), 2, "{c:?}");
        assert_eq!(count_of(&c, "web.2"), 3, "{c:?}");
    }
}

/// nginx's smooth weighted round robin for {a=5, b=1, c=1} is `a a b a c a a`: the heavy
/// backend never takes more than two in a row.
#[test]
fn smooth_sequence_matches_nginx() {
    let b = balancer(Algorithm::RoundRobin, weighted(&[5, 1, 1]));
    let seq: Vec<String> = (0..70).map(|_| pick_id(&b)).collect();
    let expected = [
        "web.0", "web.0", "web.1", "web.0", "web.2", "web.0", "web.0",
    ];
    for (i, id) in seq.iter().enumerate() {
        assert_eq!(id, expected[i % 7], "pick {i}: {seq:?}");
    }
}

/// Longest run of one id in a sequence.
fn longest_run(seq: &[String]) -> usize {
    let mut best = 0;
    let mut run = 0;
    for (i, id) in seq.iter().enumerate() {
        run = if i > 0 && seq[i - 1] == *id {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

#[test]
fn weighted_order_has_no_bursts() {
    // Within one period no run of one backend is longer than ceil(w / (total - w)), the
    // least any interleaving can do. (Across a period boundary runs may join, e.g.
    // `a a b a c a a | a a b ...`: nginx's stateful algorithm returns to all-zero
    // current weights after each period and does exactly the same.)
    for weights in [
        vec![1, 2, 3],
        vec![5, 1, 1],
        vec![10, 1],
        vec![3, 3, 3, 1],
        vec![7, 5, 3, 2],
    ] {
        let b = balancer(Algorithm::RoundRobin, weighted(&weights));
        let total: u32 = weights.iter().sum();
        let max_w = *weights.iter().max().unwrap();
        let bound = (max_w as f64 / (total - max_w) as f64).ceil() as usize;
        for _period in 0..4 {
            let seq: Vec<String> = (0..total).map(|_| pick_id(&b)).collect();
            assert!(longest_run(&seq) <= bound.max(1), "{weights:?}: {seq:?}");
        }
    }
}

#[test]
fn disabled_backend_is_skipped_and_the_rest_stay_balanced() {
    let b = balancer(Algorithm::RoundRobin, specs(3));
    assert!(b.set_enabled("web.1", false));
    let c = counts(&b, 300);
    assert_eq!(count_of(&c, "web.1"), 0, "{c:?}");
    // Exactly equal: skipping must not hand the skipped slot to its neighbour.
    assert_eq!(count_of(&c, "web.0"), 150, "{c:?}");
    assert_eq!(count_of(&c, "web.2"), 150, "{c:?}");

    assert!(b.set_enabled("web.1", true));
    let c = counts(&b, 300);
    for i in 0..3 {
        assert_eq!(count_of(&c, &format!("web.{i}")), 100, "{c:?}");
    }
}

#[test]
fn disabled_weighted_backend_keeps_the_others_ratio() {
    let b = balancer(Algorithm::RoundRobin, weighted(&[5, 1, 1]));
    b.set_enabled("web.1", false);
    let c = counts(&b, 600);
    assert_eq!(count_of(&c, "web.0"), 500, "{c:?}");
    assert_eq!(count_of(&c, "web.2"), 100, "{c:?}");
}

#[test]
fn disabled_among_many_keeps_exact_shares() {
    let b = balancer(Algorithm::RoundRobin, specs(10));
    for i in [0, 3, 4, 9] {
        b.set_enabled(&format!("web.{i}"), false);
    }
    let c = counts(&b, 600);
    for i in [1, 2, 5, 6, 7, 8] {
        assert_eq!(count_of(&c, &format!("web.{i}")), 100, "{c:?}");
    }
}

#[test]
fn excluded_backend_is_skipped() {
    let b = balancer(Algorithm::RoundRobin, specs(3));
    let key = b.find("web.0").unwrap().key();
    for _ in 0..30 {
        let p = b.pick(&ctx(), &[key]).unwrap();
        assert_ne!(p.id(), "web.0");
    }
    let all: Vec<u64> = b.snapshot().iter().map(|x| x.key()).collect();
    assert!(b.pick(&ctx(), &all).is_none());
}

#[test]
fn empty_set_and_all_disabled_give_none() {
    for alg in ALL {
        let b = balancer(alg, Vec::new());
        assert!(b.pick(&ctx(), &[]).is_none(), "{alg:?}");
        b.set_backends(specs(3));
        for i in 0..3 {
            b.set_enabled(&format!("web.{i}"), false);
        }
        for _ in 0..10 {
            assert!(b.pick(&ctx(), &[]).is_none(), "{alg:?}");
        }
        let mut c = ctx();
        c.hash = Some(42);
        assert!(b.pick(&c, &[]).is_none(), "{alg:?}");
    }
}

pub const ALL: [Algorithm; 6] = [
    Algorithm::RoundRobin,
    Algorithm::LeastConn,
    Algorithm::IpHash,
    Algorithm::Hash,
    Algorithm::RandomTwo,
    Algorithm::P2cEwma,
];

#[test]
fn set_enabled_on_unknown_id_is_false() {
    let b = balancer(Algorithm::RoundRobin, specs(1));
    assert!(!b.set_enabled("nope", false));
    assert_eq!(pick_id(&b), "web.0");
}
