//! `keyfleet migrate` end to end: the binary against a fresh SQLite file.

use std::process::Command;

fn keyfleet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keyfleet"))
        .args(args)
        .env_remove("KEYFLEET_DATABASE")
        .output()
        .expect("run keyfleet")
}

#[test]
fn migrate_applies_once_then_reports_up_to_date() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("keyfleet.db").display());

    let first = keyfleet(&["migrate", "--database", &url]);
    assert!(first.status.success(), "{first:?}");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert_eq!(
        stdout,
        "sqlite: applied migration 0001 init\nsqlite: applied migration 0002 dashboards at scale\n\
         sqlite: applied migration 0003 change log horizon\n\
         sqlite: applied migration 0004 expiry view\n\
         sqlite: applied migration 0005 keyed digests\n\
         sqlite: applied migration 0006 replica requests\n\
         sqlite: applied migration 0007 history\n\
         sqlite: applied migration 0008 status generation\n"
    );
    assert!(dir.path().join("keyfleet.db").exists(), "the file is created");

    let second = keyfleet(&["migrate", "--database", &url]);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        "sqlite: no pending migrations, the schema is up to date\n"
    );
}

#[test]
fn migrate_refuses_an_unknown_backend_without_echoing_the_url() {
    let output = keyfleet(&["migrate", "--database", "mysql://root:pa55word@db/keyfleet"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unsupported database url"), "{stderr}");
    assert!(!stderr.contains("pa55word"), "{stderr}");
}
