//! ESO-style templates for `target.template.data`: Go `text/template` semantics for what secret
//! templates use, parsed when a spec is validated and executed by [`crate::render`].
//!
//! Supported: text with `{{ pipeline }}` actions (`{{-`/`-}}` trim whitespace, `{{/* comments */}}`);
//! operands `.name` (a data key), `$.name`, `.` (the data at the top, the value inside `with`),
//! `$var`, `"string"`, `` `raw string` ``, `true`/`false`, `(pipeline)`; pipes `a | f` (the piped
//! value is the last argument); variables `{{ $x := pipeline }}` and `{{ $x = pipeline }}`;
//! `{{ if p }}…{{ else if p }}…{{ else }}…{{ end }}`, `{{ with p }}…{{ else }}…{{ end }}` and
//! `{{ range $key, $value := . }}…{{ else }}…{{ end }}` over the data (keys in sorted order, as Go
//! ranges over a map; `.` is the value inside) (empty and `false` are false, as in Go; a variable
//! lives until the `end` of its block); the
//! functions in `template/functions.rs` (Go's `printf`, `index`, `eq`, `ne`, `not`, `and`, `or`,
//! `len`; sprig's `b64enc`, `b64dec`, `quote`, `squote`, `toJson`, `toString`, `upper`, `lower`,
//! `trim`, `trimPrefix`, `trimSuffix`, `replace`, `default`, `empty`, `contains`, `hasPrefix`,
//! `hasSuffix`, `nindent`, `indent`). Not supported, and refused when the spec is applied:
//! `range` over anything but the data (ESO's data is a flat map of strings), `break`/`continue`,
//! `define`/`template`/`block`.
//!
//! **Decision (Go-template crate or this engine):** a maintained crate such as `gtmpl` brings Go's
//! whole grammar, but its values are plain strings (not zeroized), its error messages quote the
//! values they failed on, and it cannot list the data keys a template reads before it runs (which
//! `apply` uses to refuse a template naming no `data[].secretKey`). Secret values stay in
//! [`Zeroizing`] buffers here, errors never show one, and the variables are known at parse time.
//!
//! **Invariant:** errors name the template position and the function or variable, never a value.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::domain::SecretValue;

mod action;
mod certificates;
mod functions;
#[cfg(test)]
mod tests;

use action::ActionParser;
pub use certificates::{CertificateParts, certificate_parts};
pub(crate) use functions::Function;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `{{ pipeline }}`: printed.
    Action(Pipeline),
    /// `{{ $name := pipeline }}` (declare) or `{{ $name = pipeline }}`: prints nothing.
    Assign {
        name: String,
        declare: bool,
        pipeline: Pipeline,
    },
    /// `if` / `else if` branches, then `else`.
    If {
        branches: Vec<(Pipeline, Vec<Part>)>,
        otherwise: Vec<Part>,
    },
    /// `with`: the body runs with `.` set to the value when it is true.
    With {
        pipeline: Pipeline,
        body: Vec<Part>,
        otherwise: Vec<Part>,
    },
    /// `range [$key,] [$value :=] .`: the body once per data key, in key order.
    Range {
        key: Option<String>,
        value: Option<String>,
        body: Vec<Part>,
        otherwise: Vec<Part>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pipeline(Vec<Command>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    function: Option<Function>,
    args: Vec<Operand>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operand {
    /// `.name` or `$.name`: a data key.
    Field(String),
    /// `.`.
    Dot,
    /// `$name` (`$` alone is the data).
    Variable(String),
    Literal(String),
    Bool(bool),
    Nested(Pipeline),
}

/// Why a template does not parse or cannot be executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Syntax error at a byte offset of the template.
    #[error("template syntax error at offset {offset}: {message}")]
    Syntax {
        /// Byte offset in the template text.
        offset: usize,
        /// What is wrong.
        message: String,
    },
    /// A `.name` that the data does not provide.
    #[error("template refers to {name:?}, which no data entry provides")]
    UnknownVariable {
        /// Variable name.
        name: String,
    },
    /// A function got the wrong arguments or could not handle its input.
    #[error("template function {function}: {message}")]
    Function {
        /// Function name.
        function: &'static str,
        /// What went wrong (never the value).
        message: &'static str,
    },
}

type Bytes = Zeroizing<Vec<u8>>;

/// A value while a template runs: bytes (every data value and string), or a boolean from a
/// comparison.
#[derive(Debug, Clone)]
enum Value {
    Bytes(Bytes),
    Bool(bool),
}

impl Value {
    /// Go's truth: false and empty are false.
    fn truthy(&self) -> bool {
        match self {
            Self::Bytes(bytes) => !bytes.is_empty(),
            Self::Bool(value) => *value,
        }
    }

    /// As printed.
    fn into_bytes(self) -> Bytes {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Bool(value) => Zeroizing::new(value.to_string().into_bytes()),
        }
    }
}

