//! Table-driven tests over the Endpoint files in `testdata/`.
//!
//! Each file under `testdata/bad/` states what it expects in header comments:
//! * `# expect: <field> | <message fragment>`: one validation error each; the file must produce
//!   exactly these (no more), each with that field and a message containing the fragment.
//! * `# expect-error: <fragment>`: parsing fails and the error's message chain contains it.
//! * `# expect-reason: <reason>`: parsing fails with this [`ParseError::reason`].
//!
//! Every file is also parsed with the bounded entry point, [`parse_endpoints`], which must
//! agree. Hostile inputs that are better generated than stored (megabytes, deep nesting, binary
//! data) are in `tests/hostile.rs`.
//!
//! Every file under `testdata/good/` must parse, validate and round-trip.

use std::error::Error as _;

use serde::Deserialize as _;
use std::fs;
use std::path::{Path, PathBuf};

use wgcable_api::{
    parse_endpoints, ApiError, Endpoint, Format, ParseError, ParseLimits, ValidationErrors,
};

fn testdata(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The error and all its sources, joined like anyhow's `{:#}`.
fn chain(err: &ApiError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn parse_all(text: &str) -> Result<Vec<Endpoint>, ApiError> {
    if text.contains("\nkind: List") || text.contains("\nkind: EndpointList") {
        Endpoint::list_from_yaml(text)
    } else {
        Endpoint::from_yaml(text).map(|e| vec![e])
    }
}

#[derive(Debug, Default)]
struct Expectations {
    validation: Vec<(String, String)>,
    parse: Vec<String>,
    reason: Option<String>,
}

fn expectations(text: &str) -> Expectations {
    let mut want = Expectations::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# expect: ") {
            let (field, fragment) = rest
                .split_once(" | ")
                .unwrap_or_else(|| panic!("malformed expect line {line:?}"));
            want.validation
                .push((field.to_owned(), fragment.to_owned()));
        } else if let Some(rest) = line
            .strip_prefix("# expect-error: ")
            .or_else(|| line.strip_prefix("# expect-error-source: "))
        {
            want.parse.push(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("# expect-reason: ") {
            want.reason = Some(rest.to_owned());
        }
    }
    want
}

fn check_validation(name: &str, errors: &ValidationErrors, want: &[(String, String)]) {
    for (field, fragment) in want {
        assert!(
            errors
                .for_field(field)
                .any(|e| e.message.contains(fragment.as_str())),
            "{name}: no error for {field} containing {fragment:?}; got: {errors}"
        );
    }
    assert_eq!(
        errors.len(),
        want.len(),
        "{name}: expected exactly {} problems, got: {errors}",
        want.len()
    );
    // The one-line summary carries every problem.
    let summary = errors.to_string();
    for (field, fragment) in want {
        assert!(summary.contains(&format!("{field}: ")), "{summary}");
        assert!(summary.contains(fragment.as_str()), "{summary}");
    }
}

#[test]
fn bad_corpus_reports_every_expected_problem() {
    let files = testdata("bad");
    assert!(files.len() >= 25, "the bad corpus went missing: {files:?}");
    let mut saw_many = false;
    for path in files {
        let name = path.file_name().expect("file name").to_string_lossy();
        let text = read(&path);
        let want = expectations(&text);
        assert!(
            want.validation.is_empty() != want.parse.is_empty(),
            "{name}: needs either expect or expect-error lines"
        );
        saw_many |= want.validation.len() > 1;

        let bounded = parse_endpoints(text.as_bytes(), Format::Yaml, &ParseLimits::default());
        match parse_all(&text) {
            Err(err) => {
                let parse_error: Option<&ParseError> = err.parse_error();
                if let Some(reason) = &want.reason {
                    assert_eq!(
                        parse_error.map(ParseError::reason),
                        Some(reason.as_str()),
                        "{name}: {err:?}"
                    );
                }
                if let Some(parse_error) = parse_error {
                    let other = bounded.as_ref().expect_err("the bounded parser agrees");
                    assert_eq!(other.reason(), parse_error.reason(), "{name}");
                }
                assert!(
                    !want.parse.is_empty(),
                    "{name}: unexpected parse error {err:?}"
                );
                let chain = chain(&err);
                for fragment in &want.parse {
                    assert!(
                        chain.contains(fragment.as_str()),
                        "{name}: {chain:?} lacks {fragment:?}"
                    );
                }
            }
            Ok(endpoints) => {
                assert!(
                    want.parse.is_empty(),
                    "{name}: parsed but expected {:?}",
                    want.parse
                );
                assert_eq!(endpoints.len(), 1, "{name}");
                assert_eq!(
                    bounded.as_ref().expect("the bounded parser agrees"),
                    &endpoints,
                    "{name}"
                );
                let errors = endpoints[0]
                    .spec
                    .validate()
                    .expect_err(&format!("{name} must be invalid"));
                check_validation(&name, &errors, &want.validation);
            }
        }
    }
    assert!(saw_many, "the corpus needs a file with several problems");
}

#[test]
fn good_files_parse_validate_and_round_trip() {
    let files = testdata("good");
    assert!(files.len() >= 4, "{files:?}");
    for path in files {
        let name = path.file_name().expect("file name").to_string_lossy();
        let text = read(&path);
        let endpoints =
            Endpoint::list_from_yaml(&text).unwrap_or_else(|e| panic!("{name}: {}", chain(&e)));
        assert!(!endpoints.is_empty(), "{name}");
        // The same documents as JSON parse to the same Endpoints.
        let mut from_json = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(document).expect("yaml");
            let json = serde_json::to_vec(&value).expect("json");
            from_json.extend(
                parse_endpoints(&json, Format::Json, &ParseLimits::default()).expect("as JSON"),
            );
        }
        assert_eq!(from_json, endpoints, "{name}");
        for endpoint in &endpoints {
            if let Err(errors) = endpoint.spec.validate() {
                panic!("{name}: {}: {errors}", endpoint.name());
            }
            let yaml = endpoint.to_yaml().expect("to yaml");
            assert_eq!(
                &Endpoint::from_yaml(&yaml).expect("yaml back"),
                endpoint,
                "{name}"
            );
            let json = endpoint.to_json().expect("to json");
            assert_eq!(
                &Endpoint::from_json(&json).expect("json back"),
                endpoint,
                "{name}"
            );
            // A single document is also a one-element list.
            assert_eq!(
                Endpoint::list_from_yaml(&yaml).expect("as list"),
                vec![endpoint.clone()]
            );
        }
    }
}

/// Re-serializing what kubectl printed gives back the same document, field for field
/// (metadata we do not model included).
#[test]
fn kubectl_output_round_trips_exactly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/good");

    let text = read(&dir.join("kubectl-get-endpoints-wireguard.yaml"));
    let original: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let endpoints = Endpoint::list_from_yaml(&text).expect("list");
    let items = original["items"].as_array().expect("items");
    assert_eq!(endpoints.len(), items.len());
    for (endpoint, item) in endpoints.iter().zip(items) {
        assert_eq!(&serde_json::to_value(endpoint).expect("to value"), item);
        let reparsed: serde_json::Value =
            serde_yaml_ng::from_str(&endpoint.to_yaml().expect("yaml")).expect("yaml");
        assert_eq!(&reparsed, item);
    }

    let text = read(&dir.join("dual-stack-endpoint.yaml"));
    let original: serde_json::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let endpoint = Endpoint::from_yaml(&text).expect("endpoint");
    assert_eq!(serde_json::to_value(&endpoint).expect("to value"), original);
}
