//! The objects the fake stores (Secrets and Namespaces), their JSON form, and the strict decoding of
//! what clients send. Secret values are held in [`SecretBytes`] (zeroized, redacted `Debug`).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::status::ApiError;

/// Bytes of a Secret value: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The value.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.expose())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl From<&[u8]> for SecretBytes {
    fn from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }
}

/// The two kinds the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1/Secret`, namespaced.
    Secret,
    /// `v1/Namespace`, cluster-scoped.
    Namespace,
    /// `events.k8s.io/v1` Event (also served as core `v1` Event), namespaced. Kept in its own
    /// store (`kube/events.rs`), not among the objects; here for permissions and request records.
    Event,
}

impl Kind {
    /// `Secret` or `Namespace`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::Namespace => "Namespace",
            Self::Event => "Event",
        }
    }

    /// The plural resource name (`secrets`, `namespaces`).
    pub fn resource(self) -> &'static str {
        match self {
            Self::Secret => "secrets",
            Self::Namespace => "namespaces",
            Self::Event => "events",
        }
    }

    /// The list kind (`SecretList`, `NamespaceList`).
    pub fn list_kind(self) -> &'static str {
        match self {
            Self::Secret => "SecretList",
            Self::Namespace => "NamespaceList",
            Self::Event => "EventList",
        }
    }
}

/// Which kind of write a managedFields entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Create, update or a non-apply patch.
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// A field that a manager can own (the leaves SSA tracks for Secrets and Namespaces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// `metadata.labels.<key>`.
    Label(String),
    /// `metadata.annotations.<key>`.
    Annotation(String),
    /// `metadata.finalizers` (atomic).
    Finalizers,
    /// `metadata.ownerReferences` (atomic).
    OwnerReferences,
    /// `data.<key>` (Secret).
    Data(String),
    /// `stringData.<key>` (Secret, folded into `data` when stored).
    StringData(String),
    /// `type` (Secret).
    Type,
    /// `immutable` (Secret).
    Immutable,
    /// `spec.finalizers` (Namespace, atomic).
    SpecFinalizers,
}

impl Field {
    /// The path as the apiserver prints it in conflicts (`.data.password`).
    pub fn path(&self) -> String {
        match self {
            Self::Label(key) => format!(".metadata.labels.{key}"),
            Self::Annotation(key) => format!(".metadata.annotations.{key}"),
            Self::Finalizers => ".metadata.finalizers".to_owned(),
            Self::OwnerReferences => ".metadata.ownerReferences".to_owned(),
            Self::Data(key) => format!(".data.{key}"),
            Self::StringData(key) => format!(".stringData.{key}"),
            Self::Type => ".type".to_owned(),
            Self::Immutable => ".immutable".to_owned(),
            Self::SpecFinalizers => ".spec.finalizers".to_owned(),
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedFields {
    /// The field manager.
    pub manager: String,
    /// Apply or Update.
    pub operation: Operation,
    /// When the entry last changed.
    pub time: DateTime<Utc>,
    /// The fields it owns.
    pub fields: std::collections::BTreeSet<Field>,
}

impl ManagedFields {
    /// `fieldsV1` as the apiserver serializes it.
    pub fn fields_v1(&self) -> Value {
        let leaf = |key: &str| (format!("f:{key}"), Value::Object(Map::new()));
        let (mut root, mut meta, mut labels, mut annotations) =
            (Map::new(), Map::new(), Map::new(), Map::new());
        let (mut data, mut string_data, mut spec) = (Map::new(), Map::new(), Map::new());
        for field in &self.fields {
            let (map, (key, value)) = match field {
                Field::Label(key) => (&mut labels, leaf(key)),
                Field::Annotation(key) => (&mut annotations, leaf(key)),
                Field::Finalizers => (&mut meta, leaf("finalizers")),
                Field::OwnerReferences => (&mut meta, leaf("ownerReferences")),
                Field::Data(key) => (&mut data, leaf(key)),
                Field::StringData(key) => (&mut string_data, leaf(key)),
                Field::Type => (&mut root, leaf("type")),
                Field::Immutable => (&mut root, leaf("immutable")),
                Field::SpecFinalizers => (&mut spec, leaf("finalizers")),
            };
            map.insert(key, value);
        }
        for (name, map) in [("f:labels", labels), ("f:annotations", annotations)] {
            if !map.is_empty() {
                meta.insert(name.to_owned(), Value::Object(map));
            }
        }
        for (name, map) in [
            ("f:metadata", meta),
            ("f:data", data),
            ("f:stringData", string_data),
            ("f:spec", spec),
        ] {
            if !map.is_empty() {
                root.insert(name.to_owned(), Value::Object(map));
            }
        }
        Value::Object(root)
    }

    fn to_json(&self) -> Value {
        json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": "v1",
            "time": timestamp(self.time),
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields_v1(),
        })
    }
}

/// Object metadata the fake keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (None for Namespaces).
    pub namespace: Option<String>,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion` (0 until stored).
    pub resource_version: u64,
    /// `metadata.creationTimestamp`.
    pub creation_timestamp: DateTime<Utc>,
    /// `metadata.deletionTimestamp` (only on a Namespace being deleted).
    pub deletion_timestamp: Option<DateTime<Utc>>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.finalizers`.
    pub finalizers: Option<Vec<String>>,
    /// `metadata.ownerReferences`, kept as sent.
    pub owner_references: Option<Value>,
    /// `metadata.managedFields`.
    pub managed_fields: Vec<ManagedFields>,
    /// `metadata.generateName` of a create request (never stored).
    pub generate_name: Option<String>,
}