/// An open block while parsing.
enum Frame {
    If {
        /// Closed branches.
        branches: Vec<(Pipeline, Vec<Part>)>,
        /// The branch being read.
        condition: Pipeline,
        current: Vec<Part>,
        otherwise: Option<Vec<Part>>,
        variables: Vec<String>,
    },
    With {
        pipeline: Pipeline,
        body: Vec<Part>,
        otherwise: Option<Vec<Part>>,
        variables: Vec<String>,
    },
    Range {
        key: Option<String>,
        value: Option<String>,
        body: Vec<Part>,
        otherwise: Option<Vec<Part>>,
        variables: Vec<String>,
    },
}

impl Frame {
    /// The list new parts go to.
    fn parts(&mut self) -> &mut Vec<Part> {
        match self {
            Self::If {
                otherwise: Some(parts),
                ..
            }
            | Self::With {
                otherwise: Some(parts),
                ..
            }
            | Self::Range {
                otherwise: Some(parts),
                ..
            } => parts,
            Self::If { current, .. } => current,
            Self::With { body, .. } | Self::Range { body, .. } => body,
        }
    }

    fn variables(&mut self) -> &mut Vec<String> {
        match self {
            Self::If { variables, .. } | Self::With { variables, .. } | Self::Range { variables, .. } => {
                variables
            }
        }
    }
}

