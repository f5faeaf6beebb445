//! Bounded, sanitizing parsing of Endpoint input: the one entry point for bytes that come from
//! an endpoint source (a broker file, a Kubernetes object, an etcd value).
//!
//! Every input is untrusted. [`parse_endpoints`] enforces [`ParseLimits`] (size, nesting depth,
//! documents, Endpoints, subnets, list items, map entries, string length) in time linear in the
//! input, and its [`ParseError`] never contains a value from the input: it says what was wrong
//! ([`ParseProblem`], with a stable [`ParseProblem::reason`] for metrics), in which document, at
//! which field path (made of schema field names and list indices only) and, where the parser
//! knows it, at which line and column. A private key read through a symlink therefore cannot be
//! echoed into a log by a parse error (it was, through serde's `invalid type: string "..."`).
//!
//! The stages, each bounded by the previous one:
//! 1. bytes: size, no NUL byte, UTF-8 (a leading byte order mark is dropped);
//! 2. YAML only: a pre-scan of the event stream with `saphyr-parser` that stops at the first
//!    collection nested deeper than the limit, and refuses aliases. libyaml (under
//!    serde_yaml_ng) keeps one "simple key" per flow level and re-checks all of them on every
//!    token, so 50,000 nested `[` took 8.9 s and 120,000 took 64 s; the pre-scan aborts after
//!    `max_depth` levels (its scanner stops by itself at 255 flow levels), so its own stacks
//!    stay small and its cost linear. It also bounds list lengths, map sizes and scalar lengths
//!    before anything builds a tree. A well-kept pull
//!    parser is used instead of a hand-written bracket counter because quotes, comments and
//!    block scalars decide whether a `[` nests at all, and a scanner that gets one of them
//!    wrong can be made to under-count;
//! 3. serde_yaml_ng or serde_json into a generic tree (syntax errors keep only their position);
//! 4. a walk of the tree that checks the limits on every list, map and string, and the type of
//!    every field the Endpoint schema knows, so that
//! 5. serde's own conversion into [`Endpoint`] cannot fail with a message quoting a value.

// A ParseError is ~130 bytes; it is only built on the refusal path, once per input, so boxing
// it would cost every caller a deref for no measurable gain.
#![allow(clippy::result_large_err)]

use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::endpoint::{Endpoint, API_VERSION, KIND_ENDPOINT, KIND_ENDPOINT_LIST};

/// The syntax of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One or more YAML documents (separated by `---`); JSON is valid YAML too.
    Yaml,
    /// One JSON value.
    Json,
}

impl Format {
    /// The format a file name suggests: `.json` is JSON, everything else YAML.
    pub fn from_file_name(name: &str) -> Self {
        if name.ends_with(".json") {
            Format::Json
        } else {
            Format::Yaml
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        }
    }
}

/// Structural limits on one input. The defaults fit what `kubectl get endpoints.submariner.io
/// -o yaml` prints for a few hundred clusters, with room for managed fields and annotations,
/// and keep the cost of one input to a few milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest input in bytes. Default 1 MiB (Kubernetes itself refuses objects over 1.5 MiB).
    pub max_bytes: usize,
    /// Deepest nesting of lists and maps. Default 32 (an Endpoint needs 5, managed fields ~12).
    pub max_depth: usize,
    /// Most YAML documents in one input. Default 1,000.
    pub max_documents: usize,
    /// Most Endpoints in one input (documents and List items together). Default 1,000.
    pub max_endpoints: usize,
    /// Most subnets one Endpoint may publish. Default 256 (a cluster has a handful).
    pub max_subnets: usize,
    /// Most items of any other list (addresses, managed fields, finalizers, ...). Default 256.
    pub max_list_items: usize,
    /// Most entries of one map (labels, annotations, backend_config, ...). Default 256.
    pub max_map_entries: usize,
    /// Longest string (keys included), in bytes. Default 32 KiB (an annotation holding a whole
    /// object still fits; no field wgcable reads is longer than 253).
    pub max_string_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 32,
            max_documents: 1000,
            max_endpoints: 1000,
            max_subnets: 256,
            max_list_items: 256,
            max_map_entries: 256,
            max_string_bytes: 32 * 1024,
        }
    }
}

/// A line and column in the input, both counted from 1 (columns in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// What `apiVersion` and `kind` an object had, without quoting them: a value is named only if
/// it is one of a fixed set of well-known names, so only this crate's own strings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FoundType {
    /// `None`: absent or empty.
    pub api_version: Option<Known>,
    /// `None`: absent or empty.
    pub kind: Option<Known>,
}

