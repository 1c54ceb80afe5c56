//! Integration tests of drove-config through its public API: defaults, every key, every
//! error class with its exact position and message, and the shipped templates.

mod compress;
mod defaults;
mod errors;
mod templates;

use drove_config::{parse, Config};

/// Parses `src` as drove.toml, panicking with the rendered errors on failure.
pub fn ok(src: &str) -> Config {
    match parse(src, "drove.toml") {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// Parses `src`, expecting errors; returns them as (line, col, message).
pub fn errs(src: &str) -> Vec<(usize, usize, String)> {
    match parse(src, "drove.toml") {
        Ok(c) => panic!("expected errors, got a valid config: {c:#?}"),
        Err(e) => e
            .iter()
            .map(|e| (e.line, e.col, e.message.clone()))
            .collect(),
    }
}

/// Parses `src`, expecting exactly one error.
pub fn err(src: &str) -> (usize, usize, String) {
    let mut all = errs(src);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}
