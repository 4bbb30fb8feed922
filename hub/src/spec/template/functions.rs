//! Template functions: Go's builtins that secret templates use and the sprig functions ESO's
//! documentation uses. Arguments come in order, a piped value last (`.x | default "y"` is
//! `default "y" .x`). Messages name the function and what was wrong, never a value.

use base64::Engine as _;
use zeroize::Zeroizing;

use super::certificates::{filter_pem, pkcs12};
use super::{Bytes, TemplateError, Value};

/// Every function name, for messages.
pub(super) const FUNCTIONS: &str = "b64enc, b64dec, printf, quote, squote, toJson, toString, upper, lower, trim, \
     trimPrefix, trimSuffix, replace, default, empty, contains, hasPrefix, hasSuffix, indent, nindent, index, eq, ne, \
     not, and, or, len, filterPEM, pkcs12cert, pkcs12certPass, pkcs12key, pkcs12keyPass";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    B64Enc,
    B64Dec,
    Printf,
    Quote,
    Squote,
    ToJson,
    ToString,
    Upper,
    Lower,
    Trim,
    TrimPrefix,
    TrimSuffix,
    Replace,
    Default,
    Empty,
    Contains,
    HasPrefix,
    HasSuffix,
    Indent,
    Nindent,
    Index,
    Eq,
    Ne,
    Not,
    And,
    Or,
    Len,
    FilterPem,
    Pkcs12Cert,
    Pkcs12CertPass,
    Pkcs12Key,
    Pkcs12KeyPass,
}

const NAMES: &[(&str, Function)] = &[
    ("b64enc", Function::B64Enc),
    ("b64dec", Function::B64Dec),
    ("printf", Function::Printf),
    ("quote", Function::Quote),
    ("squote", Function::Squote),
    ("toJson", Function::ToJson),
    ("toString", Function::ToString),
    ("upper", Function::Upper),
    ("lower", Function::Lower),
    ("trim", Function::Trim),
    ("trimPrefix", Function::TrimPrefix),
    ("trimSuffix", Function::TrimSuffix),
    ("replace", Function::Replace),
    ("default", Function::Default),
    ("empty", Function::Empty),
    ("contains", Function::Contains),
    ("hasPrefix", Function::HasPrefix),
    ("hasSuffix", Function::HasSuffix),
    ("indent", Function::Indent),
    ("nindent", Function::Nindent),
    ("index", Function::Index),
    ("eq", Function::Eq),
    ("ne", Function::Ne),
    ("not", Function::Not),
    ("and", Function::And),
    ("or", Function::Or),
    ("len", Function::Len),
    ("filterPEM", Function::FilterPem),
    ("pkcs12cert", Function::Pkcs12Cert),
    ("pkcs12certPass", Function::Pkcs12CertPass),
    ("pkcs12key", Function::Pkcs12Key),
    ("pkcs12keyPass", Function::Pkcs12KeyPass),
];

impl Function {
    pub(super) fn parse(name: &str) -> Option<Self> {
        NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, function)| *function)
    }

    fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, function)| *function == self)
            .map_or("?", |(name, _)| name)
    }
}

fn bytes(text: impl Into<Vec<u8>>) -> Value {
    Value::Bytes(Zeroizing::new(text.into()))
}

