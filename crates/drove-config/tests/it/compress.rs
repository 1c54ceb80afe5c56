//! `compress` of [balancer] and of [[balancer.routes]]: defaults, every key, inheritance
//! by routes, and each error at its position.

use drove_compress::{Encoding::*, Levels, MediaRange, Settings};
use drove_config::RouteConfig;

use crate::{err, errs, ok};

const B: &str = "[balancer]\nbackends = [\"127.0.0.1:5001\"]\n";

fn balancer_compress(extra: &str) -> Option<Settings> {
    ok(&format!("{B}{extra}")).balancer.unwrap().compress
}

fn types(list: &[&str]) -> Vec<MediaRange> {
    list.iter().map(|t| MediaRange::parse(t).unwrap()).collect()
}

#[test]
fn off_unless_asked_for() {
    assert_eq!(balancer_compress(""), None);
    assert_eq!(balancer_compress("compress = false\n"), None);
}

#[test]
fn true_and_an_empty_table_are_the_defaults() {
    let d = Settings::default();
    assert_eq!(balancer_compress("compress = true\n"), Some(d.clone()));
    assert_eq!(balancer_compress("compress = {}\n"), Some(d.clone()));
    assert_eq!(d.algorithms(), [Zstd, Br, Gzip]);
    assert_eq!(d.min_size(), 1024);
    assert_eq!(
        (
            d.levels().get(Gzip),
            d.levels().get(Br),
            d.levels().get(Zstd)
        ),
        (2, 3, 3)
    );
    assert!(d.compresses_type(b"text/html"));
}

#[test]
fn every_key_set() {
    let s = balancer_compress(
        "compress = { algorithms = [\"gzip\", \"zstd\"], types = [\"text/html\", \"application/*+json\"], min_size = \"2KiB\", level = { gzip = 6, zstd = 9 } }\n",
    )
    .unwrap();
    let mut levels = Levels::default();
    levels.set(Gzip, 6).unwrap();
    levels.set(Zstd, 9).unwrap();
    assert_eq!(
        s,
        Settings::new(
            vec![Gzip, Zstd],
            types(&["text/html", "application/*+json"]),
            2048,
            levels
        )
        .unwrap()
    );
    // As a [balancer.compress] table too, and min_size as bytes.
    let s = balancer_compress("[balancer.compress]\nmin_size = 0\nlevel.br = 11\n").unwrap();
    assert_eq!(s.min_size(), 0);
    assert_eq!(s.levels().get(Br), 11);
    assert_eq!(
        s.algorithms(),
        [Zstd, Br, Gzip],
        "unset keys keep their defaults"
    );
}

fn routes(src: &str) -> Vec<RouteConfig> {
    ok(&format!("{B}{src}")).balancer.unwrap().routes
}

#[test]
fn routes_inherit_the_balancers_settings_and_override_them() {
    let r = routes(
        "compress = { algorithms = [\"br\", \"gzip\"], min_size = \"4KiB\" }\n\
         [[balancer.routes]]\npath = \"/events/\"\ncompress = false\n\
         [[balancer.routes]]\npath = \"/api/\"\ncompress = { min_size = 0 }\n\
         [[balancer.routes]]\npath = \"/static/\"\ncompress = true\n\
         [[balancer.routes]]\npath = \"/auth/\"\nlimit = \"strict\"\n\
         [limits.strict]\nrate = \"1/s\"\n",
    );
    let balancer = Settings::new(
        vec![Br, Gzip],
        Settings::default().types().to_vec(),
        4096,
        Levels::default(),
    )
    .unwrap();
    assert_eq!(r[0].compress, None, "false turns it off on the route");
    let api = r[1].compress.as_ref().unwrap();
    assert_eq!(api.min_size(), 0, "the route's key");
    assert_eq!(
        api.algorithms(),
        [Br, Gzip],
        "the balancer's key, not the default"
    );
    assert_eq!(
        r[2].compress.as_ref(),
        Some(&balancer),
        "true = the balancer's"
    );
    assert_eq!(
        r[3].compress.as_ref(),
        Some(&balancer),
        "absent = the balancer's"
    );
    // Routes without a limit have an empty name, which names no limit.
    assert_eq!(r[0].limit, "");
    assert_eq!(r[0].limit_name(), None);
    assert_eq!(r[3].limit_name(), Some("strict"));
}

#[test]
fn a_route_can_turn_on_what_the_balancer_leaves_off() {
    let r = routes("[[balancer.routes]]\npath = \"/api/\"\ncompress = { algorithms = [\"gzip\"] }\n[[balancer.routes]]\npath = \"/x/\"\ncompress = true\n");
    let api = r[0].compress.as_ref().unwrap();
    assert_eq!(api.algorithms(), [Gzip]);
    assert_eq!(api.min_size(), 1024, "over the defaults");
    assert_eq!(r[1].compress, Some(Settings::default()));
}