/// A value that is either one of the names this crate knows, or something else (not shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Known {
    Name(&'static str),
    Other,
}

const KNOWN_API_VERSIONS: &[&str] = &[
    API_VERSION,
    "submariner.io/v1alpha1",
    "submariner.io/v2",
    "v1",
    "discovery.k8s.io/v1",
    "apps/v1",
];

const KNOWN_KINDS: &[&str] = &[
    KIND_ENDPOINT,
    KIND_ENDPOINT_LIST,
    "List",
    "Endpoints",
    "EndpointSlice",
    "Gateway",
    "Cluster",
    "ConfigMap",
    "Secret",
    "Service",
    "Pod",
    "Node",
];

fn known(value: &str, names: &[&'static str]) -> Option<Known> {
    if value.is_empty() {
        return None;
    }
    Some(
        names
            .iter()
            .find(|name| **name == value)
            .map_or(Known::Other, |name| Known::Name(name)),
    )
}

impl FoundType {
    /// Classifies an object's `apiVersion` and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Self {
        Self {
            api_version: known(api_version, KNOWN_API_VERSIONS),
            kind: known(kind, KNOWN_KINDS),
        }
    }

    /// Points at the usual mistakes behind a wrong apiVersion/kind.
    fn hint(&self) -> &'static str {
        use Known::Name;
        match (self.api_version, self.kind) {
            (_, Some(Name("Endpoints"))) | (Some(Name("v1")), Some(Name("Endpoint"))) => {
                "; that is Kubernetes' core Endpoints, use `kubectl get endpoints.submariner.io \
                 -o yaml`"
            }
            (_, Some(Name("List" | "EndpointList"))) => {
                "; this is a List of Endpoints where one Endpoint was expected: give each \
                 Endpoint its own object (parse_endpoints and Endpoint::list_from_yaml read lists)"
            }
            (None, None) => {
                "; is this a bare spec? An Endpoint document needs apiVersion, kind, metadata \
                 and spec"
            }
            _ => "",
        }
    }
}

impl fmt::Display for FoundType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.api_version {
            None => f.write_str("no apiVersion")?,
            Some(Known::Name(name)) => write!(f, "apiVersion {name}")?,
            Some(Known::Other) => f.write_str("another apiVersion")?,
        }
        match self.kind {
            None => f.write_str(" and no kind")?,
            Some(Known::Name(name)) => write!(f, " and kind {name}")?,
            Some(Known::Other) => f.write_str(" and another kind")?,
        }
        f.write_str(self.hint())
    }
}

/// What was wrong with an input. Every variant's text is this crate's own: numbers are limits,
/// sizes or counts, names are static.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseProblem {
    TooLarge {
        bytes: usize,
        max: usize,
    },
    NotUtf8,
    NulByte,
    Syntax {
        format: Format,
    },
    TooDeep {
        max: usize,
    },
    TooManyDocuments {
        max: usize,
    },
    TooManyEndpoints {
        max: usize,
    },
    TooManySubnets {
        max: usize,
    },
    TooManyItems {
        max: usize,
    },
    TooManyEntries {
        max: usize,
    },
    StringTooLong {
        max: usize,
    },
    Alias,
    Tag,
    KeyNotString,
    NumberNotFinite,
    NotAMapping {
        found: &'static str,
    },
    WrongFieldType {
        expected: &'static str,
        found: &'static str,
    },
    WrongType {
        expected: &'static str,
        found: FoundType,
    },
    ItemsNotAList {
        found: &'static str,
    },
    NotOneEndpoint {
        found: usize,
    },
    Schema,
}

impl ParseProblem {
    /// A short stable name for metrics labels (`endpoint_rejected{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::NotUtf8 => "not_utf8",
            Self::NulByte => "nul_byte",
            Self::Syntax { .. } => "syntax",
            Self::TooDeep { .. } => "too_deep",
            Self::TooManyDocuments { .. } => "too_many_documents",
            Self::TooManyEndpoints { .. } => "too_many_endpoints",
            Self::TooManySubnets { .. } => "too_many_subnets",
            Self::TooManyItems { .. } => "too_many_items",
            Self::TooManyEntries { .. } => "too_many_entries",
            Self::StringTooLong { .. } => "string_too_long",
            Self::Alias => "yaml_alias",
            Self::Tag => "yaml_tag",
            Self::KeyNotString => "key_not_string",
            Self::NumberNotFinite => "number_not_finite",
            Self::NotAMapping { .. } => "not_a_mapping",
            Self::WrongFieldType { .. } => "wrong_field_type",
            Self::WrongType { .. } => "wrong_kind",
            Self::ItemsNotAList { .. } => "items_not_a_list",
            Self::NotOneEndpoint { .. } => "not_one_endpoint",
            Self::Schema => "schema",
        }
    }
}

