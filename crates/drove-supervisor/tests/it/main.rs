//! Integration tests of drove-supervisor with real processes: `sh -c` scripts and
//! `python3 -m http.server` instances on OS-chosen ports. Every test is bounded in time
//! and checks through /proc that the process groups it created are gone at the end.

mod support;

use std::time::Duration;

use drove_supervisor::*;
use nix::sys::signal::{kill, Signal as Sig};
use nix::unistd::Pid;
use support::*;
use tokio::time::{sleep, Instant};

#[tokio::test]
async fn ready_events_carry_addr_and_env() {
    bounded(60, async {
        let dir = TempDir::new("env");
        let mut web = http_service("web", &dir);
        web.instances = 3;
        web.command = CommandSpec::Shell(
            "echo \"$PORT $INSTANCE_ID $DROVE_SERVICE $DROVE_INSTANCE {port} {instance} $GREETING\" > env.$INSTANCE_ID; \
             echo hello from {instance}; exec python3 -m http.server {port} --bind 127.0.0.1"
                .into(),
        );
        web.env = vec![("GREETING".into(), "hi-{instance}".into())];
        let (sup, mut ev) = start(vec![web]);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let Seen::Ready(id, addr) = ev.wait(10, |e| matches!(e, Seen::Ready(..))).await else {
                unreachable!()
            };
            seen.push((id, addr));
        }
        seen.sort();
        for (k, (id, addr)) in seen.iter().enumerate() {
            let k = k as u32 + 1;
            assert_eq!(*id, InstanceId::new("web", k));
            assert_eq!(addr.ip().to_string(), "127.0.0.1");
            let env = std::fs::read_to_string(dir.path().join(format!("env.{k}"))).unwrap();
            let p = addr.port();
            assert_eq!(env.trim(), format!("{p} {k} web web.{k} {p} {k} hi-{k}"));
            assert_eq!(http_status(*addr, "/").await, Some(200));
        }
        let st = sup.status().await;
        assert_eq!(st.len(), 3);
        assert!(st.iter().all(|s| s.state == InstanceState::Ready && s.pid.is_some()));
        assert!(st.iter().all(|s| s.rss_bytes.unwrap_or(0) > 0));
        assert_eq!(sup.services(), ["web"]);
        let log = sup.log_path(&InstanceId::new("web", 2)).unwrap();
        assert!(log.ends_with("web.2.log"));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("hello from 2"), "{text}");
        assert!(text.contains("[drove] started pid"), "{text}");
        finish(&sup, &mut ev, st).await;
    })
    .await;
}

#[tokio::test]
async fn readiness_gates_ready() {
    bounded(60, async {
        let dir = TempDir::new("gate");
        let mut web = http_service("web", &dir);
        web.command = CommandSpec::Shell(
            "sleep 1; exec python3 -m http.server {port} --bind 127.0.0.1".into(),
        );
        web.ready.as_mut().unwrap().kind = ProbeKind::Tcp { addr: None };
        let t0 = Instant::now();
        let (sup, mut ev) = start(vec![web]);
        sleep(Duration::from_millis(500)).await;
        let st = sup.status().await;
        assert_eq!(st[0].state, InstanceState::Starting);
        ev.wait(10, |e| matches!(e, Seen::Ready(..))).await;
        assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
        finish(&sup, &mut ev, sup.status().await).await;
    })
    .await;
}

#[tokio::test]
async fn killed_instance_is_restarted_after_backoff() {
    bounded(60, async {
        let dir = TempDir::new("kill");
        let web = http_service("web", &dir);
        let (sup, mut ev) = start(vec![web]);
        ev.wait(10, |e| matches!(e, Seen::Ready(..))).await;
        let first = sup.status().await.remove(0);
        let pid = first.pid.unwrap();
        kill(Pid::from_raw(pid as i32), Sig::SIGKILL).unwrap();
        let id = InstanceId::new("web", 1);
        assert_eq!(
            ev.wait(5, |e| matches!(e, Seen::Gone(_))).await,
            Seen::Gone(id.clone())
        );
        ev.wait(5, |e| *e == Seen::State(id.clone(), InstanceState::Backoff))
            .await;
        let Seen::Ready(rid, _) = ev.wait(10, |e| matches!(e, Seen::Ready(..))).await else {
            unreachable!()
        };
        assert_eq!(rid, id);
        let now = sup.status().await.remove(0);
        assert_eq!(now.restarts, 1);
        assert_ne!(now.pid, Some(pid));
        assert_eq!(now.last_exit.unwrap().signal, Some(9));
        assert!(!process_alive(pid));
        finish(&sup, &mut ev, vec![first, now]).await;
    })
    .await;
}