/// What an action is, by its first word.
enum Keyword<'a> {
    If(&'a str),
    ElseIf(&'a str),
    Else,
    With(&'a str),
    Range(&'a str),
    End,
    Comment,
    Unsupported(&'static str),
    Assign {
        name: &'a str,
        declare: bool,
        rest: &'a str,
        rest_offset: usize,
    },
    Pipeline,
}

fn keyword(body: &str) -> Keyword<'_> {
    let trimmed = body.trim_start();
    let word_end = trimmed
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(trimmed.len());
    let rest = &trimmed[word_end..];
    match &trimmed[..word_end] {
        "if" => Keyword::If(rest),
        "with" => Keyword::With(rest),
        "end" if rest.trim().is_empty() => Keyword::End,
        "else" => {
            let after = rest.trim_start();
            match after.strip_prefix("if") {
                Some(condition)
                    if condition.starts_with(char::is_whitespace) || condition.starts_with('(') =>
                {
                    Keyword::ElseIf(condition)
                }
                _ if after.is_empty() => Keyword::Else,
                _ => Keyword::Unsupported("else takes nothing, or `if` and a condition"),
            }
        }
        "range" => Keyword::Range(rest),
        "define" | "template" | "block" => {
            Keyword::Unsupported("define, template and block are not supported")
        }
        "break" | "continue" => Keyword::Unsupported("break and continue are not supported"),
        _ if trimmed.starts_with("/*") => Keyword::Comment,
        _ if trimmed.starts_with('$') => {
            let name_end = trimmed[1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(trimmed.len(), |end| end + 1);
            let name = &trimmed[1..name_end];
            let after = trimmed[name_end..].trim_start();
            let offset_of = |text: &str| body.len() - text.len();
            if let Some(rest) = after.strip_prefix(":=") {
                Keyword::Assign {
                    name,
                    declare: true,
                    rest,
                    rest_offset: offset_of(rest),
                }
            } else if let Some(rest) = after.strip_prefix('=').filter(|rest| !rest.starts_with('=')) {
                Keyword::Assign {
                    name,
                    declare: false,
                    rest,
                    rest_offset: offset_of(rest),
                }
            } else {
                Keyword::Pipeline
            }
        }
        _ => Keyword::Pipeline,
    }
}

/// Parser state across actions.
struct Builder {
    top: Vec<Part>,
    frames: Vec<Frame>,
    /// Variables declared at the top level.
    variables: Vec<String>,
}

impl Builder {
    fn parts(&mut self) -> &mut Vec<Part> {
        match self.frames.last_mut() {
            Some(frame) => frame.parts(),
            None => &mut self.top,
        }
    }

    fn declared(&self, name: &str) -> bool {
        name.is_empty()
            || self.variables.iter().any(|known| known == name)
            || self.frames.iter().any(|frame| match frame {
                Frame::If { variables, .. }
                | Frame::With { variables, .. }
                | Frame::Range { variables, .. } => variables.iter().any(|known| known == name),
            })
    }

    fn declare(&mut self, name: &str) {
        match self.frames.last_mut() {
            Some(frame) => frame.variables().push(name.to_owned()),
            None => self.variables.push(name.to_owned()),
        }
    }

    /// Parses a pipeline at `offset` and checks the variables it uses are declared.
    fn pipeline(&self, text: &str, offset: usize) -> Result<Pipeline, TemplateError> {
        let mut parser = ActionParser::new(text, offset);
        let pipeline = parser.pipeline()?;
        parser.skip_space();
        if !parser.at_end() {
            return Err(parser.error("unexpected text in action"));
        }
        let mut used = Vec::new();
        pipeline.collect_variable_uses(&mut used);
        if let Some(name) = used.iter().find(|name| !self.declared(name)) {
            return Err(TemplateError::Syntax {
                offset,
                message: format!("undefined variable \"${name}\""),
            });
        }
        Ok(pipeline)
    }

    /// One action's body at `offset`.
    fn action(&mut self, body: &str, offset: usize) -> Result<(), TemplateError> {
        let syntax = |message: &str| TemplateError::Syntax {
            offset,
            message: message.to_owned(),
        };
        let condition_offset = |text: &str| offset + body.len() - text.len();
        match keyword(body) {
            Keyword::Comment => {
                if !body.trim().ends_with("*/") {
                    return Err(syntax("unclosed comment"));
                }
            }
            Keyword::Unsupported(message) => return Err(syntax(message)),
            Keyword::If(condition) => {
                let pipeline = self.pipeline(condition, condition_offset(condition))?;
                self.frames.push(Frame::If {
                    branches: Vec::new(),
                    condition: pipeline,
                    current: Vec::new(),
                    otherwise: None,
                    variables: Vec::new(),
                });
            }
            Keyword::With(value) => {
                let pipeline = self.pipeline(value, condition_offset(value))?;
                self.frames.push(Frame::With {
                    pipeline,
                    body: Vec::new(),
                    otherwise: None,
                    variables: Vec::new(),
                });
            }
            Keyword::Range(rest) => {
                let (key, value) = range_variables(rest).map_err(&syntax)?;
                let mut variables = Vec::new();
                variables.extend(key.clone());
                variables.extend(value.clone());
                self.frames.push(Frame::Range {
                    key,
                    value,
                    body: Vec::new(),
                    otherwise: None,
                    variables,
                });
            }
            Keyword::ElseIf(condition) => {
                let pipeline = self.pipeline(condition, condition_offset(condition))?;
                match self.frames.last_mut() {
                    Some(Frame::If {
                        branches,
                        condition,
                        current,
                        otherwise: None,
                        variables,
                    }) => {
                        variables.clear();
                        let previous = std::mem::replace(condition, pipeline);
                        branches.push((previous, std::mem::take(current)));
                    }
                    _ => return Err(syntax("else if without an open if")),
                }
            }
            Keyword::Else => match self.frames.last_mut() {
                Some(Frame::If {
                    branches,
                    condition,
                    current,
                    otherwise: otherwise @ None,
                    variables,
                }) => {
                    variables.clear();
                    branches.push((condition.clone(), std::mem::take(current)));
                    *otherwise = Some(Vec::new());
                }
                Some(
                    Frame::With {
                        otherwise: otherwise @ None,
                        variables,
                        ..
                    }
                    | Frame::Range {
                        otherwise: otherwise @ None,
                        variables,
                        ..
                    },
                ) => {
                    variables.clear();
                    *otherwise = Some(Vec::new());
                }
                _ => return Err(syntax("else without an open if, with or range")),
            },
            Keyword::End => {
                let part = match self.frames.pop() {
                    Some(Frame::If {
                        mut branches,
                        condition,
                        current,
                        otherwise,
                        ..
                    }) => {
                        if otherwise.is_none() {
                            branches.push((condition, current));
                        }
                        Part::If {
                            branches,
                            otherwise: otherwise.unwrap_or_default(),
                        }
                    }
                    Some(Frame::With {
                        pipeline,
                        body,
                        otherwise,
                        ..
                    }) => Part::With {
                        pipeline,
                        body,
                        otherwise: otherwise.unwrap_or_default(),
                    },
                    Some(Frame::Range {
                        key,
                        value,
                        body,
                        otherwise,
                        ..
                    }) => Part::Range {
                        key,
                        value,
                        body,
                        otherwise: otherwise.unwrap_or_default(),
                    },
                    None => return Err(syntax("end without an open if, with or range")),
                };
                self.parts().push(part);
            }
            Keyword::Assign {
                name,
                declare,
                rest,
                rest_offset,
            } => {
                if name.is_empty() {
                    return Err(syntax("cannot assign to $"));
                }
                if !declare && !self.declared(name) {
                    return Err(syntax(&format!("undefined variable \"${name}\"")));
                }
                let pipeline = self.pipeline(rest, offset + rest_offset)?;
                if declare {
                    self.declare(name);
                }
                self.parts().push(Part::Assign {
                    name: name.to_owned(),
                    declare,
                    pipeline,
                });
            }
            Keyword::Pipeline => {
                let pipeline = self.pipeline(body, offset)?;
                self.parts().push(Part::Action(pipeline));
            }
        }
        Ok(())
    }
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut builder = Builder {
            top: Vec::new(),
            frames: Vec::new(),
            variables: Vec::new(),
        };
        let mut rest = text;
        let mut offset = 0;
        let mut trim_next_text = false;
        while let Some(open) = rest.find("{{") {
            let mut literal = &rest[..open];
            if trim_next_text {
                literal = literal.trim_start();
            }
            let after_open = &rest[open + 2..];
            let (trim_before, body_start) = match after_open.strip_prefix("- ") {
                Some(_) => (true, 2),
                None => (false, 0),
            };
            if trim_before {
                literal = literal.trim_end();
            }
            if !literal.is_empty() {
                builder.parts().push(Part::Text(literal.to_owned()));
            }
            let action_offset = offset + open + 2 + body_start;
            let close = action::find_close(after_open, body_start).ok_or(TemplateError::Syntax {
                offset: offset + open,
                message: "unclosed action: missing }}".to_owned(),
            })?;
            let mut body = &after_open[body_start..close];
            trim_next_text = false;
            if let Some(stripped) = body.strip_suffix(" -") {
                body = stripped;
                trim_next_text = true;
            }
            builder.action(body, action_offset)?;
            offset += open + 2 + close + 2;
            rest = &after_open[close + 2..];
        }
        let literal = if trim_next_text { rest.trim_start() } else { rest };
        if !literal.is_empty() {
            builder.parts().push(Part::Text(literal.to_owned()));
        }
        if !builder.frames.is_empty() {
            return Err(TemplateError::Syntax {
                offset: text.len(),
                message: "unexpected end of template: an if, with or range has no end".to_owned(),
            });
        }
        Ok(Self { parts: builder.top })
    }

    /// Names of the data keys the template reads (`.name`, `$.name`, `index . "name"`).
    pub fn variables(&self) -> Vec<String> {
        let mut names = Vec::new();
        collect_fields(&self.parts, &mut names);
        names.sort();
        names.dedup();
        names
    }

    /// Executes the template over `values`.
    pub fn execute(&self, values: &BTreeMap<String, SecretValue>) -> Result<SecretValue, TemplateError> {
        let mut output = Zeroizing::new(Vec::new());
        let mut scope = Scope {
            values,
            dot: None,
            variables: Vec::new(),
        };
        run(&self.parts, &mut scope, &mut output)?;
        Ok(SecretValue::new(std::mem::take(&mut *output)))
    }
}

fn collect_fields(parts: &[Part], names: &mut Vec<String>) {
    for part in parts {
        match part {
            Part::Text(_) => {}
            Part::Action(pipeline) | Part::Assign { pipeline, .. } => pipeline.collect_fields(names),
            Part::If { branches, otherwise } => {
                for (condition, body) in branches {
                    condition.collect_fields(names);
                    collect_fields(body, names);
                }
                collect_fields(otherwise, names);
            }
            Part::With {
                pipeline,
                body,
                otherwise,
            } => {
                pipeline.collect_fields(names);
                collect_fields(body, names);
                collect_fields(otherwise, names);
            }
            Part::Range { body, otherwise, .. } => {
                collect_fields(body, names);
                collect_fields(otherwise, names);
            }
        }
    }
}

/// `range`'s declaration: `.`/`$` alone, `$v := .`, or `$k, $v := .` (the data is the only thing
/// to range over).
fn range_variables(rest: &str) -> Result<(Option<String>, Option<String>), &'static str> {
    const MESSAGE: &str = "range goes over the data only: range ., range $v := . or range $k, $v := .";
    let (declaration, target) = match rest.split_once(":=") {
        Some((declaration, target)) => (Some(declaration.trim()), target.trim()),
        None => (None, rest.trim()),
    };
    if target != "." && target != "$" {
        return Err(MESSAGE);
    }
    let name = |text: &str| -> Result<String, &'static str> {
        let name = text.trim().strip_prefix('$').ok_or(MESSAGE)?;
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            Ok(name.to_owned())
        } else {
            Err(MESSAGE)
        }
    };
    match declaration {
        None => Ok((None, None)),
        Some(declaration) => match declaration.split_once(',') {
            Some((key, value)) => Ok((Some(name(key)?), Some(name(value)?))),
            None => Ok((None, Some(name(declaration)?))),
        },
    }
}