impl fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { bytes, max } => write!(
                f,
                "the input is {bytes} bytes, more than the limit of {max}; an Endpoint is a few \
                 KB (is this the right file?)"
            ),
            Self::NotUtf8 => f.write_str("the input is not UTF-8 text (binary data?)"),
            Self::NulByte => f.write_str("the input contains a NUL byte (binary data?)"),
            Self::Syntax { format } => write!(
                f,
                "the input is not valid {}; check it with a {} linter at this position",
                format.name(),
                format.name()
            ),
            Self::TooDeep { max } => write!(
                f,
                "lists and maps are nested more than {max} levels deep; an Endpoint needs 5"
            ),
            Self::TooManyDocuments { max } => {
                write!(f, "more than {max} YAML documents in one input")
            }
            Self::TooManyEndpoints { max } => write!(
                f,
                "more than {max} Endpoints in one input; split them over several inputs"
            ),
            Self::TooManySubnets { max } => write!(
                f,
                "more than {max} subnets in one Endpoint; publish the cluster's pod and service \
                 CIDRs, aggregated"
            ),
            Self::TooManyItems { max } => write!(f, "a list with more than {max} items"),
            Self::TooManyEntries { max } => write!(f, "a map with more than {max} entries"),
            Self::StringTooLong { max } => write!(f, "a string longer than {max} bytes"),
            Self::Alias => f.write_str(
                "YAML aliases (*name) are not accepted in Endpoints; write the values out",
            ),
            Self::Tag => f.write_str("YAML tags (!tag) are not accepted in Endpoints"),
            Self::KeyNotString => f.write_str("a map key that is not a string"),
            Self::NumberNotFinite => f.write_str("a number that is not finite (.inf or .nan)"),
            Self::NotAMapping { found } => write!(
                f,
                "expected a mapping (an Endpoint, or a List of them as `kubectl get \
                 endpoints.submariner.io -o yaml` prints), found {found}; is this the right file, \
                 or a link to another one?"
            ),
            Self::WrongFieldType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            Self::WrongType { expected, found } => write!(f, "expected {expected}, found {found}"),
            Self::ItemsNotAList { found } => write!(f, "items is {found}, not a list"),
            Self::NotOneEndpoint { found } => write!(
                f,
                "expected exactly one Endpoint, found {found}; give each Endpoint its own input"
            ),
            Self::Schema => f.write_str("does not match the Endpoint schema"),
        }
    }
}

/// Why an input was refused, and where. Its `Display` never contains a value from the input:
/// the path holds schema field names and indices only (other map keys print as `<key>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ParseError {
    pub problem: ParseProblem,
    /// The YAML document, counted from 1 (`None` for JSON or the input as a whole).
    pub document: Option<usize>,
    /// Where in the document, e.g. `items[2].spec.subnets`; empty for the document itself.
    pub path: String,
    /// Where in the text, when the parser reported it.
    pub location: Option<Location>,
}

impl ParseError {
    fn new(problem: ParseProblem) -> Self {
        Self {
            problem,
            document: None,
            path: String::new(),
            location: None,
        }
    }

    fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    fn in_document(mut self, document: Option<usize>) -> Self {
        if self.document.is_none() {
            self.document = document;
        }
        self
    }

    /// A short stable name for metrics labels; see [`ParseProblem::reason`].
    pub fn reason(&self) -> &'static str {
        self.problem.reason()
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(document) = self.document {
            parts.push(format!("document {document}"));
        }
        if !self.path.is_empty() {
            parts.push(self.path.clone());
        }
        if let Some(Location { line, column }) = self.location {
            parts.push(format!("line {line} column {column}"));
        }
        if !parts.is_empty() {
            write!(f, "{}: ", parts.join(", "))?;
        }
        write!(f, "{}", self.problem)
    }
}

impl std::error::Error for ParseError {}

