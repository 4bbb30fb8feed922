//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io,…`), with the columns a real apiserver
//! prints: Secrets `NAME TYPE DATA AGE`, Namespaces `NAME STATUS AGE`.

use chrono::{DateTime, Utc};
use http::{HeaderMap, header};
use serde_json::{Map, Value, json};

use super::model::{Body, Kind, Object};
use super::status::ApiError;

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default: kubectl reads namespaces and labels from it).
    Metadata,
    /// The whole object.
    Object,
}

/// Whether the request asks for a `meta.k8s.io/v1` Table; `None` when it does not, else what
/// each row carries.
pub(super) fn requested(
    headers: &HeaderMap,
    include: Option<&String>,
) -> Result<Option<IncludeObject>, ApiError> {
    let wants_table = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            let mut parts = media.split(';').map(str::trim);
            let essence = parts.next().unwrap_or_default();
            let params: Vec<(&str, &str)> = parts.filter_map(|param| param.split_once('=')).collect();
            essence.eq_ignore_ascii_case("application/json")
                && params.contains(&("as", "Table"))
                && params.contains(&("v", "v1"))
                && params.contains(&("g", "meta.k8s.io"))
        });
    if !wants_table {
        return Ok(None);
    }
    match include.map(String::as_str) {
        None | Some("" | "Metadata") => Ok(Some(IncludeObject::Metadata)),
        Some("None") => Ok(Some(IncludeObject::None)),
        Some("Object") => Ok(Some(IncludeObject::Object)),
        Some(other) => Err(ApiError::bad_request(format!(
            "includeObject: Unsupported value: \"{other}\": supported values: \"Metadata\", \"None\", \"Object\""
        ))),
    }
}

/// The Table for `objects` of `kind`; `metadata` is the list metadata (resourceVersion,
/// continue); `headers` is false for the events of a watch after the first, as the apiserver
/// sends the column definitions once.
pub(super) fn table(
    kind: Kind,
    objects: &[&Object],
    metadata: Map<String, Value>,
    include: IncludeObject,
    headers: bool,
    now: DateTime<Utc>,
) -> Value {
    let columns: Vec<Value> = if headers {
        columns(kind)
            .iter()
            .map(|(name, format, description)| {
                json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0})
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells(object, now)));
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row.insert(
                        "object".into(),
                        json!({
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": object.to_json()["metadata"].clone(),
                        }),
                    );
                }
                IncludeObject::Object => {
                    row.insert("object".into(), object.to_json());
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// (name, format, description) per column, as the apiserver's printers define them.
fn columns(kind: Kind) -> &'static [(&'static str, &'static str, &'static str)] {
    const NAME: (&str, &str, &str) = (
        "Name",
        "name",
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    );
    const AGE: (&str, &str, &str) = (
        "Age",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
    );
    match kind {
        Kind::Secret => &[
            NAME,
            (
                "Type",
                "",
                "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
            ),
            (
                "Data",
                "",
                "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
            ),
            AGE,
        ],
        Kind::Namespace => &[NAME, ("Status", "", "The status of the namespace"), AGE],
        // Event tables are printed by `kube/events.rs`.
        Kind::Event => &[],
    }
}

fn cells(object: &Object, now: DateTime<Utc>) -> Vec<Value> {
    let age = Value::String(human_age(now, object.meta.creation_timestamp));
    let name = Value::String(object.meta.name.clone());
    match &object.body {
        // DATA is a number in the cell (the column's declared type is string, as upstream).
        Body::Secret(secret) => vec![
            name,
            Value::String(secret.type_.clone().unwrap_or_default()),
            Value::from(secret.data.len()),
            age,
        ],
        Body::Namespace(namespace) => vec![name, Value::String(namespace.phase.clone()), age],
    }
}

/// The apiserver's `duration.HumanDuration` of `now - created`: `42s`, `3m12s`, `15m`, `5h20m`,
/// `2d3h`, `40d`, `2y30d`.
pub(super) fn human_age(now: DateTime<Utc>, created: DateTime<Utc>) -> String {
    let seconds = (now - created).num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            rest => format!("{hours}h{rest}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            rest => format!("{days}d{rest}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            rest => format!("{years}y{rest}d"),
        };
    }
    format!("{years}y")
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use http::HeaderValue;

    use super::*;

    #[test]
    fn ages_print_like_the_apiserver() {
        let created = Utc::now();
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 20 * 60, "5h20m"),
            (47 * 3600, "47h"),
            (2 * 86400 + 3 * 3600, "2d3h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (2 * 365 * 86400 + 30 * 86400, "2y30d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (seconds, expected) in cases {
            let now = created + TimeDelta::seconds(seconds);
            assert_eq!(human_age(now, created), expected, "{seconds} s");
        }
    }

    #[test]
    fn only_a_v1_table_accept_asks_for_a_table() {
        let ask = |accept: &str, include: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("header"));
            requested(&headers, include.map(str::to_owned).as_ref())
        };
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(ask(kubectl, None).ok(), Some(Some(IncludeObject::Metadata)));
        assert_eq!(
            ask(kubectl, Some("Object")).ok(),
            Some(Some(IncludeObject::Object))
        );
        assert_eq!(ask("application/json", None).ok(), Some(None));
        assert_eq!(
            ask(
                "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json",
                None
            )
            .ok(),
            Some(None)
        );
        assert!(ask(kubectl, Some("Everything")).is_err());
    }

    #[test]
    fn secret_rows_carry_name_type_data_count_and_age() {
        let mut secret = Object::new_secret("default", "db")
            .with_data("user", b"admin")
            .with_data("password", b"x");
        let now = Utc::now();
        secret.meta.creation_timestamp = now - TimeDelta::seconds(192);
        let secrets = table(
            Kind::Secret,
            &[&secret],
            Map::new(),
            IncludeObject::Metadata,
            true,
            now,
        );
        let names: Vec<&str> = secrets["columnDefinitions"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|column| column["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, ["Name", "Type", "Data", "Age"]);
        assert_eq!(secrets["rows"][0]["cells"], json!(["db", "Opaque", 2, "3m12s"]));
        assert_eq!(secrets["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(secrets["rows"][0]["object"]["metadata"]["namespace"], "default");
        assert!(
            secrets["rows"][0]["object"].get("data").is_none(),
            "no secret data in a metadata row"
        );
        let namespace = Object::new_namespace("team-a");
        let namespaces = table(
            Kind::Namespace,
            &[&namespace],
            Map::new(),
            IncludeObject::None,
            false,
            now,
        );
        assert_eq!(namespaces["columnDefinitions"], json!([]));
        assert_eq!(namespaces["rows"][0]["cells"][1], "Active");
        assert!(namespaces["rows"][0].get("object").is_none());
    }
}