/// The kind-specific part of an object.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A Secret.
    Secret(SecretBody),
    /// A Namespace.
    Namespace(NamespaceBody),
}

/// A Secret's fields besides metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecretBody {
    /// `data`.
    pub data: BTreeMap<String, SecretBytes>,
    /// `stringData` as sent (empty once stored: it is folded into `data`).
    pub string_data: BTreeMap<String, SecretBytes>,
    /// `type` (None only in a request that omits it).
    pub type_: Option<String>,
    /// `immutable`.
    pub immutable: Option<bool>,
}

/// A Namespace's fields besides metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceBody {
    /// `spec.finalizers`.
    pub spec_finalizers: Option<Vec<String>>,
    /// `status.phase` (`Active` or `Terminating`).
    pub phase: String,
}

/// A stored (or requested) object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Metadata.
    pub meta: ObjectMeta,
    /// Kind-specific fields.
    pub body: Body,
}

/// RFC 3339 with a `Z` and whole seconds, as the apiserver writes timestamps.
pub(super) fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Secret(_) => Kind::Secret,
            Body::Namespace(_) => Kind::Namespace,
        }
    }

    /// A new Secret with `type: Opaque` and no data.
    pub fn new_secret(namespace: &str, name: &str) -> Self {
        Self {
            meta: ObjectMeta::new(Some(namespace), name),
            body: Body::Secret(SecretBody {
                type_: Some("Opaque".to_owned()),
                ..SecretBody::default()
            }),
        }
    }

    /// A new active Namespace.
    pub fn new_namespace(name: &str) -> Self {
        let mut meta = ObjectMeta::new(None, name);
        meta.labels
            .insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
        Self {
            meta,
            body: Body::Namespace(NamespaceBody {
                spec_finalizers: Some(vec!["kubernetes".to_owned()]),
                phase: "Active".to_owned(),
            }),
        }
    }

    /// Sets a Secret data value (builder style).
    pub fn with_data(mut self, key: &str, value: &[u8]) -> Self {
        if let Some(secret) = self.secret_mut() {
            secret.data.insert(key.to_owned(), SecretBytes::from(value));
        }
        self
    }

    /// Sets a label (builder style).
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.meta.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets an annotation (builder style).
    pub fn with_annotation(mut self, key: &str, value: &str) -> Self {
        self.meta.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The Secret part, if this is a Secret.
    pub fn secret(&self) -> Option<&SecretBody> {
        match &self.body {
            Body::Secret(secret) => Some(secret),
            Body::Namespace(_) => None,
        }
    }

    /// The Secret part, mutable.
    pub fn secret_mut(&mut self) -> Option<&mut SecretBody> {
        match &mut self.body {
            Body::Secret(secret) => Some(secret),
            Body::Namespace(_) => None,
        }
    }

    /// A Secret data value.
    pub fn data(&self, key: &str) -> Option<&[u8]> {
        self.secret()?.data.get(key).map(SecretBytes::expose)
    }

    /// The JSON form served to clients (with `apiVersion`, `kind`).
    pub fn to_json(&self) -> Value {
        let mut meta = Map::new();
        meta.insert("name".into(), Value::String(self.meta.name.clone()));
        if let Some(namespace) = &self.meta.namespace {
            meta.insert("namespace".into(), Value::String(namespace.clone()));
        }
        meta.insert("uid".into(), Value::String(self.meta.uid.clone()));
        meta.insert(
            "resourceVersion".into(),
            Value::String(self.meta.resource_version.to_string()),
        );
        meta.insert(
            "creationTimestamp".into(),
            Value::String(timestamp(self.meta.creation_timestamp)),
        );
        if let Some(deleted) = self.meta.deletion_timestamp {
            meta.insert("deletionTimestamp".into(), Value::String(timestamp(deleted)));
        }
        if !self.meta.labels.is_empty() {
            meta.insert("labels".into(), string_map(&self.meta.labels));
        }
        if !self.meta.annotations.is_empty() {
            meta.insert("annotations".into(), string_map(&self.meta.annotations));
        }
        if let Some(finalizers) = &self.meta.finalizers {
            meta.insert("finalizers".into(), json!(finalizers));
        }
        if let Some(owners) = &self.meta.owner_references {
            meta.insert("ownerReferences".into(), owners.clone());
        }
        if !self.meta.managed_fields.is_empty() {
            meta.insert(
                "managedFields".into(),
                Value::Array(
                    self.meta
                        .managed_fields
                        .iter()
                        .map(ManagedFields::to_json)
                        .collect(),
                ),
            );
        }
        let mut root = Map::new();
        root.insert("apiVersion".into(), Value::String("v1".into()));
        root.insert("kind".into(), Value::String(self.kind().name().into()));
        root.insert("metadata".into(), Value::Object(meta));
        match &self.body {
            Body::Secret(secret) => {
                if !secret.data.is_empty() {
                    let data: Map<String, Value> = secret
                        .data
                        .iter()
                        .map(|(key, value)| (key.clone(), Value::String(value.base64())))
                        .collect();
                    root.insert("data".into(), Value::Object(data));
                }
                if !secret.string_data.is_empty() {
                    let data: Map<String, Value> = secret
                        .string_data
                        .iter()
                        .map(|(key, value)| {
                            (
                                key.clone(),
                                Value::String(String::from_utf8_lossy(value.expose()).into_owned()),
                            )
                        })
                        .collect();
                    root.insert("stringData".into(), Value::Object(data));
                }
                if let Some(type_) = &secret.type_ {
                    root.insert("type".into(), Value::String(type_.clone()));
                }
                if let Some(immutable) = secret.immutable {
                    root.insert("immutable".into(), Value::Bool(immutable));
                }
            }
            Body::Namespace(namespace) => {
                let mut spec = Map::new();
                if let Some(finalizers) = &namespace.spec_finalizers {
                    spec.insert("finalizers".into(), json!(finalizers));
                }
                root.insert("spec".into(), Value::Object(spec));
                root.insert("status".into(), json!({ "phase": namespace.phase }));
            }
        }
        Value::Object(root)
    }

    /// Decodes a request body of `kind`. Unknown fields are collected in `unknown` (as
    /// `.path` strings) and otherwise ignored; the caller applies `fieldValidation`.
    pub fn from_json(kind: Kind, value: &Value, unknown: &mut Vec<String>) -> Result<Self, ApiError> {
        let root = value
            .as_object()
            .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
        let mut meta = ObjectMeta::new(None, "");
        let mut secret = SecretBody::default();
        let mut namespace = NamespaceBody {
            spec_finalizers: None,
            phase: "Active".to_owned(),
        };
        for (key, field) in root {
            match key.as_str() {
                "apiVersion" => {
                    if field.as_str() != Some("v1") {
                        return Err(ApiError::bad_request(format!(
                            "apiVersion {field} is not served here: only v1"
                        )));
                    }
                }
                "kind" => {
                    if field.as_str() != Some(kind.name()) {
                        return Err(ApiError::bad_request(format!(
                            "kind {field} does not match the resource {}",
                            kind.resource()
                        )));
                    }
                }
                "metadata" => decode_meta(field, &mut meta, unknown)?,
                "data" if kind == Kind::Secret => {
                    for (name, value) in as_map(field, "data")? {
                        let text = value.as_str().ok_or_else(|| {
                            ApiError::bad_request(format!("data.{name}: expected a base64 string"))
                        })?;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(text)
                            .map_err(|_| {
                                ApiError::bad_request(format!("data.{name}: illegal base64 data"))
                            })?;
                        secret.data.insert(name.clone(), SecretBytes::new(bytes));
                    }
                }
                "stringData" if kind == Kind::Secret => {
                    for (name, value) in as_map(field, "stringData")? {
                        let text = value.as_str().ok_or_else(|| {
                            ApiError::bad_request(format!("stringData.{name}: expected a string"))
                        })?;
                        secret
                            .string_data
                            .insert(name.clone(), SecretBytes::from(text.as_bytes()));
                    }
                }
                "type" if kind == Kind::Secret => {
                    secret.type_ = optional_string(field, "type")?;
                }
                "immutable" if kind == Kind::Secret => match field {
                    Value::Null => secret.immutable = None,
                    Value::Bool(flag) => secret.immutable = Some(*flag),
                    _ => return Err(ApiError::bad_request("immutable: expected a boolean")),
                },
                "spec" if kind == Kind::Namespace => {
                    for (name, value) in as_map(field, "spec")? {
                        match name.as_str() {
                            "finalizers" => {
                                namespace.spec_finalizers = string_list(value, "spec.finalizers")?
                            }
                            other => unknown.push(format!(".spec.{other}")),
                        }
                    }
                }
                // Status is ignored on the main resource, as the apiserver does.
                "status" if kind == Kind::Namespace => {}
                other => unknown.push(format!(".{other}")),
            }
        }
        let body = match kind {
            // Events never become objects (see `kube/events.rs`); Secret is the closest shape.
            Kind::Secret | Kind::Event => Body::Secret(secret),
            Kind::Namespace => Body::Namespace(namespace),
        };
        Ok(Self { meta, body })
    }

    /// The fields present in this object (what a manager owns after writing it).
    pub fn fields(&self) -> std::collections::BTreeSet<Field> {
        let mut fields = std::collections::BTreeSet::new();
        fields.extend(self.meta.labels.keys().cloned().map(Field::Label));
        fields.extend(self.meta.annotations.keys().cloned().map(Field::Annotation));
        if self.meta.finalizers.is_some() {
            fields.insert(Field::Finalizers);
        }
        if self.meta.owner_references.is_some() {
            fields.insert(Field::OwnerReferences);
        }
        match &self.body {
            Body::Secret(secret) => {
                fields.extend(secret.data.keys().cloned().map(Field::Data));
                fields.extend(secret.string_data.keys().cloned().map(Field::StringData));
                if secret.type_.is_some() {
                    fields.insert(Field::Type);
                }
                if secret.immutable.is_some() {
                    fields.insert(Field::Immutable);
                }
            }
            Body::Namespace(namespace) => {
                if namespace.spec_finalizers.is_some() {
                    fields.insert(Field::SpecFinalizers);
                }
            }
        }
        fields
    }

    /// The value of `field` in this object, comparable across objects (`stringData.<k>` compares
    /// as the value `data.<k>` would hold).
    pub fn value(&self, field: &Field) -> Option<FieldValue<'_>> {
        match field {
            Field::Label(key) => self.meta.labels.get(key).map(|v| FieldValue::Text(v)),
            Field::Annotation(key) => self.meta.annotations.get(key).map(|v| FieldValue::Text(v)),
            Field::Finalizers => self.meta.finalizers.as_ref().map(FieldValue::List),
            Field::OwnerReferences => self.meta.owner_references.as_ref().map(FieldValue::Json),
            Field::Data(key) => self
                .secret()?
                .data
                .get(key)
                .map(|v| FieldValue::Bytes(v.expose())),
            Field::StringData(key) => {
                let secret = self.secret()?;
                secret
                    .string_data
                    .get(key)
                    .or_else(|| secret.data.get(key))
                    .map(|v| FieldValue::Bytes(v.expose()))
            }
            Field::Type => self.secret()?.type_.as_deref().map(FieldValue::Text),
            Field::Immutable => self.secret()?.immutable.map(FieldValue::Bool),
            Field::SpecFinalizers => match &self.body {
                Body::Namespace(namespace) => namespace.spec_finalizers.as_ref().map(FieldValue::List),
                Body::Secret(_) => None,
            },
        }
    }

    /// Copies `field` from `source` into this object (removing it when `source` lacks it).
    /// `stringData.<k>` is folded into `data.<k>`.
    pub fn copy_field(&mut self, field: &Field, source: &Object) {
        match field {
            Field::Label(key) => copy_entry(&mut self.meta.labels, &source.meta.labels, key),
            Field::Annotation(key) => copy_entry(&mut self.meta.annotations, &source.meta.annotations, key),
            Field::Finalizers => self.meta.finalizers.clone_from(&source.meta.finalizers),
            Field::OwnerReferences => self
                .meta
                .owner_references
                .clone_from(&source.meta.owner_references),
            Field::Data(key) | Field::StringData(key) => {
                let value = source.value(field).map(|v| match v {
                    FieldValue::Bytes(bytes) => SecretBytes::from(bytes),
                    _ => SecretBytes::new(Vec::new()),
                });
                if let Some(secret) = self.secret_mut() {
                    match value {
                        Some(value) => {
                            secret.data.insert(key.clone(), value);
                        }
                        None => {
                            secret.data.remove(key);
                        }
                    }
                }
            }
            Field::Type => {
                let type_ = source.secret().and_then(|s| s.type_.clone());
                if let (Some(secret), Some(type_)) = (self.secret_mut(), type_) {
                    secret.type_ = Some(type_);
                }
            }
            Field::Immutable => {
                let immutable = source.secret().and_then(|s| s.immutable);
                if let Some(secret) = self.secret_mut() {
                    secret.immutable = immutable;
                }
            }
            Field::SpecFinalizers => {
                let finalizers = match &source.body {
                    Body::Namespace(namespace) => namespace.spec_finalizers.clone(),
                    Body::Secret(_) => None,
                };
                if let Body::Namespace(namespace) = &mut self.body {
                    namespace.spec_finalizers = finalizers;
                }
            }
        }
    }

    /// Removes `field` (a Secret's `type` cannot be removed and stays).
    pub fn remove_field(&mut self, field: &Field) {
        match field {
            Field::Label(key) => {
                self.meta.labels.remove(key);
            }
            Field::Annotation(key) => {
                self.meta.annotations.remove(key);
            }
            Field::Finalizers => self.meta.finalizers = None,
            Field::OwnerReferences => self.meta.owner_references = None,
            Field::Data(key) | Field::StringData(key) => {
                if let Some(secret) = self.secret_mut() {
                    secret.data.remove(key);
                }
            }
            Field::Type => {}
            Field::Immutable => {
                if let Some(secret) = self.secret_mut() {
                    secret.immutable = None;
                }
            }
            Field::SpecFinalizers => {
                if let Body::Namespace(namespace) = &mut self.body {
                    namespace.spec_finalizers = None;
                }
            }
        }
    }

    /// Folds `stringData` into `data` (what the Secret registry does before storing).
    pub fn fold_string_data(&mut self) {
        if let Some(secret) = self.secret_mut() {
            let folded = std::mem::take(&mut secret.string_data);
            secret.data.extend(folded);
        }
    }

    /// Everything clients can observe except resourceVersion and managedFields times: equal
    /// contents mean a write is a no-op.
    pub fn same_content(&self, other: &Object) -> bool {
        let fields = |object: &Object| -> Vec<(String, Operation, std::collections::BTreeSet<Field>)> {
            object
                .meta
                .managed_fields
                .iter()
                .map(|entry| (entry.manager.clone(), entry.operation, entry.fields.clone()))
                .collect()
        };
        self.body == other.body
            && self.meta.labels == other.meta.labels
            && self.meta.annotations == other.meta.annotations
            && self.meta.finalizers == other.meta.finalizers
            && self.meta.owner_references == other.meta.owner_references
            && fields(self) == fields(other)
    }
}