/// Parses every Endpoint in `input`: one Endpoint, a `kind: List` as `kubectl get
/// endpoints.submariner.io -o yaml` prints it, a `kind: EndpointList` as the API server returns
/// it, or (YAML) several documents of these. Empty documents and empty lists give no Endpoint.
/// Each Endpoint's apiVersion and kind are checked; the spec is not validated (see
/// [`crate::EndpointSpec::validate`]).
pub fn parse_endpoints(
    input: &[u8],
    format: Format,
    limits: &ParseLimits,
) -> Result<Vec<Endpoint>, ParseError> {
    let text = check_bytes(input, limits)?;
    let mut endpoints = Vec::new();
    match format {
        Format::Json => {
            let value = parse_json(text, limits)?;
            endpoints_from_document(value, None, limits, &mut endpoints)?;
        }
        Format::Yaml => {
            prescan_yaml(text, limits)?;
            for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
                let number = Some(index + 1);
                let value = serde_yaml_ng::Value::deserialize(document).map_err(|e| {
                    ParseError::new(ParseProblem::Syntax {
                        format: Format::Yaml,
                    })
                    .at(yaml_location(&e))
                    .in_document(number)
                })?;
                let mut path = Path::default();
                let value =
                    yaml_to_json(value, &mut path, 0, limits).map_err(|e| e.in_document(number))?;
                endpoints_from_document(value, number, limits, &mut endpoints)?;
            }
        }
    }
    Ok(endpoints)
}

/// Like [`parse_endpoints`], for an input that must hold exactly one Endpoint object (not a
/// List), as one broker file or one Kubernetes object does.
pub fn parse_endpoint(
    input: &[u8],
    format: Format,
    limits: &ParseLimits,
) -> Result<Endpoint, ParseError> {
    let text = check_bytes(input, limits)?;
    let value = match format {
        Format::Json => parse_json(text, limits)?,
        Format::Yaml => {
            prescan_yaml(text, limits)?;
            let mut documents = serde_yaml_ng::Deserializer::from_str(text);
            let Some(first) = documents.next() else {
                return Err(ParseError::new(ParseProblem::NotOneEndpoint { found: 0 }));
            };
            let value = serde_yaml_ng::Value::deserialize(first).map_err(|e| {
                ParseError::new(ParseProblem::Syntax {
                    format: Format::Yaml,
                })
                .at(yaml_location(&e))
            })?;
            if documents.next().is_some() {
                return Err(ParseError::new(ParseProblem::NotOneEndpoint { found: 2 }));
            }
            yaml_to_json(value, &mut Path::default(), 0, limits)?
        }
    };
    if value.is_null() {
        return Err(ParseError::new(ParseProblem::NotOneEndpoint { found: 0 }));
    }
    check_limits(&value, &mut Path::default(), 0, limits)?;
    let object = value.as_object().ok_or_else(|| {
        ParseError::new(ParseProblem::NotAMapping {
            found: type_name(&value),
        })
    })?;
    let kind = str_field(object, "kind");
    if kind == "List" || kind == KIND_ENDPOINT_LIST {
        return Err(ParseError::new(ParseProblem::WrongType {
            expected: "apiVersion submariner.io/v1 and kind Endpoint",
            found: FoundType::of(str_field(object, "apiVersion"), kind),
        }));
    }
    endpoint_from_value(value, &mut Path::default(), false)
}

/// Checks and converts one already-decoded JSON value (e.g. an object from a Kubernetes watch)
/// exactly as [`parse_endpoints`] does after parsing.
pub fn endpoints_from_json_value(
    value: Value,
    limits: &ParseLimits,
) -> Result<Vec<Endpoint>, ParseError> {
    let mut endpoints = Vec::new();
    endpoints_from_document(value, None, limits, &mut endpoints)?;
    Ok(endpoints)
}

fn check_bytes<'a>(input: &'a [u8], limits: &ParseLimits) -> Result<&'a str, ParseError> {
    if input.len() > limits.max_bytes {
        return Err(ParseError::new(ParseProblem::TooLarge {
            bytes: input.len(),
            max: limits.max_bytes,
        }));
    }
    if let Some(offset) = input.iter().position(|&b| b == 0) {
        return Err(ParseError::new(ParseProblem::NulByte).at(Some(location_of(&input[..offset]))));
    }
    let text = std::str::from_utf8(input).map_err(|e| {
        ParseError::new(ParseProblem::NotUtf8).at(Some(location_of(&input[..e.valid_up_to()])))
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// The line and column just after `before` (which is valid UTF-8 up to its end or not at all).
fn location_of(before: &[u8]) -> Location {
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Location { line, column }
}

fn yaml_location(error: &serde_yaml_ng::Error) -> Option<Location> {
    error.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    })
}

