use std::time::Duration;

use drove_balancer::Algorithm;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn returns_true_when_guards_drop() {
    let b = balancer(Algorithm::RoundRobin, specs(2));
    let t = b.find("web.0").unwrap();
    let g1 = b.start(&t);
    let g2 = b.start(&t);
    b.set_enabled("web.0", false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(g1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(g2);
    });
    let start = tokio::time::Instant::now();
    assert!(b.wait_idle("web.0", Duration::from_secs(5)).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_millis(700),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn returns_false_after_grace() {
    let b = balancer(Algorithm::RoundRobin, specs(2));
    let _g = b.start(&b.find("web.1").unwrap());
    let start = tokio::time::Instant::now();
    assert!(!b.wait_idle("web.1", Duration::from_secs(2)).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2_100),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_or_unknown_returns_at_once() {
    let b = balancer(Algorithm::RoundRobin, specs(2));
    let start = tokio::time::Instant::now();
    assert!(b.wait_idle("web.0", Duration::from_secs(5)).await);
    assert!(b.wait_idle("nope", Duration::from_secs(5)).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn zero_grace_reports_busy() {
    let b = balancer(Algorithm::RoundRobin, specs(1));
    let _g = b.start(&b.find("web.0").unwrap());
    assert!(!b.wait_idle("web.0", Duration::ZERO).await);
}
