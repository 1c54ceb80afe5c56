//! `compress` of `[balancer]` and of `[[balancer.routes]]`: `true` (the defaults, or the
//! balancer's settings on a route), `false` (off), or a table whose keys replace those
//! of the balancer's settings (on a route) or of the defaults. The defaults themselves
//! live in drove-compress (`Settings::default`), next to the code that uses them.

use drove_compress::{Encoding, Levels, MediaRange, Settings};

use crate::reader::{self as r, Cx, Field, Fields};

const KEYS: &[&str] = &["algorithms", "types", "min_size", "level"];
const NAMES: &[&str] = &["zstd", "br", "gzip"];

/// The settings `f` asks for over `base` (the defaults when `None`): `Some(None)` = off,
/// `Some(Some(_))` = on; `None` after reporting an error.
pub(super) fn compress(
    cx: &mut Cx,
    f: &Field<'_>,
    base: Option<&Settings>,
    what: &str,
) -> Option<Option<Settings>> {
    let base = base.cloned().unwrap_or_default();
    if let Some(on) = f.node.as_bool() {
        return Some(on.then_some(base));
    }
    if !f.node.is_table() {
        cx.error(
            f.span.clone(),
            format!(
                "{what} must be true, false or a table like {{ algorithms = [\"zstd\", \"br\", \"gzip\"], min_size = \"1KiB\" }}, found {}",
                f.node.type_name()
            ),
        );
        return None;
    }
    let mut t = Fields::of(cx, f, what.to_string(), KEYS)?;
    let mut algorithms = base.algorithms().to_vec();
    let mut types = base.types().to_vec();
    let mut min_size = base.min_size();
    let mut levels = *base.levels();
    let mut ok = true;

    if let Some(af) = t.get("algorithms") {
        match algorithm_list(cx, &af) {
            Some(a) => algorithms = a,
            None => ok = false,
        }
    }
    if let Some(tf) = t.get("types") {
        match type_list(cx, &tf) {
            Some(list) => types = list,
            None => ok = false,
        }
    }
    if let Some(mf) = t.get("min_size") {
        match r::size(cx, &mf) {
            Some(v) => min_size = v,
            None => ok = false,
        }
    }
    if let Some(lf) = t.get("level") {
        ok &= read_levels(cx, &lf, what, &mut levels);
    }
    if !ok {
        return None;
    }
    match Settings::new(algorithms, types, min_size, levels) {
        Ok(s) => Some(Some(s)),
        Err(e) => {
            // The lists were checked above; this is a backstop, not a known path.
            cx.error(t.span.clone(), format!("{what}: {e}"));
            None
        }
    }
}

fn algorithm_list(cx: &mut Cx, f: &Field<'_>) -> Option<Vec<Encoding>> {
    let items = r::array(cx, f)?;
    if items.is_empty() {
        cx.error(
            f.span.clone(),
            "`algorithms` is empty; list at least one of \"zstd\", \"br\", \"gzip\" (or write `compress = false`)",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in &items {
        let Some(name) = r::string(cx, item) else {
            ok = false;
            continue;
        };
        let Some(e) = Encoding::from_token(name.as_bytes()).filter(|e| e.name() == name) else {
            let msg = match name.to_ascii_lowercase().as_str() {
                "brotli" => "invalid algorithm \"brotli\"; its HTTP name is \"br\"".to_string(),
                "deflate" => "\"deflate\" is not offered (clients disagree on what it means, zlib or raw deflate); use \"gzip\", which every client that accepts deflate accepts too".to_string(),
                _ => r::bad_choice("algorithm", &name, NAMES),
            };
            cx.error(item.span.clone(), msg);
            ok = false;
            continue;
        };
        if out.contains(&e) {
            cx.error(
                item.span.clone(),
                format!("\"{name}\" is listed twice in `algorithms`"),
            );
            ok = false;
            continue;
        }
        out.push(e);
    }
    ok.then_some(out)
}

fn type_list(cx: &mut Cx, f: &Field<'_>) -> Option<Vec<MediaRange>> {
    let items = r::array(cx, f)?;
    if items.is_empty() {
        cx.error(
            f.span.clone(),
            "`types` is empty; list media types like \"text/*\" (or write `compress = false`)",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in &items {
        let Some(s) = r::string(cx, item) else {
            ok = false;
            continue;
        };
        match MediaRange::parse(&s) {
            Ok(m) if out.contains(&m) => {
                cx.error(
                    item.span.clone(),
                    format!("\"{s}\" is listed twice in `types`"),
                );
                ok = false;
            }
            Ok(m) => out.push(m),
            Err(e) => {
                cx.error(item.span.clone(), format!("`types`: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// `level = { gzip = 2, br = 3, zstd = 3 }`: each key optional, each checked against
/// its encoding's range.
fn read_levels(cx: &mut Cx, f: &Field<'_>, what: &str, levels: &mut Levels) -> bool {
    if !f.node.is_table() {
        cx.error(
            f.span.clone(),
            format!(
                "`level` must be a table like {{ gzip = 2, br = 3, zstd = 3 }} (each algorithm has its own scale), found {}",
                f.node.type_name()
            ),
        );
        return false;
    }
    let Some(mut t) = Fields::of(cx, f, format!("`level` of {what}"), NAMES) else {
        return false;
    };
    let mut ok = true;
    for e in Encoding::ALL {
        let Some(lf) = t.get(e.name()) else {
            continue;
        };
        let range = e.levels();
        match r::int(cx, &lf, i64::from(*range.start()), i64::from(*range.end())) {
            Some(v) => ok &= levels.set(e, v as u32).is_ok(),
            None => ok = false,
        }
    }
    ok
}
