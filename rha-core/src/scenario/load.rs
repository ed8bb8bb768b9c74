//! Loading scenarios from TOML with errors that point at the file, line,
//! column and key path.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::model::Scenario;
use super::suggest;

/// Where in a scenario file something is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file, when the scenario was loaded from one.
    pub file: Option<PathBuf>,
    /// Line, counting from 1.
    pub line: usize,
    /// Column in characters, counting from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `src`.
    pub(crate) fn at(file: Option<&Path>, src: &str, offset: usize) -> Location {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            file: file.map(Path::to_path_buf),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}:{}", file.display(), self.line, self.column),
            None => write!(f, "line {}, column {}", self.line, self.column),
        }
    }
}

/// Why a scenario could not be loaded or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The scenario file could not be read.
    #[error("cannot read scenario file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not match the scenario model.
    #[error("{location}: {}{message}{}",
        key_path.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default(),
        suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    Parse {
        /// Where the problem is.
        location: Location,
        /// The key path of the offending setting (`is_alive.interval_secs`), when known.
        key_path: Option<String>,
        /// What is wrong, as reported by the TOML parser.
        message: String,
        /// The key or value that was probably meant.
        suggestion: Option<String>,
    },
    /// The file contains something that looks like a secret.
    #[error(
        "{location}: `{key_path}` looks like a secret, and secrets never belong in scenario \
             files; remove it, add the account with `rha cloud account add` and reference it by \
             name in `replica.azure.account`"
    )]
    Secret {
        /// Where the secret is.
        location: Location,
        /// Its key path.
        key_path: String,
    },
    /// The scenario could not be written as TOML.
    #[error("cannot write the scenario as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

impl ScenarioError {
    /// The key path of the offending setting, when the error has one.
    pub fn key_path(&self) -> Option<&str> {
        match self {
            ScenarioError::Parse { key_path, .. } => key_path.as_deref(),
            ScenarioError::Secret { key_path, .. } => Some(key_path),
            _ => None,
        }
    }

    /// Where in the file the error is, when it has a location.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ScenarioError::Parse { location, .. } | ScenarioError::Secret { location, .. } => {
                Some(location)
            }
            _ => None,
        }
    }
}

/// Parses `src` (read from `file`, if any) into a scenario.
pub(crate) fn parse(src: &str, file: Option<&Path>) -> Result<Scenario, ScenarioError> {
    // 1. Syntax: any TOML error here is reported as is.
    if let Err(e) = toml::from_str::<toml::Table>(src) {
        return Err(from_toml_error(&e, src, file, None));
    }
    // 2. A spanned copy of the document, to name key paths and find secrets.
    let tree = toml::from_str::<Node>(src).ok();
    if let Some(tree) = &tree {
        let mut path = Vec::new();
        if let Some((key_path, offset)) = find_secret(tree, &mut path) {
            return Err(ScenarioError::Secret {
                location: Location::at(file, src, offset),
                key_path,
            });
        }
    }
    // 3. The model itself.
    toml::from_str::<Scenario>(src).map_err(|e| from_toml_error(&e, src, file, tree.as_ref()))
}

fn from_toml_error(
    e: &toml::de::Error,
    src: &str,
    file: Option<&Path>,
    tree: Option<&Node>,
) -> ScenarioError {
    let message = e.message().trim().to_owned();
    // A missing top-level key is reported against the root table, whose span
    // starts at byte 0 (where the first key also is): it belongs to no key.
    let span = e
        .span()
        .filter(|s| s.start > 0 || !message.starts_with("missing field"));
    let location = Location::at(file, src, span.as_ref().map_or(0, |s| s.start));
    let key_path = tree.zip(span.as_ref()).and_then(|(t, span)| {
        let mut path = Vec::new();
        t.path_to(span.start, &mut path);
        (!path.is_empty()).then(|| join_path(&path))
    });
    // Normally caught before, from the spanned tree; this is the safety net
    // for documents the tree could not represent.
    if let Some((unknown, _)) = suggest::parse_unknown(&message) {
        if message.starts_with("unknown field") && suggest::looks_like_secret(unknown) {
            return ScenarioError::Secret {
                location,
                key_path: key_path.unwrap_or_else(|| unknown.to_owned()),
            };
        }
    }
    let message = match key_path.as_deref() {
        Some("replica") if message.starts_with("wanted exactly 1 element") => {
            "a scenario has exactly one replica: keep either `[replica.local]` or \
             `[replica.azure]`"
                .to_owned()
        }
        _ => message,
    };
    let suggestion = suggest::parse_unknown(&message).and_then(|(unknown, expected)| {
        suggest::did_you_mean(unknown, expected.iter().copied()).map(str::to_owned)
    });
    ScenarioError::Parse {
        location,
        key_path,
        message,
        suggestion,
    }
}

