//! `keyfleet import eso`: reads ESO manifests (files, directories, `-f -`), converts them with
//! [`crate::spec::eso`], writes the specs (stdout or `--out DIR`) and reports every finding on
//! stderr. Needs no hub.

use std::io::{Read, Write};

use super::{CliError, is_stdin, read_stdin};
use crate::config::{ImportCommand, ImportEsoArgs, ImportFormat};
use crate::spec::eso::{self, Severity};
use crate::spec::{MAX_FILE_BYTES, SpecFile, read_path};

/// Runs one `keyfleet import` command: output to `out`, findings to `err`.
pub fn import(
    command: ImportCommand,
    input: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        ImportCommand::Eso(args) => import_eso(args, input, out, err),
    }
}

fn import_eso(
    args: ImportEsoArgs,
    input: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    if args.files.iter().filter(|path| is_stdin(path)).count() > 1 {
        return Err(CliError::Usage("-f - (stdin) may be given once".to_owned()));
    }
    let mut files = Vec::new();
    for path in &args.files {
        if is_stdin(path) {
            files.push(SpecFile {
                name: "<stdin>".to_owned(),
                content: read_stdin(input, MAX_FILE_BYTES)?,
            });
        } else {
            files.extend(read_path(path)?);
        }
    }
    if files.is_empty() {
        return Err(CliError::Usage("no *.yaml or *.yml file to import".to_owned()));
    }
    let imported = eso::import(
        &files,
        &eso::Options {
            credentials_dir: args.credentials_dir,
        },
    );
    for finding in &imported.findings {
        writeln!(err, "{finding}")?;
    }
    match &args.out {
        None => match args.output {
            ImportFormat::Yaml => write!(out, "{}", imported.to_yaml())?,
            ImportFormat::Json => write!(out, "{}", imported.to_json_lines())?,
        },
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| CliError::Read {
                path: dir.clone(),
                source,
            })?;
            for (document, name) in imported.documents.iter().zip(imported.file_names()) {
                let (name, text) = match args.output {
                    ImportFormat::Yaml => (name, document.yaml.clone()),
                    ImportFormat::Json => (name.replace(".yaml", ".json"), format!("{}\n", document.json)),
                };
                let path = dir.join(&name);
                std::fs::write(&path, text).map_err(CliError::Output)?;
                writeln!(out, "{}", path.display())?;
            }
        }
    }
    let count = |severity| {
        imported
            .findings
            .iter()
            .filter(|finding| finding.severity == severity)
            .count()
    };
    match imported.worst() {
        Some(Severity::Error) => Err(CliError::NotConverted(count(Severity::Error))),
        Some(Severity::Warning) => Err(CliError::ConvertedWithWarnings(count(Severity::Warning))),
        _ => Ok(()),
    }
}
