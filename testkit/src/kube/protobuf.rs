//! Decoding of the Kubernetes protobuf envelope for Secrets and Namespaces: what kubectl's
//! typed commands (`create secret generic`, `create namespace`) POST.
//!
//! The envelope is the magic `k8s\0`, then a `runtime.Unknown` { typeMeta = 1 { apiVersion = 1,
//! kind = 2 }, raw = 2 }, with `raw` the object. The object is turned into its JSON form, so
//! the same decoding and rules apply. Responses are JSON (kubectl's Accept lists it).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::model::Kind;
use super::status::ApiError;

const MAGIC: &[u8] = b"k8s\0";

fn invalid(what: &str) -> ApiError {
    ApiError::bad_request(format!("protobuf body: {what}"))
}

/// One field of a protobuf message.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Iterates `(field number, value)` pairs; fixed32/fixed64 fields are skipped.
fn fields(mut input: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ApiError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let key = varint(&mut input)?;
        let (number, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => out.push((number, Wire::Varint(varint(&mut input)?))),
            1 => input = input.get(8..).ok_or_else(|| invalid("truncated fixed64"))?,
            2 => {
                let len = usize::try_from(varint(&mut input)?).map_err(|_| invalid("length overflow"))?;
                let bytes = input.get(..len).ok_or_else(|| invalid("truncated field"))?;
                input = &input[len..];
                out.push((number, Wire::Bytes(bytes)));
            }
            5 => input = input.get(4..).ok_or_else(|| invalid("truncated fixed32"))?,
            _ => return Err(invalid("unsupported wire type")),
        }
    }
    Ok(out)
}

fn varint(input: &mut &[u8]) -> Result<u64, ApiError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or_else(|| invalid("truncated varint"))?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(invalid("varint too long"))
}

fn text(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid("string is not UTF-8"))
}

/// A `map<string, X>` entry: key = 1, value = 2.
fn map_entry(bytes: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (number, field) in fields(bytes)? {
        match (number, field) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn object_meta(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (number, field) in fields(bytes)? {
        let Wire::Bytes(b) = field else { continue };
        match number {
            1 => {
                meta.insert("name".into(), text(b)?.into());
            }
            2 => {
                meta.insert("generateName".into(), text(b)?.into());
            }
            3 => {
                meta.insert("namespace".into(), text(b)?.into());
            }
            6 => {
                meta.insert("resourceVersion".into(), text(b)?.into());
            }
            11 => {
                let (key, value) = map_entry(b)?;
                labels.insert(key, text(value)?.into());
            }
            12 => {
                let (key, value) = map_entry(b)?;
                annotations.insert(key, text(value)?.into());
            }
            14 => finalizers.push(Value::String(text(b)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// True when `body` starts with the protobuf envelope magic.
pub(super) fn is_envelope(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// Decodes an envelope holding a `kind` object into its JSON form.
pub(super) fn decode(kind: Kind, body: &[u8]) -> Result<Value, ApiError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| invalid("missing k8s magic"))?;
    let mut raw: &[u8] = &[];
    let mut type_kind = String::new();
    for (number, field) in fields(envelope)? {
        match (number, field) {
            (1, Wire::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta)? {
                    if let (2, Wire::Bytes(b)) = (n, f) {
                        type_kind = text(b)?;
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    if type_kind != kind.name() {
        return Err(invalid(&format!(
            "kind {type_kind:?} does not match {}",
            kind.resource()
        )));
    }
    let mut root = Map::new();
    root.insert("apiVersion".into(), "v1".into());
    root.insert("kind".into(), kind.name().into());
    let mut data = Map::new();
    let mut string_data = Map::new();
    for (number, field) in fields(raw)? {
        match (kind, number, field) {
            (_, 1, Wire::Bytes(b)) => {
                root.insert("metadata".into(), object_meta(b)?);
            }
            (Kind::Secret, 2, Wire::Bytes(b)) => {
                let (key, value) = map_entry(b)?;
                data.insert(
                    key,
                    base64::engine::general_purpose::STANDARD.encode(value).into(),
                );
            }
            (Kind::Secret, 3, Wire::Bytes(b)) => {
                root.insert("type".into(), text(b)?.into());
            }
            (Kind::Secret, 4, Wire::Bytes(b)) => {
                let (key, value) = map_entry(b)?;
                string_data.insert(key, text(value)?.into());
            }
            (Kind::Secret, 5, Wire::Varint(flag)) => {
                root.insert("immutable".into(), (flag != 0).into());
            }
            _ => {}
        }
    }
    if !data.is_empty() {
        root.insert("data".into(), Value::Object(data));
    }
    if !string_data.is_empty() {
        root.insert("stringData".into(), Value::Object(string_data));
    }
    Ok(Value::Object(root))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(number << 3 | 2).expect("small field number")];
        out.push(u8::try_from(bytes.len()).expect("short field"));
        out.extend_from_slice(bytes);
        out
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        [field(1, key.as_bytes()), field(2, value)].concat()
    }

    #[test]
    fn decodes_what_kubectl_create_secret_generic_sends() {
        let meta = [
            field(1, b"db"),
            field(3, b"apps"),
            field(11, &entry("app", b"web")),
        ]
        .concat();
        let secret = [
            field(1, &meta),
            field(2, &entry("password", b"hunter2")),
            field(3, b"Opaque"),
            vec![5 << 3, 1],
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        assert!(is_envelope(&body));
        assert_eq!(
            decode(Kind::Secret, &body).expect("decodes"),
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db", "namespace": "apps", "labels": {"app": "web"}},
                "data": {"password": "aHVudGVyMg=="}, "type": "Opaque", "immutable": true,
            })
        );
        assert!(
            decode(Kind::Namespace, &body).is_err(),
            "kind mismatch is refused"
        );
        assert!(
            decode(Kind::Secret, &body[..body.len() - 3]).is_err(),
            "truncation is refused"
        );
    }
}