/// One step of a key path.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn join_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn find_secret(node: &Node, path: &mut Vec<Step>) -> Option<(String, usize)> {
    match node {
        Node::Table(entries) => {
            for (k, v) in entries {
                path.push(Step::Key(k.value.clone()));
                if suggest::looks_like_secret(&k.value) {
                    return Some((join_path(path), k.span.as_ref().map_or(0, |s| s.start)));
                }
                if let Some(found) = find_secret(&v.value, path) {
                    return Some(found);
                }
                path.pop();
            }
            None
        }
        Node::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Step::Index(i));
                if let Some(found) = find_secret(&v.value, path) {
                    return Some(found);
                }
                path.pop();
            }
            None
        }
        Node::Leaf => None,
    }
}

/// An untyped TOML document that remembers where its keys and values are.
///
/// toml's `Spanned<T>` cannot be used directly: implicit tables (the `replica`
/// of `[replica.local]`) have no span, and `Spanned` then fails. [`Located`]
/// speaks the same private protocol as `serde_spanned` (a struct with the magic
/// name below, answered with a map of start, end and value) but also accepts a
/// plain value, leaving the span empty.
#[derive(Debug)]
enum Node {
    Table(Vec<(Located<String>, Located<Node>)>),
    Array(Vec<Located<Node>>),
    Leaf,
}

// The names serde_spanned 0.6 uses to ask a deserializer for a span.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

/// A value with its span in the source, when the parser knows it.
#[derive(Debug)]
struct Located<T> {
    span: Option<Range<usize>>,
    value: T,
}

