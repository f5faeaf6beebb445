//! Hostile inputs, generated rather than stored: oversize, deep nesting, huge lists, binary
//! data, NUL bytes, non-UTF-8, a private key file's content, secrets in every field. Each must
//! be refused with the expected reason, quickly (the deep cases report their time; no test
//! asserts a time), and no error may contain the secret.

use std::error::Error as _;
use std::time::Instant;

use wgcable_api::{
    parse_endpoint, parse_endpoints, Endpoint, Format, ParseError, ParseLimits, ParseProblem,
};

/// Looks like a WireGuard private key file (`wg genkey > private.key`); not a real key.
const SECRET: &str = "yGzNk2ZAlB3SuRMuCv0Klj4cJtFrZ4PeDWLjaF3NXW0=";

fn error_text(err: &ParseError) -> String {
    let mut text = format!("{err} {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// No run of 8 characters of the secret appears in the error.
fn assert_no_secret(name: &str, err: &ParseError) {
    let text = error_text(err);
    for start in 0..SECRET.len() - 8 {
        let window = &SECRET[start..start + 8];
        assert!(
            !text.contains(window),
            "{name}: the error echoes input: {text}"
        );
    }
}

fn refused(name: &str, input: &[u8], format: Format, limits: &ParseLimits) -> ParseError {
    let started = Instant::now();
    let result = parse_endpoints(input, format, limits);
    let elapsed = started.elapsed();
    let err = result.expect_err(name);
    println!(
        "{name}: {} bytes refused in {elapsed:?}: {err}",
        input.len()
    );
    assert_no_secret(name, &err);
    err
}

fn endpoint_yaml(spec_extra: &str) -> String {
    format!(
        "apiVersion: submariner.io/v1\nkind: Endpoint\nmetadata:\n  name: x\nspec:\n  \
         cluster_id: x\n  private_ip: 172.18.0.9\n  backend: wireguard\n{spec_extra}"
    )
}

#[test]
fn a_private_key_file_is_refused_without_echoing_it() {
    for format in [Format::Yaml, Format::Json] {
        let input = format!("{SECRET}\n");
        let err = refused(
            "key file",
            input.as_bytes(),
            format,
            &ParseLimits::default(),
        );
        let want = match format {
            // To YAML the key is a plain string scalar: a document that is no mapping.
            Format::Yaml => "not_a_mapping",
            Format::Json => "syntax",
        };
        assert_eq!(err.reason(), want, "{err}");
        let single = parse_endpoint(input.as_bytes(), format, &ParseLimits::default())
            .expect_err("a key is not an Endpoint");
        assert_no_secret("key file (single)", &single);
    }
}

#[test]
fn secrets_in_any_field_are_never_echoed() {
    let s = SECRET;
    let yaml_cases: Vec<(&str, String, &str)> = vec![
        (
            "apiVersion",
            format!("apiVersion: {s}\nkind: Endpoint\n"),
            "wrong_kind",
        ),
        (
            "kind",
            format!("apiVersion: submariner.io/v1\nkind: {s}\n"),
            "wrong_kind",
        ),
        (
            "kind list",
            format!("apiVersion: v1\nkind: [{s}]\n"),
            "wrong_field_type",
        ),
        (
            "metadata",
            format!("apiVersion: submariner.io/v1\nkind: Endpoint\nmetadata: {s}\n"),
            "wrong_field_type",
        ),
        (
            "subnets",
            endpoint_yaml(&format!("  subnets: {s}\n")),
            "wrong_field_type",
        ),
        (
            "nat_enabled",
            endpoint_yaml(&format!("  nat_enabled: {s}\n")),
            "wrong_field_type",
        ),
        (
            "backend_config",
            endpoint_yaml(&format!("  backend_config:\n    publicKey: [{s}]\n")),
            "wrong_field_type",
        ),
        (
            "list items",
            format!("apiVersion: v1\nkind: List\nitems: {s}\n"),
            "items_not_a_list",
        ),
        (
            "list item",
            format!("apiVersion: v1\nkind: List\nitems: [{s}]\n"),
            "not_a_mapping",
        ),
        ("syntax", format!("spec: [{s}\n"), "syntax"),
        (
            "syntax in a quote",
            format!("spec: \"{s}\n  - ]: ["),
            "syntax",
        ),
        ("tab indentation", format!("spec:\n\t{s}: 1\n"), "syntax"),
        ("duplicate key", format!("{s}: 1\n{s}: 2\n"), "syntax"),
        ("tag", format!("apiVersion: !{s} x\n"), "yaml_tag"),
        (
            "key not a string",
            format!("metadata:\n  labels:\n    [{s}]: 1\n"),
            "key_not_string",
        ),
        ("alias", format!("a: &{s} x\nb: *{s}\n"), "yaml_alias"),
        (
            "unknown key too long",
            format!("{s}: {}\n", "x".repeat(40_000)),
            "string_too_long",
        ),
    ];
    for (name, input, reason) in yaml_cases {
        let err = refused(
            name,
            input.as_bytes(),
            Format::Yaml,
            &ParseLimits::default(),
        );
        assert_eq!(err.reason(), reason, "{name}: {err}");
    }
    let json_cases: Vec<(&str, String, &str)> = vec![
        ("json syntax", format!("{{\"apiVersion\": \"{s}"), "syntax"),
        ("json kind", format!("{{\"apiVersion\": \"v1\", \"kind\": \"{s}\"}}"), "wrong_kind"),
        ("json subnets", format!("{{\"apiVersion\": \"submariner.io/v1\", \"kind\": \"Endpoint\", \"spec\": {{\"subnets\": [1, \"{s}\"]}}}}"), "wrong_field_type"),
        ("json bare string", format!("\"{s}\""), "not_a_mapping"),
        ("json trailing", format!("{{}} \"{s}\""), "syntax"),
    ];
    for (name, input, reason) in json_cases {
        let err = refused(
            name,
            input.as_bytes(),
            Format::Json,
            &ParseLimits::default(),
        );
        assert_eq!(err.reason(), reason, "{name}: {err}");
    }

    // Validation (the next stage) does not echo values either.
    let input = endpoint_yaml(&format!(
        "  hostname: {s}\n  cable_name: {s}\n  public_ip: {s}\n  healthCheckIP: {s}\n  \
         subnets: [\"{s}\"]\n  private_ips: [\"{s}\"]\n  backend_config:\n    publicKey: \
         \"{s}x\"\n    udp-port: \"{s}\"\n    natt-discovery-port: \"{s}\"\n"
    ))
    .replace("cluster_id: x", &format!("cluster_id: \"{s}\""));
    let endpoint = parse_endpoint(input.as_bytes(), Format::Yaml, &ParseLimits::default())
        .expect("well-formed");
    let errors = endpoint.spec.validate().expect_err("invalid");
    assert_eq!(errors.len(), 8, "{errors}");
    let text = format!("{errors} {errors:?}");
    for start in 0..SECRET.len() - 8 {
        assert!(!text.contains(&SECRET[start..start + 8]), "{text}");
    }
}

#[test]
fn oversize_input_is_refused_before_parsing() {
    let limits = ParseLimits::default();
    let input = vec![b' '; limits.max_bytes + 1];
    let err = refused("oversize", &input, Format::Yaml, &limits);
    assert_eq!(
        err.problem,
        ParseProblem::TooLarge {
            bytes: limits.max_bytes + 1,
            max: limits.max_bytes
        }
    );
}

#[test]
fn deep_nesting_is_refused_in_linear_time() {
    let limits = ParseLimits::default();
    // The reproduced stalls: 50,000 levels (100 KB) took 8.9 s, 120,000 (240 KB) 64 s.
    for depth in [50_000, 120_000] {
        let flow = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = refused(
            "deep flow sequences",
            flow.as_bytes(),
            Format::Yaml,
            &limits,
        );
        assert_eq!(err.reason(), "too_deep");
        assert_eq!(err.location.map(|l| l.line), Some(1));

        let maps = format!("{}{}", "{a: ".repeat(depth), "}".repeat(depth));
        let err = refused("deep flow maps", maps.as_bytes(), Format::Yaml, &limits);
        assert_eq!(err.reason(), "too_deep");

        let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = refused("deep JSON", json.as_bytes(), Format::Json, &limits);
        assert_eq!(err.reason(), "too_deep");
    }
    // Block nesting, one more space of indentation per level.
    let mut block = String::new();
    for level in 0..200 {
        block.push_str(&" ".repeat(level));
        block.push_str("a:\n");
    }
    let err = refused("deep block maps", block.as_bytes(), Format::Yaml, &limits);
    assert_eq!(err.reason(), "too_deep");

    // Quotes, comments and block scalars holding brackets do not nest, and do not hide
    // nesting that follows them.
    let tricky = format!(
        "a: don't\nb: '[[[[' # ]]]] '\nc: |\n  [[[[[[[[\nd: \"]]]]\"\ne: {}\n",
        "[".repeat(40)
    );
    let err = refused(
        "nesting after quotes",
        tricky.as_bytes(),
        Format::Yaml,
        &limits,
    );
    assert_eq!(err.reason(), "too_deep");
    let fine = "apiVersion: submariner.io/v1\nkind: Endpoint\nmetadata:\n  annotations:\n    \
                a: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['\n    b: |\n      \
                {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\n# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n";
    parse_endpoints(fine.as_bytes(), Format::Yaml, &limits).expect("brackets in scalars are text");
}

#[test]
fn huge_lists_are_refused() {
    let limits = ParseLimits {
        max_bytes: 8 * 1024 * 1024,
        ..ParseLimits::default()
    };
    for count in [10_000, 100_000] {
        let subnets: String = (0..count)
            .map(|i| format!("  - 10.{}.{}.0/24\n", i / 256 % 256, i % 256))
            .collect();
        let input = endpoint_yaml(&format!("  subnets:\n{subnets}"));
        let err = refused("huge subnet list", input.as_bytes(), Format::Yaml, &limits);
        assert_eq!(err.reason(), "too_many_subnets");
        // The YAML pre-scan knows the line; the tree walk (JSON) the field path.
        assert!(err.location.is_some(), "{err}");
        let value: serde_json::Value = serde_yaml_ng::from_str(&input).expect("yaml");
        let json = serde_json::to_vec(&value).expect("json");
        let err = refused("huge subnet list (JSON)", &json, Format::Json, &limits);
        assert_eq!(
            (err.reason(), err.path.as_str()),
            ("too_many_subnets", "spec.subnets")
        );
    }
    let ips: String = (0..1000)
        .map(|i| format!("  - 10.0.{}.{}\n", i / 256, i % 256))
        .collect();
    let input = endpoint_yaml(&format!("  private_ips:\n{ips}"));
    let err = refused("long address list", input.as_bytes(), Format::Yaml, &limits);
    assert_eq!(
        (err.reason(), err.location.map(|l| l.line)),
        ("too_many_items", Some(266))
    );

    let labels: String = (0..300).map(|i| format!("    l{i}: v\n")).collect();
    let input =
        format!("apiVersion: submariner.io/v1\nkind: Endpoint\nmetadata:\n  labels:\n{labels}");
    let err = refused("many labels", input.as_bytes(), Format::Yaml, &limits);
    assert_eq!(err.reason(), "too_many_entries");

    let item = "- apiVersion: submariner.io/v1\n  kind: Endpoint\n";
    let input = format!("apiVersion: v1\nkind: List\nitems:\n{}", item.repeat(1001));
    let err = refused("huge List", input.as_bytes(), Format::Yaml, &limits);
    assert_eq!(err.reason(), "too_many_endpoints");
    let value: serde_json::Value = serde_yaml_ng::from_str(&input).expect("yaml");
    let json = serde_json::to_vec(&value).expect("json");
    let err = refused("huge List (JSON)", &json, Format::Json, &limits);
    assert_eq!(
        (err.reason(), err.path.as_str()),
        ("too_many_endpoints", "items")
    );

    let input = "---\napiVersion: submariner.io/v1\nkind: Endpoint\n".repeat(1001);
    let err = refused("many documents", input.as_bytes(), Format::Yaml, &limits);
    assert_eq!(err.reason(), "too_many_documents");
    let input = "---\napiVersion: submariner.io/v1\nkind: Endpoint\n".repeat(1000);
    assert_eq!(
        parse_endpoints(input.as_bytes(), Format::Yaml, &limits)
            .expect("at the limit")
            .len(),
        1000
    );
}

#[test]
fn binary_nul_and_non_utf8_inputs_are_refused() {
    let limits = ParseLimits::default();
    // A fixed pseudo-random byte string (xorshift), so failures reproduce.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    for format in [Format::Yaml, Format::Json] {
        let err = refused("binary garbage", &garbage, format, &limits);
        assert!(matches!(err.reason(), "nul_byte" | "not_utf8"), "{err}");
    }
    let garbage_no_nul: Vec<u8> = garbage.iter().map(|&b| b.max(1)).collect();
    let err = refused("binary without NUL", &garbage_no_nul, Format::Yaml, &limits);
    assert_eq!(err.reason(), "not_utf8");

    let mut with_nul = endpoint_yaml("  hostname: gw\0x\n").into_bytes();
    let err = refused("NUL byte", &with_nul, Format::Yaml, &limits);
    assert_eq!(err.reason(), "nul_byte");
    assert_eq!(
        err.location.map(|l| (l.line, l.column)),
        Some((9, 15)),
        "{err}"
    );

    with_nul.retain(|&b| b != 0);
    let latin1 = String::from_utf8(with_nul)
        .expect("utf8")
        .replace("gwx", "gw\u{e9}")
        .into_bytes()
        .into_iter()
        .flat_map(|b| {
            if b == 0xc3 {
                None
            } else if b == 0xa9 {
                Some(0xe9)
            } else {
                Some(b)
            }
        })
        .collect::<Vec<u8>>();
    let err = refused("Latin-1", &latin1, Format::Yaml, &limits);
    assert_eq!(err.reason(), "not_utf8");
    assert_eq!(
        err.location.map(|l| (l.line, l.column)),
        Some((9, 15)),
        "{err}"
    );

    // Control characters YAML forbids are a syntax error, not a crash.
    let err = refused("control character", b"a: \x07\n", Format::Yaml, &limits);
    assert_eq!(err.reason(), "syntax");
}

#[test]
fn other_refusals() {
    let limits = ParseLimits::default();
    let cases: &[(&str, &str, &str)] = &[
        (
            "billion laughs",
            "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n",
            "yaml_alias",
        ),
        (
            "infinite number",
            "apiVersion: submariner.io/v1\nkind: Endpoint\nspec:\n  nat_enabled: .inf\n",
            "number_not_finite",
        ),
        ("a bare list", "- 1\n- 2\n", "not_a_mapping"),
        (
            "typed list of another apiVersion",
            "apiVersion: v1\nkind: EndpointList\nitems: []\n",
            "wrong_kind",
        ),
    ];
    for (name, input, reason) in cases {
        let err = refused(name, input.as_bytes(), Format::Yaml, &limits);
        assert_eq!(err.reason(), *reason, "{name}: {err}");
    }
    // A List where one Endpoint is expected, and several documents.
    let list = "apiVersion: v1\nkind: List\nitems: []\n";
    let err = parse_endpoint(list.as_bytes(), Format::Yaml, &limits).expect_err("a list");
    assert_eq!(err.reason(), "wrong_kind");
    let two = "apiVersion: submariner.io/v1\nkind: Endpoint\n---\napiVersion: submariner.io/v1\nkind: Endpoint\n";
    let err = parse_endpoint(two.as_bytes(), Format::Yaml, &limits).expect_err("two");
    assert_eq!(err.reason(), "not_one_endpoint");
    let err = parse_endpoint(b"", Format::Yaml, &limits).expect_err("none");
    assert_eq!(err.reason(), "not_one_endpoint");
    // An empty input is no Endpoint, not an error, for the list reader.
    assert!(parse_endpoints(b"", Format::Yaml, &limits)
        .expect("empty")
        .is_empty());
    assert!(parse_endpoints(b"\xef\xbb\xbf", Format::Yaml, &limits)
        .expect("BOM")
        .is_empty());
}

#[test]
fn the_old_entry_points_are_bounded_too() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = Endpoint::from_yaml(&deep).expect_err("deep");
    let source = err.parse_error().expect("a parse error");
    assert_eq!(source.reason(), "too_deep");
    let err = Endpoint::list_from_yaml(&deep).expect_err("deep");
    assert_eq!(err.parse_error().map(ParseError::reason), Some("too_deep"));
    let err = Endpoint::from_json(&format!("\"{SECRET}\"")).expect_err("a string");
    assert_no_secret("from_json", err.parse_error().expect("a parse error"));
}
