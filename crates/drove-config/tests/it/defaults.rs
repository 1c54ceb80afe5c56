//! Every key with its default, and every key set explicitly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drove_config::*;

use crate::ok;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn here() -> PathBuf {
    std::path::absolute(".").unwrap().components().collect()
}

#[test]
fn minimal_service_gets_every_default() {
    let c = ok("[services.web]\ncommand = \"node server.js\"\n");
    assert_eq!(c.balancer, None);
    assert!(c.limits.is_empty());
    assert_eq!(
        c.admin,
        AdminConfig {
            listen: "127.0.0.1:9900".parse().unwrap(),
            token: None
        }
    );
    assert_eq!(c.path, None);
    assert!(c.warnings.is_empty());
    let web = ServiceConfig {
        name: "web".into(),
        command: CommandSpec::Shell("node server.js".into()),
        instances: 1,
        port: PortSpec::Auto,
        env: BTreeMap::new(),
        cwd: here(),
        ready: Some(ProbeConfig {
            kind: ProbeKind::Tcp { addr: None },
            interval: ms(500),
            timeout: secs(1),
            rise: 1,
            fall: 1,
            start_timeout: secs(60),
            expect_status: None,
        }),
        health: None,
        stop: StopConfig {
            signal: Signal::Term,
            grace: secs(30),
        },
        restart: RestartConfig {
            policy: RestartPolicy::Always,
            initial_delay: ms(100),
            max_delay: secs(30),
            reset_after: secs(30),
            crashloop_after: 5,
        },
        max_memory: None,
        depends_on: vec![],
        logs: LogsConfig {
            dir: here().join(".drove/logs"),
            max_size: 10 << 20,
            keep: 3,
        },
    };
    assert_eq!(c.services, vec![web]);
}

#[test]
fn portless_service_has_no_default_ready_probe() {
    let c = ok("[services.worker]\ncommand = \"worker\"\nport = \"none\"\n");
    assert_eq!(c.services[0].port, PortSpec::None);
    assert_eq!(c.services[0].ready, None);
}

#[test]
fn minimal_balancer_gets_every_default() {
    let c = ok("[balancer]\nbackends = [\"127.0.0.1:5001\"]\n");
    let b = c.balancer.unwrap();
    let expected = BalancerConfig {
        listen: "127.0.0.1:8080".parse().unwrap(),
        workers: 0,
        defer_accept: true,
        backends: Backends::Static(vec![StaticBackend {
            addr: "127.0.0.1:5001".parse().unwrap(),
            weight: 1,
            backup: false,
            name: "127.0.0.1:5001".into(),
        }]),
        algorithm: Algorithm::RoundRobin,
        sticky: None,
        retries: RetryConfig {
            attempts: 2,
            budget: 0.2,
            per_try_timeout: None,
            on_5xx: false,
        },
        passive: PassiveConfig {
            max_fails: 3,
            fail_timeout: secs(10),
            on_5xx: false,
        },
        health: None,
        max_ejected: 0.5,
        timeouts: TimeoutsConfig {
            connect: secs(1),
            header: secs(10),
            response: secs(60),
            idle: secs(60),
            shutdown_grace: secs(30),
        },
        instance_header: None,
        trusted_proxies: vec![],
        upgrades: vec!["websocket".to_string()],
        http2: true,
        http2_max_streams: 128,
        request_id: Some("X-Request-Id".into()),
        access_log: AccessLogFormat::Off,
        access_log_path: LogTarget::Stdout,
        max_header_size: 16 << 10,
        max_body_size: 0,
        routes: vec![],
        dns_backends: vec![],
        resolver: ResolverConfig {
            nameservers: vec![],
            interval: secs(5),
        },
        tls: None,
        compress: None,
    };
    assert_eq!(b, expected);
}

