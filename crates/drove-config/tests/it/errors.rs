//! Each error class: exact position and message.

use drove_config::{parse, ConfigErrors};

use crate::{err, errs};

fn e(line: usize, col: usize, msg: &str) -> (usize, usize, String) {
    (line, col, msg.to_string())
}

#[test]
fn syntax_error() {
    let (line, col, msg) = err("[services.web]\ncommand = \"x\nport = 1\n");
    assert_eq!((line, col), (2, 13));
    assert!(msg.starts_with("TOML syntax error: "), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let (line, _, msg) = err("[services.web]\ncommand = \"x\"\ncommand = \"y\"\n");
    assert_eq!(line, 3);
    assert!(msg.contains("duplicate key"), "{msg}");
}

#[test]
fn unknown_key_with_suggestion() {
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\ninstancs = 3\n"),
        e(3, 1, "unknown key `instancs` in [services.web]; did you mean `instances`? (expected one of: command, instances, port, env, cwd, ready, health, stop, restart, max_memory, depends_on, logs)")
    );
}

#[test]
fn unknown_key_without_suggestion() {
    assert_eq!(
        err("[admin]\nlisten = \"127.0.0.1:9900\"\nfoo = 1\n"),
        e(
            3,
            1,
            "unknown key `foo` in [admin]; expected one of: listen, token"
        )
    );
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let found = errs(
        "servces = 1\n[services.web]\ncommand = \"x\"\nready = { http = \"/r\", intervl = \"1s\" }\n[balancer]\nservice = \"web\"\nretries = { atempts = 1 }\n",
    );
    let pos: Vec<(usize, usize)> = found.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(pos, [(1, 1), (4, 24), (7, 13)], "{found:#?}");
    assert!(found[0].2.contains("did you mean `services`?"));
    assert!(found[1].2.starts_with(
        "unknown key `intervl` in `ready` of [services.web]; did you mean `interval`?"
    ));
    assert!(found[2]
        .2
        .starts_with("unknown key `atempts` in `retries` of [balancer]; did you mean `attempts`?"));
}

#[test]
fn missing_command() {
    assert_eq!(
        err("[services.web]\ninstances = 2\n"),
        e(1, 11, "missing required key `command` in [services.web]")
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        errs("[services.web]\ncommand = 5\ninstances = \"3\"\nenv = { A = 1 }\n"),
        vec![
            e(2, 11, "`command` must be a string (run via sh -c) or an array of strings, found an integer"),
            e(3, 13, "`instances` must be an integer, found a string"),
            e(4, 13, "environment values must be strings, found an integer; quote it: A = \"...\""),
        ]
    );
    assert_eq!(
        err("[balancer]\nbackends = \"127.0.0.1:1\"\n"),
        e(2, 12, "`backends` must be an array, found a string")
    );
    assert_eq!(
        err("services = 3\n"),
        e(
            1,
            12,
            "`services` must be a table of named sections like [services.NAME], found an integer"
        )
    );
}

#[test]
fn out_of_range_integers() {
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\ninstances = -1\n"),
        e(3, 13, "`instances` must be between 0 and 65535, found -1")
    );
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\nport = 70000\n"),
        e(
            3,
            8,
            "`port` must be between 1 and 65535, \"auto\" or \"none\", found 70000"
        )
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\nstop = { grace = \"30\" }\n"),
        e(3, 18, "`grace`: duration \"30\" has no unit; write \"30s\" for seconds or \"30ms\" for milliseconds")
    );
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\nstop = { grace = 30 }\n"),
        e(3, 18, "`grace` must be a duration string like \"2s\" or \"250ms\", found an integer; durations need a unit: write \"30s\" for 30 seconds")
    );
}

#[test]
fn bad_size() {
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\nmax_memory = \"512 MiBs\"\n"),
        e(3, 14, "`max_memory`: unknown unit `MiBs` in size \"512 MiBs\"; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB")
    );
}

