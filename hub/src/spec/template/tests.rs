//! Template tests: rendering as Go's `text/template` with sprig renders (the expected outputs are
//! what ESO's v2 engine prints for the same template and data), and errors that never show a value.

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
    check(r#"{{ printf "%q" .password }}"#, &user, Ok(r#""p\"w""#));
    check("{{ printf \"}}\" }}", &[], Ok("}}"));
}

#[test]
fn control_structures_follow_go() {
    let data = [
        ("env", "prod"),
        ("host", "db.internal"),
        ("port", ""),
        ("flag", "false"),
    ];
    check(
        r#"{{ if eq .env "prod" }}live{{ else }}test{{ end }}"#,
        &data,
        Ok("live"),
    );
    check(
        r#"{{ if eq .env "dev" }}d{{ else if eq .env "prod" "staging" }}p{{ else }}x{{ end }}"#,
        &data,
        Ok("p"),
    );
    check(
        r#"{{ if eq .env "dev" }}d{{ else if eq .env "qa" }}q{{ end }}!"#,
        &data,
        Ok("!"),
    );
    // Empty is false; any other string (even "false") is true, as in Go.
    check("{{ if .port }}:{{ .port }}{{ end }}", &data, Ok(""));
    check("{{ if .flag }}set{{ end }}", &data, Ok("set"));
    check("{{ if not .port }}none{{ end }}", &data, Ok("none"));
    check(
        r#"{{ if and .host (ne .env "dev") }}ok{{ end }}"#,
        &data,
        Ok("ok"),
    );
    check(r#"{{ or .port "5432" }}"#, &data, Ok("5432"));
    check(
        "{{ with .host }}host={{ . }}{{ end }}",
        &data,
        Ok("host=db.internal"),
    );
    check(
        "{{ with .port }}port={{ . }}{{ else }}no port{{ end }}",
        &data,
        Ok("no port"),
    );
    check(
        r#"{{ $h := .host }}{{ $p := .port | default "5432" }}{{ $h }}:{{ $p }}"#,
        &data,
        Ok("db.internal:5432"),
    );
    // `=` sets the outer variable; `:=` inside a block shadows it until `end`.
    check(
        r#"{{ $x := "a" }}{{ if .host }}{{ $x = "b" }}{{ end }}{{ $x }}"#,
        &data,
        Ok("b"),
    );
    check(
        r#"{{ $x := "a" }}{{ if .host }}{{ $x := "c" }}{{ $x }}{{ end }}{{ $x }}"#,
        &data,
        Ok("ca"),
    );
    check(r#"{{ $.env }}{{ index $ "host" }}"#, &data, Ok("proddb.internal"));
    check("{{/* a comment */}}x", &data, Ok("x"));
    check(
        "{{ true }}{{ eq .env .env }}{{ empty .port }}",
        &data,
        Ok("truetruetrue"),
    );
    check("{{- if .host }}\n  a\n{{- end }}", &data, Ok("\n  a"));
    // range over the data: keys in sorted order, `.` the value (ESO's templating guide).
    check(
        "{{- range $k, $v := . }}\n{{ $k }}: {{ $v | quote }}\n{{- end }}",
        &data,
        Ok("\nenv: \"prod\"\nflag: \"false\"\nhost: \"db.internal\"\nport: \"\""),
    );
    check(
        "{{ range . }}[{{ . }}]{{ end }}",
        &[("b", "2"), ("a", "1")],
        Ok("[1][2]"),
    );
    check(
        "{{ range $v := $ }}{{ $v }}{{ else }}none{{ end }}",
        &[],
        Ok("none"),
    );
    check(
        "{{ range $k, $v := . }}{{ end }}{{ $k }}",
        &data,
        Err("undefined variable \"$k\""),
    );
}

#[test]
fn sprig_functions_render_like_sprig() {
    let data = [
        ("url", "https://registry.io/v2/"),
        ("name", "App"),
        ("cert", "l1\nl2"),
    ];
    check(
        r#"{{ .url | trimPrefix "https://" | trimSuffix "/" }}"#,
        &data,
        Ok("registry.io/v2"),
    );
    check(
        r#"{{ .url | replace "/" "_" }}"#,
        &data,
        Ok("https:__registry.io_v2_"),
    );
    check(r#"{{ .missing | default "x" }}"#, &[("missing", "")], Ok("x"));
    check(r#"{{ .name | default "x" }}"#, &data, Ok("App"));
    check(
        "{{ .name | squote }} {{ .name | quote }}",
        &data,
        Ok(r#"'App' "App""#),
    );
    check(r#"{{ if contains "registry" .url }}y{{ end }}"#, &data, Ok("y"));
    check(
        r#"{{ if hasPrefix "https" .url }}y{{ end }}{{ if hasSuffix "x" .url }}n{{ end }}"#,
        &data,
        Ok("y"),
    );
    check(r#"ca:{{ .cert | nindent 2 }}"#, &data, Ok("ca:\n  l1\n  l2"));
    check(r#"{{ .cert | indent 1 }}"#, &data, Ok(" l1\n l2"));
    check("{{ len .name }}", &data, Ok("3"));
    check("{{ .name | lower | upper }}", &data, Ok("APP"));
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
    check(r#"{{ "unterminated }}"#, &user, Err("unclosed action"));
    check(
        "{{ if .username }}x",
        &user,
        Err("an if, with or range has no end"),
    );
    check("{{ end }}", &user, Err("end without an open if, with or range"));
    check("{{ else }}", &user, Err("else without an open if, with or range"));
    check(
        "{{ range .username }}{{ end }}",
        &user,
        Err("range goes over the data only"),
    );
    check(
        "{{ with .username }}{{ range . }}{{ end }}{{ end }}",
        &user,
        Err("range goes over the data, not over a value"),
    );
    check(
        "{{ template \"x\" }}",
        &user,
        Err("define, template and block are not supported"),
    );
    check("{{ $y }}", &user, Err("undefined variable \"$y\""));
    check(
        "{{ if .username }}{{ $v := 1 }}{{ end }}{{ .username | len }}",
        &user,
        Ok("12"),
    );
    check(
        "{{ if .username }}{{ $v := .username }}{{ end }}{{ $v }}",
        &user,
        Err("undefined variable \"$v\""),
    );
    check("{{ .a.b }}", &user, Err("nested fields are not supported"));
    check("{{ . }}", &user, Err("`.` alone is the data here"));
    check(
        r#"{{ replace "" "x" .username }}"#,
        &user,
        Err("replace: the text to replace is empty"),
    );
    for template in ["{{ .username | b64dec }}", "{{ .username | indent .username }}"] {
        let error = Template::parse(template)
            .expect("parses")
            .execute(&values(&user))
            .expect_err("fails");
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
    }
}

#[test]
fn variables_lists_every_name_read() {
    let template = Template::parse(
        r#"{{ .a }}{{ printf "%s" (.b | b64enc) }}{{ index . "c-d" }}{{ if .e }}{{ with $.f }}{{ . }}{{ end }}{{ else }}{{ index $ "g" }}{{ end }}"#,
    )
    .expect("parses");
    assert_eq!(template.variables(), vec!["a", "b", "c-d", "e", "f", "g"]);
}

/// A Key Vault certificate read as its secret in PEM form (`contentType: application/x-pem-file`):
/// private key and certificate chain in one value, split as ESO's `filterPEM` splits it.
#[test]
fn filter_pem_splits_a_key_vault_pem_certificate() {
    let key = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvuNMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ";
    let cert = "MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJRTESMBAGA1UEChMJQmFsdGltb3JlMRMwEQYDVQQLEwpDeWJlclRydXN0MSIwIAYDVQQDExlCYWx0aW1vcmUgQ3liZXJUcnVzdCBSb290";
    let chain = "MIIDXTCCAkWgAwIBAgIJAJC1HiIAZAiIMA0GCSqGSIb3DQEBBQUAMEUxCzAJBgNVBAYTAkFVMRMwEQYDVQQIDApTb21lLVN0YXRl";
    // Key Vault writes 64-column lines; this input wraps at 76 to show the re-encoding.
    let wrap = |body: &str, width: usize| {
        body.as_bytes()
            .chunks(width)
            .map(|chunk| std::str::from_utf8(chunk).expect("ascii"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let bundle = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        wrap(key, 76),
        wrap(cert, 76),
        wrap(chain, 76)
    );
    let pem = |kind: &str, body: &str| {
        format!(
            "-----BEGIN {kind}-----\n{}\n-----END {kind}-----\n",
            wrap(body, 64)
        )
    };
    let data = [("tls", bundle.as_str())];
    check(
        r#"{{ .tls | filterPEM "CERTIFICATE" }}"#,
        &data,
        Ok(&format!(
            "{}{}",
            pem("CERTIFICATE", cert),
            pem("CERTIFICATE", chain)
        )),
    );
    check(
        r#"{{ .tls | filterPEM "PRIVATE KEY" }}"#,
        &data,
        Ok(&pem("PRIVATE KEY", key)),
    );
    check(
        r#"{{ .tls | filterPEM "EC PRIVATE KEY" }}"#,
        &data,
        Err("filterPEM: no PEM block of that type"),
    );
    check(
        r#"{{ .tls | filterPEM "CERTIFICATE" }}"#,
        &[("tls", "-----BEGIN CERTIFICATE-----\nAAAA\n")],
        Err("filterPEM: a PEM block has no END line"),
    );
}

/// ESO's PKCS#12 helpers over archives made by OpenSSL (`hub/tests/fixtures/pkcs12/README.md`):
/// a PFX certificate's secret as Key Vault serves it (base64), decoded and split into `tls.crt`
/// and `tls.key` exactly as OpenSSL prints them.
#[test]
fn pkcs12_archives_split_like_eso() {
    let fixture = |name: &str| {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/pkcs12")
                .join(name),
        )
        .expect("fixture")
    };
    let (crt, key) = (fixture("tls.crt.pem"), fixture("tls.key.pem"));
    let modern = fixture("tls.p12.b64").replace('\n', "");
    let legacy = fixture("tls-3des.p12.b64").replace('\n', "");
    // The documented ESO template (docs/snippets/azkv-pkcs12-cert-external-secret.yaml).
    check("{{ .tls | b64dec | pkcs12cert }}", &[("tls", &modern)], Ok(&crt));
    check("{{ .tls | b64dec | pkcs12key }}", &[("tls", &modern)], Ok(&key));
    check(
        r#"{{ .tls | b64dec | pkcs12certPass "s3cret" }}"#,
        &[("tls", &legacy)],
        Ok(&crt),
    );
    check(
        r#"{{ .tls | b64dec | pkcs12keyPass "s3cret" }}"#,
        &[("tls", &legacy)],
        Ok(&key),
    );
    check(
        r#"{{ .tls | b64dec | pkcs12keyPass "wrong" }}"#,
        &[("tls", &legacy)],
        Err("pkcs12keyPass: input is not a PKCS#12 archive that this password opens"),
    );
    check(
        "{{ .tls | pkcs12cert }}",
        &[("tls", "not an archive")],
        Err("pkcs12cert: input is not a PKCS#12 archive"),
    );
}

/// Found by `props_spec` (a spec byte replaced by U+0085, NEL): the action parser stepped over
/// whitespace one byte at a time and sliced inside the two-byte character. Only Go's four ASCII
/// spaces separate an action's words; other whitespace is a syntax error naming its offset.
#[test]
fn non_ascii_whitespace_in_an_action_is_a_syntax_error_not_a_panic() {
    let server = [("server", "r.io")];
    check("{{ .server | quote }}", &server, Ok("\"r.io\""));
    check("{{\t.server\r\n| quote }}", &server, Ok("\"r.io\""));
    for space in ['\u{85}', '\u{a0}', '\u{2003}', '\u{3000}'] {
        for template in [
            format!("{{{{{space}.server | quote }}}}"),
            format!("{{{{ .server{space}| quote }}}}"),
            format!("{{{{ .server |{space}quote }}}}"),
        ] {
            let error = Template::parse(&template)
                .and_then(|parsed| parsed.execute(&values(&server)))
                .expect_err(&template);
            assert!(
                matches!(error, TemplateError::Syntax { .. }),
                "{template}: {error}"
            );
        }
    }
}
