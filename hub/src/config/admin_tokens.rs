//! The admin token file (`--admin-token-file`): named admin tokens, one `name:token` per line.
//!
//! **Decisions** (docs/security.md, "Admin ⇄ hub"): a name is `[a-z0-9._-]{1,64}`, unique in the
//! file, and audited as `token:<name>`; a token is at least 32 bytes, unique, and a line that
//! breaks a rule is refused by its line number, never its content. A bare token (a line without a
//! valid `name:` prefix, the format before names) is still accepted, named
//! `token-<first 8 hex characters of its SHA-256>` with a warning, so an upgrade does not lock
//! admins out; a token that itself holds `:` must therefore be written with a name. Only the
//! SHA-256 of each token is kept. The CLI reads the same file (first token line, `name:` prefix
//! removed: [`token_of_line`]), so one file serves the hub and an admin.

use std::path::Path;

use crate::domain::Sha256;

/// Shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// Longest admin token name.
const MAX_NAME: usize = 64;

/// One admin token as the hub keeps it: its name and the SHA-256 of the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokenDigest {
    /// Audited as `token:<name>`.
    pub name: String,
    /// SHA-256 of the token (a random token of 32+ bytes: a plain digest is safe).
    pub sha256: Sha256,
    /// Whether the line had no name (the name is derived).
    pub derived_name: bool,
}

impl std::fmt::Debug for AdminTokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokenDigest({})", self.name)
    }
}

/// Why the admin token file is refused. Names lines, never tokens.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenFileError {
    /// The file cannot be read.
    #[error("read --admin-token-file {path}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// No token line.
    #[error("--admin-token-file {path} holds no token (one name:token per line)")]
    Empty {
        /// The file.
        path: String,
    },
    /// A line breaks a rule.
    #[error("--admin-token-file {path}: line {line}: {problem}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

/// The token of a token file line: the part after a valid `name:` prefix, else the whole
/// (trimmed) line. What the CLI sends.
pub fn token_of_line(line: &str) -> &str {
    split_line(line.trim()).1
}

/// (name, token) of a trimmed line; the name is `None` for a bare token.
fn split_line(line: &str) -> (Option<&str>, &str) {
    match line.split_once(':') {
        Some((name, token)) if valid_name(name.trim()) => (Some(name.trim()), token.trim()),
        _ => (None, line),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a token file's text (`path` only names it in errors).
pub fn parse_admin_tokens(text: &str, path: &str) -> Result<Vec<AdminTokenDigest>, AdminTokenFileError> {
    let mut tokens: Vec<(AdminTokenDigest, usize)> = Vec::new();
    let refuse = |line: usize, problem: String| AdminTokenFileError::Line {
        path: path.to_owned(),
        line,
        problem,
    };
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, token) = split_line(line);
        if token.len() < MIN_ADMIN_TOKEN_BYTES {
            return Err(refuse(
                number,
                format!(
                    "the token is {} bytes; at least {MIN_ADMIN_TOKEN_BYTES} are required (e.g. \
                     `openssl rand -hex 32`)",
                    token.len()
                ),
            ));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(refuse(number, "the token holds whitespace".to_owned()));
        }
        let sha256 = Sha256::of(token.as_bytes());
        let (name, derived_name) = match name {
            Some(name) => (name.to_owned(), false),
            None => (format!("token-{}", &sha256.to_hex()[..8]), true),
        };
        if let Some((_, first)) = tokens.iter().find(|(known, _)| known.name == name) {
            return Err(refuse(
                number,
                format!("the name {name:?} is already used on line {first}"),
            ));
        }
        if let Some((_, first)) = tokens.iter().find(|(known, _)| known.sha256 == sha256) {
            return Err(refuse(number, format!("the same token as line {first}")));
        }
        tokens.push((
            AdminTokenDigest {
                name,
                sha256,
                derived_name,
            },
            number,
        ));
    }
    if tokens.is_empty() {
        return Err(AdminTokenFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(tokens.into_iter().map(|(token, _)| token).collect())
}

/// Reads and parses `--admin-token-file`.
pub fn read_admin_tokens(path: &Path) -> Result<Vec<AdminTokenDigest>, AdminTokenFileError> {
    let shown = path.display().to_string();
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        AdminTokenFileError::Read {
            path: shown.clone(),
            source,
        }
    })?);
    parse_admin_tokens(&text, &shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "kfa_alice-0123456789abcdef0123456789";
    const CI: &str = "kfa_ci-pipeline-0123456789abcdef01234";

    #[test]
    fn named_tokens_keep_their_names_and_only_digests() {
        let text = format!("# admins\nalice:{ALICE}\n\n  ci.deploy_1-x : {CI}  \n");
        let tokens = parse_admin_tokens(&text, "tokens").unwrap();
        let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["alice", "ci.deploy_1-x"]);
        assert_eq!(tokens[0].sha256, Sha256::of(ALICE.as_bytes()));
        assert_eq!(tokens[1].sha256, Sha256::of(CI.as_bytes()));
        assert!(!tokens[0].derived_name);
        let printed = format!("{tokens:?}");
        assert!(!printed.contains("kfa_"), "{printed}");
    }

    #[test]
    fn a_bare_token_gets_a_derived_name() {
        let tokens = parse_admin_tokens(&format!("{ALICE}\n"), "tokens").unwrap();
        let digest = Sha256::of(ALICE.as_bytes()).to_hex();
        assert_eq!(tokens[0].name, format!("token-{}", &digest[..8]));
        assert!(tokens[0].derived_name);
        // A prefix that is not a valid name is part of a bare token.
        let token = format!("Not_A_Name:{ALICE}");
        let tokens = parse_admin_tokens(&token, "tokens").unwrap();
        assert_eq!(tokens[0].sha256, Sha256::of(token.as_bytes()));
    }

    #[test]
    fn bad_lines_are_refused_by_number_never_by_content() {
        let short = "kfa_short-token-0123456789";
        let cases = [
            (format!("# c\nalice:{short}\n"), "line 2: the token is 26 bytes"),
            (short.to_owned(), "line 1: the token is 26 bytes"),
            (
                format!("alice:{ALICE}\nalice:{CI}\n"),
                "line 2: the name \"alice\" is already used on line 1",
            ),
            (
                format!("alice:{ALICE}\nbob:{ALICE}\n"),
                "line 2: the same token as line 1",
            ),
            (
                format!("alice:{ALICE} {CI}"),
                "line 1: the token holds whitespace",
            ),
            ("# nothing\n\n".to_owned(), "holds no token"),
        ];
        for (text, expected) in cases {
            let message = parse_admin_tokens(&text, "tokens").unwrap_err().to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
            for secret in [short, ALICE, CI] {
                assert!(!message.contains(secret), "{message}");
            }
        }
        let long_name = "a".repeat(65);
        let tokens = parse_admin_tokens(&format!("{long_name}:{ALICE}"), "t").unwrap();
        assert!(tokens[0].derived_name, "a 65-character prefix is no name");
    }

    #[test]
    fn the_cli_sends_the_token_part_of_a_line() {
        assert_eq!(token_of_line(&format!(" alice:{ALICE}\n")), ALICE);
        assert_eq!(token_of_line(ALICE), ALICE);
        assert_eq!(token_of_line("Bad:x"), "Bad:x");
    }
}
