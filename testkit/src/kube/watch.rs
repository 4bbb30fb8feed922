//! Watches: a chunked stream of JSON lines (`{"type": …, "object": …}`) fed from the cluster's
//! bounded event history.
//!
//! Supports resume from a resourceVersion (ERROR 410 when it is older than the history),
//! synthetic ADDED events for `resourceVersion` "" / "0", `sendInitialEvents` with the
//! `k8s.io/initial-events-end` bookmark, periodic bookmarks, `timeoutSeconds`, selectors
//! (objects entering or leaving a selector are ADDED / DELETED), and dropped watches.

use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use http::{StatusCode, header};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::cluster::{Cluster, Inner};
use super::model::{Kind, Object};
use super::query::{Query, flag, selectors};
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Event, EventType};
use super::table::{self, IncludeObject};

/// Watches without `timeoutSeconds` end after this (the apiserver picks 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    /// Events carry one-row Tables instead of objects (`kubectl get --watch`).
    table: Option<IncludeObject>,
    /// The column definitions go with the first Table only, as the apiserver sends them.
    columns_sent: Cell<bool>,
}

impl Filter {
    fn matches(&self, object: &Object) -> bool {
        object.kind() == self.kind
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| object.meta.namespace.as_deref() == Some(ns))
            && self.labels.matches(&object.meta.labels)
            && self.fields.matches(object)
    }

    /// The object of an event: the object itself, or a one-row Table.
    fn encode(&self, object: &Object) -> Value {
        match self.table {
            None => object.to_json(),
            Some(include) => {
                let mut metadata = Map::new();
                metadata.insert(
                    "resourceVersion".into(),
                    object.meta.resource_version.to_string().into(),
                );
                let columns = !self.columns_sent.replace(true);
                table::table(self.kind, &[object], metadata, include, columns, Utc::now())
            }
        }
    }

    /// The event a watcher with this filter sees, if any.
    fn render(&self, event: &Event) -> Option<String> {
        let now = self.matches(&event.object);
        let before = event
            .previous
            .as_deref()
            .is_some_and(|previous| self.matches(previous));
        let kind = match (event.kind, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Deleted, _, true) => EventType::Deleted,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            _ => return None,
        };
        Some(line(kind.as_str(), self.encode(&event.object)))
    }
}

fn line(kind: &str, object: Value) -> String {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    text
}

fn bookmark(kind: Kind, resource_version: u64, initial_end: bool) -> String {
    let mut metadata = json!({"resourceVersion": resource_version.to_string(), "creationTimestamp": null});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"kind": kind.name(), "apiVersion": "v1", "metadata": metadata}),
    )
}

/// Validates the parameters and starts streaming.
pub(super) fn start(
    inner: Arc<Inner>,
    cluster: Arc<Cluster>,
    kind: Kind,
    namespace: Option<String>,
    query: &Query,
    table: Option<IncludeObject>,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(kind, query)?;
    let allow_bookmarks = flag(query, "allowWatchBookmarks");
    let send_initial = flag(query, "sendInitialEvents");
    if send_initial {
        if query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !allow_bookmarks {
            return Err(ApiError::bad_request(
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(seconds) => Duration::from_secs(
            seconds
                .parse()
                .map_err(|_| ApiError::bad_request("timeoutSeconds: expected an integer"))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let requested = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let from: Option<u64> = match requested {
        "" | "0" => None,
        text => Some(
            text.parse()
                .map_err(|_| ApiError::bad_request(format!("resourceVersion: invalid value {text:?}")))?,
        ),
    };
    let filter = Filter {
        kind,
        namespace,
        labels,
        fields,
        table,
        columns_sent: Cell::new(false),
    };

    // Snapshot under the lock, so nothing falls between the initial events and the live ones.
    let (epoch, cursor, mut first) = {
        let state = cluster.lock();
        let mut first = String::new();
        let cursor = state.resource_version();
        if send_initial || from.is_none() {
            for object in state.list(kind, filter.namespace.as_deref(), None) {
                if filter.matches(object) {
                    first.push_str(&line("ADDED", filter.encode(object)));
                }
            }
            if send_initial {
                first.push_str(&bookmark(kind, cursor, true));
            }
            (state.watch_epoch, cursor, first)
        } else {
            let from = from.unwrap_or_default();
            if let Err(error) = state.events_after(from) {
                first.push_str(&line("ERROR", error.to_json()));
                (state.watch_epoch, u64::MAX, first)
            } else {
                (state.watch_epoch, from, first)
            }
        }
    };

    let (sender, receiver) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let interval = inner.config.bookmark_interval;
    let expired = cursor == u64::MAX;
    tokio::spawn(async move {
        if !first.is_empty()
            && sender
                .send(Ok(Bytes::from(std::mem::take(&mut first))))
                .await
                .is_err()
        {
            return;
        }
        if expired {
            return;
        }
        stream(
            cluster,
            filter,
            sender,
            epoch,
            cursor,
            allow_bookmarks.then_some(interval),
            timeout,
        )
        .await;
    });
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(receiver)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

async fn stream(
    cluster: Arc<Cluster>,
    filter: Filter,
    sender: mpsc::Sender<Result<Bytes, Infallible>>,
    epoch: u64,
    mut cursor: u64,
    bookmarks: Option<Duration>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ticker =
        bookmarks.map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        let notified = cluster.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let events = {
            let state = cluster.lock();
            if state.watch_epoch != epoch {
                return;
            }
            let held_after = state.faults.watches_held_after;
            state.events_after(cursor).map(|mut events| {
                if let Some(limit) = held_after {
                    events.retain(|event| event.resource_version <= limit);
                }
                events
            })
        };
        let mut out = String::new();
        match events {
            Ok(events) => {
                for event in &events {
                    cursor = event.resource_version;
                    if let Some(text) = filter.render(event) {
                        out.push_str(&text);
                    }
                }
            }
            Err(error) => {
                // The watcher fell behind the history window.
                let _ = sender.send(Ok(Bytes::from(line("ERROR", error.to_json())))).await;
                return;
            }
        }
        if !out.is_empty() && sender.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => return,
            () = sender.closed() => return,
            _ = async {
                match ticker.as_mut() {
                    Some(ticker) => ticker.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                if sender.send(Ok(Bytes::from(bookmark(filter.kind, cursor, false)))).await.is_err() {
                    return;
                }
            }
        }
    }
}
