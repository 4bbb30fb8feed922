//! Unit tests of the flag and environment parsing: every flag lands in its sub-config, and bad
//! input is a usage error (exit code 2).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser as _;
use clap::error::ErrorKind;

use super::*;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("keyfleet").chain(args.iter().copied()))
}

#[test]
fn serve_flags_land_in_their_sub_configs() {
    let cli =
        parse(&["serve", "--ops-addr", "127.0.0.1:0", "--shutdown-grace", "250ms"]).expect("valid flags");
    let Command::Serve(args) = cli.command else {
        panic!("not serve: {:?}", cli.command);
    };
    let config = ServeConfig::from(args);
    assert_eq!(config.ops.addr, "127.0.0.1:0".parse().expect("literal address"));
    assert_eq!(config.shutdown_grace, Duration::from_millis(250));
    assert_eq!(config.database.expose(), DEFAULT_DATABASE);
    assert!(!config.migrate);
}

#[test]
fn serve_takes_the_database_and_migrate_flags() {
    let cli =
        parse(&["serve", "--database", "postgres://hub@db/keyfleet", "--migrate"]).expect("valid flags");
    let Command::Serve(args) = cli.command else {
        panic!("serve expected");
    };
    let config = ServeConfig::from(args);
    assert_eq!(config.database.expose(), "postgres://hub@db/keyfleet");
    assert!(config.migrate);
}

#[test]
fn migrate_takes_the_database_with_the_sqlite_default() {
    let cli = parse(&["migrate"]).expect("valid flags");
    let Command::Migrate(args) = cli.command else {
        panic!("migrate expected");
    };
    assert_eq!(args.database.expose(), "sqlite://keyfleet.db");
    let cli = parse(&["migrate", "--database", "sqlite:///var/lib/keyfleet/k.db"]).expect("valid flags");
    let Command::Migrate(args) = cli.command else {
        panic!("migrate expected");
    };
    assert_eq!(args.database.expose(), "sqlite:///var/lib/keyfleet/k.db");
}

#[test]
fn debug_output_never_shows_the_database_password() {
    let cli = parse(&[
        "serve",
        "--database",
        "postgres://hub:s3cr%40t-pw@db:5432/keyfleet?sslmode=require&password=other-pw",
    ])
    .expect("valid flags");
    let Command::Serve(args) = cli.command else {
        panic!("serve expected");
    };
    let printed_args = format!("{args:?}");
    let config = ServeConfig::from(args);
    let printed_config = format!("{config:?}");
    for printed in [&printed_args, &printed_config] {
        assert!(!printed.contains("s3cr"), "{printed}");
        assert!(!printed.contains("other-pw"), "{printed}");
        assert!(
            printed
                .contains("postgres://hub:<redacted>@db:5432/keyfleet?sslmode=require&password=<redacted>"),
            "{printed}"
        );
    }
    assert_eq!(
        config.database.expose(),
        "postgres://hub:s3cr%40t-pw@db:5432/keyfleet?sslmode=require&password=other-pw",
        "the store still connects with the password"
    );
    for (url, shown) in [
        ("sqlite://keyfleet.db", "sqlite://keyfleet.db"),
        ("postgres://hub@db/keyfleet", "postgres://hub@db/keyfleet"),
        ("not a url: pw", "<redacted>"),
    ] {
        let database: DatabaseUrl = url.parse().expect("infallible");
        assert_eq!(database.redacted(), shown);
    }
    let Command::Migrate(args) = parse(&["migrate", "--database", "postgres://u:pw1@h/d"])
        .expect("valid flags")
        .command
    else {
        panic!("migrate expected");
    };
    assert!(!format!("{args:?}").contains("pw1"), "{args:?}");
}

