//! The `keyfleet` CLI and the real binary against a hub: every command end to end, bulk
//! enrollment, `apply` from stdin and a pipe, and docs/enrollment.md's GitOps loop as written.

use super::*;

#[tokio::test]
async fn the_cli_drives_the_admin_api_end_to_end() {
    let hub = start().await;
    let out = hub
        .cli(&[
            "cluster",
            "add",
            "prod-eu-1",
            "--label",
            "env=prod",
            "-l",
            "region=eu",
            "--token-ttl",
            "2h",
        ])
        .await
        .unwrap();
    assert!(out.starts_with("cluster/prod-eu-1 created\n"), "{out}");
    let token = out
        .split_whitespace()
        .find(|word| word.starts_with("kfe_"))
        .expect("the token is printed");
    assert_eq!(token.len(), 47);
    assert!(out.contains("expires "), "{out}");
    assert!(
        out.contains(&format!(
            "KEYFLEET_AGENT_HUB_URL={} KEYFLEET_AGENT_ENROLLMENT_TOKEN={token} keyfleet-agent",
            hub.url()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "kubectl -n keyfleet-system create secret generic keyfleet-agent-enrollment \
             --from-literal=token={token}\n"
        )),
        "the Kubernetes install steps name the token: {out}"
    );
    assert!(
        out.contains(&format!(
            "helm install keyfleet-agent deploy/charts/keyfleet-agent -n keyfleet-system --set hub.url={}\n",
            hub.url()
        )),
        "{out}"
    );
    assert!(!out.contains(ADMIN_TOKEN), "the admin token is never printed");
    hub.cli(&["cluster", "add", "dev-1", "-l", "env=dev"])
        .await
        .unwrap();

    let table = hub.cli(&["cluster", "list"]).await.unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME ") && lines[0].contains("STATE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("dev-1 ") && lines[2].starts_with("prod-eu-1 "),
        "{table}"
    );
    assert!(
        lines[2].contains("pending") && lines[2].contains("env=prod,region=eu"),
        "{table}"
    );
    let json = hub
        .cli(&[
            "cluster",
            "list",
            "--selector",
            "env in (prod),region",
            "-o",
            "json",
        ])
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "prod-eu-1");
    assert_eq!(listed[0]["labels"]["region"], "eu");

    let out = hub
        .cli(&["cluster", "label", "dev-1", "ring=canary", "env-"])
        .await
        .unwrap();
    assert_eq!(out, "cluster/dev-1 labeled: ring=canary\n");
    let out = hub
        .cli(&[
            "cluster",
            "token",
            "dev-1",
            "--agent-hub-url",
            "https://hub.example:7443",
        ])
        .await
        .unwrap();
    assert!(
        out.contains("KEYFLEET_AGENT_HUB_URL=https://hub.example:7443 "),
        "{out}"
    );

    // apply -f of the example, twice, and a dry run.
    let example = examples().join("regcred.yaml");
    let example = example.to_str().unwrap();
    let out = hub.cli(&["apply", "-f", example]).await.unwrap();
    assert_eq!(
        out,
        "secretstore/shared-kv created (generation 1)\nfleetsecret/regcred created (generation 1)\n"
    );
    let out = hub.cli(&["apply", "-f", example, "--dry-run"]).await.unwrap();
    assert_eq!(
        out,
        "secretstore/shared-kv unchanged (generation 1) (dry run)\nfleetsecret/regcred unchanged (generation 1) (dry run)\n"
    );
    let out = hub
        .cli(&["apply", "-f", examples().to_str().unwrap()])
        .await
        .unwrap();
    assert!(
        out.contains("fleetsecret/regcred-templated created (generation 1)"),
        "{out}"
    );

    let out = hub.cli(&["get", "fleetsecrets"]).await.unwrap();
    assert!(
        out.lines()
            .any(|line| line.starts_with("regcred ") && line.contains("kubernetes.io/dockerconfigjson")),
        "{out}"
    );
    let out = hub.cli(&["get", "stores", "-o", "yaml"]).await.unwrap();
    assert!(
        out.contains("vaultUrl: https://shared-kv.vault.azure.net/"),
        "{out}"
    );

    // status -o json: the FleetSecret and the clusters it targets.
    let json = hub.cli(&["status", "regcred", "-o", "json"]).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["name"], "regcred");
    assert_eq!(status["targeted"], 1, "{status}");
    assert_eq!(status["offline"], 1, "{status}");
    assert_eq!(status["rollout"]["state"], "none", "no revision yet: {status}");
    let table = hub.cli(&["status"]).await.unwrap();
    assert!(table.starts_with("FLEETSECRET "), "{table}");
    assert!(table.lines().any(|line| line.starts_with("regcred ")), "{table}");

    let out = hub.cli(&["sync-now", "--store", "shared-kv"]).await.unwrap();
    assert_eq!(out, "polled 1 store(s) (shared-kv): 2 new version(s)\n");
    let out = hub
        .cli(&["delete", "fleetsecret", "regcred-templated"])
        .await
        .unwrap();
    assert_eq!(out, "fleetsecret/regcred-templated deleted\n");

    // Exit codes scripts can trust.
    let error = hub
        .cli(&["cluster", "show", "nope"])
        .await
        .expect_err("unknown cluster");
    assert_eq!(error.exit_code(), 4, "{error}");
    assert!(error.to_string().contains("cluster \"nope\""), "{error}");
    let error = hub
        .cli(&["rollout", "pause", "regcred"])
        .await
        .expect_err("no revision yet");
    assert_eq!(error.exit_code(), 1, "{error}");
    let bad = hub.dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: FleetSecret\nname: x\n").unwrap();
    let error = hub
        .cli(&["apply", "-f", bad.to_str().unwrap()])
        .await
        .expect_err("invalid spec");
    assert_eq!(error.exit_code(), 1);
    assert!(error.to_string().contains("bad.yaml:"), "{error}");
    let error = hub
        .cli(&["apply", "-f", "/nonexistent/specs"])
        .await
        .expect_err("missing file");
    assert_eq!(error.exit_code(), 2, "{error}");
    let error = hub
        .cli_as("kfa_wrong", &["cluster", "list"])
        .await
        .expect_err("refused");
    assert_eq!(error.exit_code(), 3, "{error}");
    let mut wrong = hub.client_args(ADMIN_TOKEN);
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    wrong.hub_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let error = cli::connect(&wrong).await.expect_err("nothing listens");
    assert_eq!(error.exit_code(), 3, "{error}");
    wrong.insecure = false;
    let error = cli::connect(&wrong)
        .await
        .expect_err("plaintext without --insecure");
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(error.to_string().contains("--insecure"), "{error}");
    assert!(
        !format!("{wrong:?}").contains(ADMIN_TOKEN),
        "the admin token never prints"
    );
}