#[tokio::test]
async fn crashloop_backs_off_and_spares_other_services() {
    bounded(60, async {
        let dir = TempDir::new("crash");
        let mut bad = service("bad", &dir, "echo boom; exit 3");
        bad.restart = RestartPolicy {
            policy: Policy::Always,
            initial_delay: Duration::from_millis(80),
            max_delay: Duration::from_millis(640),
            reset_after: Duration::from_secs(10),
            crashloop_after: 4,
        };
        let good = service("good", &dir, "exec sleep 1000");
        let (sup, mut ev) = start(vec![bad, good]);
        let bad1 = InstanceId::new("bad", 1);
        let good1 = InstanceId::new("good", 1);
        ev.wait(10, |e| {
            *e == Seen::State(bad1.clone(), InstanceState::Crashloop)
        })
        .await;
        // Let it crash once more in crashloop.
        ev.wait(5, |e| {
            *e == Seen::State(bad1.clone(), InstanceState::Starting)
        })
        .await;
        ev.wait(5, |e| {
            *e == Seen::State(bad1.clone(), InstanceState::Crashloop)
        })
        .await;
        // Backoff delays: from each exit (Gone) to the next start (Starting is announced
        // right before the spawn, so this excludes the run time and spawn latency).
        let mut gone_at = None;
        let mut gaps = Vec::new();
        for (t, e) in &ev.history {
            if *e == Seen::Gone(bad1.clone()) {
                gone_at = Some(*t);
            } else if *e == Seen::State(bad1.clone(), InstanceState::Starting) {
                if let Some(g) = gone_at.take() {
                    gaps.push(*t - g);
                }
            }
        }
        assert!(gaps.len() >= 4, "{gaps:?}");
        for w in gaps.windows(2).take(3) {
            assert!(w[1] > w[0], "backoff does not grow: {gaps:?}");
        }
        assert!(gaps[0] >= Duration::from_millis(60), "{gaps:?}");
        assert!(
            gaps[3] >= Duration::from_millis(480),
            "crashloop waits max_delay: {gaps:?}"
        );
        let st = sup.status().await;
        let b = st.iter().find(|s| s.id == bad1).unwrap();
        assert!(b.restarts >= 4, "{b:?}");
        assert_eq!(b.last_exit.unwrap().code, Some(3));
        let g = st.iter().find(|s| s.id == good1).unwrap();
        assert_eq!(g.state, InstanceState::Ready);
        assert_eq!(g.restarts, 0);
        assert!(!ev
            .history
            .iter()
            .any(|(_, e)| *e == Seen::Gone(good1.clone())));
        let log = std::fs::read_to_string(sup.log_path(&bad1).unwrap()).unwrap();
        assert!(log.contains("boom") && log.contains("crashloop"), "{log}");
        finish(&sup, &mut ev, st).await;
    })
    .await;
}

#[tokio::test]
async fn never_ready_instance_is_stopped_and_retried() {
    bounded(30, async {
        let dir = TempDir::new("never-ready");
        let mut web = service("web", &dir, "exec sleep 1000");
        let mut p = Probe::new(ProbeKind::Tcp { addr: None });
        p.interval = Duration::from_millis(50);
        p.start_timeout = Duration::from_millis(500);
        web.ready = Some(p);
        let (sup, mut ev) = start(vec![web]);
        let id = InstanceId::new("web", 1);
        let first = {
            ev.wait(5, |e| {
                *e == Seen::State(id.clone(), InstanceState::Starting)
            })
            .await;
            sup.status().await
        };
        ev.wait(5, |e| *e == Seen::State(id.clone(), InstanceState::Backoff))
            .await;
        let st = sup.status().await;
        assert_eq!(st[0].last_exit.unwrap().signal, Some(15), "{st:?}");
        assert!(!ev.history.iter().any(|(_, e)| matches!(e, Seen::Ready(..))));
        ev.wait(5, |e| {
            *e == Seen::State(id.clone(), InstanceState::Starting)
        })
        .await;
        finish(&sup, &mut ev, [first, st, sup.status().await].concat()).await;
    })
    .await;
}

