//! The vault's data: secrets, their versions and the soft-deleted ones, with Key Vault's rules
//! (names, sizes, version ids, paging). Pure: no IO, no HTTP, no logging.

use std::collections::{BTreeMap, HashMap};

use zeroize::Zeroizing;

/// Longest secret value Key Vault accepts (25 KB).
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
/// Largest page Key Vault serves.
pub const MAX_PAGE: usize = 25;
/// Days a deleted secret stays recoverable.
pub(super) const RECOVERABLE_DAYS: i64 = 90;

/// One version of a secret.
#[derive(Clone)]
pub(super) struct Version {
    /// 32 lowercase hex characters.
    pub id: String,
    /// The value (wiped on drop).
    pub value: Zeroizing<String>,
    /// `contentType`.
    pub content_type: Option<String>,
    /// `tags`.
    pub tags: BTreeMap<String, String>,
    /// `attributes.enabled`.
    pub enabled: bool,
    /// `attributes.exp` (unix seconds).
    pub expires: Option<i64>,
    /// `attributes.nbf` (unix seconds).
    pub not_before: Option<i64>,
    /// `attributes.created` (unix seconds).
    pub created: i64,
    /// `attributes.updated` (unix seconds).
    pub updated: i64,
    /// Whether a certificate manages this secret (its companion secret: `managed: true`, `kid`).
    pub managed: bool,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("id", &self.id)
            .field("value", &format_args!("<redacted {} bytes>", self.value.len()))
            .field("enabled", &self.enabled)
            .field("updated", &self.updated)
            .finish_non_exhaustive()
    }
}

/// A secret: its name as first written and its versions, oldest first.
#[derive(Clone)]
pub(super) struct Secret {
    /// Name with the case it was created with.
    pub name: String,
    /// Versions, oldest first; the last one is the current version.
    pub versions: Vec<Version>,
}

impl Secret {
    /// The current (latest) version.
    pub(super) fn latest(&self) -> Option<&Version> {
        self.versions.last()
    }

    /// A version by id (case-insensitive, as Key Vault).
    pub(super) fn version(&self, id: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.id.eq_ignore_ascii_case(id))
    }

    fn version_mut(&mut self, id: &str) -> Option<&mut Version> {
        self.versions.iter_mut().find(|v| v.id.eq_ignore_ascii_case(id))
    }
}

/// A soft-deleted secret.
#[derive(Clone)]
pub(super) struct Deleted {
    /// The secret as it was.
    pub secret: Secret,
    /// Unix seconds of the delete.
    pub deleted_date: i64,
    /// Unix seconds after which Key Vault would purge it.
    pub scheduled_purge_date: i64,
}

/// What a write carries besides the value.
#[derive(Clone, Default)]
pub struct Attributes {
    /// `contentType`.
    pub content_type: Option<String>,
    /// `tags`.
    pub tags: Option<BTreeMap<String, String>>,
    /// `attributes.enabled`.
    pub enabled: Option<bool>,
    /// `attributes.exp`.
    pub expires: Option<i64>,
    /// `attributes.nbf`.
    pub not_before: Option<i64>,
}

/// A Key Vault error: HTTP status, error code, message and optional inner code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// HTTP status.
    pub status: u16,
    /// `error.code`.
    pub code: &'static str,
    /// `error.message` (never holds a value).
    pub message: String,
    /// `error.innererror.code`.
    pub inner: Option<&'static str>,
}

impl ServiceError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            inner: None,
        }
    }

    pub(crate) fn with_inner(mut self, inner: &'static str) -> Self {
        self.inner = Some(inner);
        self
    }

    fn not_found(name: &str) -> Self {
        Self::new(
            404,
            "SecretNotFound",
            format!(
                "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
        )
    }

    fn deleted_not_found(name: &str) -> Self {
        Self::new(404, "SecretNotFound", format!("Deleted Secret not found: {name}"))
    }

    fn conflict_deleted(name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
            ),
        )
    }

    /// 400 BadParameter.
    pub(crate) fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(400, "BadParameter", message)
    }
}

/// Checks a secret name: 1–127 characters of `0-9a-zA-Z-`.
pub(super) fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok =
        !name.is_empty() && name.len() <= 127 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_parameter(format!(
            "The request URI contains an invalid name: {name}"
        )))
    }
}

