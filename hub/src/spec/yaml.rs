//! YAML documents → `serde_json::Value` trees plus the line of every field path, so that typed
//! deserialization and validation errors can name `file:line: field.path`.
//!
//! The YAML 1.2 core schema resolves plain scalars (null, booleans, integers, floats); quoted and
//! block scalars are strings. Aliases, merge keys and duplicate keys are rejected: specs are plain
//! data and a duplicated key is always a mistake.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

/// One YAML document: its data and where each field path starts.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's data.
    pub value: Value,
    /// Line of every field path (`target.creationPolicy`, `data[0].remoteRef.key`); `""` is the
    /// document itself.
    pub lines: HashMap<String, usize>,
    /// Line where the document starts.
    pub start_line: usize,
}

impl Document {
    /// Line of `path`, or of its closest ancestor that has one.
    pub fn line_of(&self, path: &str) -> usize {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return *line;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.lines.get("").copied().unwrap_or(self.start_line),
            }
        }
    }
}

/// A YAML syntax error with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// Field path where the problem is, when known.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Parses every document of `text`. Empty documents (e.g. after a trailing `---`) are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut builder = Builder::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|error| SyntaxError {
            line: error.marker().line(),
            path: String::new(),
            message: error.info().to_owned(),
        })?;
        builder.event(event, span)?;
    }
    Ok(builder.documents)
}

enum Frame {
    Map {
        map: Map<String, Value>,
        path: String,
        pending_key: Option<String>,
    },
    Seq {
        items: Vec<Value>,
        path: String,
    },
}

#[derive(Default)]
struct Builder {
    documents: Vec<Document>,
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    start_line: usize,
    root: Option<Value>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        let line = span.start.line();
        match event {
            Event::DocumentStart(..) => {
                self.lines.clear();
                self.root = None;
                self.start_line = line;
            }
            Event::DocumentEnd => {
                if let Some(value) = self.root.take()
                    && !value.is_null()
                {
                    self.documents.push(Document {
                        value,
                        lines: std::mem::take(&mut self.lines),
                        start_line: self.start_line,
                    });
                }
            }
            Event::Alias(..) | Event::UnresolvedAlias(..) => {
                return Err(self.error(line, "aliases are not supported in specs"));
            }
            Event::Scalar(text, style, _, tag) => {
                let plain = style == ScalarStyle::Plain && tag.is_none();
                if let Some(Frame::Map {
                    pending_key, path, ..
                }) = self.stack.last_mut()
                    && pending_key.is_none()
                {
                    if text == "<<" && plain {
                        return Err(self.error(line, "merge keys (<<) are not supported in specs"));
                    }
                    let key_path = join(path, &text);
                    *pending_key = Some(text.into_owned());
                    self.lines.insert(key_path, line);
                    return Ok(());
                }
                let value = if plain {
                    resolve_plain(&text)
                } else {
                    Value::String(text.into_owned())
                };
                let path = self.child_path();
                self.lines.entry(path).or_insert(line);
                self.push_value(value, line)?;
            }
            Event::SequenceStart(..) => {
                let path = self.child_path();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    path,
                });
            }
            Event::MappingStart(..) => {
                if let Some(Frame::Map {
                    pending_key: None, ..
                }) = self.stack.last()
                {
                    return Err(self.error(line, "mapping keys must be plain strings"));
                }
                let path = self.child_path();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match self.stack.pop() {
                    Some(Frame::Seq { items, .. }) => Value::Array(items),
                    Some(Frame::Map { map, .. }) => Value::Object(map),
                    None => return Err(self.error(line, "unbalanced YAML structure")),
                };
                self.push_value(value, line)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Path of the node about to be added to the innermost open collection.
    fn child_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Map {
                path, pending_key, ..
            }) => join(path, pending_key.as_deref().unwrap_or_default()),
            Some(Frame::Seq { items, path }) => format!("{path}[{}]", items.len()),
        }
    }

    fn push_value(&mut self, value: Value, line: usize) -> Result<(), SyntaxError> {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                map,
                pending_key,
                path,
            }) => {
                let key = pending_key.take().unwrap_or_default();
                if map.contains_key(&key) {
                    let path = join(path, &key);
                    return Err(SyntaxError {
                        line,
                        path,
                        message: "duplicate key".to_owned(),
                    });
                }
                map.insert(key, value);
            }
        }
        Ok(())
    }

    fn error(&self, line: usize, message: &str) -> SyntaxError {
        SyntaxError {
            line,
            path: self.child_path(),
            message: message.to_owned(),
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = text.parse::<u64>() {
            return Value::Number(n.into());
        }
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(n) = u64::from_str_radix(hex, 16)
    {
        return Value::Number(n.into());
    }
    if let Some(octal) = text.strip_prefix("0o")
        && let Ok(n) = u64::from_str_radix(octal, 8)
    {
        return Value::Number(n.into());
    }
    let looks_float = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_float
        && let Ok(n) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(n)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn documents_keep_the_line_of_every_field() {
        let text = "kind: A\nname: x\n---\n\nkind: B\nlist:\n  - a: 1\n    b: [x, {c: d}]\n---\n";
        let documents = parse_documents(text).expect("valid yaml");
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].value, json!({"kind": "A", "name": "x"}));
        assert_eq!(documents[0].line_of("name"), 2);
        let second = &documents[1];
        assert_eq!(
            second.value,
            json!({"kind": "B", "list": [{"a": 1, "b": ["x", {"c": "d"}]}]})
        );
        assert_eq!(second.line_of("kind"), 5);
        assert_eq!(second.line_of("list[0].a"), 7);
        assert_eq!(second.line_of("list[0].b[1].c"), 8);
        assert_eq!(second.line_of("list[0].b[1].missing"), 8);
    }

    #[test]
    fn plain_scalars_resolve_as_yaml_1_2_and_quoted_stay_strings() {
        let text = "a: 1\nb: '1'\nc: true\nd: yes\ne: ~\nf: 1.5\ng: \"\"\nh: 0x10\ni: 1%\n";
        let documents = parse_documents(text).expect("valid yaml");
        assert_eq!(
            documents[0].value,
            json!({"a": 1, "b": "1", "c": true, "d": "yes", "e": null, "f": 1.5, "g": "", "h": 16, "i": "1%"})
        );
    }

    #[test]
    fn duplicate_keys_aliases_and_syntax_errors_name_their_line() {
        let error = parse_documents("a: 1\nb:\n  c: 1\n  c: 2\n").expect_err("duplicate");
        assert_eq!((error.line, error.path.as_str()), (4, "b.c"));
        let error = parse_documents("a: &x 1\nb: *x\n").expect_err("alias");
        assert_eq!(error.line, 2);
        let error = parse_documents("a: [1\nb: 2\n").expect_err("syntax");
        assert!(error.line >= 1, "{error:?}");
    }
}
