//! Property tests of the spec parser (`spec::parse_files`, `spec::parse_stored`): arbitrary text,
//! YAML-shaped noise and mutations of valid specs never panic, every rejection is a list of
//! `file:line: [path: ]message` issues with a line inside the file, and whatever is accepted
//! survives the store's round trip (canonical YAML parses back to the same spec).
//!
//! Bounded: a fixed number of cases per property (a few seconds in all), run by `cargo test`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use keyfleet_hub::spec::{self, SpecError, SpecFile};
use proptest::prelude::*;

const FILE: &str = "specs/fleet.yaml";

const STORE: &str = "\
kind: SecretStore
name: shared-kv
provider:
  azurekv:
    vaultUrl: https://shared-kv.vault.azure.net
    authType: WorkloadIdentity
    pollInterval: 30s
    rateLimit: { perSecond: 50, burst: 100 }
";

const REGCRED: &str = "\
kind: FleetSecret
name: regcred
storeRef: shared-kv
data:
  - secretKey: .dockerconfigjson
    remoteRef: { key: acr-pull, version: \"\", property: \"\" }
target:
  name: regcred
  type: kubernetes.io/dockerconfigjson
  namespaces: [default, ci]
  template: { metadata: { labels: { app.kubernetes.io/part-of: registry } } }
  creationPolicy: Owner
  deletionPolicy: Retain
clusters:
  matchLabels: { env: prod }
rollout:
  waves: [{ matchLabels: { ring: canary } }, { percent: 10 }, { percent: 100 }]
  pauseOnErrorRate: 1%
";

/// Valid documents the mutations start from: the design example, the shipped examples and a
/// FleetSecret with selectors, `dataFrom` and a template.
fn seeds() -> Vec<String> {
    vec![
        format!("{STORE}---\n{REGCRED}"),
        REGCRED.to_owned(),
        include_str!("../../deploy/examples/regcred.yaml").to_owned(),
        include_str!("../../deploy/examples/regcred-from-properties.yaml").to_owned(),
        "\
kind: FleetSecret
name: app-config
storeRef: shared-kv
data:
  - secretKey: password
    remoteRef:
      key: app-password
      decodingStrategy: Base64
dataFrom:
  - extract: { key: app-json }
  - find: { name: { regexp: \"^app-\" }, tags: { team: fleet } }
target:
  namespaceSelector:
    matchExpressions:
      - { key: team, operator: In, values: [a, b] }
      - { key: legacy, operator: DoesNotExist }
  template:
    mergePolicy: Merge
    data:
      url: \"postgres://app:{{ .password }}@db/app\"
clusters:
  matchExpressions: [{ key: env, operator: NotIn, values: [dev] }]
"
        .to_owned(),
    ]
}

fn parse(content: &str) -> Result<Vec<spec::LoadedSpec>, SpecError> {
    let files = [SpecFile {
        name: FILE.to_owned(),
        content: content.to_owned(),
    }];
    let known: BTreeSet<String> = ["shared-kv".to_owned()].into();
    spec::parse_files(&files, &known)
}

/// The properties every outcome must have.
fn check_outcome(content: &str) -> Result<(), TestCaseError> {
    match parse(content) {
        Ok(specs) => {
            for loaded in specs {
                prop_assert_eq!(&loaded.file, FILE);
                prop_assert!(loaded.line >= 1, "document line {} of {:?}", loaded.line, content);
                // What the store keeps parses back to the same spec.
                let again =
                    spec::parse_stored(loaded.spec.kind(), loaded.spec.name(), &loaded.canonical_yaml);
                prop_assert!(
                    again.as_ref().is_ok_and(|spec| *spec == loaded.spec),
                    "canonical YAML does not round-trip:\n{}\n{:?}",
                    loaded.canonical_yaml,
                    again
                );
            }
        }
        Err(SpecError::Invalid(issues)) => {
            prop_assert!(!issues.is_empty(), "rejected without an issue: {content:?}");
            // A syntax error may point one line past the last (end of input).
            let last_line = content.split('\n').count() + 1;
            for issue in &issues {
                prop_assert_eq!(&issue.file, FILE);
                prop_assert!(
                    (1..=last_line).contains(&issue.line),
                    "issue line {} outside 1..={last_line}: {issue}\n{content:?}",
                    issue.line
                );
                prop_assert!(!issue.message.trim().is_empty(), "empty message: {issue:?}");
                let shown = issue.to_string();
                prop_assert!(shown.starts_with(&format!("{FILE}:{}: ", issue.line)), "{shown}");
                prop_assert!(!shown.contains('\n'), "one line per issue: {shown:?}");
            }
        }
        Err(other @ SpecError::Read { .. }) => {
            prop_assert!(false, "parse_files read a file: {other}");
        }
    }
    Ok(())
}

/// Edits of a valid document: the kinds of mistakes people make in YAML, and worse.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Indent(usize, bool),
    ReplaceByte(usize, char),
    Insert(usize, String),
    Truncate(usize),
    ReplaceValue(usize, String),
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        Just("---\n".to_owned()),
        Just("...\n".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: ".to_owned()),
        Just("!!str ".to_owned()),
        Just("!custom ".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("|\n".to_owned()),
        Just(">-\n".to_owned()),
        Just("\t".to_owned()),
        Just("#".to_owned()),
        Just("? ".to_owned()),
        Just("%YAML 1.2\n".to_owned()),
        Just("\u{feff}".to_owned()),
        Just("ünïcødé".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("-0x1p4".to_owned()),
        Just(".inf".to_owned()),
        Just("{{ .x | b64dec }}".to_owned()),
        Just("{{".to_owned()),
        // Quoted scalars with escaped line breaks: keys and values that reach messages.
        Just("\"a\\nb\": ".to_owned()),
        Just("\"x\\r\\ny\"".to_owned()),
        "[a-zA-Z0-9 ._/:-]{0,12}",
        any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("~".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("true".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("101".to_owned()),
        Just("1e999".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"\"".to_owned()),
        Just("http://plain.example".to_owned()),
        Just("Nope".to_owned()),
        Just("a..b".to_owned()),
        Just("0s".to_owned()),
        Just("1000000h".to_owned()),
        Just("150%".to_owned()),
        "[a-zA-Z0-9 ._/:%-]{0,20}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), any::<bool>()).prop_map(|(a, more)| Mutation::Indent(a, more)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Mutation::ReplaceByte(a, c)),
        (any::<usize>(), token()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), value()).prop_map(|(a, v)| Mutation::ReplaceValue(a, v)),
    ]
}

/// The nearest char boundary at or before `at % (len + 1)`.
fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let pick = |n: usize| n % lines.len();
    match mutation {
        Mutation::DeleteLine(n) => {
            let n = pick(*n);
            lines.remove(n);
        }
        Mutation::DuplicateLine(n) => {
            let n = pick(*n);
            let line = lines[n].clone();
            lines.insert(n, line);
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (pick(*a), pick(*b));
            lines.swap(a, b);
        }
        Mutation::Indent(n, more) => {
            let n = pick(*n);
            let line = &mut lines[n];
            if *more {
                line.insert_str(0, "  ");
            } else if let Some(rest) = line.strip_prefix(' ') {
                *line = rest.to_owned();
            }
        }
        Mutation::ReplaceValue(n, value) => {
            let n = pick(*n);
            let line = &mut lines[n];
            if let Some(colon) = line.find(": ") {
                line.truncate(colon + 2);
                line.push_str(value);
            } else {
                line.push_str(": ");
                line.push_str(value);
            }
        }
        Mutation::ReplaceByte(at, c) => {
            let mut text = lines.join("\n");
            let start = boundary(&text, *at);
            let end = text[start..]
                .chars()
                .next()
                .map_or(start, |old| start + old.len_utf8());
            text.replace_range(start..end, &c.to_string());
            return text;
        }
        Mutation::Insert(at, token) => {
            let mut text = lines.join("\n");
            let at = boundary(&text, *at);
            text.insert_str(at, token);
            return text;
        }
        Mutation::Truncate(at) => {
            let mut text = lines.join("\n");
            let at = boundary(&text, *at);
            text.truncate(at);
            return text;
        }
    }
    lines.join("\n")
}

/// 256 cases per property; `PROPTEST_CASES=100000` for a longer hunt.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(256),
        // Shrinking is for finding a small counterexample once a property fails; keep it short.
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn the_seeds_are_valid() {
    for seed in seeds() {
        assert!(parse(&seed).is_ok(), "{seed}\n{:?}", parse(&seed).err());
        check_outcome(&seed).unwrap();
    }
}

#[test]
fn issues_stay_on_one_line() {
    for content in [
        // A regex syntax error is a multi-line drawing in the regex crate.
        &seeds()[4].replace("^app-", "[^app-"),
        // Line breaks inside quoted keys and values.
        &REGCRED.replace("storeRef: shared-kv", "\"store\\nRef\": shared-kv"),
        &REGCRED.replace("creationPolicy: Owner", "creationPolicy: \"Own\\ner\""),
    ] {
        let error = parse(content).expect_err("invalid");
        for line in error.to_string().lines() {
            assert!(line.starts_with(&format!("{FILE}:")), "{error}");
        }
        check_outcome(content).unwrap();
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any text at all.
    #[test]
    fn arbitrary_text_never_panics_and_issues_name_file_and_line(content in any::<String>()) {
        check_outcome(&content)?;
    }

    /// Text made of YAML's own punctuation, keys of the spec vocabulary and odd values.
    #[test]
    fn yaml_shaped_noise_never_panics(
        parts in prop::collection::vec(
            prop_oneof![
                token(),
                value(),
                Just("\n".to_owned()),
                Just("\n  ".to_owned()),
                prop::sample::select(vec![
                    "kind: ", "SecretStore", "FleetSecret", "name: ", "storeRef: ", "data:",
                    "dataFrom:", "target:", "template:", "rollout:", "waves:", "percent: ",
                    "matchExpressions:", "operator: ", "remoteRef:", "secretKey: ", "provider:",
                    "azurekv:", "vaultUrl: ", "authType: ", "namespaces:",
                ]).prop_map(str::to_owned),
            ],
            0..60,
        )
    ) {
        check_outcome(&parts.concat())?;
    }

    /// One to four edits of a valid document.
    #[test]
    fn mutated_specs_never_panic_and_issues_name_file_and_line(
        seed in prop::sample::select(seeds()),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let content = mutations.iter().fold(seed, |text, mutation| apply(&text, mutation));
        check_outcome(&content)?;
    }

    /// A stored spec that was tampered with is refused with an issue, never a panic.
    #[test]
    fn parse_stored_of_mutated_canonical_yaml_never_panics(
        seed in prop::sample::select(seeds()),
        mutation in mutation(),
    ) {
        for loaded in parse(&seed).unwrap() {
            let tampered = apply(&loaded.canonical_yaml, &mutation);
            match spec::parse_stored(loaded.spec.kind(), loaded.spec.name(), &tampered) {
                Ok(spec) => prop_assert_eq!(spec.name(), loaded.spec.name()),
                Err(SpecError::Invalid(issues)) => prop_assert!(!issues.is_empty()),
                Err(other) => prop_assert!(false, "{}", other),
            }
        }
    }
}
