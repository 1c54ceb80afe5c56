//! A thin typed reader over the `toml_edit` tree. It keeps the byte span of every key and
//! value, reports unknown keys (with the closest known key) and wrong types, and collects
//! every error instead of stopping at the first.

use std::ops::Range;
use std::time::Duration;

use toml_edit::{ArrayOfTables, InlineTable, Item, Key, Table, Value};

use crate::units;

/// An error found while reading, before it gets a line and column.
pub(crate) struct Diag {
    pub span: Range<usize>,
    pub message: String,
}

/// Reading context: collects errors.
#[derive(Default)]
pub(crate) struct Cx {
    pub diags: Vec<Diag>,
}

impl Cx {
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diag {
            span,
            message: message.into(),
        });
    }
}

/// A value in the document: a plain value, a `[table]` or a `[[table]]` array.
#[derive(Clone, Copy)]
pub(crate) enum Node<'a> {
    Value(&'a Value),
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
}

impl<'a> Node<'a> {
    pub fn from_item(item: &'a Item) -> Option<Node<'a>> {
        match item {
            Item::None => None,
            Item::Value(v) => Some(Node::Value(v)),
            Item::Table(t) => Some(Node::Table(t)),
            Item::ArrayOfTables(a) => Some(Node::Tables(a)),
        }
    }

    /// A human name of the node's type, for "expected X, found Y".
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::Value(Value::String(_)) => "a string",
            Node::Value(Value::Integer(_)) => "an integer",
            Node::Value(Value::Float(_)) => "a float",
            Node::Value(Value::Boolean(_)) => "a boolean",
            Node::Value(Value::Datetime(_)) => "a date-time",
            Node::Value(Value::Array(_)) => "an array",
            Node::Value(Value::InlineTable(_)) | Node::Table(_) => "a table",
            Node::Tables(_) => "an array of tables",
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Node::Value(Value::String(s)) => Some(s.value()),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Node::Value(Value::Boolean(b)) => Some(*b.value()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Node::Value(Value::Integer(i)) => Some(*i.value()),
            _ => None,
        }
    }

    /// The elements of an array (`[...]` or `[[...]]`).
    pub fn as_array(&self) -> Option<Vec<Node<'a>>> {
        match self {
            Node::Value(Value::Array(a)) => Some(a.iter().map(Node::Value).collect()),
            Node::Tables(a) => Some(a.iter().map(Node::Table).collect()),
            _ => None,
        }
    }

    pub fn is_table(&self) -> bool {
        matches!(self, Node::Table(_) | Node::Value(Value::InlineTable(_)))
    }
}

/// A key with its value.
#[derive(Clone)]
pub(crate) struct Field<'a> {
    pub name: &'a str,
    pub key_span: Range<usize>,
    pub node: Node<'a>,
    /// Span of the value, or of the key when the value has none (implicit tables).
    pub span: Range<usize>,
}

fn node_span(node: &Node<'_>) -> Option<Range<usize>> {
    match node {
        Node::Value(v) => v.span(),
        // A `[table]`'s span covers header and body; the error renderer shows its first
        // line, the header.
        Node::Table(t) => t.span(),
        Node::Tables(a) => a.span(),
    }
}

/// The entries of a table or inline table, with spans.
pub(crate) fn entries<'a>(node: &Node<'a>, fallback: &Range<usize>) -> Vec<Field<'a>> {
    let mut out = Vec::new();
    let mut push = |name: &'a str, key: Option<&'a Key>, node: Node<'a>| {
        let key_span = key
            .and_then(|k| k.span())
            .unwrap_or_else(|| fallback.clone());
        let span = node_span(&node).unwrap_or_else(|| key_span.clone());
        out.push(Field {
            name,
            key_span,
            node,
            span,
        });
    };
    match node {
        Node::Table(t) => {
            for (name, item) in t.iter() {
                if let Some(n) = Node::from_item(item) {
                    push(name, t.key(name), n);
                }
            }
        }
        Node::Value(Value::InlineTable(t)) => {
            let t: &'a InlineTable = t;
            for (name, value) in t.iter() {
                push(name, t.key(name), Node::Value(value));
            }
        }
        _ => {}
    }
    out
}

/// The fields of one table, checked against the keys allowed there.
pub(crate) struct Fields<'a> {
    fields: Vec<Field<'a>>,
    /// Where to point for "missing key" errors: the table header or inline table.
    pub span: Range<usize>,
    /// How the table is named in messages, e.g. `[services.web]` or `ready`.
    pub what: String,
}