#[test]
fn bad_address() {
    assert_eq!(
        err("[admin]\nlisten = \"127.0.0.1\"\n"),
        e(2, 10, "`listen`: address \"127.0.0.1\" has no port; write \"127.0.0.1:PORT\" (IPv6: \"[127.0.0.1]:PORT\")")
    );
    assert_eq!(
        err("[balancer]\nbackends = [\"127.0.0.1:1\", \"db.local:5432\"]\n"),
        e(2, 28, "`backends`: \"db.local:5432\" is not an IP address and port; host names are not resolved here, write an IP like \"127.0.0.1:5432\"")
    );
}

#[test]
fn bad_percent() {
    assert_eq!(
        err("[balancer]\nbackends = [\":1\"]\nmax_ejected = \"150%\"\n"),
        e(
            3,
            15,
            "`max_ejected`: percentage \"150%\" is out of range; expected 0% to 100%"
        )
    );
    assert_eq!(
        err("[balancer]\nbackends = [\":1\"]\nretries = { budget = 0.2 }\n"),
        e(
            3,
            22,
            "`budget` must be a percentage string like \"20%\", found a float"
        )
    );
}

#[test]
fn bad_rate() {
    assert_eq!(
        err("[limits.api]\nrate = \"10/fortnight\"\n"),
        e(2, 8, "`rate`: invalid period `fortnight` in rate \"10/fortnight\"; expected a rate like \"10/s\", \"600/m\" or \"1000/h\"")
    );
    assert_eq!(
        err("[limits.api]\nburst = 5\n"),
        e(1, 9, "missing required key `rate` in [limits.api]")
    );
}

#[test]
fn bad_choices_suggest_the_closest() {
    assert_eq!(
        err("[balancer]\nbackends = [\":1\"]\nalgorithm = \"least_con\"\n"),
        e(3, 13, "invalid algorithm \"least_con\"; did you mean \"least_conn\"? (expected one of: \"round_robin\", \"least_conn\", \"ip_hash\", \"hash\", \"random_two\", \"p2c_ewma\")")
    );
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\nstop = { signal = \"TREM\" }\n"),
        e(3, 19, "invalid signal \"TREM\"; did you mean \"TERM\"? (expected one of: \"TERM\", \"INT\", \"QUIT\", \"HUP\", \"KILL\", \"USR1\", \"USR2\")")
    );
}

#[test]
fn both_service_and_backends() {
    assert_eq!(
        errs(
            "[services.web]\ncommand = \"x\"\n[balancer]\nservice = \"web\"\nbackends = [\":1\"]\n"
        ),
        vec![e(
            5,
            1,
            "`service` and `backends` are mutually exclusive in [balancer]: set one"
        )]
    );
}

#[test]
fn neither_service_nor_backends() {
    assert_eq!(
        err("[balancer]\nlisten = \":80\"\n"),
        e(1, 2, "[balancer] needs `service` (the name of a service to balance) or `backends` (a list of addresses)")
    );
}

#[test]
fn unknown_balancer_service() {
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\n[balancer]\nservice = \"wbe\"\n"),
        e(
            4,
            11,
            "unknown service `wbe`; did you mean `web`? (defined: web)"
        )
    );
    assert_eq!(
        err("[balancer]\nservice = \"web\"\n"),
        e(2, 11, "unknown service `web`; no services are defined")
    );
}

#[test]
fn balancer_service_without_port() {
    assert_eq!(
        err("[services.w]\ncommand = \"x\"\nport = \"none\"\n[balancer]\nservice = \"w\"\n"),
        e(
            5,
            11,
            "service `w` has port = \"none\"; the balancer needs a service with a port"
        )
    );
}

#[test]
fn unknown_limit() {
    assert_eq!(
        err("[balancer]\nbackends = [\":1\"]\n[[balancer.routes]]\npath = \"/auth/\"\nlimit = \"strick\"\n[limits.strict]\nrate = \"1/s\"\n"),
        e(5, 9, "unknown limit `strick`; did you mean `strict`? (defined: strict)")
    );
}