/// The whole vault.
#[derive(Default)]
pub(super) struct Vault {
    secrets: HashMap<String, Secret>,
    deleted: HashMap<String, Deleted>,
    certificates: HashMap<String, Certificate>,
}

/// One version of a certificate: the public part; its key and certificate are the companion
/// secret's version of the same id.
#[derive(Debug, Clone)]
pub(super) struct CertificateVersion {
    /// 32 lowercase hex characters (the companion secret's version too).
    pub id: String,
    /// The leaf certificate, DER (`cer`).
    pub cer: Vec<u8>,
    /// `x5t`.
    pub x5t: String,
    /// `attributes.enabled`.
    pub enabled: bool,
    /// `attributes.nbf`.
    pub not_before: i64,
    /// `attributes.exp`.
    pub expires: i64,
    /// `attributes.created`.
    pub created: i64,
    /// `attributes.updated`.
    pub updated: i64,
    /// `tags`.
    pub tags: BTreeMap<String, String>,
    /// The companion secret's `contentType`.
    pub content_type: &'static str,
    /// `CN=…`.
    pub subject: String,
    /// Subject alternative DNS names.
    pub dns_names: Vec<String>,
    /// `RSA` or `EC`.
    pub key_type: &'static str,
}

/// A certificate: its name as first written and its versions, oldest first.
#[derive(Debug, Clone)]
pub(super) struct Certificate {
    /// Name with the case it was created with.
    pub name: String,
    /// Versions, oldest first; the last one is the current version.
    pub versions: Vec<CertificateVersion>,
}

impl Certificate {
    /// A version by id (the latest when `None`), case-insensitive.
    pub(super) fn version(&self, id: Option<&str>) -> Option<&CertificateVersion> {
        match id {
            None => self.versions.last(),
            Some(id) => self.versions.iter().find(|v| v.id.eq_ignore_ascii_case(id)),
        }
    }
}

