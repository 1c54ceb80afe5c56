//! `{port}` / `{instance}` placeholders in commands. Shell syntax that also uses braces
//! (`${VAR}`, `{a,b}`, `{1..3}`) is left alone; `{{` and `}}` are literal braces.

/// The placeholders drove substitutes.
/// `{drove}` (the running drove executable, so a config can run `drove demo` without
/// drove on the PATH) is substituted by the runtime when it starts the services.
pub(crate) const KNOWN: &[&str] = &["port", "instance", "drove"];

enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' if bytes.get(i + 1) == Some(&b'{') => {
                out.push(Piece::Text(&s[start..=i]));
                i += 2;
                start = i;
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => {
                out.push(Piece::Text(&s[start..=i]));
                i += 2;
                start = i;
            }
            b'{' if i > 0 && bytes[i - 1] == b'$' => {
                // `${...}`: shell parameter expansion, copied verbatim.
                i = s[i..].find('}').map_or(bytes.len(), |j| i + j + 1);
            }
            b'{' => {
                let end = s[i + 1..].find('}').map(|j| i + 1 + j);
                match end {
                    Some(end) if is_ident(&s[i + 1..end]) => {
                        out.push(Piece::Text(&s[start..i]));
                        out.push(Piece::Placeholder(&s[i + 1..end]));
                        i = end + 1;
                        start = i;
                    }
                    _ => i += 1,
                }
            }
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

/// The placeholders used in `s`, in order (known or not).
pub(crate) fn used(s: &str) -> Vec<&str> {
    pieces(s)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Placeholder(name) => Some(name),
            Piece::Text(_) => None,
        })
        .collect()
}

/// `s` with `{port}` and `{instance}` replaced; unknown placeholders are kept as written.
pub(crate) fn substitute(s: &str, port: Option<u16>, instance: u32) -> String {
    let mut out = String::with_capacity(s.len());
    for piece in pieces(s) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder("port") => match port {
                Some(p) => out.push_str(&p.to_string()),
                None => out.push_str("{port}"),
            },
            Piece::Placeholder("instance") => out.push_str(&instance.to_string()),
            Piece::Placeholder(other) => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_substitutes() {
        let s = "node server.js --port {port} --id {instance} ${HOME} {a,b} {{x}}";
        assert_eq!(used(s), vec!["port", "instance"]);
        assert_eq!(
            substitute(s, Some(5001), 2),
            "node server.js --port 5001 --id 2 ${HOME} {a,b} {x}"
        );
        assert_eq!(used("run {prot}"), vec!["prot"]);
        assert_eq!(used("echo {}"), Vec::<&str>::new());
    }
}