pub(super) fn call(function: Function, mut args: Vec<Value>) -> Result<Value, TemplateError> {
    let name = function.name();
    let error = |message: &'static str| TemplateError::Function {
        function: name,
        message,
    };
    let count = |args: &Vec<Value>, n: usize, message: &'static str| {
        if args.len() == n {
            Ok(())
        } else {
            Err(error(message))
        }
    };
    let text = |value: Value| -> Result<Zeroizing<String>, TemplateError> {
        let raw = value.into_bytes();
        std::str::from_utf8(&raw)
            .map(|text| Zeroizing::new(text.to_owned()))
            .map_err(|_| error("input is not UTF-8 text"))
    };
    let take = |args: &mut Vec<Value>| args.remove(0);
    Ok(match function {
        Function::B64Enc => {
            count(&args, 1, "expects one argument")?;
            bytes(base64::engine::general_purpose::STANDARD.encode(&*take(&mut args).into_bytes()))
        }
        Function::B64Dec => {
            count(&args, 1, "expects one argument")?;
            let input = take(&mut args).into_bytes();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(input.trim_ascii())
                .map_err(|_| error("input is not valid base64"))?;
            Value::Bytes(Zeroizing::new(decoded))
        }
        Function::Upper | Function::Lower => {
            count(&args, 1, "expects one argument")?;
            let input = text(take(&mut args))?;
            bytes(if function == Function::Upper {
                input.to_uppercase()
            } else {
                input.to_lowercase()
            })
        }
        Function::Trim => {
            count(&args, 1, "expects one argument")?;
            bytes(take(&mut args).into_bytes().trim_ascii().to_vec())
        }
        Function::TrimPrefix | Function::TrimSuffix => {
            count(&args, 2, "expects the prefix or suffix and the text")?;
            let affix = text(take(&mut args))?;
            let input = text(take(&mut args))?;
            let trimmed = if function == Function::TrimPrefix {
                input.strip_prefix(affix.as_str())
            } else {
                input.strip_suffix(affix.as_str())
            };
            bytes(trimmed.unwrap_or(input.as_str()).to_owned())
        }
        Function::Replace => {
            count(&args, 3, "expects the old text, the new text and the text")?;
            let old = text(take(&mut args))?;
            let new = text(take(&mut args))?;
            let input = text(take(&mut args))?;
            if old.is_empty() {
                return Err(error("the text to replace is empty"));
            }
            bytes(input.replace(old.as_str(), new.as_str()))
        }
        // Sprig's toString: a value is already its bytes.
        Function::ToString => {
            count(&args, 1, "expects one argument")?;
            Value::Bytes(take(&mut args).into_bytes())
        }
        Function::Quote | Function::ToJson => {
            count(&args, 1, "expects one argument")?;
            let input = take(&mut args);
            match (function, input) {
                (Function::ToJson, Value::Bool(value)) => bytes(value.to_string()),
                (_, input) => {
                    let input = text(input)?;
                    let quoted =
                        Zeroizing::new(serde_json::Value::String(input.as_str().to_owned()).to_string());
                    bytes(quoted.as_bytes().to_vec())
                }
            }
        }
        Function::Squote => {
            count(&args, 1, "expects one argument")?;
            let input = text(take(&mut args))?;
            bytes(format!("'{}'", input.as_str()))
        }
        Function::Default => {
            count(&args, 2, "expects the default and the value")?;
            let fallback = take(&mut args);
            let given = take(&mut args);
            if given.truthy() { given } else { fallback }
        }
        Function::Empty => {
            count(&args, 1, "expects one argument")?;
            Value::Bool(!take(&mut args).truthy())
        }
        Function::Contains | Function::HasPrefix | Function::HasSuffix => {
            count(&args, 2, "expects the text to look for and the text")?;
            let needle = take(&mut args).into_bytes();
            let haystack = take(&mut args).into_bytes();
            Value::Bool(match function {
                Function::Contains => {
                    needle.is_empty()
                        || haystack
                            .windows(needle.len())
                            .any(|window| window == needle.as_slice())
                }
                Function::HasPrefix => haystack.starts_with(&needle),
                _ => haystack.ends_with(&needle),
            })
        }
        Function::Indent | Function::Nindent => {
            count(&args, 2, "expects the width and the text")?;
            let width = text(take(&mut args))?
                .parse::<usize>()
                .ok()
                .filter(|width| *width <= 256)
                .ok_or_else(|| error("the width must be a number from 0 to 256"))?;
            let input = text(take(&mut args))?;
            let pad = " ".repeat(width);
            let indented = Zeroizing::new(format!("{pad}{}", input.replace('\n', &format!("\n{pad}"))));
            if function == Function::Nindent {
                bytes(format!("\n{}", indented.as_str()))
            } else {
                bytes(indented.as_bytes().to_vec())
            }
        }
        Function::Eq | Function::Ne => {
            if args.len() < 2 || (function == Function::Ne && args.len() != 2) {
                return Err(error(
                    "expects two values (eq: the first, then one or more to compare)",
                ));
            }
            let first = comparable(take(&mut args));
            let equal = args.into_iter().any(|other| comparable(other) == first);
            Value::Bool(if function == Function::Eq { equal } else { !equal })
        }
        Function::Not => {
            count(&args, 1, "expects one argument")?;
            Value::Bool(!take(&mut args).truthy())
        }
        // Go: `and` is the first false argument or the last; `or` the first true one or the last.
        Function::And | Function::Or => {
            if args.is_empty() {
                return Err(error("expects at least one argument"));
            }
            let want = function == Function::Or;
            let last = args.len() - 1;
            let position = args.iter().position(|arg| arg.truthy() == want).unwrap_or(last);
            args.swap_remove(position)
        }
        Function::Len => {
            count(&args, 1, "expects one argument")?;
            match take(&mut args) {
                Value::Bytes(value) => bytes(value.len().to_string()),
                Value::Bool(_) => return Err(error("a boolean has no length")),
            }
        }
        Function::FilterPem => {
            count(&args, 2, "expects the PEM block type and the text")?;
            let block_type = text(take(&mut args))?;
            let input = text(take(&mut args))?;
            let found = filter_pem(block_type.as_str(), input.as_str()).map_err(error)?;
            if found.is_empty() {
                return Err(error("no PEM block of that type"));
            }
            Value::Bytes(found)
        }
        Function::Pkcs12Cert | Function::Pkcs12Key => {
            count(
                &args,
                1,
                "expects the PKCS#12 archive (bytes: decode base64 first with b64dec)",
            )?;
            let archive = take(&mut args).into_bytes();
            Value::Bytes(pkcs12(function == Function::Pkcs12Key, &archive, "").map_err(error)?)
        }
        Function::Pkcs12CertPass | Function::Pkcs12KeyPass => {
            count(&args, 2, "expects the password and the PKCS#12 archive")?;
            let password = text(take(&mut args))?;
            let archive = take(&mut args).into_bytes();
            Value::Bytes(
                pkcs12(function == Function::Pkcs12KeyPass, &archive, password.as_str()).map_err(error)?,
            )
        }
        Function::Printf => printf(name, args)?,
        // `index` needs the whole data and is evaluated before any call; a lone argument passes
        // through.
        Function::Index => {
            count(&args, 1, "expects index . \"key\"")?;
            take(&mut args)
        }
    })
}

