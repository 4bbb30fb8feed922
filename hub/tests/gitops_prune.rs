//! GitOps with the real `keyfleet` binary against a real hub: `apply -f DIR --prune` deletes the
//! FleetSecrets and SecretStores the directory no longer defines (`--dry-run` only lists them),
//! `-l` limits pruning to specs whose `metadata.labels` match, a store still read by a FleetSecret
//! that stays is kept, and `delete store` refuses a store in use.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use support::TestDb;
use support::serve::{ServeEnv, ServeProcess};

const KEYFLEET: &str = env!("CARGO_BIN_EXE_keyfleet");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `keyfleet ARGS` against `replica`, with the admin token.
async fn keyfleet(env: &ServeEnv, replica: &ServeProcess, args: &[&str]) -> Run {
    let dir = env.dir.path();
    let output = tokio::process::Command::new(KEYFLEET)
        .args(args)
        .args([
            "--hub",
            &format!("https://localhost:{}", replica.grpc_addr.port()),
            "--hub-ca",
            dir.join("tls/ca.pem").to_str().unwrap(),
            "--admin-token-file",
            dir.join("admin-token").to_str().unwrap(),
        ])
        .env_remove("KEYFLEET_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run keyfleet");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

async fn ok(env: &ServeEnv, replica: &ServeProcess, args: &[&str]) -> String {
    let run = keyfleet(env, replica, args).await;
    assert_eq!(run.code, 0, "keyfleet {args:?}: {}{}", run.stdout, run.stderr);
    run.stdout
}

fn store(name: &str, team: &str, vault_url: &url::Url) -> String {
    format!(
        "apiVersion: keyfleet.io/v1\nkind: SecretStore\nmetadata:\n  name: {name}\n  labels: {{ team: {team} }}\nspec:\n  provider:\n    azurekv:\n      vaultUrl: {}\n      authType: WorkloadIdentity\n",
        vault_url.as_str().trim_end_matches('/')
    )
}

fn fleet_secret(name: &str, team: &str, store: &str) -> String {
    format!(
        "apiVersion: keyfleet.io/v1\nkind: FleetSecret\nmetadata:\n  name: {name}\n  labels: {{ team: {team} }}\nspec:\n  storeRef: {store}\n  data: [{{ secretKey: token, remoteRef: {{ key: {name}-token }} }}]\n  target: {{ namespaces: [default] }}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Names listed by `keyfleet get KIND -o json`.
async fn names(env: &ServeEnv, replica: &ServeProcess, kind: &str) -> Vec<String> {
    let out = ok(env, replica, &["get", kind, "-o", "json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_prune_removes_what_the_directory_no_longer_defines() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let hub = ServeProcess::start(&env, "hub-a", "127.0.0.1:0".parse::<SocketAddr>().unwrap()).await;
    let url = kv.vault_url().clone();
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    write(dir, "a-kv.yaml", &store("a-kv", "platform", &url));
    write(dir, "b-kv.yaml", &store("b-kv", "platform", &url));
    write(dir, "one.yaml", &fleet_secret("one", "platform", "a-kv"));
    write(dir, "two.yaml", &fleet_secret("two", "platform", "b-kv"));
    let dir_arg = dir.to_str().unwrap();
    ok(&env, &hub, &["apply", "-f", dir_arg]).await;
    // Another team's specs on the same hub: c-kv and three, and three reads d-kv, a store labelled
    // like the platform team's.
    let other = tempfile::tempdir().unwrap();
    write(other.path(), "c-kv.yaml", &store("c-kv", "other", &url));
    write(other.path(), "d-kv.yaml", &store("d-kv", "platform", &url));
    write(
        other.path(),
        "three.yaml",
        &fleet_secret("three", "other", "d-kv"),
    );
    ok(&env, &hub, &["apply", "-f", other.path().to_str().unwrap()]).await;

    // two and b-kv leave the repository.
    std::fs::remove_file(dir.join("two.yaml")).unwrap();
    std::fs::remove_file(dir.join("b-kv.yaml")).unwrap();
    let dry_run = ok(
        &env,
        &hub,
        &[
            "apply",
            "-f",
            dir_arg,
            "--prune",
            "-l",
            "team=platform",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!(
        dry_run,
        "secretstore/a-kv unchanged (generation 1) (dry run)\n\
         fleetsecret/one unchanged (generation 1) (dry run)\n\
         fleetsecret/two pruned (dry run)\n\
         secretstore/b-kv pruned (dry run)\n\
         secretstore/d-kv kept: not in the files, but read by fleetsecret three\n"
    );
    assert_eq!(names(&env, &hub, "fleetsecrets").await, ["one", "three", "two"]);

    let pruned = ok(
        &env,
        &hub,
        &["apply", "-f", dir_arg, "--prune", "-l", "team=platform"],
    )
    .await;
    assert_eq!(
        pruned,
        "secretstore/a-kv unchanged (generation 1)\n\
         fleetsecret/one unchanged (generation 1)\n\
         fleetsecret/two pruned\n\
         secretstore/b-kv pruned\n\
         secretstore/d-kv kept: not in the files, but read by fleetsecret three\n"
    );
    assert_eq!(names(&env, &hub, "fleetsecrets").await, ["one", "three"]);
    assert_eq!(names(&env, &hub, "stores").await, ["a-kv", "c-kv", "d-kv"]);

    // Without a selector the directory is the whole desired state: the other team's go too, the
    // FleetSecret first, then the stores it freed.
    let all = ok(&env, &hub, &["apply", "-f", dir_arg, "--prune"]).await;
    assert!(
        all.ends_with("fleetsecret/three pruned\nsecretstore/c-kv pruned\nsecretstore/d-kv pruned\n"),
        "{all}"
    );
    assert_eq!(names(&env, &hub, "stores").await, ["a-kv"]);

    // delete store refuses a store in use, and deletes an unused one.
    let refused = keyfleet(&env, &hub, &["delete", "store", "a-kv"]).await;
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stderr
            .contains("secretstore \"a-kv\" is read by fleetsecret(s) one: delete or move them first"),
        "{}",
        refused.stderr
    );
    ok(&env, &hub, &["delete", "fleetsecret", "one"]).await;
    assert_eq!(
        ok(&env, &hub, &["delete", "store", "a-kv"]).await,
        "secretstore/a-kv deleted\n"
    );
    let missing = keyfleet(&env, &hub, &["delete", "store", "a-kv"]).await;
    assert_eq!(missing.code, 4, "{}", missing.stderr);
    db.drop_db().await;
}