#[test]
fn dns_and_srv_backends_next_to_fixed_ones() {
    let c = ok(r#"
[balancer]
backends = [
  "10.0.0.1:80",
  { dns = "web.internal:8080", weight = 3 },
  { srv = "_http._tcp.api.internal", backup = true, name = "api" },
]
resolver = { nameservers = ["127.0.0.1:5353"], interval = "2s" }
"#);
    let b = c.balancer.unwrap();
    assert!(matches!(&b.backends, Backends::Static(v) if v.len() == 1));
    assert_eq!(
        b.dns_backends,
        vec![
            DnsBackend {
                query: DnsQuery::Host {
                    host: "web.internal".into(),
                    port: 8080
                },
                weight: 3,
                backup: false,
                name: "web.internal".into(),
            },
            DnsBackend {
                query: DnsQuery::Srv("_http._tcp.api.internal".into()),
                weight: 1,
                backup: true,
                name: "api".into(),
            },
        ]
    );
    assert_eq!(
        b.resolver,
        ResolverConfig {
            nameservers: vec!["127.0.0.1:5353".parse().unwrap()],
            interval: secs(2),
        }
    );
}

#[test]
fn balancer_health_defaults_to_the_service_health_probe() {
    let c = ok(r#"
[services.web]
command = "x"
health = { http = "/health", fall = 5 }
[balancer]
service = "web"
"#);
    let b = c.balancer.unwrap();
    assert_eq!(b.health, c.services[0].health);
    assert_eq!(b.health.unwrap().fall, 5);

    // A command probe says nothing about one backend: no active balancer checks.
    let c = ok("[services.web]\ncommand = \"x\"\nhealth = { command = \"true\" }\n[balancer]\nservice = \"web\"\n");
    assert_eq!(c.balancer.unwrap().health, None);

    // `health = false` turns the default off.
    let c = ok("[services.web]\ncommand = \"x\"\nhealth = { http = \"/h\" }\n[balancer]\nservice = \"web\"\nhealth = false\n");
    assert_eq!(c.balancer.unwrap().health, None);
}

#[test]
fn a_limit_shared_through_redis() {
    let c = ok("[limits.api]\nrate = \"10/s\"\nredis = \"redis://127.0.0.1:6379/\"\n");
    assert_eq!(
        c.limits["api"].redis.as_deref(),
        Some("redis://127.0.0.1:6379/")
    );
    let (line, col, msg) =
        crate::err("[limits.api]\nrate = \"10/s\"\nredis = \"localhost:6379\"\n");
    assert_eq!((line, col), (3, 9));
    assert!(msg.contains("must be a Redis URL"), "{msg}");
}

#[test]
fn limit_defaults() {
    let c = ok("[limits.api]\nrate = \"600/m\"\n");
    assert_eq!(
        c.limits["api"],
        LimitConfig {
            key: LimitKey::ClientIp,
            rate: Rate {
                count: 600,
                per: secs(60)
            },
            burst: 600,
            redis: None,
        }
    );
}

pub const FULL: &str = r#"
[services.web]
command = ["node", "server.js", "--port", "{port}", "--id", "{instance}"]
instances = 3
port = 5001
env = { NODE_ENV = "production", EMPTY = "" }
cwd = "app"
ready = { http = "/ready", interval = "250ms", timeout = "2s", start_timeout = "1m30s", rise = 2, fall = 2, expect_status = 204 }
health = { http = "/health", interval = "2s", timeout = "1s", rise = 2, fall = 3, expect_status = 200 }
stop = { signal = "SIGINT", grace = "10s" }
restart = { policy = "on-failure", initial_delay = "50ms", max_delay = "1m", reset_after = "2m", crashloop_after = 7 }
max_memory = "512MiB"
depends_on = ["redis"]
logs = { dir = "/var/log/drove", max_size = "1MB", keep = 0 }

[services.redis]
command = "redis-server --port 6379"
instances = 0
port = "none"
ready = { command = "redis-cli ping" }
health = { tcp = "127.0.0.1:6379" }
stop = { signal = "quit", grace = "0s" }
restart = { policy = "never" }

[balancer]
listen = "[::1]:8443"
workers = 4
service = "web"
algorithm = "hash"
hash_key = "header:X-User-Id"
sticky = { cookie = "sid", max_age = "1h" }
retries = { attempts = 0, budget = "12.5%", per_try_timeout = "2s", on_5xx = true }
passive = { max_fails = 0, fail_timeout = "30s", on_5xx = true }
health = { tcp = true, interval = "3s", timeout = "1s", rise = 1, fall = 4 }
max_ejected = "100%"
timeouts = { connect = "2s", header = "5s", response = "30s", idle = "90s", shutdown_grace = "0s" }
instance_header = true
trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "::1/128"]
request_id = ""
access_log = "json"
access_log_path = "logs/access.log"
max_header_size = 32768
max_body_size = "10MiB"

[[balancer.routes]]
path = "/auth/"
limit = "strict"

[[balancer.routes]]
path = "/api/"
limit = "by_key"

[limits.strict]
key = "client_ip"
rate = "10/s"
burst = 20

[limits.by_key]
key = "header:X-API-Key"
rate = "1000/h"

[admin]
listen = "0.0.0.0:9900"
token = "s3cret"
"#;

#[test]
fn every_key_set_explicitly() {
    let c = ok(FULL);
    let [web, redis] = &c.services[..] else {
        panic!("two services expected")
    };
    assert_eq!(web.name, "web");
    assert_eq!(
        web.command,
        CommandSpec::Argv(
            [
                "node",
                "server.js",
                "--port",
                "{port}",
                "--id",
                "{instance}"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    assert_eq!(web.instances, 3);
    assert_eq!(web.port, PortSpec::Base(5001));
    assert_eq!(web.base_port_of(3), Some(5003));
    assert_eq!(
        web.env.get("NODE_ENV").map(String::as_str),
        Some("production")
    );
    assert_eq!(web.env.get("EMPTY").map(String::as_str), Some(""));
    assert_eq!(web.cwd, here().join("app"));
    assert_eq!(
        web.ready,
        Some(ProbeConfig {
            kind: ProbeKind::Http {
                path: "/ready".into()
            },
            interval: ms(250),
            timeout: secs(2),
            rise: 2,
            fall: 2,
            start_timeout: secs(90),
            expect_status: Some(204),
        })
    );
    let health = web.health.clone().unwrap();
    assert_eq!(
        health.kind,
        ProbeKind::Http {
            path: "/health".into()
        }
    );
    assert_eq!(
        (health.interval, health.timeout, health.rise, health.fall),
        (secs(2), secs(1), 2, 3)
    );
    assert_eq!(health.expect_status, Some(200));
    assert_eq!(
        web.stop,
        StopConfig {
            signal: Signal::Int,
            grace: secs(10)
        }
    );
    assert_eq!(
        web.restart,
        RestartConfig {
            policy: RestartPolicy::OnFailure,
            initial_delay: ms(50),
            max_delay: secs(60),
            reset_after: secs(120),
            crashloop_after: 7,
        }
    );
    assert_eq!(web.max_memory, Some(512 << 20));
    assert_eq!(web.depends_on, vec!["redis".to_string()]);
    assert_eq!(
        web.logs,
        LogsConfig {
            dir: "/var/log/drove".into(),
            max_size: 1_000_000,
            keep: 0
        }
    );

    assert_eq!(redis.instances, 0);
    assert_eq!(redis.port, PortSpec::None);
    assert_eq!(
        redis.ready.as_ref().unwrap().kind,
        ProbeKind::Command {
            cmd: "redis-cli ping".into()
        }
    );
    assert_eq!(
        redis.health.as_ref().unwrap().kind,
        ProbeKind::Tcp {
            addr: Some("127.0.0.1:6379".parse().unwrap())
        }
    );
    assert_eq!(
        redis.stop,
        StopConfig {
            signal: Signal::Quit,
            grace: Duration::ZERO
        }
    );
    assert_eq!(redis.restart.policy, RestartPolicy::Never);

    let b = c.balancer.as_ref().unwrap();
    assert_eq!(b.listen, "[::1]:8443".parse::<SocketAddr>().unwrap());
    assert_eq!(b.workers, 4);
    assert_eq!(b.backends, Backends::Service("web".into()));
    assert_eq!(
        b.algorithm,
        Algorithm::Hash(HashKey::Header("X-User-Id".into()))
    );
    assert_eq!(
        b.sticky,
        Some(StickyConfig {
            cookie: "sid".into(),
            max_age: secs(3600)
        })
    );
    assert_eq!(
        b.retries,
        RetryConfig {
            attempts: 0,
            budget: 0.125,
            per_try_timeout: Some(secs(2)),
            on_5xx: true
        }
    );
    assert_eq!(
        b.passive,
        PassiveConfig {
            max_fails: 0,
            fail_timeout: secs(30),
            on_5xx: true
        }
    );
    assert_eq!(
        b.health,
        Some(ProbeConfig {
            kind: ProbeKind::Tcp { addr: None },
            interval: secs(3),
            timeout: secs(1),
            rise: 1,
            fall: 4,
            start_timeout: secs(60),
            expect_status: None,
        })
    );
    assert_eq!(b.max_ejected, 1.0);
    assert_eq!(
        b.timeouts,
        TimeoutsConfig {
            connect: secs(2),
            header: secs(5),
            response: secs(30),
            idle: secs(90),
            shutdown_grace: Duration::ZERO
        }
    );
    assert_eq!(b.instance_header.as_deref(), Some("X-Drove-Instance"));
    let proxies: Vec<String> = b.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(proxies, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
    assert!(b.trusted_proxies[0].contains("10.20.30.40".parse().unwrap()));
    assert_eq!(b.request_id, None);
    assert_eq!(b.access_log, AccessLogFormat::Json);
    assert_eq!(
        b.access_log_path,
        LogTarget::File(here().join("logs/access.log"))
    );
    assert_eq!(b.max_header_size, 32768);
    assert_eq!(b.max_body_size, 10 << 20);
    assert_eq!(
        b.routes,
        vec![
            RouteConfig {
                path: "/auth/".into(),
                limit: "strict".into(),
                compress: None,
            },
            RouteConfig {
                path: "/api/".into(),
                limit: "by_key".into(),
                compress: None,
            },
        ]
    );

    assert_eq!(
        c.limits["strict"],
        LimitConfig {
            key: LimitKey::ClientIp,
            rate: Rate {
                count: 10,
                per: secs(1)
            },
            burst: 20,
            redis: None,
        }
    );
    assert_eq!(c.limits["by_key"].key, LimitKey::Header("X-API-Key".into()));
    assert_eq!(c.limits["by_key"].burst, 1000);

    assert_eq!(
        c.admin,
        AdminConfig {
            listen: "0.0.0.0:9900".parse().unwrap(),
            token: Some("s3cret".into())
        }
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn other_value_forms() {
    let c = ok(r#"
[services.web]
command = "x"
ready = false
[services.api]
command = "x"
ready = { tcp = true }
[balancer]
listen = ":80"
backends = ["10.0.0.1:80", { addr = "10.0.0.2:80", weight = 2, backup = true, name = "b2" }]
algorithm = "hash"
hash_key = "cookie:uid"
instance_header = "X-Served-By"
request_id = true
access_log = "combined"
access_log_path = "-"
"#);
    assert_eq!(c.services[0].ready, None);
    assert_eq!(
        c.services[1].ready.as_ref().unwrap().kind,
        ProbeKind::Tcp { addr: None }
    );
    let b = c.balancer.unwrap();
    assert_eq!(b.listen, "0.0.0.0:80".parse::<SocketAddr>().unwrap());
    assert_eq!(
        b.backends,
        Backends::Static(vec![
            StaticBackend {
                addr: "10.0.0.1:80".parse().unwrap(),
                weight: 1,
                backup: false,
                name: "10.0.0.1:80".into()
            },
            StaticBackend {
                addr: "10.0.0.2:80".parse().unwrap(),
                weight: 2,
                backup: true,
                name: "b2".into()
            },
        ])
    );
    assert_eq!(b.algorithm, Algorithm::Hash(HashKey::Cookie("uid".into())));
    assert_eq!(b.instance_header.as_deref(), Some("X-Served-By"));
    assert_eq!(b.request_id.as_deref(), Some("X-Request-Id"));
    assert_eq!(b.access_log, AccessLogFormat::Combined);
    assert_eq!(b.access_log_path, LogTarget::Stdout);
    for (algo, expected) in [
        ("least_conn", Algorithm::LeastConn),
        ("ip_hash", Algorithm::IpHash),
        ("random_two", Algorithm::RandomTwo),
        ("p2c_ewma", Algorithm::P2cEwma),
    ] {
        let c = ok(&format!(
            "[balancer]\nbackends = [\":1\"]\nalgorithm = \"{algo}\"\n"
        ));
        assert_eq!(c.balancer.unwrap().algorithm, expected);
    }
    for (key, expected) in [("path", HashKey::Path), ("client_ip", HashKey::ClientIp)] {
        let c = ok(&format!(
            "[balancer]\nbackends = [\":1\"]\nalgorithm = \"hash\"\nhash_key = \"{key}\"\n"
        ));
        assert_eq!(c.balancer.unwrap().algorithm, Algorithm::Hash(expected));
    }
}

#[test]
fn services_keep_file_order() {
    let c = ok("[services.b]\ncommand = \"x\"\n[services.a]\ncommand = \"x\"\n[services.c]\ncommand = \"x\"\n");
    let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
}

#[test]
fn exposed_admin_without_token_is_a_warning() {
    let c = ok("[admin]\nlisten = \"0.0.0.0:9900\"\n");
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains("without a token"),
        "{}",
        c.warnings[0]
    );
    let c = ok("[admin]\nlisten = \"[::1]:9900\"\n");
    assert!(c.warnings.is_empty());
}

#[test]
fn command_placeholders_are_substituted() {
    let cmd = CommandSpec::Shell("app --port {port} --id {instance} ${HOME} {{x}}".into());
    assert_eq!(
        cmd.substitute(Some(5002), 2),
        CommandSpec::Shell("app --port 5002 --id 2 ${HOME} {x}".into())
    );
}

#[test]
fn load_resolves_paths_against_the_file_directory() {
    let dir = std::env::temp_dir().join(format!("drove-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("drove.toml");
    std::fs::write(
        &file,
        "[services.web]\ncommand = \"x\"\ncwd = \"app/../srv\"\n",
    )
    .unwrap();
    let c = load(&file).unwrap();
    assert_eq!(c.path.as_deref(), Some(file.as_path()));
    assert_eq!(c.services[0].cwd, dir.join("srv"));
    assert_eq!(c.services[0].logs.dir, dir.join(".drove/logs"));

    let missing = dir.join("nope.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!((e.errors[0].line, e.errors[0].col), (0, 0));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read config file", missing.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
