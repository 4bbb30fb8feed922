//! Events: one store served in two shapes, as a real apiserver does. `events.k8s.io/v1` (what
//! controllers post: `regarding`, `note`, `series`, `reportingController`) and core `v1`
//! (`involvedObject`, `message`, `count`, `reportingComponent`: what `kubectl get events` reads)
//! are conversions of the same objects. Create, get, list (namespace or cluster, `fieldSelector`
//! by equality), merge/strategic patch (the `events.k8s.io/v1` immutable fields stay immutable:
//! only `series` and metadata labels/annotations change), delete, and the apiserver's Table
//! (`LAST SEEN TYPE REASON OBJECT MESSAGE`), for a list and for a single get. Lists take label
//! selectors too. Under `fieldValidation`, top-level fields the group does not define are unknown
//! (Strict: 400). Every create, patch and delete wakes [`super::ClusterHandle::until_events`].
//! No watch.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::selector::LabelSelector;
use super::status::{ApiError, Cause};
use super::table::{IncludeObject, human_age};

/// Which API group a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// `events.k8s.io/v1`.
    Events,
    /// core `v1`.
    Core,
}

/// Fields of `events.k8s.io/v1` that an update may not change.
const IMMUTABLE: &[&str] = &[
    "regarding",
    "related",
    "reason",
    "note",
    "type",
    "eventTime",
    "action",
    "reportingController",
    "reportingInstance",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
];

/// The top-level fields of an `events.k8s.io/v1` Event.
const EVENTS_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "eventTime",
    "series",
    "reportingController",
    "reportingInstance",
    "action",
    "reason",
    "regarding",
    "related",
    "note",
    "type",
    "deprecatedSource",
    "deprecatedFirstTimestamp",
    "deprecatedLastTimestamp",
    "deprecatedCount",
];

/// The top-level fields of a core `v1` Event.
const CORE_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "involvedObject",
    "reason",
    "message",
    "source",
    "firstTimestamp",
    "lastTimestamp",
    "count",
    "type",
    "eventTime",
    "series",
    "action",
    "related",
    "reportingComponent",
    "reportingInstance",
];

/// The `.field` paths of `body`'s top-level fields that `shape` does not define (the caller
/// applies `fieldValidation`).
pub(super) fn unknown_fields(body: &Value, shape: Shape) -> Vec<String> {
    let known = match shape {
        Shape::Events => EVENTS_FIELDS,
        Shape::Core => CORE_FIELDS,
    };
    body.as_object()
        .into_iter()
        .flat_map(|map| map.keys())
        .filter(|key| !known.contains(&key.as_str()))
        .map(|key| format!(".{key}"))
        .collect()
}

/// The stored Events, `events.k8s.io/v1` shaped, by (namespace, name).
#[derive(Debug, Default)]
pub(super) struct Events {
    objects: BTreeMap<(String, String), Value>,
}

fn invalid(name: &str, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        "Event",
        "events",
        name,
        vec![Cause {
            reason: "FieldValueInvalid",
            message: message.to_owned(),
            field: field.to_owned(),
        }],
    )
}

/// Core `v1` → `events.k8s.io/v1` (the apiserver's conversion).
fn from_core(core: &Value) -> Value {
    let mut out = Map::new();
    let map = core.as_object().cloned().unwrap_or_default();
    for (key, value) in map {
        let key = match key.as_str() {
            "involvedObject" => "regarding",
            "message" => "note",
            "reportingComponent" => "reportingController",
            "source" => "deprecatedSource",
            "firstTimestamp" => "deprecatedFirstTimestamp",
            "lastTimestamp" => "deprecatedLastTimestamp",
            "count" => "deprecatedCount",
            other => other,
        };
        out.insert(key.to_owned(), value);
    }
    out.insert("apiVersion".into(), "events.k8s.io/v1".into());
    out.insert("kind".into(), "Event".into());
    Value::Object(out)
}

