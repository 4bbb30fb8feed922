//! The spec commands: `apply` (SecretStore and FleetSecret YAML, all or nothing; `--prune`
//! then deletes what the files no longer define), `get fleetsecrets|stores` and `delete
//! fleetsecret|store`.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use keyfleet_proto::v1;
use serde_json::json;

use super::output::{dash, revision_text, write_listing, yes_no};
use super::{CliError, Client, call, is_stdin, read_stdin};
use crate::config::{ApplyArgs, DeleteCommand, GetCommand, OutputFormat};
use crate::domain::LabelSelector;
use crate::spec::Kind;

/// `keyfleet get fleetsecrets|stores`.
pub(super) async fn get(
    client: &mut Client,
    command: GetCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        GetCommand::FleetSecrets { output } => get_fleet_secrets(client, output, out).await,
        GetCommand::Stores { output } => get_stores(client, output, out).await,
    }
}

/// `keyfleet delete fleetsecret NAME`.
pub(super) async fn delete(
    client: &mut Client,
    command: DeleteCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        DeleteCommand::FleetSecret { name } => {
            call(
                format!("delete fleetsecret {name:?}"),
                client.delete_fleet_secret(v1::DeleteFleetSecretRequest { name: name.clone() }),
            )
            .await?;
            writeln!(out, "fleetsecret/{name} deleted")?;
            Ok(())
        }
        DeleteCommand::Store { name } => {
            call(
                format!("delete secretstore {name:?}"),
                client.delete_store(v1::DeleteStoreRequest { name: name.clone() }),
            )
            .await?;
            writeln!(out, "secretstore/{name} deleted")?;
            Ok(())
        }
    }
}

