use std::time::Duration;

use drove_balancer::{Algorithm, BackendSpec, Outcome, PickContext};

use crate::support::*;

fn with_token(token: &str) -> PickContext<'_> {
    let mut c = ctx();
    c.sticky = Some(token);
    c
}

#[test]
fn valid_token_pins_while_available() {
    for alg in crate::round_robin::ALL {
        let b = balancer(alg, specs(5));
        let target = b.find("web.3").unwrap();
        let token = target.sticky_token().to_string();
        for _ in 0..100 {
            assert_eq!(
                b.pick(&with_token(&token), &[]).unwrap().id(),
                "web.3",
                "{alg:?}"
            );
        }
        // Even when it is the most loaded (stickiness beats least_conn / p2c).
        let _g: Vec<_> = (0..10).map(|_| b.start(&target)).collect();
        assert_eq!(
            b.pick(&with_token(&token), &[]).unwrap().id(),
            "web.3",
            "{alg:?}"
        );
    }
}

#[test]
fn token_is_stable_across_balancers_and_reveals_no_address() {
    let a = balancer(Algorithm::RoundRobin, specs(3));
    let b = balancer(Algorithm::RoundRobin, specs(3));
    for i in 0..3 {
        let id = format!("web.{i}");
        let t = a.find(&id).unwrap().sticky_token().to_string();
        assert_eq!(t, b.find(&id).unwrap().sticky_token());
        assert!(!t.contains("127.0.0.1") && !t.contains(':'), "{t}");
    }
}

#[test]
fn disabled_target_falls_back_and_returns() {
    let b = balancer(Algorithm::RoundRobin, specs(3));
    let token = b.find("web.1").unwrap().sticky_token().to_string();
    b.set_enabled("web.1", false);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let p = b.pick(&with_token(&token), &[]).unwrap();
        assert_ne!(p.id(), "web.1");
        seen.insert(p.id().to_string());
    }
    assert_eq!(seen.len(), 2, "falls back to the algorithm over the rest");
    b.set_enabled("web.1", true);
    assert_eq!(b.pick(&with_token(&token), &[]).unwrap().id(), "web.1");
}

#[tokio::test(start_paused = true)]
async fn ejected_target_falls_back() {
    let b = balancer(Algorithm::RoundRobin, specs(3));
    let target = b.find("web.1").unwrap();
    let token = target.sticky_token().to_string();
    for _ in 0..3 {
        b.start(&target)
            .finish(Outcome::ConnectFailed, Duration::ZERO);
    }
    for _ in 0..10 {
        assert_ne!(b.pick(&with_token(&token), &[]).unwrap().id(), "web.1");
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(b.pick(&with_token(&token), &[]).unwrap().id(), "web.1");
}

#[test]
fn removed_target_falls_back() {
    let b = balancer(Algorithm::LeastConn, specs(3));
    let token = b.find("web.2").unwrap().sticky_token().to_string();
    b.remove("web.2").unwrap();
    for _ in 0..10 {
        assert_ne!(b.pick(&with_token(&token), &[]).unwrap().id(), "web.2");
    }
}

#[test]
fn excluded_target_falls_back() {
    // A retry excludes the sticky backend that just failed.
    let b = balancer(Algorithm::RoundRobin, specs(3));
    let t = b.find("web.0").unwrap();
    let token = t.sticky_token().to_string();
    assert_ne!(
        b.pick(&with_token(&token), &[t.key()]).unwrap().id(),
        "web.0"
    );
}

#[test]
fn unknown_and_garbage_tokens_fall_back_without_panic() {
    let long = "f".repeat(10_000);
    let tokens = [
        "",
        "0000000000000000",
        "ffffffffffffffff",
        "not-hex",
        "zz",
        "+",
        "-1",
        "0x12",
        "é",
        "\u{0}",
        "12345678901234567890123",
        long.as_str(),
    ];
    for alg in crate::round_robin::ALL {
        let b = balancer(alg, specs(3));
        for t in tokens {
            let p = b.pick(&with_token(t), &[]);
            assert!(p.is_some(), "{alg:?} {t:?}");
        }
    }
}

#[test]
fn token_of_a_backup_is_not_honoured_while_primaries_serve() {
    // A client pinned during an outage must go back to the primaries once they return:
    // backups serve only when no primary can.
    let mut s = specs(2);
    s.push(BackendSpec {
        backup: true,
        ..spec(8)
    });
    s.push(BackendSpec {
        backup: true,
        ..spec(9)
    });
    let b = balancer(Algorithm::RoundRobin, s);
    let token = b.find("web.9").unwrap().sticky_token().to_string();
    for _ in 0..10 {
        let p = b.pick(&with_token(&token), &[]).unwrap();
        assert!(!p.is_backup(), "{}", p.id());
    }
    // During the outage the pin holds, even though web.8 is less loaded.
    b.set_enabled("web.0", false);
    b.set_enabled("web.1", false);
    let _g = b.start(&b.find("web.9").unwrap());
    for _ in 0..10 {
        assert_eq!(b.pick(&with_token(&token), &[]).unwrap().id(), "web.9");
    }
}