/// `events.k8s.io/v1` → core `v1`.
fn to_core(event: &Value) -> Value {
    let mut out = Map::new();
    for (key, value) in event.as_object().cloned().unwrap_or_default() {
        let key = match key.as_str() {
            "regarding" => "involvedObject",
            "note" => "message",
            "reportingController" => "reportingComponent",
            "deprecatedSource" => "source",
            "deprecatedFirstTimestamp" => "firstTimestamp",
            "deprecatedLastTimestamp" => "lastTimestamp",
            "deprecatedCount" => "count",
            other => other,
        };
        out.insert(key.to_owned(), value);
    }
    out.entry("involvedObject").or_insert_with(|| json!({}));
    out.entry("reportingComponent").or_insert_with(|| "".into());
    out.entry("reportingInstance").or_insert_with(|| "".into());
    out.entry("source").or_insert_with(|| json!({}));
    out.insert("apiVersion".into(), "v1".into());
    out.insert("kind".into(), "Event".into());
    Value::Object(out)
}

/// The object in the requested shape.
pub(super) fn shaped(event: &Value, shape: Shape) -> Value {
    match shape {
        Shape::Events => event.clone(),
        Shape::Core => to_core(event),
    }
}

fn required(event: &Value, name: &str, field: &str) -> Result<(), ApiError> {
    match event.get(field) {
        Some(Value::String(text)) if !text.is_empty() => Ok(()),
        Some(Value::Object(_)) => Ok(()),
        _ => Err(invalid(name, field, "Required value")),
    }
}