/// What a running template sees: the data, `.` inside `with`, and the variables in scope.
struct Scope<'a> {
    values: &'a BTreeMap<String, SecretValue>,
    /// `None`: `.` is the data.
    dot: Option<Value>,
    variables: Vec<(String, Value)>,
}

impl Scope<'_> {
    fn variable(&self, name: &str) -> Result<Value, TemplateError> {
        self.variables
            .iter()
            .rev()
            .find(|(known, _)| known == name)
            .map(|(_, value)| value.clone())
            .ok_or_else(|| TemplateError::UnknownVariable {
                name: format!("${name}"),
            })
    }
}

fn run(parts: &[Part], scope: &mut Scope<'_>, output: &mut Bytes) -> Result<(), TemplateError> {
    let depth = scope.variables.len();
    for part in parts {
        match part {
            Part::Text(text) => output.extend_from_slice(text.as_bytes()),
            Part::Action(pipeline) => output.extend_from_slice(&pipeline.execute(scope)?.into_bytes()),
            Part::Assign {
                name,
                declare,
                pipeline,
            } => {
                let value = pipeline.execute(scope)?;
                // `$x := …` declares in this block (shadowing); `$x = …` sets the nearest one.
                let existing = scope.variables.iter_mut().rev().find(|(known, _)| known == name);
                match (declare, existing) {
                    (false, Some(slot)) => slot.1 = value,
                    _ => scope.variables.push((name.clone(), value)),
                }
            }
            Part::If { branches, otherwise } => {
                let mut chosen = otherwise;
                for (condition, body) in branches {
                    if condition.execute(scope)?.truthy() {
                        chosen = body;
                        break;
                    }
                }
                run(chosen, scope, output)?;
            }
            Part::With {
                pipeline,
                body,
                otherwise,
            } => {
                let value = pipeline.execute(scope)?;
                if value.truthy() {
                    let outer = scope.dot.replace(value);
                    let result = run(body, scope, output);
                    scope.dot = outer;
                    result?;
                } else {
                    run(otherwise, scope, output)?;
                }
            }
            Part::Range {
                key,
                value,
                body,
                otherwise,
            } => {
                if scope.dot.is_some() {
                    return Err(TemplateError::Function {
                        function: "range",
                        message: "range goes over the data, not over a value",
                    });
                }
                if scope.values.is_empty() {
                    run(otherwise, scope, output)?;
                }
                let values = scope.values;
                for (name, data) in values {
                    let item = Value::Bytes(Zeroizing::new(data.expose().to_vec()));
                    let outer = scope.variables.len();
                    if let Some(key) = key {
                        scope.variables.push((
                            key.clone(),
                            Value::Bytes(Zeroizing::new(name.as_bytes().to_vec())),
                        ));
                    }
                    if let Some(value) = value {
                        scope.variables.push((value.clone(), item.clone()));
                    }
                    scope.dot = Some(item);
                    let result = run(body, scope, output);
                    scope.dot = None;
                    scope.variables.truncate(outer);
                    result?;
                }
            }
        }
    }
    scope.variables.truncate(depth);
    Ok(())
}

