//! drove-config owns `drove.toml`: its syntax, its defaults, its validation and its error
//! messages; it knows nothing of processes or sockets. The pipeline is: `drove.toml` text
//! → a `toml_edit` document that keeps the span of every key and value (TOML syntax errors
//! stop here) → per-section readers (`build/`) that reject unknown keys, wrong types and
//! bad values (durations, sizes, addresses, ...) and fall back to defaults so that reading
//! goes on → cross-section checks (`check.rs`: unknown services and limits, dependency
//! cycles, port collisions) → a validated [`Config`] of plain Rust types (`Duration`,
//! `SocketAddr`, enums; no TOML type leaks out; compression settings are built into
//! `drove_compress::Settings`, the type the proxy takes). Every problem found on the way is kept
//! with its position, so [`ConfigErrors`] lists them all at once, rustc-style. Main
//! items: [`load`], [`parse`], [`Config`], [`ConfigErrors`], [`INIT_TEMPLATE`],
//! [`builtin_demo`].
#![warn(missing_docs)]

mod build;
mod check;
mod error;
mod model;
mod placeholders;
mod reader;
mod templates;
mod units;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use templates::{builtin_demo, builtin_demo_toml, BUILTIN_DEMO_TOML, INIT_TEMPLATE};

/// Parses a duration the way drove.toml does (`"250ms"`, `"2s"`, `"1m30s"`; a bare
/// number is an error that suggests a unit), so command-line flags read durations
/// exactly like the config file.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    units::duration(s)
}

/// Reads and validates the config file at `path`. Relative paths in it (`cwd`, log
/// directories, ...) are resolved against the file's directory; `Config::path` is the
/// file's absolute path.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        errors: vec![ConfigError::whole_file(
            &file_name,
            format!("cannot read config file: {e}"),
        )],
    })?;
    let abs = absolute(path);
    let mut config = parse_in(&text, &file_name, abs.parent().unwrap_or(Path::new("/")))?;
    config.path = Some(abs);
    Ok(config)
}

/// Validates config text. `file_name` is used in error messages, and its directory
/// (relative to the current directory) anchors relative paths in the config.
/// `Config::path` is `None`.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let abs = absolute(Path::new(file_name));
    let base = abs
        .parent()
        .map_or_else(|| absolute(Path::new(".")), Path::to_path_buf);
    parse_in(text, file_name, &base)
}

fn absolute(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    build::resolve(&abs, ".")
}

fn parse_in(text: &str, file_name: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            // toml_edit puts what it expected on further lines.
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ConfigErrors {
                errors: vec![ConfigError::at(
                    file_name,
                    text,
                    span,
                    format!("TOML syntax error: {message}"),
                )],
            });
        }
    };
    let mut cx = reader::Cx::default();
    let (mut config, refs) = build::config(&mut cx, doc.as_table(), base);
    // Cross-section checks run even after errors above, so one run reports everything.
    check::config(&mut cx, &mut config, &refs);
    if cx.diags.is_empty() {
        return Ok(config);
    }
    cx.diags.sort_by_key(|d| (d.span.start, d.span.end));
    cx.diags
        .dedup_by(|a, b| a.span == b.span && a.message == b.message);
    Err(ConfigErrors {
        errors: cx
            .diags
            .into_iter()
            .map(|d| ConfigError::at(file_name, text, d.span, d.message))
            .collect(),
    })
}