/// A value compared by `eq`/`ne`: booleans with booleans, bytes with bytes.
fn comparable(value: Value) -> (Option<bool>, Bytes) {
    match value {
        Value::Bool(value) => (Some(value), Bytes::default()),
        Value::Bytes(bytes) => (None, bytes),
    }
}

/// Go's `printf` for the verbs secret templates use: `%s`, `%v`, `%q` and `%%`.
fn printf(name: &'static str, mut args: Vec<Value>) -> Result<Value, TemplateError> {
    let error = |message: &'static str| TemplateError::Function {
        function: name,
        message,
    };
    if args.is_empty() {
        return Err(error("expects a format string"));
    }
    let format = args.remove(0).into_bytes();
    let format = std::str::from_utf8(&format).map_err(|_| error("input is not UTF-8 text"))?;
    let mut output: Bytes = Zeroizing::new(Vec::new());
    let mut rest = args.into_iter();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            let mut buffer = [0; 4];
            output.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            continue;
        }
        match chars.next() {
            Some('%') => output.push(b'%'),
            Some(verb @ ('s' | 'v' | 'q')) => {
                let arg = rest
                    .next()
                    .ok_or(error("more verbs than arguments"))?
                    .into_bytes();
                if verb == 'q' {
                    let text = std::str::from_utf8(&arg).map_err(|_| error("input is not UTF-8 text"))?;
                    let quoted = Zeroizing::new(serde_json::Value::String(text.to_owned()).to_string());
                    output.extend_from_slice(quoted.as_bytes());
                } else {
                    output.extend_from_slice(&arg);
                }
            }
            _ => return Err(error("only the %s, %v, %q and %% verbs are supported")),
        }
    }
    if rest.next().is_some() {
        return Err(error("more arguments than verbs"));
    }
    Ok(Value::Bytes(output))
}
