//! Passive ejection on paused time: the balancer's clock is tokio's.

use std::sync::Arc;
use std::time::Duration;

use drove_balancer::{Algorithm, Balancer, BalancerSettings, Outcome, PassiveHealth};
use tokio::time::advance;

use crate::support::*;

const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

fn passive(n: usize, on_5xx: bool, max_ejected_percent: u8) -> Arc<Balancer> {
    let b = Balancer::new(BalancerSettings {
        algorithm: Algorithm::RoundRobin,
        passive: PassiveHealth {
            max_fails: 3,
            fail_timeout: FAIL_TIMEOUT,
            on_5xx,
        },
        max_ejected_percent,
    });
    b.set_backends(specs(n));
    b
}

fn attempt(b: &Arc<Balancer>, id: &str, outcome: Outcome) {
    let t = b.find(id).unwrap();
    b.start(&t).finish(outcome, Duration::from_millis(1));
}

fn picked(b: &Balancer, n: usize) -> std::collections::HashSet<String> {
    (0..n).map(|_| pick_id(b)).collect()
}

#[tokio::test(start_paused = true)]
async fn max_fails_within_fail_timeout_ejects_for_fail_timeout() {
    let b = passive(3, false, 50);
    attempt(&b, "web.1", Outcome::ConnectFailed);
    advance(Duration::from_secs(1)).await;
    attempt(&b, "web.1", Outcome::ConnectFailed);
    assert!(picked(&b, 30).contains("web.1"), "2 failures do not eject");
    attempt(&b, "web.1", Outcome::ConnectFailed);
    let t = b.find("web.1").unwrap();
    assert_eq!(t.ejections(), 1);
    assert_eq!(t.failures(), 3);
    assert!(!picked(&b, 30).contains("web.1"));
    advance(FAIL_TIMEOUT - Duration::from_millis(1)).await;
    assert!(
        !picked(&b, 30).contains("web.1"),
        "still ejected just before fail_timeout"
    );
    advance(Duration::from_millis(2)).await;
    assert!(picked(&b, 30).contains("web.1"), "back after fail_timeout");
    assert_eq!(t.ejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_spread_wider_than_fail_timeout_do_not_eject() {
    let b = passive(3, false, 50);
    for _ in 0..6 {
        attempt(&b, "web.0", Outcome::ConnectFailed);
        advance(Duration::from_secs(6)).await;
    }
    assert_eq!(b.find("web.0").unwrap().ejections(), 0);
    assert!(picked(&b, 30).contains("web.0"));
}

#[tokio::test(start_paused = true)]
async fn ok_resets_the_count() {
    let b = passive(3, false, 50);
    for _ in 0..4 {
        attempt(&b, "web.0", Outcome::TimedOut);
        attempt(&b, "web.0", Outcome::Broken);
        attempt(&b, "web.0", Outcome::Ok);
    }
    assert_eq!(b.find("web.0").unwrap().ejections(), 0);
    attempt(&b, "web.0", Outcome::TimedOut);
    attempt(&b, "web.0", Outcome::Broken);
    attempt(&b, "web.0", Outcome::ConnectFailed);
    assert_eq!(b.find("web.0").unwrap().ejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn on_5xx_decides_whether_5xx_counts() {
    let b = passive(3, false, 50);
    for _ in 0..10 {
        attempt(&b, "web.0", Outcome::Http5xx);
    }
    let t = b.find("web.0").unwrap();
    assert_eq!((t.ejections(), t.failures()), (0, 0));

    let b = passive(3, true, 50);
    for _ in 0..3 {
        attempt(&b, "web.0", Outcome::Http5xx);
    }
    let t = b.find("web.0").unwrap();
    assert_eq!((t.ejections(), t.failures()), (1, 3));
    assert!(!picked(&b, 30).contains("web.0"));
}

#[tokio::test(start_paused = true)]
async fn cancelled_and_dropped_attempts_are_ignored() {
    let b = passive(3, true, 50);
    attempt(&b, "web.0", Outcome::ConnectFailed);
    attempt(&b, "web.0", Outcome::ConnectFailed);
    for _ in 0..10 {
        attempt(&b, "web.0", Outcome::Cancelled);
        let t = b.find("web.0").unwrap();
        drop(b.start(&t)); // the client went away before an outcome
    }
    let t = b.find("web.0").unwrap();
    assert_eq!((t.ejections(), t.failures()), (0, 2));
    assert_eq!(t.requests(), 22);
    // Cancelled did not reset the count either: one more failure ejects.
    attempt(&b, "web.0", Outcome::ConnectFailed);
    assert_eq!(t.ejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_ejected_percent_caps_ejections() {
    let b = passive(4, false, 50);
    for i in 0..4 {
        for _ in 0..5 {
            attempt(&b, &format!("web.{i}"), Outcome::ConnectFailed);
        }
    }
    let ejected: Vec<_> = b
        .snapshot()
        .iter()
        .filter(|t| t.ejections() > 0)
        .map(|t| t.id().to_string())
        .collect();
    assert_eq!(ejected, ["web.0", "web.1"]);
    assert_eq!(picked(&b, 40).len(), 2, "the two not ejected still serve");
    // Once the first ejections end, the others may be ejected in turn.
    advance(FAIL_TIMEOUT + Duration::from_millis(1)).await;
    for _ in 0..3 {
        attempt(&b, "web.3", Outcome::ConnectFailed);
    }
    assert_eq!(b.find("web.3").unwrap().ejections(), 1);
    assert!(!picked(&b, 40).contains("web.3"));
}

#[tokio::test(start_paused = true)]
async fn a_lone_backend_is_never_ejected() {
    // Ejecting the only backend would turn a blip into a certain 503 (nginx ignores
    // max_fails for a single server for the same reason; here the 50% cap does it).
    let b = passive(1, false, 50);
    for _ in 0..10 {
        attempt(&b, "web.0", Outcome::ConnectFailed);
    }
    assert_eq!(pick_id(&b), "web.0");
}

#[tokio::test(start_paused = true)]
async fn max_fails_zero_disables_ejection() {
    let b = Balancer::new(BalancerSettings {
        passive: PassiveHealth {
            max_fails: 0,
            ..PassiveHealth::default()
        },
        ..BalancerSettings::default()
    });
    b.set_backends(specs(3));
    for _ in 0..20 {
        attempt(&b, "web.0", Outcome::ConnectFailed);
    }
    assert_eq!(b.find("web.0").unwrap().ejections(), 0);
    assert_eq!(b.find("web.0").unwrap().failures(), 20);
}

#[tokio::test(start_paused = true)]
async fn record_then_finish_counts_one_outcome() {
    // The proxy records at the response head and may finish when the body ends: one
    // attempt must count once.
    let b = passive(3, true, 50);
    let t = b.find("web.0").unwrap();
    for _ in 0..2 {
        let mut g = b.start(&t);
        g.record(Outcome::Http5xx, Duration::from_millis(1));
        assert_eq!(t.in_flight(), 1, "still in flight while the body streams");
        g.finish(Outcome::Http5xx, Duration::from_millis(1));
        assert_eq!(t.in_flight(), 0);
    }
    assert_eq!(t.failures(), 2);
    assert_eq!(t.ejections(), 0);
}

#[tokio::test(start_paused = true)]
async fn drained_backends_do_not_count_towards_the_cap() {
    // Two instances, one drained for a rolling restart: the other must not be ejected,
    // or nothing serves (all requests 503 for fail_timeout).
    let b = passive(2, false, 50);
    b.set_enabled("web.0", false);
    for _ in 0..10 {
        attempt(&b, "web.1", Outcome::ConnectFailed);
    }
    assert_eq!(b.find("web.1").unwrap().ejections(), 0);
    assert_eq!(pick_id(&b), "web.1");
}

#[tokio::test]
async fn zero_probe_interval_does_not_panic() {
    let b = passive(1, false, 50);
    let task = b.spawn_health_checks(drove_balancer::ActiveHealth {
        kind: drove_balancer::ProbeKind::Tcp,
        interval: Duration::ZERO,
        timeout: Duration::from_millis(10),
        rise: 1,
        fall: 1,
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "the probe task is still running");
    task.abort();
}