fn parse_json(text: &str, limits: &ParseLimits) -> Result<Value, ParseError> {
    serde_json::from_str::<Value>(text).map_err(|e| {
        // serde_json stops at 128 levels by itself (in linear time); its message for that is
        // a fixed string, and only used to pick the problem, never shown.
        let problem = if e.to_string().starts_with("recursion limit exceeded") {
            ParseProblem::TooDeep {
                max: limits.max_depth.min(128),
            }
        } else {
            ParseProblem::Syntax {
                format: Format::Json,
            }
        };
        let location = (e.line() > 0).then(|| Location {
            line: e.line(),
            column: e.column(),
        });
        ParseError::new(problem).at(location)
    })
}

/// Stage 2: walks the YAML event stream once, refusing deep nesting, aliases and too many
/// documents before libyaml parses anything. See the module documentation for why.
fn prescan_yaml(text: &str, limits: &ParseLimits) -> Result<(), ParseError> {
    use saphyr_parser::{Event, Parser};

    // One entry per open collection: whether it is a mapping, how many nodes it holds so far
    // (keys and values in a mapping), the problem its length is bounded by, and (mappings) the
    // limit for a list under the key just read: `subnets` and the top-level `items` have their
    // own. Checked here, a 100,000-item list is refused before anything builds a tree.
    struct Open {
        map: bool,
        count: usize,
        limit: (usize, ParseProblem),
        next: (usize, ParseProblem),
    }
    let list_limit = (
        limits.max_list_items,
        ParseProblem::TooManyItems {
            max: limits.max_list_items,
        },
    );
    let map_limit = (
        limits.max_map_entries,
        ParseProblem::TooManyEntries {
            max: limits.max_map_entries,
        },
    );
    let mut open: Vec<Open> = Vec::new();
    let mut documents = 0_usize;
    let position = |span: &saphyr_parser::Span| {
        Some(Location {
            line: span.start.line(),
            column: span.start.col() + 1,
        })
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = match event {
            Ok(event) => event,
            Err(e) => {
                // saphyr counts flow levels in a u8 and says so with this fixed text; it is only
                // compared, never shown.
                let problem = if e.info() == "recursion limit exceeded" {
                    ParseProblem::TooDeep {
                        max: limits.max_depth,
                    }
                } else {
                    ParseProblem::Syntax {
                        format: Format::Yaml,
                    }
                };
                return Err(ParseError::new(problem)
                    .at(Some(Location {
                        line: e.marker().line(),
                        column: e.marker().col() + 1,
                    }))
                    .in_document((documents > 0).then_some(documents)));
            }
        };
        let document = (documents > 0).then_some(documents);
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(_)
        );
        // The limit a new sequence gets from where it stands.
        let mut limit_here = list_limit.clone();
        let top_level = open.len() == 1;
        if let (true, Some(parent)) = (is_node, open.last_mut()) {
            parent.count += 1;
            let items = if parent.map {
                parent.count.div_ceil(2)
            } else {
                parent.count
            };
            if items > parent.limit.0 {
                return Err(ParseError::new(parent.limit.1.clone())
                    .at(position(&span))
                    .in_document(document));
            }
            if parent.map && parent.count % 2 == 1 {
                // A key: remember the limit of a list that may follow as its value.
                parent.next = match &event {
                    Event::Scalar(key, ..) if key == "subnets" => (
                        limits.max_subnets,
                        ParseProblem::TooManySubnets {
                            max: limits.max_subnets,
                        },
                    ),
                    Event::Scalar(key, ..) if key == "items" && top_level => (
                        limits.max_endpoints,
                        ParseProblem::TooManyEndpoints {
                            max: limits.max_endpoints,
                        },
                    ),
                    _ => list_limit.clone(),
                };
            } else if parent.map {
                limit_here = parent.next.clone();
            }
        }
        if let Event::Scalar(value, ..) = &event {
            if value.len() > limits.max_string_bytes {
                return Err(ParseError::new(ParseProblem::StringTooLong {
                    max: limits.max_string_bytes,
                })
                .at(position(&span))
                .in_document(document));
            }
        }
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > limits.max_documents {
                    return Err(ParseError::new(ParseProblem::TooManyDocuments {
                        max: limits.max_documents,
                    })
                    .at(position(&span)));
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                let map = matches!(event, Event::MappingStart(..));
                open.push(Open {
                    map,
                    count: 0,
                    limit: if map { map_limit.clone() } else { limit_here },
                    next: list_limit.clone(),
                });
                if open.len() > limits.max_depth {
                    return Err(ParseError::new(ParseProblem::TooDeep {
                        max: limits.max_depth,
                    })
                    .at(position(&span))
                    .in_document(document));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                open.pop();
            }
            Event::Alias(_) => {
                return Err(ParseError::new(ParseProblem::Alias)
                    .at(position(&span))
                    .in_document(document))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A field path made only of schema names, indices and `<key>` for any other map key.
#[derive(Debug, Default, Clone)]
struct Path(Vec<Segment>);

#[derive(Debug, Clone)]
enum Segment {
    Field(&'static str),
    Key,
    Index(usize),
}

/// Map keys that may appear in a path: the Endpoint schema's own and Kubernetes' metadata.
const KNOWN_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "items",
    "name",
    "namespace",
    "labels",
    "annotations",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "cluster_id",
    "cable_name",
    "healthCheckIP",
    "healthCheckIPs",
    "hostname",
    "subnets",
    "private_ip",
    "private_ips",
    "public_ip",
    "public_ips",
    "nat_enabled",
    "backend",
    "backend_config",
];

impl Path {
    fn push_key(&mut self, key: &str) {
        let segment = KNOWN_KEYS
            .iter()
            .find(|k| **k == key)
            .map_or(Segment::Key, |k| Segment::Field(k));
        self.0.push(segment);
    }

    fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }

    fn pop(&mut self) {
        self.0.pop();
    }

    fn is(&self, fields: &[&str]) -> bool {
        // Compares the trailing fields, so `items[3].spec.subnets` is `spec.subnets` too.
        let names: Vec<Option<&str>> = self
            .0
            .iter()
            .filter(|s| !matches!(s, Segment::Index(_)))
            .map(|s| match s {
                Segment::Field(name) => Some(*name),
                _ => None,
            })
            .collect();
        names.len() >= fields.len()
            && names[names.len() - fields.len()..]
                .iter()
                .zip(fields)
                .all(|(a, b)| *a == Some(*b))
    }

    fn error(&self, problem: ParseProblem) -> ParseError {
        ParseError {
            path: self.to_string(),
            ..ParseError::new(problem)
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Key if i == 0 => f.write_str("<key>")?,
                Segment::Key => f.write_str(".<key>")?,
            }
        }
        Ok(())
    }
}

/// Converts a YAML tree into JSON's data model, refusing what has no meaning in an Endpoint
/// (tags, non-string keys, infinite numbers). Depth was bounded by the pre-scan; it is checked
/// again here so that this function is safe on its own.
fn yaml_to_json(
    value: serde_yaml_ng::Value,
    path: &mut Path,
    depth: usize,
    limits: &ParseLimits,
) -> Result<Value, ParseError> {
    use serde_yaml_ng::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                Value::Number(
                    serde_json::Number::from_f64(f)
                        .ok_or_else(|| path.error(ParseProblem::NumberNotFinite))?,
                )
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => {
            if depth >= limits.max_depth {
                return Err(path.error(ParseProblem::TooDeep {
                    max: limits.max_depth,
                }));
            }
            let mut out = Vec::with_capacity(items.len().min(limits.max_list_items));
            for (i, item) in items.into_iter().enumerate() {
                path.push(Segment::Index(i));
                out.push(yaml_to_json(item, path, depth + 1, limits)?);
                path.pop();
            }
            Value::Array(out)
        }
        Y::Mapping(map) => {
            if depth >= limits.max_depth {
                return Err(path.error(ParseProblem::TooDeep {
                    max: limits.max_depth,
                }));
            }
            let mut out = Map::new();
            for (key, item) in map {
                let Y::String(key) = key else {
                    return Err(path.error(ParseProblem::KeyNotString));
                };
                path.push_key(&key);
                let item = yaml_to_json(item, path, depth + 1, limits)?;
                path.pop();
                out.insert(key, item);
            }
            Value::Object(out)
        }
        Y::Tagged(_) => return Err(path.error(ParseProblem::Tag)),
    })
}