impl<'a> Fields<'a> {
    /// Reads the table `field`, reporting unknown keys. Returns `None` (after reporting)
    /// if `field` is not a table.
    pub fn of(
        cx: &mut Cx,
        field: &Field<'a>,
        what: String,
        allowed: &[&str],
    ) -> Option<Fields<'a>> {
        if !field.node.is_table() {
            cx.error(
                field.span.clone(),
                format!("{what} must be a table, found {}", field.node.type_name()),
            );
            return None;
        }
        Some(Fields::new(
            cx,
            &field.node,
            header_span(field),
            what,
            allowed,
        ))
    }

    pub fn new(
        cx: &mut Cx,
        node: &Node<'a>,
        span: Range<usize>,
        what: String,
        allowed: &[&str],
    ) -> Fields<'a> {
        let mut fields = Vec::new();
        for f in entries(node, &span) {
            if allowed.contains(&f.name) {
                fields.push(f);
            } else {
                cx.error(f.key_span.clone(), unknown_key(f.name, &what, allowed));
            }
        }
        Fields { fields, span, what }
    }

    /// Takes the field `name`, if present.
    pub fn get(&mut self, name: &str) -> Option<Field<'a>> {
        let i = self.fields.iter().position(|f| f.name == name)?;
        Some(self.fields.remove(i))
    }

    /// Takes the field `name`, reporting it missing if absent.
    pub fn required(&mut self, cx: &mut Cx, name: &str) -> Option<Field<'a>> {
        let f = self.get(name);
        if f.is_none() {
            cx.error(
                self.span.clone(),
                format!("missing required key `{name}` in {}", self.what),
            );
        }
        f
    }
}

/// For a table, the key span (its header); for an inline table, the value span.
pub(crate) fn header_span(field: &Field<'_>) -> Range<usize> {
    match field.node {
        Node::Table(_) => field.key_span.clone(),
        _ => field.span.clone(),
    }
}

/// "unknown key `x` in [t]; did you mean `y`? expected one of: ..."
pub(crate) fn unknown_key(name: &str, what: &str, allowed: &[&str]) -> String {
    let mut msg = format!("unknown key `{name}` in {what}");
    if let Some(best) = closest(name, allowed) {
        msg.push_str(&format!("; did you mean `{best}`?"));
        msg.push_str(&format!(" (expected one of: {})", allowed.join(", ")));
    } else {
        msg.push_str(&format!("; expected one of: {}", allowed.join(", ")));
    }
    msg
}