#[test]
fn route_needs_path_and_a_limit_or_compress() {
    assert_eq!(
        errs("[balancer]\nbackends = [\":1\"]\n[[balancer.routes]]\npath = \"auth\"\n"),
        vec![
            e(3, 1, "a route needs `limit` (a rate limit), `compress` (compression on this path) or both"),
            e(4, 8, "route `path` must start with `/`, found \"auth\""),
        ]
    );
}

#[test]
fn unknown_depends_on() {
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\ndepends_on = [\"redis\", \"db\"]\n[services.redis]\ncommand = \"r\"\n"),
        e(3, 24, "unknown service `db` (defined: web, redis)")
    );
}

#[test]
fn dependency_cycle() {
    assert_eq!(
        err("[services.a]\ncommand = \"x\"\ndepends_on = [\"b\"]\n[services.b]\ncommand = \"x\"\ndepends_on = [\"c\"]\n[services.c]\ncommand = \"x\"\ndepends_on = [\"a\"]\n"),
        e(9, 15, "dependency cycle: a -> b -> c -> a")
    );
    assert_eq!(
        err("[services.a]\ncommand = \"x\"\ndepends_on = [\"a\"]\n"),
        e(3, 15, "service `a` depends on itself")
    );
}

#[test]
fn hash_without_hash_key() {
    assert_eq!(
        err("[balancer]\nbackends = [\":1\"]\nalgorithm = \"hash\"\n"),
        e(3, 13, "algorithm = \"hash\" needs `hash_key`: \"header:NAME\", \"cookie:NAME\", \"path\" or \"client_ip\"")
    );
}

#[test]
fn hash_key_without_hash() {
    assert_eq!(
        err("[balancer]\nbackends = [\":1\"]\nhash_key = \"path\"\n"),
        e(
            3,
            1,
            "`hash_key` is only used with algorithm = \"hash\" (algorithm is \"round_robin\")"
        )
    );
    assert_eq!(
        err("[balancer]\nbackends = [\":1\"]\nalgorithm = \"hash\"\nhash_key = \"header:\"\n"),
        e(4, 12, "invalid header name \"\" in `hash_key`")
    );
}

#[test]
fn probe_errors() {
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\nready = { interval = \"1s\" }\n"),
        e(
            3,
            9,
            "`ready` of [services.web] needs one of `http`, `tcp` or `command`"
        )
    );
    assert_eq!(
        err("[services.web]\ncommand = \"x\"\nhealth = { tcp = true, expect_status = 200 }\n"),
        e(3, 24, "`expect_status` is only valid with an `http` probe")
    );
    assert_eq!(
        err("[services.w]\ncommand = \"x\"\nport = \"none\"\nready = { tcp = true }\n"),
        e(4, 17, "`tcp = true` probes the instance port, but this service has port = \"none\"; give an address like \"127.0.0.1:6379\"")
    );
    assert_eq!(
        err("[services.w]\ncommand = \"x\"\nport = \"none\"\nhealth = { http = \"/h\" }\n"),
        e(4, 19, "an `http` probe requests the instance port, but this service has port = \"none\"; use `command` or `tcp` with an address")
    );
    assert!(err(
        "[services.web]\ncommand = \"x\"\nhealth = { http = \"/h\", start_timeout = \"1s\" }\n"
    )
    .2
    .starts_with("unknown key `start_timeout` in `health` of [services.web]"));
}

#[test]
fn placeholder_errors() {
    assert_eq!(
        err("[services.web]\ncommand = \"app --port {prot}\"\n"),
        e(2, 11, "unknown placeholder `{prot}` in `command`; did you mean `{port}`? known placeholders: {port}, {instance}, {drove} (write `{{` for a literal brace)")
    );
    assert_eq!(
        err("[services.w]\ncommand = [\"app\", \"{port}\"]\nport = \"none\"\n"),
        e(
            2,
            11,
            "`command` uses {port} but service `w` has port = \"none\""
        )
    );
}

#[test]
fn invalid_service_name() {
    assert_eq!(
        err("[services.Web]\ncommand = \"x\"\n"),
        e(
            1,
            11,
            "invalid name `Web` in [services.Web]: use lowercase letters, digits, `_` and `-`"
        )
    );
}