fn key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// A new 32-hex version id.
pub(super) fn new_version_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Vault {
    /// `PUT /secrets/{name}`: a new version.
    pub(super) fn set(
        &mut self,
        name: &str,
        value: Zeroizing<String>,
        attributes: Attributes,
        now: i64,
    ) -> Result<Version, ServiceError> {
        check_name(name)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(ServiceError::bad_parameter(format!(
                "Secret value of {name} is too large: {} bytes, the limit is {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        check_attributes(&attributes)?;
        if self.deleted.contains_key(&key(name)) {
            return Err(ServiceError::conflict_deleted(name));
        }
        let version = Version {
            id: new_version_id(),
            value,
            content_type: attributes.content_type,
            tags: attributes.tags.unwrap_or_default(),
            enabled: attributes.enabled.unwrap_or(true),
            expires: attributes.expires,
            not_before: attributes.not_before,
            created: now,
            updated: now,
            managed: false,
        };
        let secret = self.secrets.entry(key(name)).or_insert_with(|| Secret {
            name: name.to_owned(),
            versions: Vec::new(),
        });
        secret.versions.push(version.clone());
        Ok(version)
    }

    /// A secret by name.
    pub(super) fn secret(&self, name: &str) -> Result<&Secret, ServiceError> {
        self.secrets
            .get(&key(name))
            .ok_or_else(|| ServiceError::not_found(name))
    }

    /// `GET /secrets/{name}/{version?}`, disabled versions included (the caller decides).
    pub(super) fn get(&self, name: &str, version: Option<&str>) -> Result<(&Secret, &Version), ServiceError> {
        let secret = self.secret(name)?;
        let found = match version {
            None => secret.latest(),
            Some(id) => secret.version(id),
        };
        let found = found.ok_or_else(|| ServiceError::not_found(name))?;
        Ok((secret, found))
    }

    /// `PATCH /secrets/{name}/{version?}`.
    pub(super) fn update(
        &mut self,
        name: &str,
        version: Option<&str>,
        attributes: Attributes,
        now: i64,
    ) -> Result<(String, Version), ServiceError> {
        check_attributes(&attributes)?;
        let secret = self
            .secrets
            .get_mut(&key(name))
            .ok_or_else(|| ServiceError::not_found(name))?;
        let secret_name = secret.name.clone();
        let id = match version {
            Some(id) => id.to_owned(),
            None => secret.latest().map(|v| v.id.clone()).unwrap_or_default(),
        };
        let found = secret
            .version_mut(&id)
            .ok_or_else(|| ServiceError::not_found(name))?;
        if let Some(content_type) = attributes.content_type {
            found.content_type = Some(content_type);
        }
        if let Some(tags) = attributes.tags {
            found.tags = tags;
        }
        if let Some(enabled) = attributes.enabled {
            found.enabled = enabled;
        }
        if attributes.expires.is_some() {
            found.expires = attributes.expires;
        }
        if attributes.not_before.is_some() {
            found.not_before = attributes.not_before;
        }
        found.updated = now;
        Ok((secret_name, found.clone()))
    }

    /// Every live secret, sorted by lowercase name (stable paging).
    pub(super) fn list(&self) -> Vec<&Secret> {
        let mut all: Vec<(&String, &Secret)> = self.secrets.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, s)| s).collect()
    }

    /// `DELETE /secrets/{name}`: soft delete.
    pub(super) fn delete(&mut self, name: &str, now: i64) -> Result<&Deleted, ServiceError> {
        let secret = self
            .secrets
            .remove(&key(name))
            .ok_or_else(|| ServiceError::not_found(name))?;
        let deleted = Deleted {
            secret,
            deleted_date: now,
            scheduled_purge_date: now + RECOVERABLE_DAYS * 86_400,
        };
        let slot = self.deleted.entry(key(name)).insert_entry(deleted);
        Ok(slot.into_mut())
    }

    /// Every deleted secret, sorted by lowercase name.
    pub(super) fn list_deleted(&self) -> Vec<&Deleted> {
        let mut all: Vec<(&String, &Deleted)> = self.deleted.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, d)| d).collect()
    }

    /// `GET /deletedsecrets/{name}`.
    pub(super) fn get_deleted(&self, name: &str) -> Result<&Deleted, ServiceError> {
        self.deleted
            .get(&key(name))
            .ok_or_else(|| ServiceError::deleted_not_found(name))
    }

    /// `POST /deletedsecrets/{name}/recover`.
    pub(super) fn recover(&mut self, name: &str) -> Result<(String, Version), ServiceError> {
        let deleted = self
            .deleted
            .remove(&key(name))
            .ok_or_else(|| ServiceError::deleted_not_found(name))?;
        let secret = deleted.secret;
        let latest = secret
            .latest()
            .cloned()
            .ok_or_else(|| ServiceError::not_found(name))?;
        let secret_name = secret.name.clone();
        self.secrets.insert(key(name), secret);
        Ok((secret_name, latest))
    }

    /// Imports a certificate version (`POST /certificates/{name}/import`): the certificate
    /// version and its companion secret version (same id, `managed`, validity of the certificate).
    pub(super) fn set_certificate(
        &mut self,
        name: &str,
        imported: super::certificates::Imported,
        tags: BTreeMap<String, String>,
        now: i64,
    ) -> Result<CertificateVersion, ServiceError> {
        check_name(name)?;
        if let Some(secret) = self.secrets.get(&key(name))
            && secret.versions.iter().any(|v| !v.managed)
        {
            return Err(ServiceError::new(
                409,
                "Conflict",
                format!("There is already a secret named {name} that no certificate manages."),
            ));
        }
        if self.deleted.contains_key(&key(name)) {
            return Err(ServiceError::conflict_deleted(name));
        }
        let id = new_version_id();
        let version = CertificateVersion {
            id: id.clone(),
            x5t: super::certificates::thumbprint(&imported.cer),
            cer: imported.cer,
            enabled: true,
            not_before: imported.not_before,
            expires: imported.expires,
            created: now,
            updated: now,
            tags: tags.clone(),
            content_type: imported.content_type,
            subject: imported.subject,
            dns_names: imported.dns_names,
            key_type: imported.key_type,
        };
        let companion = Version {
            id,
            value: imported.value,
            content_type: Some(imported.content_type.to_owned()),
            tags,
            enabled: true,
            expires: Some(imported.expires),
            not_before: Some(imported.not_before),
            created: now,
            updated: now,
            managed: true,
        };
        self.secrets
            .entry(key(name))
            .or_insert_with(|| Secret {
                name: name.to_owned(),
                versions: Vec::new(),
            })
            .versions
            .push(companion);
        self.certificates
            .entry(key(name))
            .or_insert_with(|| Certificate {
                name: name.to_owned(),
                versions: Vec::new(),
            })
            .versions
            .push(version.clone());
        Ok(version)
    }

    /// A certificate by name.
    pub(super) fn certificate(&self, name: &str) -> Result<&Certificate, ServiceError> {
        self.certificates.get(&key(name)).ok_or_else(|| {
            ServiceError::new(
                404,
                "CertificateNotFound",
                format!("A certificate with (name/id) {name} was not found in this key vault. If you recently deleted this certificate you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"),
            )
        })
    }

    /// Every certificate, sorted by lowercase name.
    pub(super) fn list_certificates(&self) -> Vec<&Certificate> {
        let mut all: Vec<(&String, &Certificate)> = self.certificates.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, c)| c).collect()
    }

    /// `DELETE /deletedsecrets/{name}`.
    pub(super) fn purge(&mut self, name: &str) -> Result<(), ServiceError> {
        self.deleted
            .remove(&key(name))
            .map(drop)
            .ok_or_else(|| ServiceError::deleted_not_found(name))
    }
}

