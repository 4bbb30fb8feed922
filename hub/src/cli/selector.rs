//! kubectl-style label selectors (`env=prod,region in (eu,us),!legacy`) → [`LabelSelector`], for
//! `cluster list -l`.

use crate::domain::{LabelRequirement, LabelSelector, SelectorOperator};

/// Parses a kubectl-style label selector: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
/// `k` (exists) and `!k` (does not exist), separated by commas.
pub fn parse_selector(text: &str) -> Result<LabelSelector, String> {
    let mut selector = LabelSelector::default();
    let mut depth = 0usize;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    let bad = |part: &str, why: &str| format!("invalid selector {text:?} at {:?}: {why}", part.trim());
    for part in parts {
        let term = part.trim();
        if term.is_empty() {
            return Err(bad(part, "empty requirement"));
        }
        let requirement = |key: &str, operator, values: Vec<String>| LabelRequirement {
            key: key.trim().to_owned(),
            operator,
            values,
        };
        if let Some((key, value)) = term.split_once("!=") {
            check_key(key).map_err(|why| bad(part, why))?;
            selector.match_expressions.push(requirement(
                key,
                SelectorOperator::NotIn,
                vec![value.trim().to_owned()],
            ));
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            check_key(key).map_err(|why| bad(part, why))?;
            selector
                .match_labels
                .insert(key.trim().to_owned(), value.trim().to_owned());
        } else if let Some((key, values, operator)) = set_term(term) {
            check_key(key).map_err(|why| bad(part, why))?;
            let values: Vec<String> = values
                .split(',')
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .collect();
            if values.is_empty() {
                return Err(bad(part, "a set needs at least one value"));
            }
            selector
                .match_expressions
                .push(requirement(key, operator, values));
        } else if let Some(key) = term.strip_prefix('!') {
            check_key(key).map_err(|why| bad(part, why))?;
            selector
                .match_expressions
                .push(requirement(key, SelectorOperator::DoesNotExist, Vec::new()));
        } else {
            check_key(term).map_err(|why| bad(part, why))?;
            selector
                .match_expressions
                .push(requirement(term, SelectorOperator::Exists, Vec::new()));
        }
    }
    Ok(selector)
}

/// `key in (a,b)` / `key notin (a,b)` → (key, "a,b", operator).
fn set_term(term: &str) -> Option<(&str, &str, SelectorOperator)> {
    let values = term.strip_suffix(')')?;
    let (head, values) = values.split_once('(')?;
    let head = head.trim_end();
    if let Some(key) = head.strip_suffix(" notin") {
        return Some((key, values, SelectorOperator::NotIn));
    }
    head.strip_suffix(" in")
        .map(|key| (key, values, SelectorOperator::In))
}

/// The characters a label key may hold, so that a typo is a usage error before any call.
fn check_key(key: &str) -> Result<(), &'static str> {
    let key = key.trim();
    if key.is_empty() {
        return Err("empty label key");
    }
    if key
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err("label keys hold letters, digits, '-', '_', '.' and '/'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelRequirement {
        LabelRequirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn selectors_parse_as_kubectl_writes_them() {
        use SelectorOperator::*;
        let selector =
            parse_selector("env=prod, tier==web,region in (eu, us),ring notin (canary),!legacy,gpu,zone!=a")
                .expect("valid selector");
        assert_eq!(
            selector.match_labels,
            [
                ("env".to_owned(), "prod".to_owned()),
                ("tier".to_owned(), "web".to_owned())
            ]
            .into()
        );
        assert_eq!(
            selector.match_expressions,
            vec![
                requirement("region", In, &["eu", "us"]),
                requirement("ring", NotIn, &["canary"]),
                requirement("legacy", DoesNotExist, &[]),
                requirement("gpu", Exists, &[]),
                requirement("zone", NotIn, &["a"]),
            ]
        );
    }

    #[test]
    fn bad_selectors_name_the_requirement() {
        for (text, fragment) in [
            ("env=prod,,x", "\"\": empty requirement"),
            ("=prod", "empty label key"),
            ("region in ()", "at least one value"),
            ("re gion", "label keys hold"),
        ] {
            let error = parse_selector(text).expect_err(text);
            assert!(error.contains(fragment), "{text}: {error}");
        }
    }
}
