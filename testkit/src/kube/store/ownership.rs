//! Who owns which field: the managedFields bookkeeping of non-apply writes, and the rule that
//! `data` and `stringData` name the same stored value.

use std::collections::BTreeSet;

use chrono::Utc;

use crate::kube::model::{Field, ManagedFields, Object, Operation};

/// `data.k` and `stringData.k` write the same stored value.
pub(super) fn same_target(a: &Field, b: &Field) -> bool {
    match (a, b) {
        (Field::Data(x) | Field::StringData(x), Field::Data(y) | Field::StringData(y)) => x == y,
        _ => a == b,
    }
}

/// Updates managedFields for a non-apply write: changed fields move to `manager`'s Update entry,
/// removed fields leave every entry.
pub(super) fn record_update(live: Option<&Object>, object: &mut Object, manager: &str) {
    let new_fields = object.fields();
    let (old_fields, mut entries) = match live {
        Some(live) => (live.fields(), live.meta.managed_fields.clone()),
        None => (BTreeSet::new(), Vec::new()),
    };
    let removed: BTreeSet<&Field> = old_fields.iter().filter(|f| !new_fields.contains(*f)).collect();
    let changed: BTreeSet<Field> = new_fields
        .iter()
        .filter(|field| live.is_none_or(|live| live.value(field) != object.value(field)))
        .cloned()
        .collect();
    for entry in &mut entries {
        entry.fields.retain(|field| !removed.contains(field));
        if !(entry.manager == manager && entry.operation == Operation::Update) {
            entry
                .fields
                .retain(|field| !changed.iter().any(|c| same_target(c, field)));
        }
    }
    if !changed.is_empty() {
        let now = Utc::now();
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == Operation::Update)
        {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now;
            }
            None => entries.push(ManagedFields {
                manager: manager.to_owned(),
                operation: Operation::Update,
                time: now,
                fields: changed,
            }),
        }
    }
    entries.retain(|entry| !entry.fields.is_empty());
    object.meta.managed_fields = entries;
}
