//! A request's query parameters as the verbs read them: the map, boolean flags and the label and
//! field selectors that list, watch and deletecollection share.

use std::collections::HashMap;

use super::model::Kind;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;

/// The decoded query string of one request.
pub(super) type Query = HashMap<String, String>;

/// Whether the boolean parameter `name` is set, the way the apiserver reads `true` or `1`.
pub(super) fn flag(query: &Query, name: &str) -> bool {
    matches!(query.get(name).map(String::as_str), Some("true" | "1"))
}

/// The selectors of a list, watch or deletecollection.
pub(super) fn selectors(kind: Kind, query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or_default())?;
    let fields = FieldSelector::parse(
        query.get("fieldSelector").map(String::as_str).unwrap_or_default(),
        kind == Kind::Secret,
    )?;
    Ok((labels, fields))
}