/// `keyfleet apply -f …`: every spec file in one request, so the hub stores all or nothing.
/// `-f -` reads `input` (once), named `<stdin>` in messages.
pub(super) async fn apply(
    client: &mut Client,
    args: &ApplyArgs,
    input: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let (paths, dry_run) = (&args.files, args.dry_run);
    let prune_selector = match &args.prune_selector {
        None => None,
        Some(text) => {
            Some(super::parse_selector(text).map_err(|error| CliError::Usage(format!("-l: {error}")))?)
        }
    };
    if paths.iter().filter(|path| is_stdin(path)).count() > 1 {
        return Err(CliError::Usage("-f - (stdin) may be given once".to_owned()));
    }
    let mut files = Vec::new();
    for path in paths {
        if is_stdin(path) {
            files.push(crate::spec::SpecFile {
                name: "<stdin>".to_owned(),
                content: read_stdin(input, crate::spec::MAX_FILE_BYTES)?,
            });
        } else {
            files.extend(crate::spec::read_path(path)?);
        }
    }
    if files.is_empty() {
        return Err(CliError::Usage(format!(
            "no *.yaml or *.yml file in {}",
            paths
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    // The flat shape still works; say once per document that it is deprecated (on stderr, so
    // `apply` output stays one line per object).
    let mut stderr = std::io::stderr();
    for warning in crate::spec::deprecation_warnings(&files) {
        writeln!(stderr, "warning: {warning}")?;
    }
    let declared = crate::spec::declared(&files);
    let request = v1::ApplySpecsRequest {
        files: files
            .into_iter()
            .map(|file| v1::SpecFile {
                name: file.name,
                content: file.content,
            })
            .collect(),
        dry_run,
    };
    let response = call("apply".to_owned(), client.apply_specs(request)).await?;
    let suffix = if dry_run { " (dry run)" } else { "" };
    for object in &response.objects {
        writeln!(
            out,
            "{}/{} {} (generation {}){suffix}",
            object.kind.to_lowercase(),
            object.name,
            object.action,
            object.generation
        )?;
    }
    if args.prune {
        prune(client, &declared, prune_selector.as_ref(), dry_run, out).await?;
    }
    Ok(())
}

/// `apply --prune`: deletes the FleetSecrets, then the SecretStores, on the hub that the applied
/// files do not define (and whose `metadata.labels` match `selector`, when given). A store still
/// read by a FleetSecret that stays is kept and said so. Runs after the apply succeeded; with
/// `dry_run`, only prints what it would delete.
async fn prune(
    client: &mut Client,
    declared: &crate::spec::Declared,
    selector: Option<&LabelSelector>,
    dry_run: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let suffix = if dry_run { " (dry run)" } else { "" };
    let selected =
        |yaml: &str| selector.is_none_or(|selector| selector.matches(&crate::spec::stored_labels(yaml)));
    let secrets = call(
        "list fleetsecrets".to_owned(),
        client.list_fleet_secrets(v1::ListFleetSecretsRequest {}),
    )
    .await?
    .fleet_secrets;
    let mut readers: Vec<(String, String)> = declared.store_refs.iter().cloned().collect();
    for secret in &secrets {
        let gone = !declared.names.contains(&(Kind::FleetSecret, secret.name.clone()))
            && selected(&secret.spec_yaml);
        if !gone {
            if !declared.names.contains(&(Kind::FleetSecret, secret.name.clone())) {
                readers.push((secret.name.clone(), secret.store.clone()));
            }
            continue;
        }
        if !dry_run {
            call(
                format!("prune fleetsecret {:?}", secret.name),
                client.delete_fleet_secret(v1::DeleteFleetSecretRequest {
                    name: secret.name.clone(),
                }),
            )
            .await?;
        }
        writeln!(out, "fleetsecret/{} pruned{suffix}", secret.name)?;
    }
    let stores = call(
        "list stores".to_owned(),
        client.list_stores(v1::ListStoresRequest {}),
    )
    .await?
    .stores;
    for store in &stores {
        if declared.names.contains(&(Kind::SecretStore, store.name.clone())) || !selected(&store.spec_yaml) {
            continue;
        }
        let read_by: BTreeSet<&str> = readers
            .iter()
            .filter(|(_, reads)| *reads == store.name)
            .map(|(secret, _)| secret.as_str())
            .collect();
        if !read_by.is_empty() {
            writeln!(
                out,
                "secretstore/{} kept: not in the files, but read by fleetsecret {}",
                store.name,
                read_by.into_iter().collect::<Vec<_>>().join(", ")
            )?;
            continue;
        }
        if !dry_run {
            call(
                format!("prune secretstore {:?}", store.name),
                client.delete_store(v1::DeleteStoreRequest {
                    name: store.name.clone(),
                }),
            )
            .await?;
        }
        writeln!(out, "secretstore/{} pruned{suffix}", store.name)?;
    }
    Ok(())
}

async fn get_fleet_secrets(
    client: &mut Client,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let response = call(
        "list fleetsecrets".to_owned(),
        client.list_fleet_secrets(v1::ListFleetSecretsRequest {}),
    )
    .await?;
    write_listing(
        &response.fleet_secrets,
        output,
        |secret| {
            json!({
                "name": secret.name,
                "store": secret.store,
                "targetName": secret.target_name,
                "targetType": secret.target_type,
                "generation": secret.generation,
                "revision": secret.revision,
                "expires": super::output::timestamp_json(secret.expires.as_ref()),
                "spec": crate::spec::kubernetes_yaml(&secret.spec_yaml).unwrap_or_else(|| secret.spec_yaml.clone()),
            })
        },
        &[
            "NAME",
            "STORE",
            "TARGET",
            "TYPE",
            "GENERATION",
            "REVISION",
            "EXPIRES",
        ],
        |secret| {
            vec![
                secret.name.clone(),
                secret.store.clone(),
                secret.target_name.clone(),
                secret.target_type.clone(),
                secret.generation.to_string(),
                revision_text(secret.revision),
                super::output::timestamp(secret.expires.as_ref()),
            ]
        },
        out,
    )
}

async fn get_stores(
    client: &mut Client,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let response = call(
        "list stores".to_owned(),
        client.list_stores(v1::ListStoresRequest {}),
    )
    .await?;
    write_listing(
        &response.stores,
        output,
        |store| {
            json!({
                "name": store.name,
                "vaultUrl": store.vault_url,
                "authType": store.auth_type,
                "generation": store.generation,
                "healthy": store.healthy,
                "lastError": store.last_error,
                "spec": crate::spec::kubernetes_yaml(&store.spec_yaml).unwrap_or_else(|| store.spec_yaml.clone()),
            })
        },
        &["NAME", "VAULT", "AUTH", "GENERATION", "HEALTHY", "LAST ERROR"],
        |store| {
            vec![
                store.name.clone(),
                store.vault_url.clone(),
                store.auth_type.clone(),
                store.generation.to_string(),
                yes_no(store.healthy),
                dash(&store.last_error),
            ]
        },
        out,
    )
}