fn contains(span: &Option<Range<usize>>, offset: usize) -> bool {
    span.as_ref()
        .is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

impl Node {
    /// Pushes onto `path` the keys and indices leading to the innermost key or
    /// value that contains byte `offset`.
    fn path_to(&self, offset: usize, path: &mut Vec<Step>) {
        match self {
            Node::Table(entries) => {
                // Prefer the key itself (unknown-field errors point at keys).
                if let Some((k, _)) = entries.iter().find(|(k, _)| contains(&k.span, offset)) {
                    path.push(Step::Key(k.value.clone()));
                    return;
                }
                if let Some((k, v)) = entries
                    .iter()
                    .find(|(_, v)| contains(&v.span, offset) || v.value.covers(offset))
                {
                    path.push(Step::Key(k.value.clone()));
                    v.value.path_to(offset, path);
                }
            }
            Node::Array(items) => {
                if let Some((i, v)) = items
                    .iter()
                    .enumerate()
                    .find(|(_, v)| contains(&v.span, offset) || v.value.covers(offset))
                {
                    path.push(Step::Index(i));
                    v.value.path_to(offset, path);
                }
            }
            Node::Leaf => {}
        }
    }

    /// Whether a key or value inside this node contains `offset` (for
    /// containers without a span of their own).
    fn covers(&self, offset: usize) -> bool {
        match self {
            Node::Table(entries) => entries.iter().any(|(k, v)| {
                contains(&k.span, offset) || contains(&v.span, offset) || v.value.covers(offset)
            }),
            Node::Array(items) => items
                .iter()
                .any(|v| contains(&v.span, offset) || v.value.covers(offset)),
            Node::Leaf => false,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl NodeVisitor {
    /// Reads the rest of a table whose first key has been read already.
    fn rest_of_table<'de, A: MapAccess<'de>>(
        first: Option<Located<String>>,
        mut map: A,
    ) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        if let Some(key) = first {
            entries.push((key, map.next_value::<Located<Node>>()?));
        }
        while let Some(entry) = map.next_entry::<Located<String>, Located<Node>>()? {
            entries.push(entry);
        }
        Ok(Node::Table(entries))
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Located<Node>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Node, A::Error> {
        NodeVisitor::rest_of_table(None, map)
    }
}

impl<'de> Deserialize<'de> for Located<String> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Located<String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Located {
                    span: None,
                    value: v.to_owned(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (span, value) = read_spanned::<A, String>(None, &mut map)?;
                Ok(Located {
                    span: Some(span),
                    value,
                })
            }
        }
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Located<Node> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Located<Node>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(unlocated(Node::Leaf))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(unlocated(Node::Leaf))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(unlocated(Node::Leaf))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(unlocated(Node::Leaf))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(unlocated(Node::Leaf))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                NodeVisitor.visit_seq(seq).map(unlocated)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let first = map.next_key::<Located<String>>()?;
                match first {
                    Some(key) if key.value == SPANNED_START => {
                        let (span, value) = read_spanned::<A, Node>(Some(()), &mut map)?;
                        Ok(Located {
                            span: Some(span),
                            value,
                        })
                    }
                    // An implicit table: no span of its own.
                    other => NodeVisitor::rest_of_table(other, map).map(unlocated),
                }
            }
        }
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, ValueVisitor)
    }
}

fn unlocated(value: Node) -> Located<Node> {
    Located { span: None, value }
}

/// Reads serde_spanned's start/end/value map. `start_key_read` is `Some` when
/// the caller already consumed the start key.
fn read_spanned<'de, A, T>(
    start_key_read: Option<()>,
    map: &mut A,
) -> Result<(Range<usize>, T), A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    if start_key_read.is_none() {
        expect_key(map, SPANNED_START)?;
    }
    let start: usize = map.next_value()?;
    expect_key(map, SPANNED_END)?;
    let end: usize = map.next_value()?;
    expect_key(map, SPANNED_VALUE)?;
    let value: T = map.next_value()?;
    Ok((start..end, value))
}

fn expect_key<'de, A: MapAccess<'de>>(map: &mut A, want: &'static str) -> Result<(), A::Error> {
    match map.next_key::<String>()? {
        Some(k) if k == want => Ok(()),
        _ => Err(de::Error::custom(format_args!(
            "expected the span field `{want}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_survives_datetimes_and_dotted_keys() {
        let src = "when = 1979-05-27T07:32:00Z\n[a.b]\nc.d = 1\nsecret_token = \"x\"\n";
        let tree = toml::from_str::<Node>(src).expect("parses");
        let mut path = Vec::new();
        let (key, offset) = find_secret(&tree, &mut path).expect("found");
        assert_eq!(key, "a.b.secret_token");
        assert_eq!(Location::at(None, src, offset).line, 4);
        let mut path = Vec::new();
        let one = src.find("= 1\n").map(|i| i + 2).expect("present");
        tree.path_to(one, &mut path);
        assert_eq!(join_path(&path), "a.b.c.d");
    }

    #[test]
    fn paths_into_arrays() {
        let src = "[[v]]\nid = 1\n[[v]]\nid = 2\nx = [1, { y = 3 }]\n";
        let tree = toml::from_str::<Node>(src).expect("parses");
        for (needle, want) in [
            ("id = 2", "v[1].id"),
            ("y = 3", "v[1].x[1].y"),
            ("3 }", "v[1].x[1].y"),
        ] {
            let mut path = Vec::new();
            tree.path_to(src.find(needle).expect("present"), &mut path);
            assert_eq!(join_path(&path), want, "{needle}");
        }
    }
}