#[test]
fn admin_client_ca_and_client_certificates_are_flags_and_env() {
    let cli = parse(&["serve", "--admin-client-ca", "/etc/keyfleet/admins.pem"]).expect("valid flags");
    let Command::Serve(args) = cli.command else {
        panic!("serve expected");
    };
    assert_eq!(
        ServeConfig::from(args).admin_client_ca,
        Some(PathBuf::from("/etc/keyfleet/admins.pem"))
    );
    let command = client(&[
        "status",
        "--client-cert",
        "alice.pem",
        "--client-key",
        "alice-key.pem",
    ]);
    assert_eq!(command.client().client_cert, Some(PathBuf::from("alice.pem")));
    assert_eq!(command.client().client_key, Some(PathBuf::from("alice-key.pem")));
    let error = parse(&["status", "--client-cert", "alice.pem"]).expect_err("no key");
    assert_eq!(error.exit_code(), 2);
    let error = parse(&["status", "--client-key", "alice-key.pem"]).expect_err("no cert");
    assert_eq!(error.exit_code(), 2);
    let serve = <Cli as clap::CommandFactory>::command();
    let serve = serve.find_subcommand("serve").expect("serve");
    let env = |id: &str| {
        serve
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .and_then(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
    };
    assert_eq!(
        env("admin_client_ca").as_deref(),
        Some("KEYFLEET_ADMIN_CLIENT_CA")
    );
    let root = <Cli as clap::CommandFactory>::command();
    let status = root.find_subcommand("status").expect("status");
    let client_env: Vec<_> = status
        .get_arguments()
        .filter(|arg| ["client_cert", "client_key"].contains(&arg.get_id().as_str()))
        .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(client_env, ["KEYFLEET_CLIENT_CERT", "KEYFLEET_CLIENT_KEY"]);
}

#[test]
fn migrate_rejects_serve_flags() {
    let error = parse(&["migrate", "--migrate"]).expect_err("not a migrate flag");
    assert_eq!(error.exit_code(), 2);
}

#[test]
fn grpc_and_tls_flags_land_in_the_grpc_config() {
    use crate::grpc::server::TlsSource;
    let cli = parse(&["serve"]).expect("defaults");
    let Command::Serve(args) = cli.command else {
        panic!("not serve: {:?}", cli.command);
    };
    let config = ServeConfig::from(args);
    assert_eq!(
        config.grpc.addr,
        "127.0.0.1:7443".parse().expect("literal address")
    );
    assert_eq!(config.grpc.tls, None);
    assert!(
        config
            .grpc
            .replica_id
            .ends_with(&format!("-{}", std::process::id()))
    );
    let cli = parse(&[
        "serve",
        "--tls-self-signed",
        "/tmp/ca",
        "--tls-san",
        "hub.example,10.0.0.1",
        "--replica-id",
        "r1",
    ])
    .expect("self-signed");
    let Command::Serve(args) = cli.command else {
        panic!("not serve: {:?}", cli.command);
    };
    let config = ServeConfig::from(args);
    assert_eq!(
        config.grpc.tls,
        Some(TlsSource::SelfSigned {
            dir: "/tmp/ca".into(),
            sans: vec!["hub.example".to_owned(), "10.0.0.1".to_owned()],
        })
    );
    assert_eq!(config.grpc.replica_id, "r1");
    let cli = parse(&["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).expect("files");
    let Command::Serve(args) = cli.command else {
        panic!("not serve: {:?}", cli.command);
    };
    assert_eq!(
        ServeConfig::from(args).grpc.tls,
        Some(TlsSource::Files {
            cert: "c.pem".into(),
            key: "k.pem".into()
        })
    );
    assert_eq!(
        parse(&["serve", "--tls-cert", "c.pem"])
            .expect_err("no key")
            .exit_code(),
        2
    );
    let both = parse(&[
        "serve",
        "--tls-cert",
        "c",
        "--tls-key",
        "k",
        "--tls-self-signed",
        "d",
    ]);
    assert_eq!(both.expect_err("conflict").exit_code(), 2);
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_code_2() {
    let error = parse(&["serve", "--no-such-flag"]).expect_err("unknown flag");
    assert_eq!(error.kind(), ErrorKind::UnknownArgument);
    assert_eq!(error.exit_code(), 2);
}

#[test]
fn bad_duration_names_the_value() {
    let error = parse(&["serve", "--shutdown-grace", "soon"]).expect_err("bad duration");
    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("soon"), "{error}");
}

fn client(args: &[&str]) -> ClientCommand {
    match parse(args)
        .unwrap_or_else(|error| panic!("{args:?}: {error}"))
        .command
    {
        Command::Client(command) => command,
        other => panic!("{args:?} parsed as {other:?}"),
    }
}

#[test]
fn cluster_add_takes_labels_ttl_and_connection_flags_anywhere() {
    let command = client(&[
        "cluster",
        "--hub",
        "http://127.0.0.1:1",
        "add",
        "prod-eu-1",
        "--label",
        "env=prod",
        "-l",
        "region=eu",
        "--token-ttl",
        "1h",
        "--admin-token-file",
        "/tmp/token",
    ]);
    assert_eq!(command.client().hub_url, "http://127.0.0.1:1");
    assert_eq!(
        command.client().admin_token_file,
        Some(PathBuf::from("/tmp/token"))
    );
    let ClientCommand::Cluster(WithClient {
        command:
            ClusterCommand::Add {
                name,
                labels,
                token_ttl,
                ..
            },
        ..
    }) = command
    else {
        panic!("not cluster add");
    };
    assert_eq!(name.as_deref(), Some("prod-eu-1"));
    assert_eq!(
        labels,
        [("env".into(), "prod".into()), ("region".into(), "eu".into())]
    );
    assert_eq!(token_ttl, Duration::from_secs(3600));
}

#[test]
fn client_commands_parse_their_arguments() {
    let ClientCommand::Cluster(with) = client(&["cluster", "label", "c1", "ring=canary", "legacy-", "a=b-"])
    else {
        panic!("not cluster");
    };
    let ClusterCommand::Label { changes, .. } = with.command else {
        panic!("not label");
    };
    assert_eq!(
        changes,
        [
            LabelChange::Set("ring".into(), "canary".into()),
            LabelChange::Remove("legacy".into()),
            LabelChange::Set("a".into(), "b-".into()),
        ]
    );
    let ClientCommand::Apply(apply) = client(&["apply", "-f", "a.yaml", "-f", "dir", "--dry-run"]) else {
        panic!("not apply");
    };
    assert_eq!(apply.files, [PathBuf::from("a.yaml"), PathBuf::from("dir")]);
    assert!(apply.dry_run);
    assert_eq!(apply.client.hub_url, DEFAULT_HUB_URL);
    let ClientCommand::Status(status) = client(&["status", "regcred", "-o", "json", "--lagging", "5"]) else {
        panic!("not status");
    };
    assert_eq!(
        (status.fleet_secret.as_deref(), status.output, status.lagging),
        (Some("regcred"), OutputFormat::Json, 5)
    );
    let ClientCommand::Rollout(rollout) = client(&[
        "rollout",
        "pin",
        "regcred",
        "--key",
        "acr-pull",
        "--version",
        "abc",
    ]) else {
        panic!("not rollout");
    };
    assert!(
        matches!(rollout.command, RolloutCommand::Pin(PinTarget { ref key, .. }) if key.as_deref() == Some("acr-pull"))
    );
    let ClientCommand::Pin(pin) = client(&["pin", "regcred", "--version", "abc"]) else {
        panic!("not pin");
    };
    assert_eq!((pin.target.key, pin.target.version.as_str()), (None, "abc"));
    assert!(matches!(client(&["unpin", "regcred"]), ClientCommand::Unpin(_)));
    assert!(matches!(
        client(&["get", "fleetsecrets", "-o", "yaml"]),
        ClientCommand::Get(_)
    ));
    assert!(matches!(client(&["get", "stores"]), ClientCommand::Get(_)));
    assert!(matches!(
        client(&["delete", "fleetsecret", "regcred"]),
        ClientCommand::Delete(_)
    ));
    assert!(matches!(
        client(&["sync-now", "--store", "shared-kv"]),
        ClientCommand::SyncNow(_)
    ));
    assert!(matches!(
        client(&["cluster", "list", "--selector", "env=prod"]),
        ClientCommand::Cluster(_)
    ));
}

#[test]
fn bad_client_arguments_exit_with_2() {
    for args in [
        &["cluster", "add", "c1", "--label", "novalue"][..],
        &["cluster", "label", "c1"],
        &["cluster", "label", "c1", "-"],
        &["cluster", "add", "c1", "--token-ttl", "soon"],
        &["apply"],
        &["status", "-o", "xml"],
        &["status", "--lagging", "0"],
        &["pin", "regcred"],
        &["get", "secrets"],
        &["rollout", "stop", "regcred"],
    ] {
        let error = parse(args).expect_err("bad arguments");
        assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
    }
}

#[test]
fn every_command_has_help_text() {
    fn walk(command: &clap::Command, path: &str) {
        for sub in command.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            assert!(sub.get_about().is_some(), "{path} has no help text");
            for arg in sub.get_arguments() {
                assert!(
                    arg.is_hide_set()
                        || arg.get_help().is_some()
                        || arg.get_id() == "help"
                        || arg.get_id() == "version",
                    "{path} --{} has no help text",
                    arg.get_id()
                );
            }
            walk(sub, &path);
        }
    }
    let command = <Cli as clap::CommandFactory>::command();
    command.clone().debug_assert();
    walk(&command, "keyfleet");
}

#[test]
fn missing_command_is_a_usage_error() {
    let error = parse(&[]).expect_err("no command");
    assert_eq!(error.exit_code(), 2);
}
