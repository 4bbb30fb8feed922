//! JSON merge patch (RFC 7386, also strategic merge for Secrets and Namespaces, which have no
//! merge-keyed lists) and JSON patch (RFC 6902) on an object's JSON form.

use serde_json::Value;

use super::status::ApiError;

/// Applies a JSON merge patch to `target`.
pub(super) fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(entries) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in entries {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies a JSON patch (a list of operations) to `target`.
pub(super) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let operations = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch: the body must be a list of operations"))?;
    for (index, operation) in operations.iter().enumerate() {
        let op = operation.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = operation
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request(format!("json patch: operation {index}: missing path")))?;
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request(format!("json patch: operation {index}: missing value")))
        };
        let from = || {
            operation
                .get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request(format!("json patch: operation {index}: missing from")))
        };
        match op {
            "add" => add(target, path, value()?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value()?)?;
            }
            "move" => {
                let moved = remove(target, from()?)?;
                add(target, path, moved)?;
            }
            "copy" => {
                let copied = target
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| missing(from().unwrap_or_default()))?;
                add(target, path, copied)?;
            }
            "test" => {
                let expected = value()?;
                if target.pointer(path) != Some(&expected) {
                    return Err(ApiError::new_unprocessable(format!(
                        "json patch: test operation failed at {path}"
                    )));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "json patch: operation {index}: unknown op {other:?}"
                )));
            }
        }
    }
    Ok(())
}

impl ApiError {
    fn new_unprocessable(message: String) -> Self {
        let mut error = Self::bad_request(message);
        error.code = 422;
        error.reason = "Invalid";
        error
    }
}

fn missing(path: &str) -> ApiError {
    ApiError::new_unprocessable(format!("json patch: doc is missing path: {path:?}"))
}

fn split(path: &str) -> Result<(String, String), ApiError> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| ApiError::bad_request(format!("json patch: invalid path {path:?}")))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    Ok((parent.to_owned(), last))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>().map_err(|_| missing(path))?
            };
            if index > items.len() {
                return Err(missing(path));
            }
            items.insert(index, value);
            Ok(())
        }
        _ => Err(missing(path)),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or_else(|| missing(path)),
        Some(Value::Array(items)) => {
            let index = last.parse::<usize>().map_err(|_| missing(path))?;
            if index >= items.len() {
                return Err(missing(path));
            }
            Ok(items.remove(index))
        }
        _ => Err(missing(path)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_sets_and_removes_keys() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"k": "dg=="}});
        merge(
            &mut doc,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "type": "Opaque"}),
        );
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "data": {"k": "dg=="}, "type": "Opaque"})
        );
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"metadata": {"labels": {"a/b": "1"}}, "data": {}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/data/k", "value": "dg=="},
                {"op": "test", "path": "/data/k", "value": "dg=="},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
                {"op": "copy", "from": "/data/k", "path": "/data/j"},
                {"op": "move", "from": "/data/j", "path": "/data/m"},
                {"op": "remove", "path": "/data/k"},
            ]),
        )
        .expect("patch applies");
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a/b": "2"}}, "data": {"m": "dg=="}})
        );
        let error =
            json_patch(&mut doc, &json!([{"op": "remove", "path": "/data/zzz"}])).expect_err("missing");
        assert_eq!(error.code, 422);
        let error = json_patch(
            &mut doc,
            &json!([{"op": "test", "path": "/data/m", "value": "x"}]),
        )
        .expect_err("test");
        assert_eq!(error.code, 422);
    }
}
