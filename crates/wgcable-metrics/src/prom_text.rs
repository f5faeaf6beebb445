//! A small parser of the Prometheus text exposition format, so tests assert on what a scraper
//! would read rather than on the encoder's internals.

use std::collections::{BTreeMap, HashMap};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// A parsed scrape.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    pub(crate) samples: Vec<Sample>,
    pub(crate) help: HashMap<String, String>,
    pub(crate) types: HashMap<String, String>,
}

impl Scrape {
    /// Every sample of a metric.
    pub(crate) fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of the sample with exactly these labels.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }
}

pub(crate) fn parse(text: &str) -> Result<Scrape, String> {
    let mut scrape = Scrape::default();
    for (number, line) in text.lines().enumerate() {
        let context = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), rest) => {
                    scrape.help.insert(
                        name.to_owned(),
                        unescape(rest.unwrap_or(""), false).map_err(context)?,
                    );
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    scrape.types.insert(name.to_owned(), kind.to_owned());
                }
                _ => {}
            }
            continue;
        }
        scrape.samples.push(parse_sample(line).map_err(context)?);
    }
    Ok(scrape)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name".to_owned());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let label = rest[..eq].trim();
            if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {label:?}"));
            }
            rest = rest[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or("label value without opening quote")?;
            let (value, after) = take_quoted(rest)?;
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("duplicate label {label:?}"));
            }
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' after a label".to_owned());
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("sample without value")?;
    let value = value
        .parse::<f64>()
        .map_err(|e| format!("bad value {value:?}: {e}"))?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|e| format!("bad timestamp {timestamp:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the sample".to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads an escaped label value up to its closing quote; returns it and the text after the quote.
fn take_quoted(text: &str) -> Result<(String, &str), String> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, '"') => return Ok((unescape(&text[..i], true)?, &text[i + 1..])),
            _ => escaped = false,
        }
    }
    Err("unterminated label value".to_owned())
}

/// Label values escape `\\`, `\"` and `\n`; help texts only `\\` and `\n`.
fn unescape(text: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_comments() {
        let text = "# HELP m A \\\\ help\\ntext\n# TYPE m gauge\n\
                    m{a=\"x\",b=\"q\\\"uo\\\\te\\n\"} 1.5\nplain 3 1700000000\n\
                    inf{le=\"+Inf\",} +Inf\n";
        let scrape = parse(text).expect("valid text parses");
        assert_eq!(scrape.help["m"], "A \\ help\ntext");
        assert_eq!(scrape.types["m"], "gauge");
        assert_eq!(
            scrape.value("m", &[("a", "x"), ("b", "q\"uo\\te\n")]),
            Some(1.5)
        );
        assert_eq!(scrape.value("plain", &[]), Some(3.0));
        assert_eq!(scrape.value("inf", &[("le", "+Inf")]), Some(f64::INFINITY));
        assert_eq!(scrape.samples.len(), 3);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "m{a=\"x\" 1",
            "m{a=x} 1",
            "m{a=\"x\"} one",
            "m 1 2 3",
            "m{a=\"x\",a=\"y\"} 1",
            "m{a=\"\\q\"} 1",
            "9m 1",
            "m",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