#[tokio::test]
async fn restart_policies_never_and_on_failure() {
    bounded(30, async {
        let dir = TempDir::new("policy");
        let mut never = service("never", &dir, "exit 1");
        never.restart.policy = Policy::Never;
        let mut onf = service("onfailure", &dir, "exit 0");
        onf.restart.policy = Policy::OnFailure;
        let (sup, mut ev) = start(vec![never, onf]);
        let exited = |name| Seen::State(InstanceId::new(name, 1), InstanceState::Exited);
        ev.seen_all(5, &[exited("never"), exited("onfailure")])
            .await;
        sleep(Duration::from_millis(300)).await;
        let st = sup.status().await;
        assert!(
            st.iter()
                .all(|s| s.state == InstanceState::Exited && s.restarts == 0),
            "{st:?}"
        );
        assert!(sup.drain(&InstanceId::new("never", 1)).await.is_err());
        finish(&sup, &mut ev, st).await;
    })
    .await;
}

/// In-rotation instances after each event of `seq` (Ready/Undrained add, Draining/Gone
/// remove), starting from `start`.
fn in_rotation_counts(start: &[InstanceId], seq: &[Seen]) -> Vec<usize> {
    let mut set: std::collections::BTreeSet<InstanceId> = start.iter().cloned().collect();
    seq.iter()
        .map(|e| {
            match e {
                Seen::Ready(id, _) | Seen::Undrained(id, _) => {
                    set.insert(id.clone());
                }
                Seen::Draining(id) | Seen::Gone(id) => {
                    set.remove(id);
                }
                Seen::State(..) => {}
            }
            set.len()
        })
        .collect()
}

#[tokio::test]
async fn rolling_restart_keeps_ids_and_ports_behind_one_surge_instance() {
    bounded(60, async {
        let dir = TempDir::new("roll");
        let base = free_port_block(3);
        let mut web = http_service("web", &dir);
        web.instances = 2;
        web.port = PortSpec::Base(base);
        let (sup, mut ev) = start(vec![web]);
        ev.ready_all(10, 2).await;
        let before = sup.status().await;
        let ids: Vec<InstanceId> = before.iter().map(|s| s.id.clone()).collect();
        let seq_start = ev.history.len();
        let task = tokio::spawn({
            let sup = sup.clone();
            async move { sup.restart("web").await }
        });
        let mut task = std::pin::pin!(task);
        let report = loop {
            tokio::select! {
                r = &mut task => break r.unwrap().unwrap(),
                e = ev.rx.recv() => {
                    let e = e.unwrap();
                    if let InstanceEvent::Draining { id, done, grace } = e {
                        ev.push(Seen::Draining(id.clone()));
                        assert_eq!(grace, Duration::from_secs(3));
                        let pid = sup.status().await.iter().find(|s| s.id == id).and_then(|s| s.pid).unwrap();
                        // Hold the acknowledgement: the process must not be signalled.
                        sleep(Duration::from_millis(400)).await;
                        assert!(process_alive(pid), "{id} was signalled before done");
                        assert_eq!(
                            sup.status().await.iter().find(|s| s.id == id).unwrap().state,
                            InstanceState::Draining
                        );
                        done.send(()).unwrap();
                    } else {
                        ev.push(Seen::from(&e));
                    }
                }
            }
        };
        ev.drain_pending();
        let surge = InstanceId::new("web", 3);
        assert_eq!(report.surge, Some(surge.clone()));
        assert_eq!(
            report.replaced.iter().map(|r| r.instance.clone()).collect::<Vec<_>>(),
            ids
        );
        let seq: Vec<Seen> = ev.history[seq_start..]
            .iter()
            .map(|(_, e)| e.clone())
            .filter(|e| !matches!(e, Seen::State(..)))
            .collect();
        let addr = |k: u16| std::net::SocketAddr::from(([127, 0, 0, 1], base + k - 1));
        let (w1, w2) = (ids[0].clone(), ids[1].clone());
        assert_eq!(
            seq,
            [
                Seen::Ready(surge.clone(), addr(3)),
                Seen::Draining(w1.clone()),
                Seen::Gone(w1.clone()),
                Seen::Ready(w1, addr(1)),
                Seen::Draining(w2.clone()),
                Seen::Gone(w2.clone()),
                Seen::Ready(w2, addr(2)),
                Seen::Draining(surge.clone()),
                Seen::Gone(surge),
            ]
        );
        let counts = in_rotation_counts(&ids, &seq);
        assert!(counts.iter().all(|n| *n >= 2), "capacity dipped: {counts:?}");
        let after = sup.status().await;
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((&a.id, a.port, a.state), (&b.id, b.port, InstanceState::Ready));
            assert_ne!(a.pid, b.pid);
            assert_eq!(a.restarts, 1);
            assert!(!process_alive(b.pid.unwrap()));
        }
        assert_eq!(after.len(), 2);
        for r in &report.replaced {
            let b = before.iter().find(|s| s.id == r.instance).unwrap();
            let a = after.iter().find(|s| s.id == r.instance).unwrap();
            assert_eq!((r.old_pid, r.new_pid), (b.pid, a.pid));
        }
        finish(&sup, &mut ev, [before, after].concat()).await;
    })
    .await;
}