/// The apiserver's validation of a new `events.k8s.io/v1` Event (core ones are more lenient).
fn validate_new(event: &Value, name: &str, shape: Shape) -> Result<(), ApiError> {
    if shape == Shape::Events {
        for field in [
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
        ] {
            required(event, name, field)?;
        }
        if event["note"].as_str().is_some_and(|note| note.len() > 1024) {
            return Err(invalid(name, "note", "Too long: may not be more than 1024 bytes"));
        }
    }
    match event.get("type").and_then(Value::as_str) {
        None if shape == Shape::Core => Ok(()),
        Some("Normal" | "Warning") => Ok(()),
        _ => Err(invalid(
            name,
            "type",
            "Unsupported value: supported values: \"Normal\", \"Warning\"",
        )),
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn event_labels(event: &Value) -> BTreeMap<String, String> {
    event
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
        .collect()
}

fn time_at(event: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    event
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.with_timezone(&Utc))
}

/// When an Event was first seen, as the apiserver's printer takes it: `firstTimestamp`, else
/// `eventTime` (None prints `<unknown>`).
fn first_seen(event: &Value) -> Option<DateTime<Utc>> {
    time_at(event, "/deprecatedFirstTimestamp").or_else(|| time_at(event, "/eventTime"))
}

/// When an Event was last seen, as the printer takes it: the series' `lastObservedTime`, else
/// `lastTimestamp`, else the first seen time (never the creationTimestamp).
fn last_seen(event: &Value) -> Option<DateTime<Utc>> {
    if event.get("series").is_some_and(Value::is_object) {
        return time_at(event, "/series/lastObservedTime");
    }
    time_at(event, "/deprecatedLastTimestamp").or_else(|| first_seen(event))
}

/// One `fieldSelector` term on an Event (`field=value`, `field==value`, `field!=value`), with
/// core field names (`involvedObject.name`) or `events.k8s.io` ones (`regarding.name`).
fn field_matches(event: &Value, selector: &str) -> Result<bool, ApiError> {
    for term in selector.split(',').filter(|term| !term.is_empty()) {
        let (field, value, equal) = if let Some((field, value)) = term.split_once("!=") {
            (field, value, false)
        } else if let Some((field, value)) = term.split_once("==") {
            (field, value, true)
        } else if let Some((field, value)) = term.split_once('=') {
            (field, value, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector term {term:?}"
            )));
        };
        let path = match field {
            "metadata.name" => "/metadata/name".to_owned(),
            "metadata.namespace" => "/metadata/namespace".to_owned(),
            "reason" | "type" | "reportingController" | "reportingComponent" => match field {
                "reportingComponent" => "/reportingController".to_owned(),
                other => format!("/{other}"),
            },
            other => match other
                .strip_prefix("involvedObject.")
                .or_else(|| other.strip_prefix("regarding."))
            {
                Some(
                    sub @ ("kind" | "name" | "namespace" | "uid" | "apiVersion" | "resourceVersion"
                    | "fieldPath"),
                ) => {
                    format!("/regarding/{sub}")
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "\"{field}\" is not a known field selector: only \"involvedObject.*\", \"regarding.*\", \"reason\", \"type\", \"metadata.name\", \"metadata.namespace\""
                    )));
                }
            },
        };
        let actual = event.pointer(&path).and_then(Value::as_str).unwrap_or_default();
        if (actual == value) != equal {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Events {
    /// Creates an Event; `resource_version` is the cluster's next one.
    pub(super) fn create(
        &mut self,
        namespace: &str,
        body: &Value,
        shape: Shape,
        resource_version: u64,
        now: DateTime<Utc>,
    ) -> Result<Value, ApiError> {
        let mut event = match shape {
            Shape::Events => body.clone(),
            Shape::Core => from_core(body),
        };
        let name = event
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                event
                    .pointer("/metadata/generateName")
                    .and_then(Value::as_str)
                    .map(|prefix| format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..5]))
            })
            .ok_or_else(|| {
                invalid(
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )
            })?;
        if let Some(given) = event.pointer("/metadata/namespace").and_then(Value::as_str)
            && given != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        validate_new(&event, &name, shape)?;
        let key = (namespace.to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists("events", &name));
        }
        let metadata = event
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("an Event must be a JSON object"))?
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if let Value::Object(metadata) = metadata {
            metadata.insert("name".into(), name.clone().into());
            metadata.insert("namespace".into(), namespace.into());
            metadata.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            metadata.insert("resourceVersion".into(), resource_version.to_string().into());
            metadata.insert(
                "creationTimestamp".into(),
                now.to_rfc3339_opts(SecondsFormat::Secs, true).into(),
            );
            metadata.remove("generateName");
        }
        event["apiVersion"] = "events.k8s.io/v1".into();
        event["kind"] = "Event".into();
        self.objects.insert(key, event.clone());
        Ok(event)
    }

    /// One Event.
    pub(super) fn get(&self, namespace: &str, name: &str) -> Result<&Value, ApiError> {
        self.objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| ApiError::not_found("events", name))
    }

    /// Merge-patches an Event (a strategic merge patch of an Event is a merge patch: it has no
    /// lists with merge keys that matter here).
    pub(super) fn patch(
        &mut self,
        namespace: &str,
        name: &str,
        patch: &Value,
        shape: Shape,
        resource_version: u64,
    ) -> Result<Value, ApiError> {
        let live = self.get(namespace, name)?.clone();
        let patch = match shape {
            Shape::Events => patch.clone(),
            Shape::Core => {
                let mut converted = from_core(patch);
                if let Value::Object(map) = &mut converted {
                    map.remove("apiVersion");
                    map.remove("kind");
                }
                converted
            }
        };
        let mut updated = live.clone();
        merge(&mut updated, &patch);
        if shape == Shape::Events {
            for field in IMMUTABLE {
                if updated.get(*field) != live.get(*field) {
                    return Err(invalid(name, field, "field is immutable"));
                }
            }
            if let Some(series) = updated.get("series")
                && (series["count"].as_i64().is_none_or(|count| count < 2)
                    || series["lastObservedTime"].as_str().is_none())
            {
                return Err(invalid(
                    name,
                    "series",
                    "count must be at least 2 and lastObservedTime is required",
                ));
            }
        }
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            updated["metadata"][field] = live["metadata"][field].clone();
        }
        updated["metadata"]["resourceVersion"] = resource_version.to_string().into();
        self.objects
            .insert((namespace.to_owned(), name.to_owned()), updated.clone());
        Ok(updated)
    }

    /// Deletes an Event.
    pub(super) fn delete(&mut self, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .remove(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| ApiError::not_found("events", name))
    }

    /// The Events of `namespace` (all when `None`) matching `field_selector` and `labels`, by
    /// namespace and name.
    pub(super) fn list(
        &self,
        namespace: Option<&str>,
        field_selector: Option<&str>,
        labels: &LabelSelector,
    ) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        for ((ns, _), event) in &self.objects {
            if namespace.is_some_and(|namespace| namespace != ns) {
                continue;
            }
            if let Some(selector) = field_selector
                && !field_matches(event, selector)?
            {
                continue;
            }
            if !labels.matches(&event_labels(event)) {
                continue;
            }
            out.push(event.clone());
        }
        Ok(out)
    }

    /// Every Event, `events.k8s.io/v1` shaped (tests).
    pub(super) fn all(&self) -> Vec<Value> {
        self.objects.values().cloned().collect()
    }
}

