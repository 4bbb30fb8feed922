//! Server-side apply: conflicts with other managers, force, and removal of fields the applier
//! no longer applies.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;

use super::ownership::same_target;
use super::validate::validate;
use super::{State, WriteOptions, Written, check_namespace_field, default_fields, prepare_new};
use crate::kube::model::{Field, Kind, ManagedFields, Object, Operation};
use crate::kube::status::{ApiError, Cause};

impl State {
    /// Server-side apply of `config` (decoded from an apply-patch body).
    pub(crate) fn apply(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        mut config: Object,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        check_namespace_field(&mut config, namespace)?;
        if config.meta.name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                config.meta.name
            )));
        }
        let applied = config.fields();
        let manager = options.manager.as_str();
        let Some(live) = self.get(kind, namespace, name) else {
            if let Some(namespace) = namespace {
                self.namespace_exists(namespace)?;
            }
            if config.meta.resource_version != 0 {
                return Err(ApiError::not_found(kind.resource(), name));
            }
            let mut object = config;
            object.fold_string_data();
            prepare_new(&mut object);
            object.meta.managed_fields = vec![ManagedFields {
                manager: manager.to_owned(),
                operation: Operation::Apply,
                time: Utc::now(),
                fields: applied,
            }];
            default_fields(&mut object);
            validate(None, &object)?;
            return Ok(self.finish(object, None, options));
        };
        if config.meta.resource_version != 0 && config.meta.resource_version != live.meta.resource_version {
            return Err(ApiError::stale(kind.resource(), name));
        }

        // Conflicts: fields another manager owns, applied with a different value.
        let mut conflicts: Vec<(String, Field)> = Vec::new();
        for entry in &live.meta.managed_fields {
            if entry.manager == manager {
                continue;
            }
            for field in &applied {
                let owned = entry.fields.iter().any(|owned| same_target(owned, field));
                if owned && config.value(field) != live.value(field) {
                    conflicts.push((entry.manager.clone(), field.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !options.force {
            return Err(conflict_error(kind, name, &conflicts));
        }

        let mut object = (*live).clone();
        let mut entries = live.meta.managed_fields.clone();
        for entry in &mut entries {
            if entry.manager == manager {
                continue;
            }
            // Forced: conflicting fields move to the applier.
            entry.fields.retain(|owned| {
                !conflicts
                    .iter()
                    .any(|(m, f)| *m == entry.manager && same_target(owned, f))
            });
        }
        let previous: BTreeSet<Field> = entries
            .iter()
            .filter(|e| e.manager == manager && e.operation == Operation::Apply)
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        let owned_by_others: Vec<Field> = entries
            .iter()
            .filter(|e| !(e.manager == manager && e.operation == Operation::Apply))
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        for field in previous.difference(&applied) {
            let kept = owned_by_others.iter().any(|other| same_target(other, field))
                || applied.iter().any(|now| same_target(now, field));
            if !kept {
                object.remove_field(field);
            }
        }
        for field in &applied {
            object.copy_field(field, &config);
        }
        object.fold_string_data();
        // The applier's own Update entry gives up what it now applies.
        for entry in &mut entries {
            if entry.manager == manager && entry.operation == Operation::Update {
                entry
                    .fields
                    .retain(|owned| !applied.iter().any(|f| same_target(owned, f)));
            }
        }
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == Operation::Apply)
        {
            Some(entry) => entry.fields = applied,
            None => entries.push(ManagedFields {
                manager: manager.to_owned(),
                operation: Operation::Apply,
                time: Utc::now(),
                fields: applied,
            }),
        }
        entries.retain(|entry| !entry.fields.is_empty());
        object.meta.managed_fields = entries;
        default_fields(&mut object);
        validate(Some(&live), &object)?;
        if object.same_content(&live) {
            self.writes.noop_applies += 1;
            return Ok(Written {
                object: live,
                created: false,
                committed: None,
            });
        }
        let now = Utc::now();
        for entry in &mut object.meta.managed_fields {
            if entry.manager == manager && entry.operation == Operation::Apply {
                entry.time = now;
            }
        }
        Ok(self.finish(object, Some(live), options))
    }
}

fn conflict_error(kind: Kind, name: &str, conflicts: &[(String, Field)]) -> ApiError {
    let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (manager, field) in conflicts {
        by_manager.entry(manager).or_default().push(field.path());
    }
    let count = conflicts.len();
    let plural = if count == 1 { "conflict" } else { "conflicts" };
    let parts: Vec<String> = by_manager
        .iter()
        .map(|(manager, fields)| {
            if fields.len() == 1 {
                format!("conflict with \"{manager}\" using v1: {}", fields[0])
            } else {
                format!(
                    "conflicts with \"{manager}\" using v1:\n- {}",
                    fields.join("\n- ")
                )
            }
        })
        .collect();
    let message = format!("Apply failed with {count} {plural}: {}", parts.join("\n"));
    let causes = conflicts
        .iter()
        .map(|(manager, field)| Cause {
            reason: "FieldManagerConflict",
            message: format!("conflict with \"{manager}\" using v1"),
            field: field.path(),
        })
        .collect();
    ApiError::apply_conflict(kind.resource(), name, message, causes)
}
