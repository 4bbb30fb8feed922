//! The inside of one `{{ … }}` action: pipelines, commands and operands.

use super::{Command, Function, Operand, Pipeline, TemplateError, functions::FUNCTIONS};

/// The byte index of the `}}` that closes an action whose body starts at `start` of `text`,
/// skipping `}}` inside quoted and raw strings.
pub(super) fn find_close(text: &str, start: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = start;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let byte = bytes[i];
        match quote {
            Some(b'"') if byte == b'\\' => i += 1,
            Some(open) if byte == open => quote = None,
            Some(_) => {}
            None if byte == b'"' || byte == b'`' => quote = Some(byte),
            None if byte == b'}' && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

/// Why `word` is not a function.
fn unknown_function(word: &str) -> String {
    format!("unknown function {word:?}; known: {FUNCTIONS}")
}

pub(super) struct ActionParser<'a> {
    text: &'a str,
    position: usize,
    base: usize,
}

impl<'a> ActionParser<'a> {
    pub(super) fn new(text: &'a str, base: usize) -> Self {
        Self {
            text,
            position: 0,
            base,
        }
    }

    pub(super) fn error(&self, message: &str) -> TemplateError {
        TemplateError::Syntax {
            offset: self.base + self.position,
            message: message.to_owned(),
        }
    }

    pub(super) fn at_end(&self) -> bool {
        self.position == self.text.len()
    }

    /// Skips the space between an action's words: Go's `text/template` counts only ASCII space,
    /// tab, CR and LF (any other whitespace, `U+0085` say, is a syntax error there and here).
    pub(super) fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| matches!(c, ' ' | '\t' | '\r' | '\n')) {
            self.position += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.text[self.position..].chars().next()
    }

    pub(super) fn pipeline(&mut self) -> Result<Pipeline, TemplateError> {
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
            match word.as_str() {
                // Go's constants, not functions.
                "true" | "false" => self.position = start,
                _ => {
                    function = Some(Function::parse(&word).ok_or_else(|| {
                        self.position = start;
                        self.error(&unknown_function(&word))
                    })?);
                }
            }
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

    /// A data key after `.`: letters, digits and `_` (other keys: `index . "key-with-dashes"`).
    fn field(&mut self) -> Result<Operand, TemplateError> {
        let name = self.word().to_owned();
        if self.peek() == Some('.') {
            return Err(self.error("nested fields are not supported: the data is a flat map of keys"));
        }
        Ok(if name.is_empty() {
            Operand::Dot
        } else {
            Operand::Field(name)
        })
    }

    fn operand(&mut self) -> Result<Operand, TemplateError> {
        match self.peek() {
            Some('.') => {
                self.position += 1;
                self.field()
            }
            Some('$') => {
                self.position += 1;
                let name = self.word().to_owned();
                if name.is_empty() && self.peek() == Some('.') {
                    self.position += 1;
                    return match self.field()? {
                        Operand::Dot => Err(self.error("expected a key after $.")),
                        field => Ok(field),
                    };
                }
                Ok(Operand::Variable(name))
            }
            Some('"') => self.string().map(Operand::Literal),
            Some('`') => self.raw_string().map(Operand::Literal),
            // Numbers are their text (`nindent 2`, `eq .port "5432"` compares text).
            Some(c) if c.is_ascii_digit() || c == '-' => {
                let start = self.position;
                self.position += 1;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                    self.position += 1;
                }
                Ok(Operand::Literal(self.text[start..self.position].to_owned()))
            }
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
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.position;
                match self.word() {
                    "true" => Ok(Operand::Bool(true)),
                    "false" => Ok(Operand::Bool(false)),
                    word => {
                        let message = if Function::parse(word).is_some() {
                            format!("function {word:?} as an argument: put it in parentheses")
                        } else {
                            unknown_function(word)
                        };
                        self.position = start;
                        Err(self.error(&message))
                    }
                }
            }
            _ => Err(self.error("expected .name, $variable, \"string\" or (pipeline)")),
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

    fn raw_string(&mut self) -> Result<String, TemplateError> {
        let start = self.position;
        match self.text[start + 1..].find('`') {
            Some(end) => {
                self.position = start + 1 + end + 1;
                Ok(self.text[start + 1..start + 1 + end].to_owned())
            }
            None => Err(self.error("unterminated raw string")),
        }
    }
}