/// The cluster file of the bulk enrollment tests.
const CLUSTERS: &str = "\
clusters:
  - name: prod-eu-1
    labels: {env: prod, region: eu}
  - name: prod-us-1
    labels: {env: prod, region: us}
  - name: dev-1
";

#[tokio::test]
async fn bulk_enrollment_is_idempotent_and_reports_every_cluster() {
    let hub = start().await;
    let file = hub.dir.path().join("clusters.yaml");
    std::fs::write(&file, CLUSTERS).unwrap();
    let file = file.to_str().unwrap();

    // First run: every cluster created, each with its own token, as JSON.
    let json = hub
        .cli(&[
            "cluster",
            "add",
            "-f",
            file,
            "-o",
            "json",
            "--agent-hub-url",
            "https://hub.example:7443",
        ])
        .await
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&json).unwrap();
    let created = created.as_array().unwrap();
    assert_eq!(created.len(), 3, "{json}");
    let mut tokens = std::collections::BTreeSet::new();
    for (item, name) in created.iter().zip(["prod-eu-1", "prod-us-1", "dev-1"]) {
        assert_eq!(item["name"], name, "file order: {json}");
        assert_eq!(item["outcome"], "created", "{json}");
        assert_eq!(item["hubUrl"], "https://hub.example:7443");
        assert!(item["error"].is_null());
        let token = item["token"].as_str().unwrap();
        assert!(token.starts_with("kfe_") && token.len() == 47, "{token}");
        tokens.insert(token.to_owned());
        let expires = item["expires"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(expires).is_ok(), "{expires}");
    }
    assert_eq!(tokens.len(), 3, "one token per cluster");
    assert_eq!(created[0]["labels"]["region"], "eu");
    let clusters = hub.store.list_clusters(None).await.unwrap();
    assert_eq!(clusters.len(), 3);
    let changes = hub.changed();

    // Second run, the same file from stdin: nothing changes, no token is issued.
    let out = hub
        .cli_stdin(&["cluster", "add", "-f", "-"], CLUSTERS)
        .await
        .unwrap();
    assert_eq!(
        out,
        "cluster/prod-eu-1 unchanged\ncluster/prod-us-1 unchanged\ncluster/dev-1 unchanged\n\
         3 cluster(s): 0 created, 0 relabelled, 3 unchanged, 0 failed\n"
    );
    assert!(!out.contains("kfe_"), "{out}");
    assert_eq!(hub.changed(), changes, "an unchanged run writes nothing");

    // Third run: one relabelled (the file's labels exactly), one new, one invalid, one revoked.
    hub.cli(&["cluster", "add", "old-1"]).await.unwrap();
    hub.cli(&["cluster", "revoke", "old-1"]).await.unwrap();
    let changed = "\
clusters:
  - name: prod-eu-1
    labels: {env: prod, region: eu}
  - name: prod-us-1
    labels: {env: prod, ring: canary}
  - name: prod-ap-1
    labels: {env: prod, region: ap}
  - name: Not_A_Name
  - name: old-1
