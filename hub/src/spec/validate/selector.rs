//! Label selectors (`clusters`, `target.namespaceSelector`, selector waves) and the rollout's
//! waves and error-rate threshold.

use std::collections::BTreeMap;

use super::names::{is_label_value, is_qualified_name, label_value_message, qualified_name_message};
use super::{Ctx, MAX_LABELS, raw};
use crate::domain::{LabelRequirement, LabelSelector, SelectorOperator};
use crate::spec::{Rollout, Wave};

impl Ctx<'_> {
    /// `matchLabels` / `matchExpressions` at `path` → a selector (a bad requirement is left out).
    pub(super) fn selector(
        &mut self,
        path: &str,
        match_labels: &BTreeMap<String, String>,
        expressions: &[raw::Requirement],
    ) -> LabelSelector {
        if match_labels.len() > MAX_LABELS || expressions.len() > MAX_LABELS {
            self.issue(
                path,
                format!("at most {MAX_LABELS} matchLabels and {MAX_LABELS} matchExpressions"),
            );
        }
        for (key, value) in match_labels {
            let entry = format!("{path}.matchLabels.{key}");
            if !is_qualified_name(key) {
                self.issue(&entry, qualified_name_message(key));
            }
            if !is_label_value(value) {
                self.issue(&entry, label_value_message(value));
            }
        }
        let mut requirements = Vec::new();
        for (i, expression) in expressions.iter().enumerate() {
            let entry = format!("{path}.matchExpressions[{i}]");
            if !is_qualified_name(&expression.key) {
                self.issue(&format!("{entry}.key"), qualified_name_message(&expression.key));
            }
            let operator = match expression.operator.as_str() {
                "In" => SelectorOperator::In,
                "NotIn" => SelectorOperator::NotIn,
                "Exists" => SelectorOperator::Exists,
                "DoesNotExist" => SelectorOperator::DoesNotExist,
                other => {
                    self.issue(
                        &format!("{entry}.operator"),
                        format!("unknown value {other:?}, expected In|NotIn|Exists|DoesNotExist"),
                    );
                    continue;
                }
            };
            match operator {
                SelectorOperator::In | SelectorOperator::NotIn if expression.values.is_empty() => {
                    self.issue(
                        &format!("{entry}.values"),
                        format!("{} needs at least one value", expression.operator),
                    );
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !expression.values.is_empty() =>
                {
                    self.issue(
                        &format!("{entry}.values"),
                        format!("{} takes no values", expression.operator),
                    );
                }
                _ => {}
            }
            for (j, value) in expression.values.iter().enumerate() {
                if !is_label_value(value) {
                    self.issue(&format!("{entry}.values[{j}]"), label_value_message(value));
                }
            }
            requirements.push(LabelRequirement {
                key: expression.key.clone(),
                operator,
                values: expression.values.clone(),
            });
        }
        LabelSelector {
            match_labels: match_labels.clone(),
            match_expressions: requirements,
        }
    }

    /// `rollout` → waves (percentages or selectors) and the error rate that pauses it.
    pub(super) fn rollout(&mut self, raw: &raw::Rollout) -> Option<Rollout> {
        if raw.waves.is_empty() {
            self.issue("rollout.waves", "at least one wave is required");
        }
        let mut waves = Vec::new();
        let mut last_percent = 0;
        for (i, wave) in raw.waves.iter().enumerate() {
            let path = format!("rollout.waves[{i}]");
            let has_selector = !wave.match_labels.is_empty() || !wave.match_expressions.is_empty();
            match (wave.percent, has_selector) {
                (Some(percent), false) => {
                    if !(1..=100).contains(&percent) {
                        self.issue(&format!("{path}.percent"), "must be between 1 and 100");
                    } else if percent <= last_percent {
                        self.issue(
                            &format!("{path}.percent"),
                            format!(
                                "percentages are cumulative and must increase (previous wave: {last_percent})"
                            ),
                        );
                    } else {
                        last_percent = percent;
                        waves.push(Wave::Percent(u8::try_from(percent).unwrap_or(100)));
                    }
                }
                (None, true) => {
                    waves.push(Wave::Selector(self.selector(
                        &path,
                        &wave.match_labels,
                        &wave.match_expressions,
                    )));
                }
                _ => self.issue(
                    &path,
                    "exactly one of percent, matchLabels/matchExpressions is required",
                ),
            }
        }
        let pause_on_error_rate = match &raw.pause_on_error_rate {
            None => 1.0,
            Some(value) => match parse_rate(value) {
                Some(rate) => rate,
                None => {
                    self.issue(
                        "rollout.pauseOnErrorRate",
                        "expected a percentage such as \"1%\" (0-100%) or a fraction between 0 and 1",
                    );
                    1.0
                }
            },
        };
        Some(Rollout {
            waves,
            pause_on_error_rate,
        })
    }
}

/// `"1%"` or `0.01` → 0.01; `None` outside 0-100%.
fn parse_rate(value: &serde_json::Value) -> Option<f64> {
    let rate = match value {
        serde_json::Value::String(text) => text.trim().strip_suffix('%')?.trim().parse::<f64>().ok()? / 100.0,
        serde_json::Value::Number(number) => number.as_f64()?,
        _ => return None,
    };
    (0.0..=1.0).contains(&rate).then_some(rate)
}
