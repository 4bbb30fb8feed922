//! How answers are printed: kubectl-style tables for people, the same data as JSON or YAML for
//! scripts (`-o`), and the cell formats every command shares (`-` for nothing, RFC 3339 times).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use keyfleet_proto::v1;
use serde_json::{Value, json};

use super::CliError;
use crate::config::OutputFormat;

/// Writes a listing: `items` as a JSON/YAML array when `output` asks for one, else as a table
/// with one `row` per item under `headers`.
pub(super) fn write_listing<T>(
    items: &[T],
    output: OutputFormat,
    to_json: impl Fn(&T) -> Value,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    if output != OutputFormat::Table {
        return write_structured(&Value::Array(items.iter().map(to_json).collect()), output, out);
    }
    let mut table = Table::new(headers);
    for item in items {
        table.row(row(item));
    }
    table.write(out)
}

/// Writes one cluster's sync state per FleetSecret (`cluster show`) or one FleetSecret's state
/// per lagging cluster (`status NAME`): the same columns, headed by `first` (whose cell `name`
/// picks).
pub(super) fn write_secret_statuses(
    first: &str,
    statuses: &[v1::ClusterSecretStatus],
    name: impl Fn(&v1::ClusterSecretStatus) -> &str,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let mut table = Table::new(&[
        first,
        "DESIRED",
        "APPLIED",
        "STATE",
        "ATTEMPTS",
        "UPDATED",
        "LAST ERROR",
    ]);
    for status in statuses {
        table.row(vec![
            name(status).to_owned(),
            revision_text(status.desired_revision),
            revision_text(status.applied_revision),
            status.state.clone(),
            status.attempts.to_string(),
            timestamp(status.updated.as_ref()),
            dash(&status.last_error),
        ]);
    }
    table.write(out)
}

/// A cluster's sync state of one FleetSecret, as `-o json|yaml` prints it.
pub(super) fn secret_status_json(status: &v1::ClusterSecretStatus) -> Value {
    json!({
        "cluster": status.cluster,
        "fleetSecret": status.fleet_secret,
        "desiredRevision": status.desired_revision,
        "appliedRevision": status.applied_revision,
        "state": status.state,
        "lastError": status.last_error,
        "attempts": status.attempts,
        "updated": timestamp_json(status.updated.as_ref()),
    })
}

/// Writes `value` as pretty JSON or as YAML.
pub(super) fn write_structured(
    value: &Value,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match output {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml | OutputFormat::Table => {
            let text = serde_yaml::to_string(value).map_err(std::io::Error::other)?;
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

fn to_chrono(timestamp: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    chrono::DateTime::from_timestamp(timestamp.seconds, nanos)
}

/// RFC 3339 to the second, or `-`.
pub(super) fn timestamp(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.and_then(to_chrono).map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// RFC 3339 to the second, or `null`.
pub(super) fn timestamp_json(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.and_then(to_chrono).map_or(Value::Null, |at| {
        Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    })
}

/// A revision number, or `-` for none (0).
pub(super) fn revision_text(revision: u64) -> String {
    if revision == 0 {
        "-".to_owned()
    } else {
        revision.to_string()
    }
}

/// `yes` or `no`.
pub(super) fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// The text, or `-` when empty.
pub(super) fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// `key=value` pairs sorted by key and joined by commas, or `-`.
pub(super) fn labels_text(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    if sorted.is_empty() {
        return "-".to_owned();
    }
    sorted
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `key@version` pairs (sources, pins) joined by `, `.
pub(super) fn key_versions<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(key, version)| format!("{key}@{version}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` with every control character (newlines, escapes, …) escaped as `\u{..}`/`\n`.
pub(super) fn printable(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub(super) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and no rows.
    pub(super) fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|header| (*header).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per header). Control characters in a cell (an agent's NACK text, a
    /// namespace a drift report names) are shown escaped, so text from a cluster can neither
    /// forge table lines nor drive the terminal.
    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(printable).collect());
    }

    /// Writes the headers and rows, each column as wide as its widest cell.
    pub(super) fn write(&self, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
        let mut widths: Vec<usize> = self.headers.iter().map(|header| header.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 3));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_a_cluster_are_escaped() {
        let mut table = Table::new(&["ERROR"]);
        table.row(vec!["denied\n\u{1b}[31mprod   applied".to_owned()]);
        let mut out = Vec::new();
        table.write(&mut out).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("denied\\n\\u{1b}[31m"), "{text}");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "STATE"]);
        table.row(vec!["prod-eu-1".to_owned(), "active".to_owned()]);
        table.row(vec!["dev".to_owned(), "-".to_owned()]);
        let mut out = Vec::new();
        table.write(&mut out).expect("written");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "NAME        STATE\nprod-eu-1   active\ndev         -\n"
        );
    }
}
