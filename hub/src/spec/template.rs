//! ESO-style templates for `target.template.data`: Go-template syntax for the handful of forms
//! secret templates use, parsed when a spec is validated and executed by [`crate::render`].
//!
//! Supported: text with `{{ pipeline }}` actions (`{{-`/`-}}` trim whitespace), operands `.name`,
//! `"string"`, `(pipeline)`, `index . "key-with-dashes"`, pipes `a | f`, and the functions
//! `b64enc`, `b64dec`, `printf` (`%s`, `%v` and `%%` only), `quote`, `toJson`, `toString`, `upper`,
//! `lower`, `trim`.
//!
//! **Invariant:** errors name the template position and the function or variable, never a value.

use std::collections::BTreeMap;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::domain::SecretValue;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Action(Pipeline),
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
    Field(String),
    Dot,
    Literal(String),
    Nested(Pipeline),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    B64Enc,
    B64Dec,
    Printf,
    Quote,
    ToJson,
    Upper,
    ToString,
    Lower,
    Trim,
    Index,
}

const FUNCTIONS: &str = "b64enc, b64dec, printf, quote, toJson, toString, upper, lower, trim, index";

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

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
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
                parts.push(Part::Text(literal.to_owned()));
            }
            let action_offset = offset + open + 2 + body_start;
            let close = after_open.find("}}").ok_or(TemplateError::Syntax {
                offset: offset + open,
                message: "unclosed action: missing }}".to_owned(),
            })?;
            let mut body = &after_open[body_start..close];
            trim_next_text = false;
            if let Some(stripped) = body.strip_suffix(" -") {
                body = stripped;
                trim_next_text = true;
            }
            let mut parser = ActionParser {
                text: body,
                position: 0,
                base: action_offset,
            };
            let pipeline = parser.pipeline()?;
            parser.skip_space();
            if parser.position != body.len() {
                return Err(parser.error("unexpected text in action"));
            }
            parts.push(Part::Action(pipeline));
            offset += open + 2 + close + 2;
            rest = &after_open[close + 2..];
        }
        let literal = if trim_next_text { rest.trim_start() } else { rest };
        if !literal.is_empty() {
            parts.push(Part::Text(literal.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Names of the `.name` and `index . "name"` variables the template reads.
    pub fn variables(&self) -> Vec<String> {
        let mut names = Vec::new();
        for part in &self.parts {
            if let Part::Action(pipeline) = part {
                pipeline.collect_variables(&mut names);
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Executes the template over `values`.
    pub fn execute(&self, values: &BTreeMap<String, SecretValue>) -> Result<SecretValue, TemplateError> {
        let mut output = Zeroizing::new(Vec::new());
        for part in &self.parts {
            match part {
                Part::Text(text) => output.extend_from_slice(text.as_bytes()),
                Part::Action(pipeline) => output.extend_from_slice(&pipeline.execute(values)?),
            }
        }
        Ok(SecretValue::new(std::mem::take(&mut *output)))
    }
}

type Bytes = Zeroizing<Vec<u8>>;

impl Pipeline {
    fn collect_variables(&self, names: &mut Vec<String>) {
        for command in &self.0 {
            if command.function == Some(Function::Index) {
                if let [Operand::Dot, Operand::Literal(name)] = command.args.as_slice() {
                    names.push(name.clone());
                }
                continue;
            }
            for arg in &command.args {
                match arg {
                    Operand::Field(name) => names.push(name.clone()),
                    Operand::Nested(pipeline) => pipeline.collect_variables(names),
                    Operand::Dot | Operand::Literal(_) => {}
                }
            }
        }
    }

    fn execute(&self, values: &BTreeMap<String, SecretValue>) -> Result<Bytes, TemplateError> {
        let mut previous: Option<Bytes> = None;
        for command in &self.0 {
            let mut args = Vec::with_capacity(command.args.len() + 1);
            if command.function == Some(Function::Index) {
                args.push(index(values, &command.args)?);
            } else {
                for arg in &command.args {
                    args.push(operand(values, arg)?);
                }
            }
            if let Some(piped) = previous.take() {
                args.push(piped);
            }
            previous = Some(match command.function {
                None | Some(Function::Index) => match args.len() {
                    1 => args.pop().unwrap_or_default(),
                    _ => {
                        return Err(TemplateError::Function {
                            function: "value",
                            message: "a value cannot take arguments",
                        });
                    }
                },
                Some(function) => call(function, args)?,
            });
        }
        Ok(previous.unwrap_or_default())
    }
}

fn operand(values: &BTreeMap<String, SecretValue>, operand: &Operand) -> Result<Bytes, TemplateError> {
    match operand {
        Operand::Field(name) => values
            .get(name)
            .map(|value| Zeroizing::new(value.expose().to_vec()))
            .ok_or_else(|| TemplateError::UnknownVariable { name: name.clone() }),
        Operand::Literal(text) => Ok(Zeroizing::new(text.as_bytes().to_vec())),
        Operand::Nested(pipeline) => pipeline.execute(values),
        Operand::Dot => Err(TemplateError::Function {
            function: "value",
            message: "`.` alone can only be used as `index . \"key\"`",
        }),
    }
}

fn index(values: &BTreeMap<String, SecretValue>, args: &[Operand]) -> Result<Bytes, TemplateError> {
    match args {
        [Operand::Dot, Operand::Literal(name)] => operand(values, &Operand::Field(name.clone())),
        _ => Err(TemplateError::Function {
            function: "index",
            message: "expected index . \"key\"",
        }),
    }
}

fn call(function: Function, mut args: Vec<Bytes>) -> Result<Bytes, TemplateError> {
    let name = function.name();
    let one = |args: &mut Vec<Bytes>| -> Result<Bytes, TemplateError> {
        if args.len() == 1 {
            Ok(args.pop().unwrap_or_default())
        } else {
            Err(TemplateError::Function {
                function: name,
                message: "expects exactly one argument",
            })
        }
    };
    let text = |bytes: &Bytes| -> Result<String, TemplateError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| TemplateError::Function {
                function: name,
                message: "input is not UTF-8 text",
            })
    };
    Ok(match function {
        Function::B64Enc => {
            let input = one(&mut args)?;
            Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .encode(&*input)
                    .into_bytes(),
            )
        }
        Function::B64Dec => {
            let input = one(&mut args)?;
            let trimmed = input.trim_ascii();
            Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(trimmed)
                    .map_err(|_| TemplateError::Function {
                        function: name,
                        message: "input is not valid base64",
                    })?,
            )
        }
        Function::Upper => Zeroizing::new(text(&one(&mut args)?)?.to_uppercase().into_bytes()),
        Function::Lower => Zeroizing::new(text(&one(&mut args)?)?.to_lowercase().into_bytes()),
        Function::Trim => Zeroizing::new(one(&mut args)?.trim_ascii().to_vec()),
        // Sprig's toString: a value is already its bytes.
        Function::ToString => one(&mut args)?,
        Function::Quote | Function::ToJson => {
            let input = text(&one(&mut args)?)?;
            let quoted = Zeroizing::new(serde_json::Value::String(input).to_string());
            Zeroizing::new(quoted.as_bytes().to_vec())
        }
        Function::Printf => {
            if args.is_empty() {
                return Err(TemplateError::Function {
                    function: name,
                    message: "expects a format string",
                });
            }
            let format = text(&args.remove(0))?;
            let mut output = Zeroizing::new(Vec::new());
            let mut rest = args.into_iter();
            let mut chars = format.chars().peekable();
            while let Some(c) = chars.next() {
                if c != '%' {
                    let mut buffer = [0; 4];
                    output.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                    continue;
                }
                match chars.next() {
                    Some('%') => output.push(b'%'),
                    Some('s') | Some('v') => {
                        let arg = rest.next().ok_or(TemplateError::Function {
                            function: name,
                            message: "more verbs than arguments",
                        })?;
                        output.extend_from_slice(&arg);
                    }
                    _ => {
                        return Err(TemplateError::Function {
                            function: name,
                            message: "only the %s, %v and %% verbs are supported",
                        });
                    }
                }
            }
            if rest.next().is_some() {
                return Err(TemplateError::Function {
                    function: name,
                    message: "more arguments than verbs",
                });
            }
            output
        }
        // `index` needs the whole data map and is evaluated before any call; a lone argument
        // passes through.
        Function::Index => one(&mut args)?,
    })
}

impl Function {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "b64enc" => Self::B64Enc,
            "b64dec" => Self::B64Dec,
            "printf" => Self::Printf,
            "quote" => Self::Quote,
            "toJson" => Self::ToJson,
            "upper" => Self::Upper,
            "toString" => Self::ToString,
            "lower" => Self::Lower,
            "trim" => Self::Trim,
            "index" => Self::Index,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::B64Enc => "b64enc",
            Self::B64Dec => "b64dec",
            Self::Printf => "printf",
            Self::Quote => "quote",
            Self::ToJson => "toJson",
            Self::Upper => "upper",
            Self::ToString => "toString",
            Self::Lower => "lower",
            Self::Trim => "trim",
            Self::Index => "index",
        }
    }
}

