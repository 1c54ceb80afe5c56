//! `Accept-Encoding` negotiation (RFC 9110 §12.5.3): which of the offered encodings a
//! client gets.
//!
//! Rules, in order:
//! - No `Accept-Encoding` field: nothing is compressed. RFC 9110 would allow any coding,
//!   but clients that omit the field are scripts and old tools that may not decode it;
//!   nginx, Caddy and HAProxy all send such clients the body as it is. An empty field
//!   means "no coding" too.
//! - Each offered encoding gets the q-value of its own element (`gzip;q=0.5`), else that
//!   of `*`, else it is not acceptable. `q=0` means "not acceptable"; so `gzip;q=0, *`
//!   accepts everything but gzip. `x-gzip` counts as `gzip`. Names are case-insensitive.
//!   If a coding is listed twice, its first element counts.
//! - The highest q-value wins; equal q-values go to the server's order (the configured
//!   `algorithms`), so `gzip, br, zstd` from a browser gets the server's favourite.
//! - `identity` listed with a q-value above the best encoding's (`gzip;q=0.5,
//!   identity`) means the client prefers the body as it is: nothing is compressed. An
//!   `identity;q=0` does not force compression of a type drove does not compress; it
//!   only ranks below any acceptable encoding, as an unlisted identity does.
//! - Malformed elements, decided like nginx rather than guessed at: an element whose
//!   name is not a token (`g zip`, `gz@p`) names nothing drove offers and is ignored;
//!   an element whose parameters are not exactly one `q=` with a valid qvalue
//!   (`gzip;q=abc`, `gzip;q=2`, `gzip;q=0.0001`, `gzip;level=9`) refuses that coding,
//!   as nginx's `ngx_http_gzip_accept_encoding` declines gzip then. (Caddy would read
//!   a bad q as 1; refusing is the safe side: a client that cannot spell its weights
//!   gets a body it can certainly read.) Empty list elements (`gzip,,br`) are skipped
//!   as RFC 9110 §5.6.1 asks.

use crate::encoding::Encoding;

/// A q-value in thousandths (RFC 9110 §12.4.2 allows three decimals), 0..=1000.
type Q = u16;

/// The encoding a client gets, among `offered` (the server's order of preference), from
/// its `Accept-Encoding` field lines (`values`: each line's value; none if the request
/// has no such field). `None`: send the body as it is. See the module doc for the rules.
pub fn negotiate<'a>(
    offered: &[Encoding],
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Encoding> {
    let mut coding_q: [Option<Q>; 3] = [None; 3];
    let mut star: Option<Q> = None;
    let mut identity: Option<Q> = None;
    let mut present = false;
    for value in values {
        present = true;
        for element in value.split(|&b| b == b',') {
            let element = element.trim_ascii();
            if element.is_empty() {
                continue;
            }
            let (name, params) = match element.iter().position(|&b| b == b';') {
                Some(i) => (element[..i].trim_ascii(), Some(&element[i + 1..])),
                None => (element, None),
            };
            if !is_token(name) {
                continue;
            }
            // A malformed weight refuses the coding (q = 0), see the module doc.
            let q = params.map_or(Some(1000), weight).unwrap_or(0);
            let slot = if name == b"*" {
                &mut star
            } else if name.eq_ignore_ascii_case(b"identity") {
                &mut identity
            } else if let Some(e) = Encoding::from_token(name) {
                &mut coding_q[index(e)]
            } else {
                continue;
            };
            slot.get_or_insert(q);
        }
    }
    if !present {
        return None;
    }
    let mut best: Option<(Encoding, Q)> = None;
    for &e in offered {
        let q = coding_q[index(e)].or(star).unwrap_or(0);
        // Strictly greater: on a tie the encoding offered first stays.
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((e, q));
        }
    }
    let (encoding, q) = best?;
    match identity {
        Some(iq) if iq > q => None,
        _ => Some(encoding),
    }
}

fn index(e: Encoding) -> usize {
    match e {
        Encoding::Zstd => 0,
        Encoding::Br => 1,
        Encoding::Gzip => 2,
    }
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// The q of `weight = OWS ";" OWS "q=" qvalue` (after the `;`), `None` if it is not
/// exactly that.
fn weight(params: &[u8]) -> Option<Q> {
    let p = params.trim_ascii();
    let (key, value) = (p.get(..2)?, &p[2..]);
    if !key.eq_ignore_ascii_case(b"q=") {
        return None;
    }
    qvalue(value)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn qvalue(s: &[u8]) -> Option<Q> {
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Q = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| Q::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qvalues() {
        for (s, q) in [
            ("0", Some(0)),
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("0.5", Some(500)),
            ("0.001", Some(1)),
            ("0.123", Some(123)),
            ("1.001", None),
            ("2", None),
            ("0.1234", None),
            ("-1", None),
            ("abc", None),
            ("", None),
            (".5", None),
            ("0.5x", None),
        ] {
            assert_eq!(qvalue(s.as_bytes()), q, "{s:?}");
        }
        assert_eq!(weight(b" q=0.5"), Some(500));
        assert_eq!(weight(b"Q=1"), Some(1000));
        assert_eq!(weight(b"q = 0.5"), None);
        assert_eq!(weight(b"level=1"), None);
        assert_eq!(weight(b"q=0.5;x=1"), None);
    }
}