/// The error for `compress = VALUE` in [balancer]: (line, column, message), with the
/// column where `at` begins in the line (the value the error must point at).
fn compress_err(value: &str, at: &str) -> (usize, usize, String, usize) {
    let line = format!("compress = {value}");
    let col = line.find(at).expect("`at` is in the value") + 1;
    let (l, c, m) = err(&format!("{B}{line}\n"));
    (l, c, m, col)
}

/// Asserts the error is on line 3 at `at`, with `message`.
fn assert_compress_err(value: &str, at: &str, message: &str) {
    let (line, col, msg, want_col) = compress_err(value, at);
    assert_eq!((line, col, msg.as_str()), (3, want_col, message), "{value}");
}

#[test]
fn errors_point_at_the_value() {
    assert_compress_err(
        "\"gzip\"",
        "\"gzip\"",
        "`compress` of [balancer] must be true, false or a table like { algorithms = [\"zstd\", \"br\", \"gzip\"], min_size = \"1KiB\" }, found a string",
    );
    assert_compress_err(
        "{ algorithms = [\"gzip\", \"brotli\"] }",
        "\"brotli\"",
        "invalid algorithm \"brotli\"; its HTTP name is \"br\"",
    );
    assert_compress_err(
        "{ algorithms = [\"gzp\"] }",
        "\"gzp\"",
        "invalid algorithm \"gzp\"; did you mean \"gzip\"? (expected one of: \"zstd\", \"br\", \"gzip\")",
    );
    let (_, _, msg, _) = compress_err("{ algorithms = [\"deflate\"] }", "\"deflate\"");
    assert!(msg.starts_with("\"deflate\" is not offered"), "{msg}");
    assert_compress_err(
        "{ algorithms = [\"br\", \"gzip\", \"br\"] }",
        "\"br\"]",
        "\"br\" is listed twice in `algorithms`",
    );
    assert_compress_err(
        "{ algorithms = [] }",
        "[]",
        "`algorithms` is empty; list at least one of \"zstd\", \"br\", \"gzip\" (or write `compress = false`)",
    );
    assert_compress_err(
        "{ types = [\"text/*\", \"text\"] }",
        "\"text\"",
        "`types`: invalid media type pattern \"text\": expected type/subtype, like \"text/html\" or \"text/*\"",
    );
    assert_compress_err(
        "{ types = [\"text/html; charset=utf-8\"] }",
        "\"text/html;",
        "`types`: invalid media type pattern \"text/html; charset=utf-8\": parameters are not allowed: a pattern matches a type whatever its parameters",
    );
    assert_compress_err(
        "{ types = [\"text/*\", \"TEXT/*\"] }",
        "\"TEXT/*\"",
        "\"TEXT/*\" is listed twice in `types`",
    );
    assert_compress_err(
        "{ types = [] }",
        "[]",
        "`types` is empty; list media types like \"text/*\" (or write `compress = false`)",
    );
    assert_compress_err(
        "{ min_size = \"1 KiBi\" }",
        "\"1 KiBi\"",
        "`min_size`: unknown unit `KiBi` in size \"1 KiBi\"; use B, KB, KiB, MB, MiB, GB, GiB, TB or TiB",
    );
    assert_compress_err(
        "{ level = 5 }",
        "5",
        "`level` must be a table like { gzip = 2, br = 3, zstd = 3 } (each algorithm has its own scale), found an integer",
    );
    assert_compress_err(
        "{ level = { gzip = 10 } }",
        "10",
        "`gzip` must be between 1 and 9, found 10",
    );
    let found = errs(&format!(
        "{B}compress = {{ level = {{ br = 12, zstd = 0 }} }}\n"
    ));
    let msgs: Vec<&str> = found.iter().map(|(_, _, m)| m.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "`br` must be between 0 and 11, found 12",
            "`zstd` must be between 1 and 19, found 0"
        ]
    );
    assert_compress_err(
        "{ level = { deflate = 1 } }",
        "deflate",
        "unknown key `deflate` in `level` of `compress` of [balancer]; expected one of: zstd, br, gzip",
    );
    assert_compress_err(
        "{ algoritms = [\"gzip\"] }",
        "algoritms",
        "unknown key `algoritms` in `compress` of [balancer]; did you mean `algorithms`? (expected one of: algorithms, types, min_size, level)",
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let found = errs(&format!(
        "{B}compress = {{ algorithms = [\"lz4\"], level = {{ zstd = 30 }} }}\n[[balancer.routes]]\npath = \"/a/\"\ncompress = 1\n"
    ));
    let pos: Vec<(usize, usize)> = found.iter().map(|(l, c, _)| (*l, *c)).collect();
    let line3 = "compress = { algorithms = [\"lz4\"], level = { zstd = 30 } }";
    let col = |at: &str| line3.find(at).unwrap() + 1;
    assert_eq!(
        pos,
        [(3, col("\"lz4\"")), (3, col("30")), (6, 12)],
        "{found:#?}"
    );
    assert!(found[2]
        .2
        .starts_with("`compress` of [[balancer.routes]] must be true, false or a table"));
}
