//! Accept-Encoding negotiation: q-values, `*`, identity, ties, malformed values.

use drove_compress::{negotiate::negotiate, Encoding, Encoding::*, Settings};

const ALL: &[Encoding] = &[Zstd, Br, Gzip];

fn pick(offered: &[Encoding], ae: &str) -> Option<Encoding> {
    negotiate(offered, [ae.as_bytes()])
}

#[test]
fn no_field_means_no_compression() {
    assert_eq!(negotiate(ALL, std::iter::empty::<&[u8]>()), None);
    assert_eq!(pick(ALL, ""), None, "an empty field asks for no coding");
    assert_eq!(pick(ALL, " , "), None);
}

#[test]
fn ties_go_to_the_configured_order() {
    // A browser's usual field: all at q=1, so the server's order decides.
    assert_eq!(pick(ALL, "gzip, deflate, br, zstd"), Some(Zstd));
    assert_eq!(
        pick(&[Gzip, Br, Zstd], "gzip, deflate, br, zstd"),
        Some(Gzip)
    );
    assert_eq!(pick(&[Br, Gzip], "gzip, deflate, br, zstd"), Some(Br));
    assert_eq!(pick(ALL, "gzip;q=0.5, br;q=0.5"), Some(Br));
}

#[test]
fn higher_q_wins_over_the_configured_order() {
    assert_eq!(pick(ALL, "zstd;q=0.5, gzip"), Some(Gzip));
    assert_eq!(pick(ALL, "zstd;q=0.8, br;q=0.9, gzip;q=0.7"), Some(Br));
    assert_eq!(pick(ALL, "br;q=0.001, gzip;q=0.002"), Some(Gzip));
    assert_eq!(pick(ALL, "gzip;Q=1.000, br;q=0.999"), Some(Gzip));
}

#[test]
fn only_offered_encodings_are_chosen() {
    assert_eq!(pick(&[Gzip], "zstd, br"), None);
    assert_eq!(pick(&[Gzip], "zstd, br, gzip;q=0.1"), Some(Gzip));
    assert_eq!(pick(ALL, "deflate, compress"), None);
}

#[test]
fn q_zero_refuses_a_coding() {
    assert_eq!(pick(ALL, "zstd;q=0, br;q=0, gzip"), Some(Gzip));
    assert_eq!(pick(ALL, "gzip;q=0"), None);
    assert_eq!(pick(ALL, "gzip;q=0.000"), None);
}

#[test]
fn star_stands_for_every_coding_not_listed() {
    assert_eq!(pick(ALL, "*"), Some(Zstd));
    assert_eq!(pick(&[Gzip], "*"), Some(Gzip));
    // Listed codings keep their own q; `*` covers the rest.
    assert_eq!(pick(ALL, "zstd;q=0, *"), Some(Br));
    assert_eq!(pick(ALL, "zstd;q=0, br;q=0, *;q=0.3"), Some(Gzip));
    assert_eq!(pick(ALL, "gzip;q=0.2, *;q=0.5"), Some(Zstd));
    assert_eq!(pick(&[Gzip, Br], "gzip;q=0.2, *;q=0.5"), Some(Br));
    assert_eq!(
        pick(&[Gzip], "gzip;q=0.2, *;q=0.5"),
        Some(Gzip),
        "listed q counts"
    );
    assert_eq!(pick(ALL, "*;q=0"), None);
    assert_eq!(pick(ALL, "*;q=0, gzip"), Some(Gzip));
}

#[test]
fn identity() {
    // identity;q=0 alone names no coding: nothing acceptable to compress with.
    assert_eq!(pick(ALL, "identity;q=0"), None);
    assert_eq!(pick(ALL, "gzip;q=0.1, identity;q=0"), Some(Gzip));
    assert_eq!(pick(ALL, "identity;q=0, *"), Some(Zstd));
    // A client that prefers the body as it is gets it.
    assert_eq!(pick(ALL, "gzip;q=0.5, identity"), None);
    assert_eq!(pick(ALL, "gzip;q=0.5, identity;q=0.6"), None);
    // Equal preference: compress.
    assert_eq!(pick(ALL, "gzip;q=0.5, identity;q=0.5"), Some(Gzip));
    assert_eq!(pick(ALL, "identity"), None);
    assert_eq!(pick(ALL, "identity, gzip"), Some(Gzip));
}

#[test]
fn names_are_case_insensitive_and_x_gzip_is_gzip() {
    assert_eq!(pick(ALL, "GZIP"), Some(Gzip));
    assert_eq!(pick(ALL, "x-gzip"), Some(Gzip));
    assert_eq!(pick(ALL, "Br;Q=0.5, ZSTD;q=0.4"), Some(Br));
    assert_eq!(pick(ALL, "IDENTITY;q=1, gzip;q=0.5"), None);
}

#[test]
fn several_field_lines_are_one_list() {
    let lines: [&[u8]; 2] = [b"gzip;q=0.4", b"br;q=0.6"];
    assert_eq!(negotiate(ALL, lines), Some(Br));
    let lines: [&[u8]; 2] = [b"br;q=0", b"br, gzip"];
    assert_eq!(
        negotiate(ALL, lines),
        Some(Gzip),
        "the first br element counts"
    );
}

#[test]
fn first_element_of_a_coding_counts() {
    assert_eq!(pick(ALL, "br;q=0, br"), None);
    assert_eq!(pick(ALL, "br, br;q=0"), Some(Br));
}

#[test]
fn malformed_weights_refuse_their_coding() {
    for ae in [
        "gzip;q=abc",
        "gzip;q=2",
        "gzip;q=1.5",
        "gzip;q=0.0001",
        "gzip;q=",
        "gzip;q",
        "gzip;level=9",
        "gzip;q=0.5;x=1",
        "gzip; q = 0.5",
        "gzip;q=-1",
    ] {
        assert_eq!(pick(&[Gzip], ae), None, "{ae:?}");
    }
    // A refused coding is excluded even when `*` would accept it.
    assert_eq!(pick(&[Gzip], "gzip;q=abc, *"), None);
    // The other elements still count.
    assert_eq!(pick(ALL, "gzip;q=abc, br;q=0.5"), Some(Br));
}

#[test]
fn malformed_names_and_empty_elements_are_skipped() {
    assert_eq!(pick(ALL, "gz ip, g@zip, br"), Some(Br));
    assert_eq!(pick(ALL, ",,gzip,,"), Some(Gzip));
    assert_eq!(pick(ALL, ";q=1, gzip;q=0.1"), Some(Gzip));
    assert_eq!(
        pick(ALL, "  gzip  ;  q=0.5  "),
        Some(Gzip),
        "OWS around `;`"
    );
    assert_eq!(pick(ALL, "\u{e9}, gzip"), Some(Gzip));
}

#[test]
fn settings_negotiate_with_their_algorithms() {
    let s = Settings::default();
    assert_eq!(s.negotiate([&b"gzip, br, zstd"[..]]), Some(Zstd));
    assert_eq!(s.negotiate([&b"gzip, br"[..]]), Some(Br));
    assert_eq!(s.negotiate(std::iter::empty()), None);
}