/// The candidate closest to `name`, if close enough to be a likely typo.
pub(crate) fn closest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = name.to_ascii_lowercase().replace('-', "_");
    candidates
        .iter()
        .map(|c| {
            let cand = c.to_ascii_lowercase().replace('-', "_");
            (strsim::damerau_levenshtein(&lower, &cand), *c)
        })
        .filter(|(d, c)| *d <= (c.chars().count().max(3) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "one of `a`, `b`; did you mean `c`?" for enumerated string values.
pub(crate) fn bad_choice(what: &str, value: &str, choices: &[&str]) -> String {
    let list = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    match closest(value, choices) {
        Some(best) => format!(
            "invalid {what} \"{value}\"; did you mean \"{best}\"? (expected one of: {list})"
        ),
        None => format!("invalid {what} \"{value}\"; expected one of: {list}"),
    }
}

// Typed getters: each reports a wrong type or bad value at the value's span and returns
// `None`, so the caller falls back to the default and reading goes on.

pub(crate) fn string(cx: &mut Cx, f: &Field<'_>) -> Option<String> {
    match f.node.as_str() {
        Some(s) => Some(s.to_string()),
        None => {
            cx.error(
                f.span.clone(),
                format!(
                    "`{}` must be a string, found {}",
                    f.name,
                    f.node.type_name()
                ),
            );
            None
        }
    }
}

pub(crate) fn boolean(cx: &mut Cx, f: &Field<'_>) -> Option<bool> {
    match f.node.as_bool() {
        Some(b) => Some(b),
        None => {
            cx.error(
                f.span.clone(),
                format!(
                    "`{}` must be true or false, found {}",
                    f.name,
                    f.node.type_name()
                ),
            );
            None
        }
    }
}

/// An integer in `min..=max`.
pub(crate) fn int(cx: &mut Cx, f: &Field<'_>, min: i64, max: i64) -> Option<i64> {
    match f.node.as_int() {
        Some(i) if (min..=max).contains(&i) => Some(i),
        Some(i) => {
            let range = if max == i64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            cx.error(
                f.span.clone(),
                format!("`{}` must be {range}, found {i}", f.name),
            );
            None
        }
        None => {
            cx.error(
                f.span.clone(),
                format!(
                    "`{}` must be an integer, found {}",
                    f.name,
                    f.node.type_name()
                ),
            );
            None
        }
    }
}

pub(crate) fn u32_at_least(cx: &mut Cx, f: &Field<'_>, min: u32) -> Option<u32> {
    int(cx, f, i64::from(min), i64::from(u32::MAX)).map(|i| i as u32)
}

/// A string value run through `parse`; `example` shows the expected form in type errors.
pub(crate) fn parsed<T>(
    cx: &mut Cx,
    f: &Field<'_>,
    kind: &str,
    example: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    match f.node.as_str() {
        Some(s) => match parse(s) {
            Ok(v) => Some(v),
            Err(msg) => {
                cx.error(f.span.clone(), format!("`{}`: {msg}", f.name));
                None
            }
        },
        None => {
            let hint = match (f.node.as_int(), kind) {
                (Some(i), "duration") => {
                    format!("; durations need a unit: write \"{i}s\" for {i} seconds")
                }
                _ => String::new(),
            };
            cx.error(
                f.span.clone(),
                format!(
                    "`{}` must be a {kind} string like {example}, found {}{hint}",
                    f.name,
                    f.node.type_name()
                ),
            );
            None
        }
    }
}

pub(crate) fn duration(cx: &mut Cx, f: &Field<'_>) -> Option<Duration> {
    parsed(cx, f, "duration", "\"2s\" or \"250ms\"", units::duration)
}

/// A positive duration.
pub(crate) fn positive_duration(cx: &mut Cx, f: &Field<'_>) -> Option<Duration> {
    let d = duration(cx, f)?;
    if d.is_zero() {
        cx.error(
            f.span.clone(),
            format!("`{}` must be greater than zero", f.name),
        );
        return None;
    }
    Some(d)
}

/// A size string, or an integer number of bytes.
pub(crate) fn size(cx: &mut Cx, f: &Field<'_>) -> Option<u64> {
    if let Some(i) = f.node.as_int() {
        if i < 0 {
            cx.error(f.span.clone(), format!("`{}` must not be negative", f.name));
            return None;
        }
        return Some(i as u64);
    }
    parsed(cx, f, "size", "\"512MiB\" or \"10MB\"", units::size)
}

pub(crate) fn percent(cx: &mut Cx, f: &Field<'_>) -> Option<f64> {
    parsed(cx, f, "percentage", "\"20%\"", units::percent)
}

pub(crate) fn socket_addr(cx: &mut Cx, f: &Field<'_>) -> Option<std::net::SocketAddr> {
    parsed(cx, f, "address", "\"127.0.0.1:8080\"", units::socket_addr)
}

/// A string from a fixed set of choices.
pub(crate) fn choice<'c>(
    cx: &mut Cx,
    f: &Field<'_>,
    what: &str,
    choices: &[&'c str],
) -> Option<&'c str> {
    let s = string(cx, f)?;
    match choices.iter().find(|c| **c == s) {
        Some(c) => Some(*c),
        None => {
            cx.error(f.span.clone(), bad_choice(what, &s, choices));
            None
        }
    }
}

/// An array; elements are returned as fields named `name[i]` with their own spans.
pub(crate) fn array<'a>(cx: &mut Cx, f: &Field<'a>) -> Option<Vec<Field<'a>>> {
    match f.node.as_array() {
        Some(items) => Some(
            items
                .into_iter()
                .map(|node| Field {
                    name: f.name,
                    key_span: f.key_span.clone(),
                    span: node_span(&node).unwrap_or_else(|| f.span.clone()),
                    node,
                })
                .collect(),
        ),
        None => {
            cx.error(
                f.span.clone(),
                format!(
                    "`{}` must be an array, found {}",
                    f.name,
                    f.node.type_name()
                ),
            );
            None
        }
    }
}

/// Whether `s` is a valid HTTP header name (an RFC 9110 token).
pub(crate) fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["command", "instances", "port"];
        assert_eq!(closest("instancs", &keys), Some("instances"));
        assert_eq!(closest("comand", &keys), Some("command"));
        assert_eq!(closest("prot", &keys), Some("port"));
        assert_eq!(closest("zzzzzz", &keys), None);
        assert!(is_header_name("X-Request-Id"));
        assert!(!is_header_name("X Request"));
    }
}