/// A field's value, for equality checks between an applied configuration and the live object.
#[derive(Debug, PartialEq)]
pub enum FieldValue<'a> {
    /// A string.
    Text(&'a str),
    /// Secret bytes.
    Bytes(&'a [u8]),
    /// A boolean.
    Bool(bool),
    /// A list of strings.
    List(&'a Vec<String>),
    /// Opaque JSON.
    Json(&'a Value),
}

impl ObjectMeta {
    /// Metadata for a new object (uid and creation time filled in, resourceVersion 0).
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            uid: String::new(),
            resource_version: 0,
            creation_timestamp: Utc::now(),
            deletion_timestamp: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            finalizers: None,
            owner_references: None,
            managed_fields: Vec::new(),
            generate_name: None,
        }
    }
}

/// What the request's `metadata` carried besides the decoded fields.
fn decode_meta(value: &Value, meta: &mut ObjectMeta, unknown: &mut Vec<String>) -> Result<(), ApiError> {
    for (key, field) in as_map(value, "metadata")? {
        match key.as_str() {
            "name" => meta.name = optional_string(field, "metadata.name")?.unwrap_or_default(),
            "namespace" => meta.namespace = optional_string(field, "metadata.namespace")?,
            "uid" => meta.uid = optional_string(field, "metadata.uid")?.unwrap_or_default(),
            "resourceVersion" => {
                let text = optional_string(field, "metadata.resourceVersion")?.unwrap_or_default();
                meta.resource_version = if text.is_empty() {
                    0
                } else {
                    text.parse().map_err(|_| {
                        ApiError::bad_request(format!("metadata.resourceVersion: invalid value {text:?}"))
                    })?
                };
            }
            "labels" => meta.labels = string_entries(field, "metadata.labels")?,
            "annotations" => meta.annotations = string_entries(field, "metadata.annotations")?,
            "finalizers" => meta.finalizers = string_list(field, "metadata.finalizers")?,
            "ownerReferences" => {
                meta.owner_references = if field.is_null() {
                    None
                } else {
                    Some(field.clone())
                };
            }
            // The server keeps managedFields itself; what clients echo back is ignored (apply
            // refuses it before decoding).
            "managedFields" => {}
            // Server-set fields that clients echo back: accepted and ignored.
            "creationTimestamp"
            | "deletionTimestamp"
            | "deletionGracePeriodSeconds"
            | "generation"
            | "selfLink" => {}
            "generateName" => meta.generate_name = optional_string(field, "metadata.generateName")?,
            other => unknown.push(format!(".metadata.{other}")),
        }
    }
    Ok(())
}

fn as_map<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ApiError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        _ => Err(ApiError::bad_request(format!("{path}: expected an object"))),
    }
}