/// Stage 4a: every list, map and string within its limit, and the depth (for JSON).
fn check_limits(
    value: &Value,
    path: &mut Path,
    depth: usize,
    limits: &ParseLimits,
) -> Result<(), ParseError> {
    match value {
        Value::String(s) if s.len() > limits.max_string_bytes => {
            Err(path.error(ParseProblem::StringTooLong {
                max: limits.max_string_bytes,
            }))
        }
        Value::Array(items) => {
            if depth >= limits.max_depth {
                return Err(path.error(ParseProblem::TooDeep {
                    max: limits.max_depth,
                }));
            }
            let (max, problem) = if path.is(&["items"]) && depth == 1 {
                (
                    limits.max_endpoints,
                    ParseProblem::TooManyEndpoints {
                        max: limits.max_endpoints,
                    },
                )
            } else if path.is(&["spec", "subnets"]) {
                (
                    limits.max_subnets,
                    ParseProblem::TooManySubnets {
                        max: limits.max_subnets,
                    },
                )
            } else {
                (
                    limits.max_list_items,
                    ParseProblem::TooManyItems {
                        max: limits.max_list_items,
                    },
                )
            };
            if items.len() > max {
                return Err(path.error(problem));
            }
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                check_limits(item, path, depth + 1, limits)?;
                path.pop();
            }
            Ok(())
        }
        Value::Object(map) => {
            if depth >= limits.max_depth {
                return Err(path.error(ParseProblem::TooDeep {
                    max: limits.max_depth,
                }));
            }
            if map.len() > limits.max_map_entries {
                return Err(path.error(ParseProblem::TooManyEntries {
                    max: limits.max_map_entries,
                }));
            }
            for (key, item) in map {
                if key.len() > limits.max_string_bytes {
                    return Err(path.error(ParseProblem::StringTooLong {
                        max: limits.max_string_bytes,
                    }));
                }
                path.push_key(key);
                check_limits(item, path, depth + 1, limits)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn str_field<'a>(object: &'a Map<String, Value>, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One document: an Endpoint, or a List / EndpointList of them.
fn endpoints_from_document(
    value: Value,
    document: Option<usize>,
    limits: &ParseLimits,
    out: &mut Vec<Endpoint>,
) -> Result<(), ParseError> {
    let located = |e: ParseError| e.in_document(document);
    if value.is_null() {
        return Ok(());
    }
    let mut path = Path::default();
    check_limits(&value, &mut path, 0, limits).map_err(located)?;
    let Value::Object(mut object) = value else {
        return Err(located(ParseError::new(ParseProblem::NotAMapping {
            found: type_name(&value),
        })));
    };
    let kind = str_field(&object, "kind").to_owned();
    if kind != "List" && kind != KIND_ENDPOINT_LIST {
        push_endpoint(out, limits, document)?;
        let endpoint =
            endpoint_from_value(Value::Object(object), &mut path, false).map_err(located)?;
        out.push(endpoint);
        return Ok(());
    }
    let typed_list = kind == KIND_ENDPOINT_LIST;
    if typed_list {
        let api_version = str_field(&object, "apiVersion");
        if api_version != API_VERSION {
            return Err(located(ParseError::new(ParseProblem::WrongType {
                expected: "apiVersion submariner.io/v1 and kind EndpointList",
                found: FoundType::of(api_version, &kind),
            })));
        }
    }
    let items = match object.remove("items") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(located(path.error(ParseProblem::ItemsNotAList {
                found: type_name(&other),
            })))
        }
    };
    path.push(Segment::Field("items"));
    for (i, item) in items.into_iter().enumerate() {
        push_endpoint(out, limits, document)?;
        path.push(Segment::Index(i));
        let endpoint = endpoint_from_value(item, &mut path, typed_list).map_err(located)?;
        path.pop();
        out.push(endpoint);
    }
    Ok(())
}

fn push_endpoint(
    out: &[Endpoint],
    limits: &ParseLimits,
    document: Option<usize>,
) -> Result<(), ParseError> {
    if out.len() >= limits.max_endpoints {
        return Err(ParseError::new(ParseProblem::TooManyEndpoints {
            max: limits.max_endpoints,
        })
        .in_document(document));
    }
    Ok(())
}

/// What a known field may hold. `null` is accepted wherever serde treats it as empty.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A string (no null: the field has no null-as-default).
    Str,
    /// A string or null.
    OptStr,
    /// A boolean or null.
    OptBool,
    /// A list of strings, or null.
    StrList,
    /// A map of scalars (Go's `map[string]string`, numbers and booleans read as text), or null.
    ScalarMap,
    /// A mapping or null, whose known fields are checked.
    Object(&'static [(&'static str, Shape)]),
}