/// The apiserver's Table for Events (the same columns for both groups).
pub(super) fn table(
    events: &[Value],
    shape: Shape,
    metadata: Map<String, Value>,
    include: IncludeObject,
    now: DateTime<Utc>,
) -> Value {
    let column = |name: &str, priority: u8, description: &str| json!({"name": name, "type": "string", "format": "", "description": description, "priority": priority});
    let columns = vec![
        column("Last Seen", 0, "Time when this Event was last seen"),
        column(
            "Type",
            0,
            "Type of this event (Normal, Warning), new types could be added in the future.",
        ),
        column("Reason", 0, "The reason for this event."),
        column("Object", 0, "The object that this event is about."),
        column("Subobject", 1, "The subobject that this event is about."),
        column("Source", 1, "The component reporting this event."),
        column(
            "Message",
            0,
            "A human-readable description of the status of this operation.",
        ),
        column("First Seen", 1, "Time when this Event was first seen"),
        column("Count", 1, "The number of times this event has occurred."),
        column("Name", 1, "Name of the event"),
    ];
    let rows: Vec<Value> = events
        .iter()
        .map(|event| {
            let core = to_core(event);
            let age = |time: Option<DateTime<Utc>>| {
                time.map_or_else(|| "<unknown>".to_owned(), |time| human_age(now, time))
            };
            let first = first_seen(event);
            let kind = core
                .pointer("/involvedObject/kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let object = format!(
                "{}/{}",
                kind.to_lowercase(),
                core.pointer("/involvedObject/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
            let source = match (
                core.pointer("/source/component").and_then(Value::as_str),
                core["reportingComponent"].as_str().unwrap_or_default(),
                core["reportingInstance"].as_str().unwrap_or_default(),
            ) {
                (Some(component), _, _) if !component.is_empty() => component.to_owned(),
                (_, controller, "") => controller.to_owned(),
                (_, controller, instance) => format!("{controller}, {instance}"),
            };
            let count = core
                .pointer("/series/count")
                .or_else(|| core.get("count"))
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let cells = json!([
                age(last_seen(event)),
                core["type"].as_str().unwrap_or_default(),
                core["reason"].as_str().unwrap_or_default(),
                object,
                core.pointer("/involvedObject/fieldPath")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                source,
                core["message"].as_str().unwrap_or_default().trim(),
                age(first),
                count,
                core.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ]);
            let mut row = Map::new();
            row.insert("cells".into(), cells);
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row.insert(
                        "object".into(),
                        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                               "metadata": event["metadata"].clone()}),
                    );
                }
                IncludeObject::Object => {
                    row.insert("object".into(), shaped(event, shape));
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
           "columnDefinitions": columns, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "db.0123456789abcdef", "namespace": "team-a"},
            "eventTime": "2026-03-01T12:00:00.000000Z",
            "reportingController": "keyfleet.io/agent", "reportingInstance": "agent-0",
            "action": "Apply", "reason": "Applied", "type": "Normal",
            "note": "Applied revision 3 of fleet secret db",
            "regarding": {"apiVersion": "v1", "kind": "Secret", "namespace": "team-a", "name": "db"},
        })
    }

    #[test]
    fn one_store_two_shapes() {
        let mut events = Events::default();
        let now = Utc::now();
        events
            .create("team-a", &posted(), Shape::Events, 7, now)
            .expect("created");
        let again = events.create("team-a", &posted(), Shape::Events, 8, now);
        assert_eq!(again.expect_err("exists").code, 409);
        let core = shaped(
            events.get("team-a", "db.0123456789abcdef").expect("stored"),
            Shape::Core,
        );
        assert_eq!(core["involvedObject"]["name"], "db");
        assert_eq!(core["message"], "Applied revision 3 of fleet secret db");
        assert_eq!(core["reportingComponent"], "keyfleet.io/agent");
        assert_eq!(core["apiVersion"], "v1");
        let listed = events
            .list(
                Some("team-a"),
                Some("involvedObject.kind=Secret,involvedObject.name=db"),
                &LabelSelector::default(),
            )
            .expect("selector");
        assert_eq!(listed.len(), 1);
        assert!(
            events
                .list(None, Some("regarding.name=other"), &LabelSelector::default())
                .expect("selector")
                .is_empty()
        );
    }

    #[test]
    fn only_the_series_changes() {
        let mut events = Events::default();
        events
            .create("team-a", &posted(), Shape::Events, 7, Utc::now())
            .expect("created");
        let series = json!({"series": {"count": 3, "lastObservedTime": "2026-03-01T12:05:00.000000Z"}});
        let updated = events
            .patch("team-a", "db.0123456789abcdef", &series, Shape::Events, 9)
            .expect("series");
        assert_eq!(updated["series"]["count"], 3);
        assert_eq!(updated["metadata"]["resourceVersion"], "9");
        let note = json!({"note": "something else"});
        let error = events
            .patch("team-a", "db.0123456789abcdef", &note, Shape::Events, 10)
            .expect_err("immutable");
        assert_eq!(error.code, 422);
        let mut incomplete = posted();
        incomplete.as_object_mut().expect("object").remove("eventTime");
        incomplete["metadata"]["name"] = "x".into();
        let error = events
            .create("team-a", &incomplete, Shape::Events, 11, Utc::now())
            .expect_err("eventTime is required");
        assert_eq!(error.code, 422);
    }

    #[test]
    fn label_selectors_unknown_fields_and_the_printed_times() {
        let mut events = Events::default();
        let mut labelled = posted();
        labelled["metadata"]["labels"] = json!({"team": "a"});
        let now = Utc::now();
        events
            .create("team-a", &labelled, Shape::Events, 7, now)
            .expect("created");
        let selector = LabelSelector::parse("team=a").expect("selector");
        assert_eq!(events.list(None, None, &selector).expect("list").len(), 1);
        let other = LabelSelector::parse("team=b").expect("selector");
        assert!(events.list(None, None, &other).expect("list").is_empty());

        let mut unknown = posted();
        unknown["bogus"] = 1.into();
        unknown["message"] = "a core field".into();
        let set = |fields: Vec<String>| fields.into_iter().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(
            set(unknown_fields(&unknown, Shape::Events)),
            set(vec![".bogus".into(), ".message".into()])
        );
        assert_eq!(
            set(unknown_fields(&unknown, Shape::Core)),
            set([".bogus", ".note", ".regarding", ".reportingController"]
                .map(str::to_owned)
                .to_vec())
        );

        // A core Event without any timestamp prints `<unknown>`, never its creation time.
        let core = json!({"metadata": {"name": "bare"}, "reason": "X",
                          "involvedObject": {"kind": "Secret", "name": "db"}});
        let bare = from_core(&core);
        assert_eq!(last_seen(&bare), None);
        assert_eq!(first_seen(&bare), None);
        let seen = last_seen(&posted()).expect("eventTime");
        assert_eq!(seen.to_rfc3339(), "2026-03-01T12:00:00+00:00");
    }
}