fn check_attributes(attributes: &Attributes) -> Result<(), ServiceError> {
    if let Some(content_type) = &attributes.content_type
        && content_type.len() > 255
    {
        return Err(ServiceError::bad_parameter(
            "contentType is longer than 255 characters",
        ));
    }
    if let Some(tags) = &attributes.tags {
        if tags.len() > 15 {
            return Err(ServiceError::bad_parameter(format!(
                "Too many tags: {}, at most 15 are allowed",
                tags.len()
            )));
        }
        if let Some((name, _)) = tags.iter().find(|(k, v)| k.len() > 512 || v.len() > 512) {
            return Err(ServiceError::bad_parameter(format!(
                "Tag {name} is too long: tag names and values are at most 512 characters"
            )));
        }
    }
    Ok(())
}

/// One page of `items` from `offset`, and the offset of the next page if any.
pub(super) fn page<T>(items: &[T], offset: usize, size: usize) -> (&[T], Option<usize>) {
    let start = offset.min(items.len());
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then_some(end);
    (&items[start..end], next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Zeroizing<String> {
        Zeroizing::new(text.to_owned())
    }

    #[test]
    fn names_follow_key_vault_rules() {
        assert!(check_name("db-Password-1").is_ok());
        assert!(check_name(&"a".repeat(127)).is_ok());
        for bad in ["", "under_score", "dot.name", &"a".repeat(128)] {
            let error = check_name(bad).expect_err(bad);
            assert_eq!((error.status, error.code), (400, "BadParameter"), "{bad}");
        }
    }

    #[test]
    fn every_set_is_a_new_version_and_names_are_case_insensitive() {
        let mut vault = Vault::default();
        let first = vault
            .set("Db", value("one"), Attributes::default(), 10)
            .expect("set");
        let second = vault
            .set("db", value("two"), Attributes::default(), 11)
            .expect("set");
        assert_ne!(first.id, second.id);
        assert_eq!(first.id.len(), 32);
        assert!(
            first
                .id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let (secret, latest) = vault.get("DB", None).expect("get");
        assert_eq!(secret.name, "Db");
        assert_eq!(latest.value.as_str(), "two");
        let (_, old) = vault
            .get("db", Some(&first.id.to_uppercase()))
            .expect("by version");
        assert_eq!(old.value.as_str(), "one");
        assert_eq!(
            vault.get("nope", None).map(|_| ()).expect_err("missing").code,
            "SecretNotFound"
        );
    }

    #[test]
    fn value_size_limit() {
        let mut vault = Vault::default();
        assert!(
            vault
                .set("a", value(&"x".repeat(MAX_VALUE_BYTES)), Attributes::default(), 1)
                .is_ok()
        );
        let error = vault
            .set(
                "a",
                value(&"x".repeat(MAX_VALUE_BYTES + 1)),
                Attributes::default(),
                1,
            )
            .expect_err("too big");
        assert_eq!(error.status, 400);
        assert!(!error.message.contains("xxxx"));
    }

    #[test]
    fn delete_recover_purge() {
        let mut vault = Vault::default();
        vault.set("a", value("v"), Attributes::default(), 1).expect("set");
        vault.delete("a", 5).expect("delete");
        assert_eq!(vault.get("a", None).map(|_| ()).expect_err("gone").status, 404);
        assert_eq!(
            vault
                .set("a", value("w"), Attributes::default(), 6)
                .expect_err("conflict")
                .status,
            409
        );
        assert_eq!(vault.list_deleted().len(), 1);
        vault.recover("a").expect("recover");
        assert_eq!(vault.get("a", None).expect("back").1.value.as_str(), "v");
        vault.delete("a", 7).expect("delete");
        vault.purge("a").expect("purge");
        assert!(vault.list_deleted().is_empty());
        assert!(vault.set("a", value("x"), Attributes::default(), 8).is_ok());
    }

    #[test]
    fn update_changes_only_given_fields() {
        let mut vault = Vault::default();
        let tags = BTreeMap::from([("team".to_owned(), "fleet".to_owned())]);
        let v = vault
            .set(
                "a",
                value("v"),
                Attributes {
                    tags: Some(tags.clone()),
                    ..Attributes::default()
                },
                1,
            )
            .expect("set");
        let (_, updated) = vault
            .update(
                "a",
                Some(&v.id),
                Attributes {
                    enabled: Some(false),
                    ..Attributes::default()
                },
                9,
            )
            .expect("update");
        assert!(!updated.enabled);
        assert_eq!(updated.tags, tags);
        assert_eq!((updated.created, updated.updated), (1, 9));
    }

    #[test]
    fn a_certificate_version_is_also_its_companion_secret_version() {
        let mut vault = Vault::default();
        let generated = super::super::certificates::TestCertificate::self_signed("c.example", &["c.example"])
            .expect("generate");
        let imported =
            super::super::certificates::import(generated.pem_bundle().as_bytes(), "").expect("import");
        let (nbf, exp) = (imported.not_before, imported.expires);
        let first = vault
            .set_certificate("Tls", imported, BTreeMap::new(), 5)
            .expect("set");
        let (secret, companion) = vault.get("tls", Some(&first.id)).expect("companion secret");
        assert_eq!(secret.name, "Tls");
        assert!(companion.managed);
        assert_eq!(companion.content_type.as_deref(), Some("application/x-pem-file"));
        assert_eq!((companion.not_before, companion.expires), (Some(nbf), Some(exp)));
        assert_eq!(first.cer, generated.cert_der);
        let pfx = super::super::certificates::import(
            &generated.pfx_with_password("import-pass").expect("pfx"),
            "import-pass",
        )
        .expect("import");
        let second = vault
            .set_certificate("tls", pfx, BTreeMap::new(), 6)
            .expect("set");
        let certificate = vault.certificate("TLS").expect("certificate");
        assert_eq!(
            certificate.version(None).map(|v| v.id.as_str()),
            Some(second.id.as_str())
        );
        assert_eq!(vault.secret("tls").expect("secret").versions.len(), 2);
        vault
            .set("plain", value("v"), Attributes::default(), 1)
            .expect("set");
        let plain =
            super::super::certificates::import(generated.pem_bundle().as_bytes(), "").expect("import");
        let error = vault
            .set_certificate("plain", plain, BTreeMap::new(), 7)
            .expect_err("a plain secret has that name");
        assert_eq!(error.status, 409);
        assert_eq!(
            vault.certificate("none").expect_err("missing").code,
            "CertificateNotFound"
        );
    }

    #[test]
    fn paging() {
        let items: Vec<u32> = (0..60).collect();
        let (first, next) = page(&items, 0, 25);
        assert_eq!((first.len(), next), (25, Some(25)));
        let (last, next) = page(&items, 50, 25);
        assert_eq!((last.len(), next), (10, None));
        let (empty, next) = page(&items, 70, 25);
        assert_eq!((empty.len(), next), (0, None));
    }
}