impl Pipeline {
    fn collect_fields(&self, names: &mut Vec<String>) {
        for command in &self.0 {
            if command.function == Some(Function::Index) {
                if let [Operand::Dot | Operand::Variable(_), Operand::Literal(name)] = command.args.as_slice()
                {
                    names.push(name.clone());
                }
                continue;
            }
            for arg in &command.args {
                match arg {
                    Operand::Field(name) => names.push(name.clone()),
                    Operand::Nested(pipeline) => pipeline.collect_fields(names),
                    _ => {}
                }
            }
        }
    }

    fn collect_variable_uses(&self, names: &mut Vec<String>) {
        for command in &self.0 {
            for arg in &command.args {
                match arg {
                    Operand::Variable(name) => names.push(name.clone()),
                    Operand::Nested(pipeline) => pipeline.collect_variable_uses(names),
                    _ => {}
                }
            }
        }
    }

    fn execute(&self, scope: &Scope<'_>) -> Result<Value, TemplateError> {
        let mut previous: Option<Value> = None;
        for command in &self.0 {
            let mut args = Vec::with_capacity(command.args.len() + 1);
            if command.function == Some(Function::Index) {
                args.push(index(scope, &command.args)?);
            } else {
                for arg in &command.args {
                    args.push(operand(scope, arg)?);
                }
            }
            if let Some(piped) = previous.take() {
                args.push(piped);
            }
            previous = Some(match command.function {
                None | Some(Function::Index) => match args.len() {
                    1 => args.pop().unwrap_or(Value::Bytes(Bytes::default())),
                    _ => {
                        return Err(TemplateError::Function {
                            function: "value",
                            message: "a value cannot take arguments",
                        });
                    }
                },
                Some(function) => functions::call(function, args)?,
            });
        }
        Ok(previous.unwrap_or(Value::Bytes(Bytes::default())))
    }
}