fn optional_string(value: &Value, path: &str) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        _ => Err(ApiError::bad_request(format!("{path}: expected a string"))),
    }
}

fn string_entries(value: &Value, path: &str) -> Result<BTreeMap<String, String>, ApiError> {
    as_map(value, path)?
        .iter()
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key.clone(), text.clone())),
            _ => Err(ApiError::bad_request(format!("{path}.{key}: expected a string"))),
        })
        .collect()
}

fn string_list(value: &Value, path: &str) -> Result<Option<Vec<String>>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request(format!("{path}: expected a list of strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(ApiError::bad_request(format!("{path}: expected a list"))),
    }
}

fn string_map(map: &BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect(),
    )
}

fn copy_entry(target: &mut BTreeMap<String, String>, source: &BTreeMap<String, String>, key: &str) {
    match source.get(key) {
        Some(value) => {
            target.insert(key.to_owned(), value.clone());
        }
        None => {
            target.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_round_trips_through_json_and_folds_string_data() {
        let body = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "apps", "labels": {"a": "1"}},
            "data": {"user": "YWRtaW4="}, "stringData": {"password": "hunter2"}, "type": "Opaque",
        });
        let mut unknown = Vec::new();
        let mut secret = Object::from_json(Kind::Secret, &body, &mut unknown).expect("decodes");
        assert!(unknown.is_empty());
        assert_eq!(secret.data("user"), Some(&b"admin"[..]));
        secret.fold_string_data();
        assert_eq!(secret.data("password"), Some(&b"hunter2"[..]));
        let json = secret.to_json();
        assert_eq!(json["data"]["password"], "aHVudGVyMg==");
        assert!(json.get("stringData").is_none());
    }

    #[test]
    fn unknown_fields_are_reported_by_path() {
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "bogus": 1}, "extra": true});
        let mut unknown = Vec::new();
        Object::from_json(Kind::Secret, &body, &mut unknown).expect("decodes");
        assert_eq!(unknown, vec![".extra".to_owned(), ".metadata.bogus".to_owned()]);
    }

    #[test]
    fn fields_v1_nests_like_the_apiserver() {
        let entry = ManagedFields {
            manager: "kubectl".into(),
            operation: Operation::Apply,
            time: Utc::now(),
            fields: [
                Field::Data("user".into()),
                Field::Label("app".into()),
                Field::Type,
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            entry.fields_v1(),
            json!({"f:data": {"f:user": {}}, "f:metadata": {"f:labels": {"f:app": {}}}, "f:type": {}})
        );
    }

    #[test]
    fn secret_bytes_debug_is_redacted() {
        let value = SecretBytes::from(&b"hunter2"[..]);
        assert!(!format!("{value:?}").contains("hunter2"));
    }
}
