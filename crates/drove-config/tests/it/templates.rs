//! The shipped configs parse and say what they promise.

use std::time::Duration;

use drove_config::*;

use crate::ok;

#[test]
fn init_template_parses() {
    let c = ok(INIT_TEMPLATE);
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].instances, 3);
    let b = c.balancer.unwrap();
    assert_eq!(b.backends, Backends::Service("web".into()));
    assert_eq!(c.admin.listen, "127.0.0.1:9900".parse().unwrap());
    assert!(c.warnings.is_empty());
    // Compression is on, with the values the template shows being the defaults.
    assert_eq!(b.compress, Some(drove_compress::Settings::default()));
}

#[test]
fn init_template_shows_every_key() {
    for key in [
        "command",
        "instances",
        "port",
        "env",
        "cwd",
        "ready",
        "health",
        "stop",
        "restart",
        "max_memory",
        "depends_on",
        "logs",
        "listen",
        "workers",
        "service",
        "backends",
        "algorithm",
        "hash_key",
        "sticky",
        "retries",
        "passive",
        "max_ejected",
        "timeouts",
        "instance_header",
        "trusted_proxies",
        "request_id",
        "access_log",
        "access_log_path",
        "max_header_size",
        "max_body_size",
        "compress",
        "algorithms",
        "types",
        "min_size",
        "level",
        "[[balancer.routes]]",
        "limit",
        "[limits.",
        "key",
        "rate",
        "burst",
        "[admin]",
        "token",
    ] {
        assert!(
            INIT_TEMPLATE.contains(key),
            "INIT_TEMPLATE does not mention `{key}`"
        );
    }
}

#[test]
fn init_template_commented_examples_are_valid() {
    // Uncomment every `# key = value` line (keeping the active ones) and drop the lines
    // that conflict with active ones: the result must still be a valid config.
    let mut out = String::new();
    let mut in_redis_example = false;
    for line in INIT_TEMPLATE.lines() {
        // The redis example would need its own section; keep it commented.
        in_redis_example = (in_redis_example && !line.is_empty()) || line == "# [services.redis]";
        if in_redis_example {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let uncommented = line.strip_prefix("# ").unwrap_or(line);
        let is_setting = uncommented.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }) || uncommented.starts_with('[');
        // (`tls` names certificate files that do not exist here.)
        let conflicts = ["backends = ", "hash_key = ", "depends_on = ", "tls = "]
            .iter()
            .any(|p| uncommented.starts_with(p));
        if line.starts_with("# ") && is_setting && !conflicts {
            out.push_str(uncommented);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let c = ok(&out);
    let web = &c.services[0];
    assert!(web.health.is_some());
    assert_eq!(web.max_memory, Some(512 << 20));
    assert!(c.limits.contains_key("strict"));
    let b = c.balancer.unwrap();
    assert_eq!(b.routes.len(), 1);
    assert!(b.compress.is_some());
    assert_eq!(
        b.routes[0].compress, None,
        "the route example turns compression off"
    );
}

#[test]
fn builtin_demo_matches_the_spec() {
    let c = builtin_demo("/usr/local/bin/drove");
    assert_eq!(c, ok(&builtin_demo_toml("/usr/local/bin/drove")));
    let [web] = &c.services[..] else {
        panic!("one service")
    };
    assert_eq!(web.name, "web");
    assert_eq!(web.instances, 3);
    assert_eq!(
        web.command,
        CommandSpec::Argv(vec!["/usr/local/bin/drove".into(), "demo".into()])
    );
    assert_eq!(web.port, PortSpec::Auto);
    assert_eq!(
        web.ready.as_ref().unwrap().kind,
        ProbeKind::Http {
            path: "/ready".into()
        }
    );
    let health = web.health.as_ref().unwrap();
    assert_eq!(
        health.kind,
        ProbeKind::Http {
            path: "/health".into()
        }
    );
    // Liveness (restarts) is slow and forgiving; the balancer's own probe is fast.
    assert_eq!(health.interval, Duration::from_secs(2));
    assert_eq!((health.rise, health.fall), (1, 3));
    let b = c.balancer.as_ref().unwrap();
    assert_eq!(b.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(b.backends, Backends::Service("web".into()));
    assert_eq!(b.algorithm, Algorithm::RoundRobin);
    assert_eq!(b.instance_header.as_deref(), Some("X-Drove-Instance"));
    let bh = b.health.as_ref().unwrap();
    assert_eq!(bh.kind, health.kind);
    assert_eq!(bh.interval, Duration::from_millis(250));
    assert_eq!((bh.rise, bh.fall), (2, 2));
    assert_eq!(b.retries.per_try_timeout, Some(Duration::from_secs(5)));
    assert_eq!(b.compress, Some(drove_compress::Settings::default()));
    assert_eq!(c.admin.listen, "127.0.0.1:9900".parse().unwrap());
}

#[test]
fn builtin_demo_escapes_odd_executable_paths() {
    let exe = r#"C:\Program Files\drove "x".exe"#;
    let c = builtin_demo(exe);
    assert_eq!(
        c.services[0].command,
        CommandSpec::Argv(vec![exe.into(), "demo".into()])
    );
    assert!(BUILTIN_DEMO_TOML.contains("{drove}"));
}