#[tokio::test]
async fn rolling_restart_stops_at_an_instance_that_does_not_get_ready_again() {
    bounded(60, async {
        let dir = TempDir::new("abort-in-place");
        let mut web = http_service("web", &dir);
        web.instances = 2;
        web.command = CommandSpec::Shell(
            "if [ -e stuck.$INSTANCE_ID ]; then exec sleep 1000; fi; exec python3 -m http.server {port} --bind 127.0.0.1"
                .into(),
        );
        web.ready.as_mut().unwrap().start_timeout = Duration::from_millis(1500);
        let (sup, mut ev) = start(vec![web]);
        ev.ready_all(10, 2).await;
        let before = sup.status().await;
        std::fs::write(dir.path().join("stuck.1"), "").unwrap();
        let err = ev.pump_while(sup.restart("web")).await.unwrap_err();
        let SupervisorError::RolloutAborted { instance, replaced, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((instance.index, *replaced), (1, 0), "{err}");
        // The surge instance is gone again, web.2 was not touched, web.1 is still there
        // (its restart policy keeps trying).
        let after = sup.status().await;
        assert_eq!(
            after.iter().map(|s| s.id.index).collect::<Vec<_>>(),
            [1, 2],
            "{after:?}"
        );
        assert_eq!(after[1].pid, before[1].pid);
        assert!(ev.position(&Seen::Gone(InstanceId::new("web", 3))).is_some());
        std::fs::remove_file(dir.path().join("stuck.1")).unwrap();
        finish(&sup, &mut ev, [before, after].concat()).await;
    })
    .await;
}

#[tokio::test]
async fn rolling_restart_aborts_when_new_instance_never_ready() {
    bounded(60, async {
        let dir = TempDir::new("abort");
        let mut web = http_service("web", &dir);
        web.instances = 2;
        web.command = CommandSpec::Shell(
            "if [ -e stuck ]; then exec sleep 1000; fi; exec python3 -m http.server {port} --bind 127.0.0.1"
                .into(),
        );
        web.ready.as_mut().unwrap().start_timeout = Duration::from_millis(1500);
        let (sup, mut ev) = start(vec![web]);
        ev.ready_all(10, 2).await;
        let before = sup.status().await;
        std::fs::write(dir.path().join("stuck"), "").unwrap();
        let t0 = Instant::now();
        let err = ev.pump_while(sup.restart("web")).await.unwrap_err();
        let SupervisorError::RolloutAborted { instance, replaced, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((instance.index, *replaced), (3, 0), "{err}");
        assert!(t0.elapsed() >= Duration::from_millis(1500));
        let after = sup.status().await;
        let view = |v: &[InstanceStatus]| {
            v.iter().map(|s| (s.id.clone(), s.pid, s.state)).collect::<Vec<_>>()
        };
        assert_eq!(view(&after), view(&before));
        ev.drain_pending();
        assert!(ev.history.iter().any(|(_, e)| *e == Seen::Gone(instance.clone())));
        assert!(!ev.history.iter().any(|(_, e)| matches!(e, Seen::Draining(id) if id.index != 3)));
        finish(&sup, &mut ev, after).await;
    })
    .await;
}

#[tokio::test]
async fn scale_up_and_down() {
    bounded(60, async {
        let dir = TempDir::new("scale");
        let web = service("web", &dir, "exec sleep 1000");
        let (sup, mut ev) = start(vec![web]);
        ev.wait(5, |e| matches!(e, Seen::Ready(..))).await;
        sup.scale("web", 3).await.unwrap();
        ev.ready_all(5, 2).await;
        let three = sup.status().await;
        assert_eq!(three.len(), 3);
        ev.pump_while(sup.scale("web", 1)).await.unwrap();
        ev.drain_pending();
        for i in [2, 3] {
            let id = InstanceId::new("web", i);
            let d = ev.position(&Seen::Draining(id.clone())).expect("drained");
            let g = ev.position(&Seen::Gone(id)).expect("gone");
            assert!(d < g);
        }
        let one = sup.status().await;
        assert_eq!(one.iter().map(|s| s.id.index).collect::<Vec<_>>(), [1]);
        for s in &three[1..] {
            assert!(!process_alive(s.pid.unwrap()));
        }
        assert!(matches!(
            sup.scale("nope", 1).await,
            Err(SupervisorError::UnknownService(_))
        ));
        finish(&sup, &mut ev, three).await;
    })
    .await;
}

#[tokio::test]
async fn drain_and_undrain() {
    bounded(30, async {
        let dir = TempDir::new("drain");
        let web = http_service("web", &dir);
        let (sup, mut ev) = start(vec![web]);
        let Seen::Ready(id, addr) = ev.wait(10, |e| matches!(e, Seen::Ready(..))).await else {
            unreachable!()
        };
        let drain = tokio::spawn({
            let (sup, id) = (sup.clone(), id.clone());
            async move { sup.drain(&id).await }
        });
        ev.wait(5, |e| *e == Seen::Draining(id.clone())).await; // dropping `done` acks
        drain.await.unwrap().unwrap();
        let st = sup.status().await;
        assert_eq!(st[0].state, InstanceState::Drained);
        assert!(process_alive(st[0].pid.unwrap()));
        assert!(matches!(
            sup.drain(&id).await,
            Err(SupervisorError::InvalidState { .. })
        ));
        sup.undrain(&id).await.unwrap();
        assert_eq!(
            ev.wait(5, |e| matches!(e, Seen::Undrained(..))).await,
            Seen::Undrained(id.clone(), addr)
        );
        assert_eq!(sup.status().await[0].state, InstanceState::Ready);
        assert!(matches!(
            sup.undrain(&InstanceId::new("web", 9)).await,
            Err(SupervisorError::UnknownInstance(_))
        ));
        finish(&sup, &mut ev, st).await;
    })
    .await;
}

#[tokio::test]
async fn max_memory_triggers_a_drained_replacement() {
    bounded(60, async {
        let dir = TempDir::new("mem");
        // Only the first process of web.1 grows past the limit.
        let mut web = service(
            "web",
            &dir,
            "if [ \"$INSTANCE_ID\" = 1 ] && [ ! -e leaked ]; then touch leaked; exec python3 -c 'import time; b = b\"x\" * (96 << 20); time.sleep(1000)'; fi; exec sleep 1000",
        );
        web.max_memory = Some(48 << 20);
        let (sup, mut ev) = start(vec![web]);
        let w1 = InstanceId::new("web", 1);
        let surge = InstanceId::new("web", 2);
        ev.wait(5, |e| matches!(e, Seen::Ready(id, _) if *id == w1)).await;
        let first = sup.status().await;
        ev.wait(15, |e| matches!(e, Seen::Ready(id, _) if *id == surge)).await;
        ev.wait(5, |e| *e == Seen::Draining(w1.clone())).await;
        ev.wait(5, |e| *e == Seen::Gone(w1.clone())).await;
        ev.wait(10, |e| matches!(e, Seen::Ready(id, _) if *id == w1)).await;
        ev.wait(5, |e| *e == Seen::Draining(surge.clone())).await;
        ev.wait(5, |e| *e == Seen::Gone(surge.clone())).await;
        let st = sup.status().await;
        assert_eq!(st.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), std::slice::from_ref(&w1));
        assert_ne!(st[0].pid, first[0].pid);
        assert!(!process_alive(first[0].pid.unwrap()));
        let log = std::fs::read_to_string(sup.log_path(&w1).unwrap()).unwrap();
        assert!(log.contains("stopped"), "{log}");
        finish(&sup, &mut ev, [first, st].concat()).await;
    })
    .await;
}

#[tokio::test]
async fn failing_liveness_probe_replaces_the_instance() {
    bounded(60, async {
        let dir = TempDir::new("health");
        // Each process marks itself alive; the test removes web.1's mark.
        let mut web = service("web", &dir, "touch alive.$INSTANCE_ID; exec sleep 1000");
        let mut probe = Probe::new(ProbeKind::Command("test -e alive.$INSTANCE_ID".into()));
        probe.interval = Duration::from_millis(100);
        probe.fall = 2;
        web.health = Some(probe);
        let (sup, mut ev) = start(vec![web]);
        let w1 = InstanceId::new("web", 1);
        ev.wait(5, |e| matches!(e, Seen::Ready(id, _) if *id == w1))
            .await;
        sleep(Duration::from_millis(500)).await;
        let first = sup.status().await;
        assert_eq!(first.len(), 1, "healthy instance was replaced: {first:?}");
        std::fs::remove_file(dir.path().join("alive.1")).unwrap();
        ev.wait(10, |e| matches!(e, Seen::Ready(id, _) if id.index == 2))
            .await;
        ev.wait(5, |e| *e == Seen::Draining(w1.clone())).await;
        ev.wait(5, |e| *e == Seen::Gone(w1.clone())).await;
        ev.wait(10, |e| matches!(e, Seen::Ready(id, _) if *id == w1))
            .await;
        ev.wait(5, |e| *e == Seen::Gone(InstanceId::new("web", 2)))
            .await;
        let st = sup.status().await;
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].id, w1);
        assert_ne!(st[0].pid, first[0].pid);
        finish(&sup, &mut ev, [first, st].concat()).await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_kills_grandchildren_and_stubborn_groups() {
    bounded(60, async {
        let dir = TempDir::new("grand");
        let plain = service("plain", &dir, "sleep 1000 & sleep 1000");
        let mut stubborn = service("stubborn", &dir, "trap '' TERM; sleep 1000 & sleep 1000");
        stubborn.stop_grace = Duration::from_millis(700);
        let (sup, mut ev) = start(vec![plain, stubborn]);
        ev.ready_all(5, 2).await;
        let st = sup.status().await;
        for s in &st {
            let pgid = s.pid.unwrap() as i32;
            let deadline = Instant::now() + Duration::from_secs(5);
            while group_members(pgid).len() < 2 {
                assert!(Instant::now() < deadline, "no grandchild in {pgid}");
                sleep(Duration::from_millis(20)).await;
            }
        }
        let t0 = Instant::now();
        ev.pump_while(sup.shutdown()).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "stubborn group was not given its grace"
        );
        for s in &st {
            assert_eq!(group_members(s.pid.unwrap() as i32), Vec::<i32>::new());
        }
        let log = std::fs::read_to_string(sup.log_path(&InstanceId::new("stubborn", 1)).unwrap())
            .unwrap();
        assert!(log.contains("SIGKILL"), "{log}");
        finish(&sup, &mut ev, st).await;
    })
    .await;
}

#[tokio::test]
async fn dependencies_start_first_and_stop_last() {
    bounded(60, async {
        let dir = TempDir::new("deps");
        let mut db = http_service("db", &dir);
        db.command = CommandSpec::Shell(
            "sleep 1; exec python3 -m http.server {port} --bind 127.0.0.1".into(),
        );
        let mut web = service("web", &dir, "exec sleep 1000");
        web.depends_on = vec!["db".into()];
        web.instances = 2;
        // web listed first: order comes from depends_on, not from the list.
        let (sup, mut ev) = start(vec![web, db]);
        sleep(Duration::from_millis(500)).await;
        assert!(sup.status().await.iter().all(|s| s.id.service == "db"));
        ev.wait(
            10,
            |e| matches!(e, Seen::Ready(id, _) if id.index == 2 && id.service == "web"),
        )
        .await;
        let db_ready = ev
            .position_where(|e| matches!(e, Seen::Ready(id, _) if id.service == "db"))
            .unwrap();
        let web_start = ev
            .position_where(
                |e| matches!(e, Seen::State(id, InstanceState::Starting) if id.service == "web"),
            )
            .unwrap();
        assert!(db_ready < web_start);
        let st = sup.status().await;
        ev.pump_while(sup.shutdown()).await;
        let db_gone = ev.position(&Seen::Gone(InstanceId::new("db", 1))).unwrap();
        let web_gone = ev.position(&Seen::Gone(InstanceId::new("web", 2))).unwrap();
        assert!(web_gone < db_gone);
        finish(&sup, &mut ev, st).await;
    })
    .await;
}

#[tokio::test]
async fn invalid_specs_are_rejected() {
    let dir = TempDir::new("invalid");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut a = service("a", &dir, "true");
    a.depends_on = vec!["b".into()];
    let mut b = service("b", &dir, "true");
    b.depends_on = vec!["a".into()];
    let err = Supervisor::start(vec![a.clone(), b], tx.clone(), Default::default())
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "dependency cycle: a -> b -> a");
    let err = Supervisor::start(vec![a], tx.clone(), Default::default())
        .err()
        .unwrap();
    assert!(matches!(err, SupervisorError::UnknownDependency { .. }));
    let mut p = service("p", &dir, "serve {port}");
    p.port = PortSpec::None;
    let err = Supervisor::start(vec![p], tx, Default::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("no port"), "{err}");
}

