use drove_balancer::{Algorithm, BackendSpec};

use crate::support::*;

fn with_backups(alg: Algorithm) -> std::sync::Arc<drove_balancer::Balancer> {
    let mut s = specs(3);
    s.push(BackendSpec {
        backup: true,
        ..spec(7)
    });
    s.push(BackendSpec {
        backup: true,
        ..spec(8)
    });
    balancer(alg, s)
}

#[test]
fn backups_only_when_every_primary_is_unavailable() {
    for alg in crate::round_robin::ALL {
        let b = with_backups(alg);
        for _ in 0..300 {
            assert!(!pick(&b).is_backup(), "{alg:?}");
        }
        b.set_enabled("web.0", false);
        b.set_enabled("web.1", false);
        for _ in 0..100 {
            assert_eq!(pick_id(&b), "web.2", "{alg:?}");
        }
        b.set_enabled("web.2", false);
        // First listed backup on ties; the less loaded one otherwise.
        assert_eq!(pick_id(&b), "web.7", "{alg:?}");
        let g = b.start(&b.find("web.7").unwrap());
        assert_eq!(pick_id(&b), "web.8", "{alg:?}");
        drop(g);
        // Primaries return: backups unused again.
        b.set_enabled("web.1", true);
        for _ in 0..100 {
            assert_eq!(pick_id(&b), "web.1", "{alg:?}");
        }
        // Everything down: None.
        for id in ["web.1", "web.7", "web.8"] {
            b.set_enabled(id, false);
        }
        assert!(b.pick(&ctx(), &[]).is_none(), "{alg:?}");
    }
}

#[test]
fn only_backups_configured() {
    let b = balancer(
        Algorithm::RoundRobin,
        vec![BackendSpec {
            backup: true,
            ..spec(1)
        }],
    );
    assert_eq!(pick_id(&b), "web.1");
}
