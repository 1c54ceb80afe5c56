//! Command templates: the `{port}`, `{instance}` and `{drove}` placeholders in service
//! commands and environment values. One parser for the three places that must agree on
//! the syntax: drove-config validates the names a template uses, the runtime fills in
//! `{drove}` when it hands a service to the supervisor, and the supervisor renders
//! `{port}` and `{instance}` for each instance it spawns. A placeholder is `{` +
//! identifier + `}`; `{{` and `}}` are literal braces; shell syntax that also uses
//! braces (`${VAR}`, `{a,b}`, `{1..3}`, `{}`) is left alone.

#![warn(missing_docs)]

enum Piece<'a> {
    /// Copied as is.
    Text(&'a str),
    /// `{{` or `}}`: one literal brace once rendered.
    Escape(&'a str),
    /// `{name}`.
    Placeholder(&'a str),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b @ (b'{' | b'}') if bytes.get(i + 1) == Some(&b) => {
                out.push(Piece::Text(&s[start..i]));
                out.push(Piece::Escape(&s[i..i + 2]));
                i += 2;
                start = i;
            }
            b'{' if i > 0 && bytes[i - 1] == b'$' => {
                // `${...}`: shell parameter expansion, copied verbatim.
                i = s[i..].find('}').map_or(bytes.len(), |j| i + j + 1);
            }
            b'{' => match s[i + 1..].find('}').map(|j| i + 1 + j) {
                Some(end) if is_ident(&s[i + 1..end]) => {
                    out.push(Piece::Text(&s[start..i]));
                    out.push(Piece::Placeholder(&s[i + 1..end]));
                    i = end + 1;
                    start = i;
                }
                _ => i += 1,
            },
            _ => i += 1,
        }
    }
    out.push(Piece::Text(&s[start..]));
    out
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The placeholder names `template` uses, in order (known to drove or not).
pub fn placeholders(template: &str) -> Vec<&str> {
    pieces(template)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Placeholder(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// Substitutes the placeholders named in `values` and leaves everything else as written,
/// escapes included: a first pass, after which the result is still a template.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    expand(template, values, false)
}

/// The final text: placeholders named in `values` substituted, `{{`/`}}` turned into
/// single braces, other placeholders kept as written.
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    expand(template, values, true)
}

fn expand(template: &str, values: &[(&str, &str)], unescape: bool) -> String {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Escape(e) if unescape => out.push_str(&e[..1]),
            Piece::Escape(e) => out.push_str(e),
            Piece::Placeholder(name) => match values.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "node server.js --port {port} --id {instance} ${HOME} {a,b} {{x}} {}";

    #[test]
    fn finds_placeholders_but_not_shell_braces_or_escapes() {
        assert_eq!(placeholders(S), vec!["port", "instance"]);
        assert_eq!(placeholders("run {prot}"), vec!["prot"]);
        assert_eq!(placeholders("echo {} {1..3} {{port}}"), Vec::<&str>::new());
        assert_eq!(placeholders("${port}"), Vec::<&str>::new());
    }

    #[test]
    fn renders_values_and_escapes() {
        assert_eq!(
            render(S, &[("port", "5001"), ("instance", "2")]),
            "node server.js --port 5001 --id 2 ${HOME} {a,b} {x} {}"
        );
        assert_eq!(render("{drove} {other}", &[]), "{drove} {other}");
        assert_eq!(render("a}}b{{c", &[]), "a}b{c");
    }

    /// `{{port}}` is the literal text `{port}`: a first pass must not turn it into a
    /// placeholder that the second pass then substitutes.
    #[test]
    fn fill_then_render_keeps_escapes_literal() {
        let t = fill(
            "{drove} demo --port {port} '{{port}}'",
            &[("drove", "/bin/d")],
        );
        assert_eq!(t, "/bin/d demo --port {port} '{{port}}'");
        assert_eq!(
            render(&t, &[("port", "80")]),
            "/bin/d demo --port 80 '{port}'"
        );
    }
}