#[tokio::test]
async fn base_ports_and_argv_commands() {
    bounded(30, async {
        let dir = TempDir::new("base");
        let base = free_port_block(3);
        let mut web = http_service("web", &dir);
        web.port = PortSpec::Base(base);
        web.instances = 2;
        web.command = CommandSpec::Argv(
            [
                "python3",
                "-m",
                "http.server",
                "{port}",
                "--bind",
                "127.0.0.1",
            ]
            .map(String::from)
            .to_vec(),
        );
        let (sup, mut ev) = start(vec![web]);
        let mut ports = Vec::new();
        for _ in 0..2 {
            let Seen::Ready(id, addr) = ev.wait(10, |e| matches!(e, Seen::Ready(..))).await else {
                unreachable!()
            };
            assert_eq!(addr.port(), base + id.index as u16 - 1);
            ports.push(addr.port());
        }
        // The surge instance of a rolling restart takes slot 3 = base + 2; afterwards
        // web.1 and web.2 are back on their own ports.
        let before = sup.status().await;
        let report = ev.pump_while(sup.restart("web")).await.unwrap();
        assert_eq!(report.surge, Some(InstanceId::new("web", 3)));
        assert!(ev
            .position(&Seen::Ready(
                InstanceId::new("web", 3),
                ([127, 0, 0, 1], base + 2).into()
            ))
            .is_some());
        let st = sup.status().await;
        assert_eq!(
            st.iter().map(|s| (s.id.index, s.port)).collect::<Vec<_>>(),
            [(1, Some(base)), (2, Some(base + 1))]
        );
        finish(&sup, &mut ev, [before, st].concat()).await;
    })
    .await;
}

