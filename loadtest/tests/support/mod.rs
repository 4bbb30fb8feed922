//! What the loadtest's integration tests share: the hub binary cargo built, the arguments every
//! run takes, a bounded run, and a scratch Postgres database per test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use keyfleet_loadtest::config::Args;

/// `target/<profile>/keyfleet`, next to `target/<profile>/deps/<this test>`.
pub fn hub_binary() -> PathBuf {
    let test = std::env::current_exe().expect("test path");
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let hub = profile_dir.join("keyfleet");
    assert!(
        hub.exists(),
        "the hub binary {} is missing: run `cargo build --workspace` (scripts/test does)",
        hub.display()
    );
    hub
}

/// The regcred example.
pub fn regcred() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/regcred.yaml")
}

/// The loadtest's arguments: `specific` ones, then what every test here shares (quiet, a 60 s
/// convergence bound, the hub binary cargo built, the regcred example). The test binary is not
/// the loadtest binary, so the hub is the `keyfleet` binary (`--hub-binary`).
pub fn args(specific: &[&str]) -> Args {
    args_with_spec(specific, &regcred())
}

/// [`args`] with another spec file than the regcred example.
pub fn args_with_spec(specific: &[&str], spec: &Path) -> Args {
    let hub = hub_binary();
    let common = [
        "--quiet",
        "--converge-timeout",
        "60s",
        "--hub-binary",
        hub.to_str().expect("utf-8 path"),
        "--fleet-secret",
        spec.to_str().expect("utf-8 path"),
    ];
    Args::try_parse_from(
        std::iter::once("keyfleet-loadtest")
            .chain(specific.iter().copied())
            .chain(common),
    )
    .expect("valid arguments")
}

/// Runs the scenario within 10 minutes.
pub async fn run(args: Args) -> anyhow::Result<keyfleet_loadtest::report::Report> {
    tokio::time::timeout(Duration::from_secs(600), keyfleet_loadtest::scenario::run(args))
        .await
        .expect("the run finishes")
}

/// A fresh Postgres database on the server `DATABASE_URL` names, for one test.
pub struct ScratchDb {
    base: String,
    name: String,
}

impl ScratchDb {
    /// Creates `keyfleet_lt_<random>`.
    pub async fn create() -> Self {
        use sqlx::{Connection as _, Executor as _};
        let base = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name a Postgres server (scripts/test sets it)");
        let name = format!("keyfleet_lt_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to DATABASE_URL");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create the scratch database");
        admin.close().await.expect("close");
        Self { base, name }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&self.base).expect("DATABASE_URL is a URL");
        url.set_path(&self.name);
        url.to_string()
    }

    /// Drops it (its connections too).
    pub async fn remove(self) {
        use sqlx::{Connection as _, Executor as _};
        let mut admin = sqlx::PgConnection::connect(&self.base)
            .await
            .expect("connect to DATABASE_URL");
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .expect("drop the scratch database");
    }
}