";
    let (out, result) = hub
        .cli_output(ADMIN_TOKEN, &["cluster", "add", "-f", "-"], changed)
        .await;
    let error = result.expect_err("two clusters fail");
    assert_eq!(error.exit_code(), 1, "{error}");
    assert_eq!(error.to_string(), "2 of 5 clusters failed");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "cluster/prod-eu-1 unchanged", "{out}");
    assert_eq!(
        lines[1], "cluster/prod-us-1 relabelled: env=prod,ring=canary",
        "{out}"
    );
    assert_eq!(lines[2], "cluster/prod-ap-1 created", "{out}");
    assert!(
        lines[3].starts_with("  enrollment token (shown once, single use, expires ")
            && lines[3].contains(" kfe_"),
        "{out}"
    );
    assert!(lines[4].starts_with("cluster/Not_A_Name failed: "), "{out}");
    assert_eq!(
        lines[5], "cluster/old-1 failed: cluster \"old-1\" is revoked",
        "{out}"
    );
    assert_eq!(
        lines[6], "5 cluster(s): 1 created, 1 relabelled, 1 unchanged, 2 failed",
        "{out}"
    );
    assert!(lines[7].contains("docs/enrollment.md"), "{out}");
    let prod_us = hub.store.cluster_by_name("prod-us-1").await.unwrap().unwrap();
    assert_eq!(
        prod_us
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["env=prod", "ring=canary"],
        "relabelled to exactly the file's labels"
    );

    // Again as JSON: the failures are reported there too, with their reason.
    let (json, result) = hub
        .cli_output(ADMIN_TOKEN, &["cluster", "add", "-f", "-", "-o", "json"], changed)
        .await;
    assert_eq!(result.expect_err("still failing").exit_code(), 1);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let outcomes: Vec<(&str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["name"].as_str().unwrap(), item["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("prod-eu-1", "unchanged"),
            ("prod-us-1", "unchanged"),
            ("prod-ap-1", "unchanged"),
            ("Not_A_Name", "failed"),
            ("old-1", "failed"),
        ]
    );
    assert!(json[4]["error"].as_str().unwrap().contains("revoked"), "{json}");
    assert!(json[3]["token"].is_null() && json[0]["token"].is_null(), "{json}");

    // --reissue-pending: a fresh token for listed clusters that never enrolled.
    let out = hub
        .cli_stdin(&["cluster", "add", "-f", "-", "--reissue-pending"], CLUSTERS)
        .await
        .unwrap();
    assert_eq!(
        out.matches("  enrollment token (shown once, single use, expires ")
            .count(),
        3,
        "{out}"
    );
    assert!(
        out.contains("cluster/dev-1 unchanged\n  enrollment token"),
        "{out}"
    );
    assert!(
        out.contains("cluster/prod-us-1 relabelled: env=prod,region=us\n"),
        "{out}"
    );
    assert!(!out.contains(ADMIN_TOKEN));

    // Usage errors are found before any request.
    let error = hub
        .cli_stdin(
            &["cluster", "add", "-f", "-"],
            "clusters:\n  - name: a\n  - name: a\n",
        )
        .await
        .expect_err("duplicate");
    assert_eq!(error.exit_code(), 2, "{error}");
    assert!(Cli::try_parse_from(["keyfleet", "cluster", "add", "a", "-f", "x.yaml"]).is_err());
    assert!(Cli::try_parse_from(["keyfleet", "cluster", "add", "--reissue-pending", "a"]).is_err());
    assert!(Cli::try_parse_from(["keyfleet", "cluster", "add"]).is_err());
}