/// Not a test by itself: the supervisor half of `instances_die_with_a_killed_supervisor`,
/// run in a re-executed copy of this test binary that the test then SIGKILLs.
#[tokio::test]
async fn pdeathsig_helper_process() {
    let Some(dir) = std::env::var_os("DROVE_SUP_PDEATHSIG_DIR") else {
        return;
    };
    bounded(60, async {
        let mut s = ServiceSpec::new("orphan", CommandSpec::Shell("exec sleep 1000".into()));
        s.cwd = dir.clone().into();
        s.logs.dir = std::path::PathBuf::from(dir).join("logs");
        let (sup, mut ev) = start(vec![s]);
        ev.ready_all(10, 1).await;
        println!("PID {}", sup.status().await[0].pid.unwrap());
        // Wait to be killed.
        sleep(Duration::from_secs(50)).await;
    })
    .await;
}

#[tokio::test]
async fn instances_die_with_a_killed_supervisor() {
    use tokio::io::AsyncBufReadExt;
    bounded(60, async {
        let dir = TempDir::new("pdeathsig");
        let mut helper = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["pdeathsig_helper_process", "--exact", "--nocapture"])
            .env("DROVE_SUP_PDEATHSIG_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(helper.stdout.take().unwrap()).lines();
        let pid: u32 = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("helper ended early");
            if let Some(p) = line.strip_prefix("PID ") {
                break p.trim().parse().unwrap();
            }
        };
        assert!(process_alive(pid));
        helper.start_kill().unwrap(); // SIGKILL: no cleanup code of the supervisor runs
        helper.wait().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "instance {pid} outlived its supervisor"
            );
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn updated_spec_applies_to_new_processes() {
    bounded(30, async {
        let dir = TempDir::new("update");
        let mut web = service(
            "web",
            &dir,
            "echo $VERSION > version.$INSTANCE_ID; exec sleep 1000",
        );
        web.env = vec![("VERSION".into(), "1".into())];
        // Ready once the script has written its file. Without a ready probe an instance
        // is Ready at spawn, and the rolling restart below stops its surge instance
        // (web.2) a few milliseconds later: on a busy machine `sh` was killed before it
        // reached `echo`, version.2 never appeared and reading it waited forever.
        let mut written = Probe::new(ProbeKind::Command("test -s version.$INSTANCE_ID".into()));
        written.interval = Duration::from_millis(20);
        written.start_timeout = Duration::from_secs(10);
        web.ready = Some(written);
        let (sup, mut ev) = start(vec![web.clone()]);
        ev.ready_all(10, 1).await;
        // `echo` writes "1\n" in one write(2): a non-empty file is a whole one.
        let read = |i: u32| {
            let path = dir.path().join(format!("version.{i}"));
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .trim()
                .to_string()
        };
        assert_eq!(read(1), "1");
        let before = sup.status().await;
        web.env = vec![("VERSION".into(), "2".into())];
        sup.update(web.clone()).await.unwrap();
        assert_eq!(
            sup.status().await[0].pid,
            before[0].pid,
            "running process untouched"
        );
        std::fs::remove_file(dir.path().join("version.1")).unwrap();
        let report = ev.pump_while(sup.restart("web")).await.unwrap();
        assert_eq!(report.surge, Some(InstanceId::new("web", 2)));
        assert_eq!(report.replaced.len(), 1);
        assert_eq!(report.replaced[0].instance, InstanceId::new("web", 1));
        assert_eq!(read(2), "2", "the surge instance runs the new spec");
        assert_eq!(read(1), "2", "web.1 restarted with the new spec");
        let mut bad = web.clone();
        bad.depends_on = vec!["web".into()];
        assert!(sup.update(bad).await.is_err());
        let mut unknown = web.clone();
        unknown.name = "other".into();
        assert!(matches!(
            sup.update(unknown).await,
            Err(SupervisorError::UnknownService(_))
        ));
        finish(&sup, &mut ev, [before, sup.status().await].concat()).await;
    })
    .await;
}