const SPEC_FIELDS: &[(&str, Shape)] = &[
    ("cluster_id", Shape::OptStr),
    ("cable_name", Shape::OptStr),
    ("healthCheckIP", Shape::OptStr),
    ("hostname", Shape::OptStr),
    ("subnets", Shape::StrList),
    ("private_ip", Shape::OptStr),
    ("public_ip", Shape::OptStr),
    ("nat_enabled", Shape::OptBool),
    ("backend", Shape::OptStr),
    ("backend_config", Shape::ScalarMap),
    ("private_ips", Shape::StrList),
    ("public_ips", Shape::StrList),
    ("healthCheckIPs", Shape::StrList),
];

const METADATA_FIELDS: &[(&str, Shape)] = &[
    ("name", Shape::OptStr),
    ("namespace", Shape::OptStr),
    ("labels", Shape::ScalarMap),
];

const ENDPOINT_FIELDS: &[(&str, Shape)] = &[
    ("apiVersion", Shape::Str),
    ("kind", Shape::Str),
    ("metadata", Shape::Object(METADATA_FIELDS)),
    ("spec", Shape::Object(SPEC_FIELDS)),
];

fn check_shape(value: &Value, shape: Shape, path: &mut Path) -> Result<(), ParseError> {
    let wrong = |expected: &'static str, path: &Path| {
        Err(path.error(ParseProblem::WrongFieldType {
            expected,
            found: type_name(value),
        }))
    };
    match (shape, value) {
        (Shape::Str, Value::String(_))
        | (Shape::OptStr, Value::String(_) | Value::Null)
        | (Shape::OptBool, Value::Bool(_) | Value::Null)
        | (Shape::StrList | Shape::ScalarMap | Shape::Object(_), Value::Null) => Ok(()),
        (Shape::Str, _) => wrong("a string", path),
        (Shape::OptStr, _) => wrong("a string or null", path),
        (Shape::OptBool, _) => wrong("a boolean (true or false) or null", path),
        (Shape::StrList, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if !item.is_string() {
                    path.push(Segment::Index(i));
                    let result = Err(path.error(ParseProblem::WrongFieldType {
                        expected: "a string",
                        found: type_name(item),
                    }));
                    path.pop();
                    return result;
                }
            }
            Ok(())
        }
        (Shape::StrList, _) => wrong("a list of strings", path),
        (Shape::ScalarMap, Value::Object(map)) => {
            for (key, item) in map {
                if matches!(item, Value::Array(_) | Value::Object(_)) {
                    path.push_key(key);
                    let result = Err(path.error(ParseProblem::WrongFieldType {
                        expected: "a string, number, boolean or null",
                        found: type_name(item),
                    }));
                    path.pop();
                    return result;
                }
            }
            Ok(())
        }
        (Shape::ScalarMap, _) => wrong("a map of strings", path),
        (Shape::Object(fields), Value::Object(map)) => {
            for (name, shape) in fields {
                if let Some(item) = map.get(*name) {
                    path.push(Segment::Field(name));
                    check_shape(item, *shape, path)?;
                    path.pop();
                }
            }
            Ok(())
        }
        (Shape::Object(_), _) => wrong("a mapping", path),
    }
}