fn operand(scope: &Scope<'_>, operand: &Operand) -> Result<Value, TemplateError> {
    match operand {
        Operand::Field(name) => scope
            .values
            .get(name)
            .map(|value| Value::Bytes(Zeroizing::new(value.expose().to_vec())))
            .ok_or_else(|| TemplateError::UnknownVariable { name: name.clone() }),
        Operand::Literal(text) => Ok(Value::Bytes(Zeroizing::new(text.as_bytes().to_vec()))),
        Operand::Bool(value) => Ok(Value::Bool(*value)),
        Operand::Nested(pipeline) => pipeline.execute(scope),
        Operand::Variable(name) if name.is_empty() => Err(TemplateError::Function {
            function: "value",
            message: "`$` alone can only be used as `index $ \"key\"` or `$.key`",
        }),
        Operand::Variable(name) => scope.variable(name),
        Operand::Dot => scope.dot.clone().ok_or(TemplateError::Function {
            function: "value",
            message: "`.` alone is the data here: use `.key` or `index . \"key\"`",
        }),
    }
}

fn index(scope: &Scope<'_>, args: &[Operand]) -> Result<Value, TemplateError> {
    match args {
        [Operand::Dot, Operand::Literal(name)] if scope.dot.is_none() => {
            operand(scope, &Operand::Field(name.clone()))
        }
        [Operand::Variable(root), Operand::Literal(name)] if root.is_empty() => {
            operand(scope, &Operand::Field(name.clone()))
        }
        _ => Err(TemplateError::Function {
            function: "index",
            message: "expected index . \"key\" (or index $ \"key\")",
        }),
    }
}