struct ActionParser<'a> {
    text: &'a str,
    position: usize,
    base: usize,
}

impl ActionParser<'_> {
    fn error(&self, message: &str) -> TemplateError {
        TemplateError::Syntax {
            offset: self.base + self.position,
            message: message.to_owned(),
        }
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.position += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.position..].chars().next()
    }

    fn pipeline(&mut self) -> Result<Pipeline, TemplateError> {
        let mut commands = vec![self.command()?];
        loop {
            self.skip_space();
            if self.peek() == Some('|') {
                self.position += 1;
                commands.push(self.command()?);
            } else {
                return Ok(Pipeline(commands));
            }
        }
    }

    fn command(&mut self) -> Result<Command, TemplateError> {
        self.skip_space();
        let mut function = None;
        if self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            let start = self.position;
            let word = self.word().to_owned();
            function = Some(Function::parse(&word).ok_or_else(|| {
                self.position = start;
                self.error(&format!("unknown function {word:?}; known: {FUNCTIONS}"))
            })?);
        }
        let mut args = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                None | Some('|') | Some(')') => break,
                _ => args.push(self.operand()?),
            }
        }
        if function.is_none() && args.is_empty() {
            return Err(self.error("empty command"));
        }
        Ok(Command { function, args })
    }

    fn word(&mut self) -> &str {
        let start = self.position;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.position += 1;
        }
        &self.text[start..self.position]
    }

    fn operand(&mut self) -> Result<Operand, TemplateError> {
        match self.peek() {
            Some('.') => {
                self.position += 1;
                let name = self.word().to_owned();
                Ok(if name.is_empty() {
                    Operand::Dot
                } else {
                    Operand::Field(name)
                })
            }
            Some('"') => self.string().map(Operand::Literal),
            Some('(') => {
                self.position += 1;
                let pipeline = self.pipeline()?;
                self.skip_space();
                if self.peek() != Some(')') {
                    return Err(self.error("missing )"));
                }
                self.position += 1;
                Ok(Operand::Nested(pipeline))
            }
            _ => Err(self.error("expected .name, \"string\" or (pipeline)")),
        }
    }

    fn string(&mut self) -> Result<String, TemplateError> {
        let start = self.position;
        self.position += 1;
        let mut escaped = false;
        while let Some(c) = self.peek() {
            self.position += c.len_utf8();
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                let literal = &self.text[start..self.position];
                return serde_json::from_str(literal).map_err(|_| {
                    self.position = start;
                    self.error("invalid escape in string")
                });
            }
        }
        self.position = start;
        Err(self.error("unterminated string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), SecretValue::new(v.as_bytes())))
            .collect()
    }

    fn check(template: &str, data: &[(&str, &str)], expected: Result<&str, &str>) {
        let result = Template::parse(template).and_then(|parsed| parsed.execute(&values(data)));
        match (result, expected) {
            (Ok(output), Ok(want)) => {
                assert_eq!(
                    std::str::from_utf8(output.expose()).expect("utf-8"),
                    want,
                    "{template}"
                );
            }
            (Err(error), Err(want)) => {
                assert!(error.to_string().contains(want), "{template}: {error}");
            }
            (got, want) => panic!("{template}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn templates_render_like_eso() {
        let user = [("username", "bob"), ("password", "p\"w"), ("server", "r.io")];
        check("plain", &[], Ok("plain"));
        check("{{ .username }}@{{.server}}", &user, Ok("bob@r.io"));
        check("{{ .username | b64enc }}", &user, Ok("Ym9i"));
        check(
            r#"{{ printf "%s:%s" .username .password | b64enc }}"#,
            &user,
            Ok("Ym9iOnAidw=="),
        );
        check("{{ .password | toJson }}", &user, Ok(r#""p\"w""#));
        check(r#"{{ index . "server" | upper }}"#, &user, Ok("R.IO"));
        check("a {{- .username -}} b", &user, Ok("abobb"));
        check("{{ b64dec (b64enc .username) }}", &user, Ok("bob"));
        check(r#"{{ printf "100%%" }}"#, &[], Ok("100%"));
    }

    #[test]
    fn template_errors_name_the_problem_never_the_value() {
        let user = [("username", "s3cr3t-value")];
        check("{{ .missing }}", &user, Err(r#"refers to "missing""#));
        check("{{ .username | sha }}", &user, Err("unknown function \"sha\""));
        check("{{ .username ", &user, Err("unclosed action"));
        check(
            "{{ .username | b64dec }}",
            &user,
            Err("b64dec: input is not valid base64"),
        );
        check(r#"{{ printf "%d" .username }}"#, &user, Err("only the %s"));
        check(r#"{{ "unterminated }}"#, &user, Err("unterminated string"));
        let error = Template::parse("{{ .username | b64dec }}")
            .expect("parses")
            .execute(&values(&user))
            .expect_err("not base64");
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
    }

    #[test]
    fn variables_lists_every_name_read() {
        let template =
            Template::parse(r#"{{ .a }}{{ printf "%s" (.b | b64enc) }}{{ index . "c-d" }}"#).expect("parses");
        assert_eq!(template.variables(), vec!["a", "b", "c-d"]);
    }
}