/// Stages 4b and 5 for one Endpoint object (a document or a List item).
fn endpoint_from_value(
    value: Value,
    path: &mut Path,
    in_typed_list: bool,
) -> Result<Endpoint, ParseError> {
    if !value.is_object() {
        return Err(path.error(ParseProblem::NotAMapping {
            found: type_name(&value),
        }));
    }
    check_shape(&value, Shape::Object(ENDPOINT_FIELDS), path)?;
    // serde_json's message could quote a value, so only the fact of failure is kept; the shape
    // check above makes this unreachable for every input the fuzz target has produced.
    let mut endpoint: Endpoint =
        serde_json::from_value(value).map_err(|_| path.error(ParseProblem::Schema))?;
    // The API server leaves apiVersion/kind out of a typed list's items.
    if in_typed_list && endpoint.api_version.is_empty() && endpoint.kind.is_empty() {
        endpoint.api_version = API_VERSION.to_owned();
        endpoint.kind = KIND_ENDPOINT.to_owned();
    }
    if endpoint.api_version != API_VERSION || endpoint.kind != KIND_ENDPOINT {
        return Err(path.error(ParseProblem::WrongType {
            expected: "apiVersion submariner.io/v1 and kind Endpoint",
            found: FoundType::of(&endpoint.api_version, &endpoint.kind),
        }));
    }
    Ok(endpoint)
}
