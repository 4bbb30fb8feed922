//! Issue #20's "done when", end to end with the real `keyfleet` binary: ESO manifests from ESO's
//! own documentation (`hub/tests/fixtures/eso/*/input`, each naming its source) are imported with
//! `keyfleet import eso`, exit as documented (0 clean, 5 warnings), and what
//! they write passes `keyfleet apply --dry-run` against a real hub; a dockerconfigjson
//! ExternalSecret imported from ESO then rolls out to a fleet of agents, as in the quickstart.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyfleet_proto::v1;
use keyfleet_testkit::keyvault::{KeyVaultConfig, KeyVaultEmulator};
use support::TestDb;
use support::serve::{ServeEnv, ServeProcess, all_agents, start_agents, status_until};

const KEYFLEET: &str = env!("CARGO_BIN_EXE_keyfleet");
const CONVERGE: Duration = Duration::from_secs(90);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eso")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `keyfleet ARGS` (a client command gets the hub's address, CA and admin token).
async fn keyfleet(args: &[&str], hub: Option<(&ServeEnv, &ServeProcess)>) -> Run {
    let mut command = tokio::process::Command::new(KEYFLEET);
    command
        .args(args)
        .env_remove("KEYFLEET_ADMIN_TOKEN")
        .stdin(Stdio::null());
    if let Some((env, replica)) = hub {
        let dir = env.dir.path();
        command.args([
            "--hub",
            &format!("https://localhost:{}", replica.grpc_addr.port()),
            "--hub-ca",
            dir.join("tls/ca.pem").to_str().unwrap(),
            "--admin-token-file",
            dir.join("admin-token").to_str().unwrap(),
        ]);
    }
    let output = command.output().await.expect("run keyfleet");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A keyfleet SecretStore named `name` on the emulator (the hub's workload identity).
fn store_spec(name: &str, vault_url: &url::Url) -> String {
    format!(
        "apiVersion: keyfleet.io/v1\nkind: SecretStore\nmetadata: {{ name: {name} }}\nspec:\n  provider:\n    azurekv:\n      vaultUrl: {}\n      authType: WorkloadIdentity\n      pollInterval: 1s\n",
        vault_url.as_str().trim_end_matches('/')
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documented_eso_manifests_import_and_pass_apply_dry_run() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let hub = ServeProcess::start(&env, "hub-a", any_port()).await;
    // The stores the documented ExternalSecrets name without defining them.
    let stores = env.dir.path().join("stores.yaml");
    std::fs::write(
        &stores,
        format!(
            "{}---\n{}",
            store_spec("example", kv.vault_url()),
            store_spec("azure-store", kv.vault_url())
        ),
    )
    .unwrap();
    let applied = keyfleet(&["apply", "-f", stores.to_str().unwrap()], Some((&env, &hub))).await;
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);

    // (case, exit code, objects written)
    let cases = [
        ("datafrom", 5, 1),
        ("dockerconfigjson", 0, 2),
        ("managed-identity", 0, 1),
        ("pkcs12", 0, 1),
        ("service-principal", 5, 2),
        ("workload-identity", 5, 3),
    ];
    for (case, code, objects) in cases {
        let input = fixtures().join(case).join("input");
        let out = env.dir.path().join("imported").join(case);
        let import = keyfleet(
            &[
                "import",
                "eso",
                "-f",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        )
        .await;
        assert_eq!(import.code, code, "{case}: {}{}", import.stdout, import.stderr);
        // Every finding is one line naming the file and line; the documents written are listed.
        for line in import
            .stderr
            .lines()
            .filter(|line| !line.starts_with("error: converted") && !line.starts_with("error: "))
        {
            assert!(line.contains(".yaml:"), "{case}: {line}");
        }
        assert_eq!(
            import.stdout.lines().count(),
            objects,
            "{case}: {}",
            import.stdout
        );
        let dry_run = keyfleet(
            &["apply", "--dry-run", "-f", out.to_str().unwrap()],
            Some((&env, &hub)),
        )
        .await;
        assert_eq!(dry_run.code, 0, "{case}: {}{}", dry_run.stdout, dry_run.stderr);
        assert_eq!(
            dry_run.stdout.lines().count(),
            objects,
            "{case}: {}",
            dry_run.stdout
        );
        assert!(
            dry_run.stdout.lines().all(|line| line.ends_with("(dry run)")),
            "{}",
            dry_run.stdout
        );
        // Written in the Kubernetes shape: no deprecation warning.
        assert!(!dry_run.stderr.contains("deprecated"), "{}", dry_run.stderr);
    }

    // The same through stdin, as YAML on stdout; exit 5 and the warnings on stderr.
    let input = std::fs::read_to_string(fixtures().join("service-principal/input/azkv-external-secret.yaml"))
        .unwrap();
    let mut child = tokio::process::Command::new(KEYFLEET)
        .args(["import", "eso", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(5), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("apiVersion: keyfleet.io/v1\nkind: FleetSecret\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("<stdin>:52: warning: spec.data[5].remoteRef.key = \"key/encryption-pubkey\""),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("error: converted with 3 warning(s), listed above\n"),
        "{stderr}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dockerconfigjson_external_secret_imported_from_eso_rolls_out_to_the_fleet() {
    let db = TestDb::create().await;
    let kv = KeyVaultEmulator::start(KeyVaultConfig::default()).await.unwrap();
    // The values ESO's guide names: registry "myRegistry" on "docker.io".
    kv.set_secret("docker-registry-name", "myRegistry", &[]).unwrap();
    kv.set_secret("docker-registry-host", "docker.io", &[]).unwrap();
    kv.set_secret("docker-registry-password", "s3cr3t-pass", &[])
        .unwrap();
    let env = ServeEnv::new(db.url(), &kv);
    let hub = ServeProcess::start(&env, "hub-a", any_port()).await;

    let input = fixtures().join("dockerconfigjson/input/dk-cfg-example.yaml");
    let out = env.dir.path().join("imported");
    let import = keyfleet(
        &[
            "import",
            "eso",
            "-f",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(import.code, 0, "{}{}", import.stdout, import.stderr);
    std::fs::write(
        out.join("secretstore-example.yaml"),
        store_spec("example", kv.vault_url()),
    )
    .unwrap();
    let applied = keyfleet(&["apply", "-f", out.to_str().unwrap()], Some((&env, &hub))).await;
    assert_eq!(
        applied.stdout,
        "fleetsecret/dk-cfg-example created (generation 1)\nsecretstore/example created (generation 1)\n",
        "{}",
        applied.stderr
    );

    // Three clusters, as the quickstart enrolls them.
    let mut admin = env.admin(&hub).await;
    let mut tokens = Vec::new();
    for index in 0..3 {
        let response = admin
            .create_cluster(v1::CreateClusterRequest {
                name: format!("cluster-{index:03}"),
                labels: [("env".to_owned(), "prod".to_owned())].into_iter().collect(),
                token_ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner();
        tokens.push(response.token.unwrap().token);
    }
    let agents = start_agents(&[env.hub_address(&hub)], tokens);
    all_agents(
        CONVERGE,
        &agents,
        "every cluster holds the imported pull secret",
        |state| state.revision("dk-cfg-example").is_some(),
    )
    .await;
    let status = status_until(
        "dk-cfg-example",
        &mut admin,
        "every cluster applied it",
        |status| status.applied == 3,
    )
    .await;
    assert_eq!(status.targeted, 3, "{status:?}");
    db.drop_db().await;
}
