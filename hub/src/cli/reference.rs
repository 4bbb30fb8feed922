//! What is generated from the clap definitions in [`crate::config`]: the command reference in
//! Markdown (`docs/cli.md`), shell completions (`keyfleet completion`) and man pages (`keyfleet
//! man`). **Invariant:** `docs/cli.md` is exactly [`markdown_reference`]'s output
//! (`cli::tests::docs_are_current`).

use std::io::Write;
use std::path::Path;

/// `keyfleet completion SHELL`: the completion script for `shell`, written to `out`.
pub fn completion(shell: clap_complete::Shell, out: &mut dyn Write) -> std::io::Result<()> {
    let mut command = <crate::config::Cli as clap::CommandFactory>::command();
    // Generated in memory: clap_complete panics when its writer fails (e.g. a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "keyfleet", &mut script);
    out.write_all(&script)
}

/// `keyfleet man`: the keyfleet(1) page to `out`, or, with `dir`, keyfleet.1 and one
/// keyfleet-COMMAND.1 page per (sub)command written there.
pub fn man_pages(dir: Option<&Path>, out: &mut dyn Write) -> std::io::Result<()> {
    let command = <crate::config::Cli as clap::CommandFactory>::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(command, dir)
        }
        None => clap_mangen::Man::new(command).render(out),
    }
}

/// The command reference in Markdown (`docs/cli.md`, kept current by a test): every
/// administration command with its usage, help text and flags.
pub fn markdown_reference() -> String {
    use std::fmt::Write as _;

    fn flags(command: &clap::Command) -> String {
        let mut text = String::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            // clap's own --help and --version, not a command's argument that happens to be
            // named `version` (`pin --version`).
            let generated = matches!(
                arg.get_action(),
                clap::ArgAction::Help
                    | clap::ArgAction::HelpShort
                    | clap::ArgAction::HelpLong
                    | clap::ArgAction::Version
            );
            if arg.is_hide_set() || generated || is_common(id) {
                continue;
            }
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(long), Some(short)) => format!("`-{short}, --{long}`"),
                (Some(long), None) => format!("`--{long}`"),
                (None, _) => format!("`<{}>`", id.to_uppercase()),
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let mut extra = Vec::new();
            if let Some(env) = arg.get_env() {
                extra.push(format!("env `{}`", env.to_string_lossy()));
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                extra.push(format!("default `{}`", defaults.join(",")));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|value| !value.is_hide_set())
                .map(|value| value.get_name().to_owned())
                .collect();
            if !values.is_empty() && arg.get_action().takes_values() {
                extra.push(format!("one of `{}`", values.join("|")));
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" ({})", extra.join("; "))
            };
            let _ = writeln!(text, "- {name}: {}{extra}", help.replace('\n', " "));
        }
        text
    }

    /// Flags every command has (logging) or every client command has (connection).
    fn is_common(id: &str) -> bool {
        matches!(
            id,
            "log"
                | "log_format"
                | "otlp_endpoint"
                | "hub_url"
                | "admin_token_file"
                | "admin_token"
                | "hub_ca"
                | "client_cert"
                | "client_key"
        )
    }

    /// A client command, or `import` (documented here though it needs no hub).
    fn is_client(command: &clap::Command) -> bool {
        command.get_name() == "import" || command.get_arguments().any(|arg| arg.get_id() == "hub_url")
    }

    fn walk(command: &clap::Command, path: &str, out: &mut String) {
        for sub in command.get_subcommands() {
            if !is_client(sub) && !is_client(command) {
                continue;
            }
            let path = format!("{path} {}", sub.get_name());
            if sub.has_subcommands() {
                walk(sub, &path, out);
                continue;
            }
            let mut usage_command = sub.clone().bin_name(&path);
            let usage = usage_command.render_usage().to_string();
            let _ = writeln!(out, "## `{path}`\n");
            let _ = writeln!(
                out,
                "{}\n",
                sub.get_about().map(ToString::to_string).unwrap_or_default()
            );
            let _ = writeln!(out, "```text\n{}\n```\n", usage.trim_start_matches("Usage: "));
            let flags = flags(sub);
            if !flags.is_empty() {
                let _ = writeln!(out, "{flags}");
            }
        }
    }

    let command = <crate::config::Cli as clap::CommandFactory>::command();
    let mut out = String::from(
        "# `keyfleet` administration commands\n\n\
         Generated from the clap definitions in `hub/src/config.rs` by `keyfleet_hub::cli::markdown_reference`\n\
         (the `cli::tests::docs_are_current` test rewrites this file when it is stale). `keyfleet serve` is\n\
         described by `keyfleet serve --help`.\n\n\
         Every command talks to a hub's Admin API. Connection flags, accepted after the command name:\n\n\
         - `--hub URL` (env `KEYFLEET_HUB`, default `https://127.0.0.1:7443`)\n\
         - `--admin-token-file FILE` (its first token line; a `name:token` line of the hub's token file\n\
         \x20 sends its token), or the token itself in env `KEYFLEET_ADMIN_TOKEN`\n\
         - `--hub-ca FILE` (env `KEYFLEET_HUB_CA`; default: the system's CA bundle)\n\
         - `--client-cert FILE --client-key FILE` (env `KEYFLEET_CLIENT_CERT`, `KEYFLEET_CLIENT_KEY`): a\n\
         \x20 client certificate (mTLS) issued by the hub's `--admin-client-ca`; it authenticates instead of\n\
         \x20 the admin token, or besides it\n\n\
         Listings and status print tables; `-o json` or `-o yaml` print the same data for scripts.\n\n\
         Exit codes: 0 done, 1 the hub refused or failed (invalid spec, already exists, bad state),\n\
         2 usage (bad flag, unreadable file, bad selector, missing admin token), 3 the hub is unreachable\n\
         or the admin token or client certificate is refused, 4 the named object does not exist.\n\
         `cluster add -f` reports every cluster and exits 1 when any of them failed.\n\n\
         `keyfleet import eso` converts External Secrets Operator manifests into specs without a hub:\n\
         it exits 0 when everything converted, 5 when fields with no keyfleet meaning were reported\n\
         (stderr, one line each), 1 when some documents could not be converted. Spec fields:\n\
         `docs/spec.md`.\n\n\
         `keyfleet completion bash|zsh|fish` prints a shell completion script; `keyfleet man` prints\n\
         the keyfleet(1) man page (`--out-dir DIR`: one page per command). Enrolling many clusters:\n\
         `docs/enrollment.md`.\n\n",
    );
    walk(&command, "keyfleet", &mut out);
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}
