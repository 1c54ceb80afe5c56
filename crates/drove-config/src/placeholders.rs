//! Which placeholders a command may use. The syntax (`{name}`, `{{`/`}}` escapes, shell
//! braces left alone) is drove-template's, shared with the supervisor that renders it.

/// The placeholders drove substitutes: `{port}` and `{instance}` per instance (by the
/// supervisor), `{drove}` (the running drove executable, so a config can run
/// `drove demo` without drove on the PATH) by the runtime when it starts the services.
pub(crate) const KNOWN: &[&str] = &["port", "instance", "drove"];