#[tokio::test]
async fn single_cluster_add_and_token_print_json_for_scripts() {
    let hub = start().await;
    let json = hub
        .cli(&["cluster", "add", "prod-eu-1", "-l", "env=prod", "-o", "json"])
        .await
        .unwrap();
    let added: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(added["name"], "prod-eu-1");
    assert_eq!(added["outcome"], "created");
    assert_eq!(added["labels"]["env"], "prod");
    assert_eq!(added["hubUrl"], hub.url());
    assert!(added["token"].as_str().unwrap().starts_with("kfe_"));
    assert!(added["expires"].is_string());
    let yaml = hub
        .cli(&["cluster", "token", "prod-eu-1", "-o", "yaml", "--token-ttl", "1h"])
        .await
        .unwrap();
    let token: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(token["name"], "prod-eu-1");
    assert!(token["token"].as_str().unwrap().starts_with("kfe_"));
    assert_ne!(token["token"], added["token"], "a new token");
    let error = hub
        .cli(&["cluster", "add", "prod-eu-1", "-o", "json"])
        .await
        .expect_err("exists");
    assert_eq!(error.exit_code(), 1, "a single add stays strict: {error}");
}

#[tokio::test]
async fn apply_reads_stdin() {
    let hub = start().await;
    let spec = std::fs::read_to_string(examples().join("regcred.yaml")).unwrap();
    let out = hub.cli_stdin(&["apply", "-f", "-"], &spec).await.unwrap();
    assert_eq!(
        out,
        "secretstore/shared-kv created (generation 1)\nfleetsecret/regcred created (generation 1)\n"
    );
    let error = hub
        .cli_stdin(&["apply", "-f", "-"], "kind: FleetSecret\nname: x\n")
        .await
        .expect_err("invalid");
    assert!(error.to_string().contains("<stdin>:"), "{error}");
    let error = hub
        .cli_stdin(&["apply", "-f", "-", "-f", "-"], &spec)
        .await
        .expect_err("twice");
    assert_eq!(error.exit_code(), 2);
}

/// The real binary reads a pipe: `keyfleet apply -f - < regcred.yaml`.
#[tokio::test]
async fn the_binary_applies_specs_from_a_pipe() {
    let hub = start().await;
    let token_file = hub.dir.path().join("admin-token");
    // The hub's own token file format: the CLI sends the token part of `name:token`.
    std::fs::write(&token_file, format!("# admins\nplatform-admin:{ADMIN_TOKEN}\n")).unwrap();
    let spec = std::fs::File::open(examples().join("regcred.yaml")).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .args([
            "apply",
            "-f",
            "-",
            "--dry-run",
            "--hub",
            &hub.url(),
            "--insecure",
            "--admin-token-file",
        ])
        .arg(&token_file)
        .stdin(std::process::Stdio::from(spec))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("fleetsecret/regcred created (generation 1) (dry run)"),
        "{stdout}"
    );
}

/// The fenced block of `docs/enrollment.md` that starts with `first_line`.
fn enrollment_doc_block(first_line: &str) -> String {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/enrollment.md"))
            .unwrap();
    let start = doc
        .find(first_line)
        .unwrap_or_else(|| panic!("docs/enrollment.md lacks {first_line:?}"));
    let block = &doc[start..];
    block[..block.find("```").unwrap()].to_owned()
}

/// docs/enrollment.md's GitOps loop, run as written with the real binary against a hub: one
/// Secret manifest per new cluster, nothing on a second run.
#[tokio::test]
async fn the_documented_gitops_loop_writes_one_secret_per_new_cluster() {
    if std::process::Command::new("jq")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("jq is not installed: the documented loop needs it (apt-get install jq)");
    }
    let hub = start().await;
    let work = hub.dir.path().join("gitops");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("clusters.yaml"), enrollment_doc_block("clusters:\n")).unwrap();
    let script = enrollment_doc_block("set -o pipefail\n");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_keyfleet"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = || {
        tokio::process::Command::new("bash")
            .args(["-c", &script])
            .current_dir(&work)
            .env("PATH", &path)
            .env("KEYFLEET_HUB", hub.url())
            .env("KEYFLEET_INSECURE", "true")
            .env("KEYFLEET_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
    };
    let output = run().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["prod-eu-1", "prod-eu-2", "dev-1"] {
        let file = work.join(format!("clusters/{name}/keyfleet/enrollment-secret.json"));
        let secret: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["metadata"]["name"], "keyfleet-agent-enrollment");
        assert_eq!(secret["metadata"]["namespace"], "keyfleet-system");
        assert!(
            secret["stringData"]["token"]
                .as_str()
                .unwrap()
                .starts_with("kfe_"),
            "{secret}"
        );
        std::fs::remove_file(&file).unwrap();
    }
    assert!(
        !work.join("enrollment.json").exists(),
        "the tokens file is removed"
    );
    let output = run().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !work
            .join("clusters/dev-1/keyfleet/enrollment-secret.json")
            .exists(),
        "a second run issues no token"
    );
}