#[test]
fn duplicate_backend() {
    assert_eq!(
        err("[balancer]\nbackends = [\"127.0.0.1:1\", { addr = \"127.0.0.1:1\", weight = 2 }]\n"),
        e(2, 37, "duplicate backend address 127.0.0.1:1")
    );
}

#[test]
fn port_collisions() {
    assert_eq!(
        err("[services.a]\ncommand = \"x\"\nport = 5001\ninstances = 3\n[services.b]\ncommand = \"x\"\nport = 5003\n"),
        e(7, 8, "ports 5003 of service `b` overlap ports 5001-5003 of service `a`")
    );
    assert_eq!(
        err("[services.a]\ncommand = \"x\"\nport = 8080\n[balancer]\nlisten = \"127.0.0.1:8080\"\nservice = \"a\"\n"),
        e(5, 10, "balancer listen port 8080 collides with ports 8080 of service `a`")
    );
}

#[test]
fn all_errors_at_once_in_file_order() {
    let src = r#"[services.web]
command = "node server.js"
instancs = 3
stop = { grace = "5" }
depends_on = ["db"]

[balancer]
listen = "127.0.0.1:80800"
service = "web"
backends = ["127.0.0.1:5001"]
algorithm = "hash"

[limits.strict]
rate = "ten/s"
"#;
    let found = errs(src);
    let pos: Vec<(usize, usize)> = found.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        pos,
        [
            (3, 1),
            (4, 18),
            (5, 15),
            (8, 10),
            (10, 1),
            (11, 13),
            (14, 8)
        ],
        "{found:#?}"
    );
}

#[test]
fn display_is_rustc_style() {
    let e: ConfigErrors = parse(
        "[services.web]\ncommand = \"x\"\ninstancs = 3\nport = \"atuo\"\n",
        "drove.toml",
    )
    .unwrap_err();
    let text = e.to_string();
    let expected = "drove.toml:3:1: unknown key `instancs` in [services.web]; did you mean `instances`? (expected one of: command, instances, port, env, cwd, ready, health, stop, restart, max_memory, depends_on, logs)
  |
3 | instancs = 3
  | ^^^^^^^^

drove.toml:4:8: invalid port \"atuo\"; did you mean \"auto\"? (expected a port number or one of: \"auto\", \"none\")
  |
4 | port = \"atuo\"
  |        ^^^^^^

2 errors";
    assert_eq!(text, expected);
    assert_eq!(ConfigErrors::EXIT_CODE, 64);
}

#[test]
fn never_panics_on_truncated_or_mangled_input() {
    // A cheap stand-in for the fuzz target: every prefix of a rich config, and the same
    // with multi-byte characters, must give Ok or positioned errors, never a panic.
    let src = format!(
        "{}\n# é ü 日本\n[services.ü]\ncommand = \"é {{pört}}\"\n",
        crate::defaults::FULL
    );
    for (i, _) in src.char_indices() {
        if let Err(e) = parse(&src[..i], "drove.toml") {
            for err in &e {
                assert!(err.line >= 1 && err.col >= 1, "{err}");
            }
            let _ = e.to_string();
        }
    }
}

#[test]
fn dns_backend_errors() {
    let all = errs(
        r#"[balancer]
backends = [{ dns = "web.internal" }, { dns = "bad name:80" }, { dns = "a:1", srv = "b" }]
resolver = { interval = "0s", servers = [] }
"#,
    );
    let msgs: Vec<&str> = all.iter().map(|(_, _, m)| m.as_str()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("`dns` must be NAME:PORT")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("is not a DNS name")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("exactly one of `addr`, `dns`")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("`resolver.interval` must be more than 0s")),
        "{msgs:#?}"
    );
    assert!(msgs.iter().any(|m| m.contains("servers")), "{msgs:#?}");
    assert!(
        all.iter().all(|(line, _, _)| (2..=3).contains(line)),
        "{all:#?}"
    );
}
