//! The compress-or-not decision, each rule on its own, and the header edits applied to
//! raw HTTP/1.1 field lines and to an `http::HeaderMap`.

use drove_compress::{
    Decision, Encoding, Encoding::*, HeadEdits, Levels, MediaRange, Settings, Skip, Verdict,
};

fn settings() -> Settings {
    Settings::default()
}

/// Decides for a response given as `Name: value` lines.
fn decide(s: &Settings, method: &str, enc: Option<Encoding>, status: u16, head: &str) -> Decision {
    let fields: Vec<(&[u8], &[u8])> = head
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("Name: value");
            (n.as_bytes(), v.trim().as_bytes())
        })
        .collect();
    s.decide(method.as_bytes(), enc, status, fields)
}

/// A compressible 200: a listed type, a length above min_size.
const OK_HEAD: &str = "Content-Type: text/html; charset=utf-8\nContent-Length: 5000\n";

fn skip_reason(d: &Decision) -> Skip {
    match d.verdict {
        Verdict::Skip(s) => s,
        Verdict::Compress(e) => panic!("expected a skip, got compression with {e}"),
    }
}

/// Applies the edits to raw field lines and returns them.
fn rewrite(edits: &HeadEdits, fields: &str) -> String {
    let mut out = Vec::new();
    edits.rewrite_http1_fields(fields.as_bytes(), &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn an_eligible_response_is_compressed_with_every_edit() {
    let head = "Content-Type: text/html\r\nContent-Length: 5000\r\nETag: \"abc\"\r\nAccept-Ranges: bytes\r\nX-Other: 1\r\n";
    let d = decide(&settings(), "GET", Some(Br), 200, head);
    assert_eq!(d.verdict, Verdict::Compress(Br));
    assert_eq!(d.edits.content_encoding(), Some(Br));
    assert_eq!(
        rewrite(&d.edits, head),
        "Content-Type: text/html\r\nX-Other: 1\r\nVary: Accept-Encoding\r\nETag: W/\"abc\"\r\nContent-Encoding: br\r\n"
    );
}

#[test]
fn unknown_length_is_compressed_whatever_min_size() {
    let head = "Content-Type: application/json\nTransfer-Encoding: chunked\n";
    let d = decide(&settings(), "GET", Some(Gzip), 200, head);
    assert_eq!(d.verdict, Verdict::Compress(Gzip));
    // Other statuses with a full body are compressed too (an error page, a redirect).
    for status in [201, 301, 404, 500, 503] {
        let d = decide(&settings(), "POST", Some(Gzip), status, OK_HEAD);
        assert_eq!(d.verdict, Verdict::Compress(Gzip), "{status}");
    }
}

#[test]
fn head_requests_are_left_alone() {
    let d = decide(&settings(), "HEAD", Some(Gzip), 200, OK_HEAD);
    assert_eq!(skip_reason(&d), Skip::Head);
    assert!(d.edits.is_empty());
}

#[test]
fn statuses_without_a_whole_body_are_left_alone() {
    for status in [100, 101, 103, 204, 205, 206] {
        let d = decide(&settings(), "GET", Some(Gzip), status, OK_HEAD);
        assert_eq!(skip_reason(&d), Skip::Status(status));
        assert!(d.edits.is_empty(), "{status}");
    }
}

#[test]
fn content_range_is_left_alone() {
    let head = "Content-Type: text/html\nContent-Range: bytes */5000\nContent-Length: 5000\n";
    let d = decide(&settings(), "GET", Some(Gzip), 416, head);
    assert_eq!(skip_reason(&d), Skip::ContentRange);
    assert!(d.edits.is_empty());
}

#[test]
fn encoded_responses_are_never_re_encoded() {
    for ce in ["gzip", "br", "identity", "x-custom"] {
        let head = format!("{OK_HEAD}Content-Encoding: {ce}\n");
        let d = decide(&settings(), "GET", Some(Zstd), 200, &head);
        assert_eq!(skip_reason(&d), Skip::AlreadyEncoded, "{ce}");
        assert!(d.edits.is_empty());
    }
    let head = format!("{OK_HEAD}transfer-encoding: gzip, chunked\n");
    let d = decide(&settings(), "GET", Some(Zstd), 200, &head);
    assert_eq!(skip_reason(&d), Skip::TransferCoded);
}

#[test]
fn no_transform_is_honoured() {
    for cc in [
        "no-transform",
        "public, No-Transform",
        "max-age=60,no-transform",
        "no-transform=\"x\"",
    ] {
        let head = format!("{OK_HEAD}Cache-Control: {cc}\n");
        let d = decide(&settings(), "GET", Some(Gzip), 200, &head);
        assert_eq!(skip_reason(&d), Skip::NoTransform, "{cc}");
        assert!(d.edits.is_empty());
    }
    // Directives that merely contain the word do not count.
    let head = format!("{OK_HEAD}Cache-Control: x-no-transformer, max-age=5\n");
    let d = decide(&settings(), "GET", Some(Gzip), 200, &head);
    assert_eq!(d.verdict, Verdict::Compress(Gzip));
    // Several Cache-Control lines are one list.
    let head = format!("{OK_HEAD}Cache-Control: public\nCache-Control: no-transform\n");
    let d = decide(&settings(), "GET", Some(Gzip), 200, &head);
    assert_eq!(skip_reason(&d), Skip::NoTransform);
}

#[test]
fn content_type_must_be_listed() {
    let d = decide(
        &settings(),
        "GET",
        Some(Gzip),
        200,
        "Content-Length: 5000\n",
    );
    assert_eq!(skip_reason(&d), Skip::NoContentType);
    let d = decide(
        &settings(),
        "GET",
        Some(Gzip),
        200,
        "Content-Type: image/png\nContent-Length: 5000\n",
    );
    assert_eq!(skip_reason(&d), Skip::Type);
    assert!(d.edits.is_empty(), "an image gets no Vary");
    // Wildcards and suffixes of the configured types.
    let only = Settings::new(
        vec![Gzip],
        vec![MediaRange::parse("application/*+json").unwrap()],
        0,
        Levels::default(),
    )
    .unwrap();
    let d = decide(
        &only,
        "GET",
        Some(Gzip),
        200,
        "Content-Type: application/problem+json\n",
    );
    assert_eq!(d.verdict, Verdict::Compress(Gzip));
    let d = decide(
        &only,
        "GET",
        Some(Gzip),
        200,
        "Content-Type: application/json\n",
    );
    assert_eq!(skip_reason(&d), Skip::Type);
}

#[test]
fn known_lengths_below_min_size_are_left_alone() {
    let s = settings();
    let at = |len: u64| {
        let head = format!("Content-Type: text/plain\nContent-Length: {len}\n");
        decide(&s, "GET", Some(Gzip), 200, &head)
    };
    assert_eq!(skip_reason(&at(1023)), Skip::TooSmall);
    assert_eq!(skip_reason(&at(0)), Skip::TooSmall);
    assert!(at(1023).edits.is_empty());
    assert_eq!(at(1024).verdict, Verdict::Compress(Gzip));
    // min_size 0 still leaves an empty body alone: there is nothing to compress.
    let zero = Settings::new(
        vec![Gzip],
        vec![MediaRange::parse("text/*").unwrap()],
        0,
        Levels::default(),
    )
    .unwrap();
    let d = decide(
        &zero,
        "GET",
        Some(Gzip),
        200,
        "Content-Type: text/plain\nContent-Length: 0\n",
    );
    assert_eq!(skip_reason(&d), Skip::TooSmall);
    let d = decide(
        &zero,
        "GET",
        Some(Gzip),
        200,
        "Content-Type: text/plain\nContent-Length: 1\n",
    );
    assert_eq!(d.verdict, Verdict::Compress(Gzip));
    let d = decide(
        &s,
        "GET",
        Some(Gzip),
        200,
        "Content-Type: text/plain\nContent-Length: 12x\n",
    );
    assert_eq!(skip_reason(&d), Skip::BadLength);
}

#[test]
fn eligible_but_not_accepted_still_varies() {
    let head = "Content-Type: text/html\r\nContent-Length: 5000\r\nETag: \"abc\"\r\n";
    let d = decide(&settings(), "GET", None, 200, head);
    assert_eq!(skip_reason(&d), Skip::NotAccepted);
    assert_eq!(d.edits.content_encoding(), None);
    // Length and ETag stay: the body is the backend's.
    assert_eq!(
        rewrite(&d.edits, head),
        "Content-Type: text/html\r\nContent-Length: 5000\r\nETag: \"abc\"\r\nVary: Accept-Encoding\r\n"
    );
}

#[test]
fn vary_is_merged_with_an_existing_one() {
    let s = settings();
    let head = format!("{OK_HEAD}Vary: Origin\nVary: Cookie, Accept-Language\n");
    let d = decide(&s, "GET", Some(Gzip), 200, &head);
    let fields = "Vary: Origin\r\nX-A: 1\r\nvary: Cookie, Accept-Language\r\n";
    assert_eq!(
        rewrite(&d.edits, fields),
        "X-A: 1\r\nVary: Origin, Cookie, Accept-Language, Accept-Encoding\r\nContent-Encoding: gzip\r\n"
    );
    // Already there (any case, anywhere in the list): Vary is not touched.
    let head = format!("{OK_HEAD}Vary: Origin, accept-encoding\n");
    let d = decide(&s, "GET", Some(Gzip), 200, &head);
    assert_eq!(
        rewrite(&d.edits, "Vary: Origin, accept-encoding\r\n"),
        "Vary: Origin, accept-encoding\r\nContent-Encoding: gzip\r\n"
    );
    // `Vary: *` covers everything already.
    let head = format!("{OK_HEAD}Vary: *\n");
    let d = decide(&s, "GET", Some(Gzip), 200, &head);
    assert!(!d.edits.removes(b"vary"));
    // An empty Vary is replaced.
    let head = format!("{OK_HEAD}Vary: \n");
    let d = decide(&s, "GET", None, 200, &head);
    assert_eq!(rewrite(&d.edits, "Vary: \r\n"), "Vary: Accept-Encoding\r\n");
}

#[test]
fn strong_etags_are_weakened() {
    let s = settings();
    let etag_after = |etag: &str| {
        let head = format!("{OK_HEAD}ETag: {etag}\n");
        let d = decide(&s, "GET", Some(Zstd), 200, &head);
        let out = rewrite(&d.edits, &format!("ETag: {etag}\r\n"));
        out.lines()
            .find_map(|l| l.strip_prefix("ETag: ").map(str::to_string))
    };
    assert_eq!(etag_after("\"abc\"").as_deref(), Some("W/\"abc\""));
    assert_eq!(etag_after("\"\"").as_deref(), Some("W/\"\""));
    assert_eq!(
        etag_after("W/\"abc\"").as_deref(),
        Some("W/\"abc\""),
        "weak stays"
    );
    assert_eq!(etag_after("abc"), None, "a malformed ETag is dropped");
}

#[test]
fn not_modified_gets_the_vary_and_etag_a_200_would_have() {
    let s = settings();
    let head = "ETag: \"abc\"\nVary: Origin\n";
    let d = decide(&s, "GET", Some(Gzip), 304, head);
    assert_eq!(skip_reason(&d), Skip::Status(304));
    assert_eq!(d.edits.content_encoding(), None);
    assert_eq!(
        rewrite(&d.edits, "ETag: \"abc\"\r\nVary: Origin\r\n"),
        "Vary: Origin, Accept-Encoding\r\nETag: W/\"abc\"\r\n"
    );
    // A client that accepts no encoding had the strong ETag in its 200.
    let d = decide(&s, "GET", None, 304, "ETag: \"abc\"\n");
    assert_eq!(
        rewrite(&d.edits, "ETag: \"abc\"\r\n"),
        "ETag: \"abc\"\r\nVary: Accept-Encoding\r\n"
    );
    // Its own fields may say it would not have been compressed.
    for extra in [
        "Content-Type: image/png",
        "Cache-Control: no-transform",
        "Content-Encoding: gzip",
    ] {
        let d = decide(&s, "GET", Some(Gzip), 304, &format!("{head}{extra}\n"));
        assert!(d.edits.is_empty(), "{extra}");
    }
}

#[test]
fn edits_apply_to_a_header_map_alike() {
    let mut map = http::HeaderMap::new();
    map.insert("content-type", "application/json".parse().unwrap());
    map.insert("content-length", "5000".parse().unwrap());
    map.insert("etag", "\"v1\"".parse().unwrap());
    map.append("vary", "Origin".parse().unwrap());
    map.append("vary", "Cookie".parse().unwrap());
    map.insert("accept-ranges", "bytes".parse().unwrap());
    let s = settings();
    let d = s.decide_map(&http::Method::GET, Some(Zstd), http::StatusCode::OK, &map);
    assert_eq!(d.verdict, Verdict::Compress(Zstd));
    d.edits.apply_to_map(&mut map);
    assert_eq!(map.get("content-encoding").unwrap(), "zstd");
    assert_eq!(map.get("etag").unwrap(), "W/\"v1\"");
    assert_eq!(
        map.get_all("vary").iter().collect::<Vec<_>>(),
        ["Origin, Cookie, Accept-Encoding"]
    );
    assert!(map.get("content-length").is_none());
    assert!(map.get("accept-ranges").is_none());
    assert_eq!(map.get("content-type").unwrap(), "application/json");
    assert_eq!(map.len(), 4);

    let d = s.decide_map(&http::Method::HEAD, Some(Zstd), http::StatusCode::OK, &map);
    assert_eq!(skip_reason(&d), Skip::Head);
}

#[test]
fn removes_matches_names_in_any_case() {
    let d = decide(
        &settings(),
        "GET",
        Some(Gzip),
        200,
        &format!("{OK_HEAD}ETag: \"x\"\n"),
    );
    for n in [
        "content-length",
        "Content-Length",
        "CONTENT-LENGTH",
        "Vary",
        "etag",
        "Accept-Ranges",
    ] {
        assert!(d.edits.removes(n.as_bytes()), "{n}");
    }
    for n in ["content-type", "x-vary", "content-lengthx", ""] {
        assert!(!d.edits.removes(n.as_bytes()), "{n}");
    }
    let added: Vec<_> = d.edits.additions().map(|(n, _)| n).collect();
    assert_eq!(added, ["vary", "etag", "content-encoding"]);
}
