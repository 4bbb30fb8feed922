//! Event-driven wave progress: after each plan the engine keeps, per progressing rollout, the
//! members of the current wave that the wave still waits for, and counts them down as their acks
//! and refusals arrive. The planner runs again when the last one answers (at once, not after the
//! debounce), when an offline member's grace ends (a timer), or when an answer can change a
//! decision other than the wave's end (a refusal may pause the rollout; any answer may lift a
//! pause the error rate set). Every other ack costs a hash lookup, not a plan.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::domain::ClusterId;
use crate::sync::plan::{Plan, RolloutState};

/// What a fleet event means for planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observed {
    /// Nothing the planner would decide differently.
    Nothing,
    /// Plan again, debounced (a burst of such events is one plan).
    Replan,
    /// A wave's last member answered: plan now, so the next wave starts within milliseconds.
    WaveDone,
}

/// One progressing rollout's current wave.
#[derive(Debug)]
struct Countdown {
    /// The revision the wave rolls out.
    revision: u64,
    /// Members still to answer.
    waiting: HashSet<ClusterId>,
}

/// The current waves of every progressing rollout, as the last plan left them.
#[derive(Debug, Default)]
pub(super) struct Waves {
    countdowns: HashMap<String, Countdown>,
    /// Rollouts the error rate paused: any answer may lift the pause.
    auto_paused: HashSet<String>,
    /// The earliest moment an offline waiting member stops counting.
    offline_until: Option<DateTime<Utc>>,
}

impl Waves {
    /// Takes the waves of a new plan.
    pub(super) fn reset(&mut self, plan: &Plan) {
        self.countdowns.clear();
        self.auto_paused.clear();
        self.offline_until = None;
        for decision in &plan.rollouts {
            match (decision.state, decision.revision) {
                (RolloutState::Progressing, Some(revision)) => {
                    self.countdowns.insert(
                        decision.fleet_secret.to_string(),
                        Countdown {
                            revision,
                            waiting: decision.waiting.iter().copied().collect(),
                        },
                    );
                    if let Some(until) = decision.offline_until {
                        self.offline_until = Some(self.offline_until.map_or(until, |at| at.min(until)));
                    }
                }
                (RolloutState::Paused, Some(_)) if !decision.manually_paused => {
                    self.auto_paused.insert(decision.fleet_secret.to_string());
                }
                _ => {}
            }
        }
    }

    /// `cluster` applied (`refused` false) or refused `revision` of `key`.
    pub(super) fn answered(
        &mut self,
        cluster: ClusterId,
        key: &str,
        revision: u64,
        refused: bool,
    ) -> Observed {
        if self.auto_paused.contains(key) {
            return Observed::Replan;
        }
        let Some(countdown) = self.countdowns.get_mut(key) else {
            return Observed::Nothing;
        };
        if countdown.revision == revision
            && countdown.waiting.remove(&cluster)
            && countdown.waiting.is_empty()
        {
            return Observed::WaveDone;
        }
        // A refusal anywhere in the wave may take its error rate over the threshold.
        if refused {
            Observed::Replan
        } else {
            Observed::Nothing
        }
    }

    /// `cluster` disconnected at `at`: if a wave waits for it, it stops counting after `grace`.
    pub(super) fn disconnected(&mut self, cluster: ClusterId, at: DateTime<Utc>, grace: chrono::TimeDelta) {
        if self
            .countdowns
            .values()
            .any(|countdown| countdown.waiting.contains(&cluster))
        {
            let until = at + grace;
            self.offline_until = Some(self.offline_until.map_or(until, |known| known.min(until)));
        }
    }

    /// When the offline timer fires (a millisecond after the grace ends, so that the planner,
    /// reading the wall clock, sees it ended).
    pub(super) fn offline_deadline(&self) -> Option<Instant> {
        let until = self.offline_until?;
        let left = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Some(Instant::now() + left + Duration::from_millis(1))
    }

    /// The offline timer fired: the next plan sets it again if needed.
    pub(super) fn offline_fired(&mut self) {
        self.offline_until = None;
    }

    /// Whether a wave waits for a member that is not connected to this process: another
    /// replica's status writes may be its answer.
    pub(super) fn waits_elsewhere(&self, connected_here: &dyn Fn(ClusterId) -> bool) -> bool {
        self.countdowns
            .values()
            .any(|countdown| countdown.waiting.iter().any(|cluster| !connected_here(*cluster)))
    }

    /// Members the wave of `key` still waits for (tests).
    #[cfg(test)]
    pub(super) fn waiting(&self, key: &str) -> usize {
        self.countdowns
            .get(key)
            .map_or(0, |countdown| countdown.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sync::plan::RolloutDecision;

    fn id(n: u128) -> ClusterId {
        ClusterId(uuid::Uuid::from_u128(n))
    }

    fn decision(name: &str, state: RolloutState, waiting: &[u128], manual: bool) -> RolloutDecision {
        RolloutDecision {
            fleet_secret: Arc::from(name),
            revision: Some(8),
            state,
            current_wave: 0,
            waves: 2,
            reason: String::new(),
            manually_paused: manual,
            wave_size: 3,
            wave_applied: 0,
            wave_errors: 0,
            waiting: waiting.iter().copied().map(id).collect(),
            offline_until: None,
        }
    }

    fn plan(rollouts: Vec<RolloutDecision>) -> Plan {
        Plan {
            clusters: Vec::new(),
            rollouts,
        }
    }

    #[test]
    fn a_wave_waits_elsewhere_while_a_member_it_waits_for_is_not_connected_here() {
        let mut waves = Waves::default();
        let here = |cluster: ClusterId| cluster == id(1) || cluster == id(2);
        assert!(!waves.waits_elsewhere(&here), "no rollout");
        waves.reset(&plan(vec![decision(
            "regcred",
            RolloutState::Progressing,
            &[1, 2, 3],
            false,
        )]));
        assert!(waves.waits_elsewhere(&here), "3 is served elsewhere");
        assert_eq!(waves.answered(id(1), "regcred", 8, false), Observed::Nothing);
        assert!(waves.waits_elsewhere(&here), "still 3");
        let everywhere = |_: ClusterId| true;
        assert!(!waves.waits_elsewhere(&everywhere), "every member connected here");
        waves.reset(&plan(vec![decision("regcred", RolloutState::Paused, &[3], true)]));
        assert!(!waves.waits_elsewhere(&here), "a paused rollout waits for nobody");
    }

    #[test]
    fn only_the_last_answer_of_a_wave_plans_at_once() {
        let mut waves = Waves::default();
        waves.reset(&plan(vec![decision(
            "regcred",
            RolloutState::Progressing,
            &[1, 2, 3],
            false,
        )]));
        assert_eq!(waves.answered(id(1), "regcred", 8, false), Observed::Nothing);
        assert_eq!(
            waves.answered(id(1), "regcred", 8, false),
            Observed::Nothing,
            "again"
        );
        assert_eq!(
            waves.answered(id(2), "regcred", 7, false),
            Observed::Nothing,
            "older revision"
        );
        assert_eq!(
            waves.answered(id(9), "regcred", 8, false),
            Observed::Nothing,
            "not in the wave"
        );
        assert_eq!(
            waves.answered(id(2), "other", 8, false),
            Observed::Nothing,
            "no rollout"
        );
        assert_eq!(
            waves.answered(id(2), "regcred", 8, true),
            Observed::Replan,
            "a refusal may pause"
        );
        assert_eq!(waves.waiting("regcred"), 1);
        assert_eq!(waves.answered(id(3), "regcred", 8, false), Observed::WaveDone);
        assert_eq!(
            waves.answered(id(3), "regcred", 8, false),
            Observed::Nothing,
            "done once"
        );
    }

    #[test]
    fn a_pause_set_by_the_error_rate_replans_on_answers_and_a_manual_one_does_not() {
        let mut waves = Waves::default();
        waves.reset(&plan(vec![
            decision("auto", RolloutState::Paused, &[], false),
            decision("manual", RolloutState::Paused, &[], true),
            decision("done", RolloutState::Complete, &[], false),
        ]));
        assert_eq!(waves.answered(id(1), "auto", 8, false), Observed::Replan);
        assert_eq!(waves.answered(id(1), "manual", 8, false), Observed::Nothing);
        assert_eq!(waves.answered(id(1), "done", 8, true), Observed::Nothing);
    }

    #[test]
    fn an_offline_waiting_member_sets_the_timer_at_the_end_of_its_grace() {
        let mut waves = Waves::default();
        let mut progressing = decision("regcred", RolloutState::Progressing, &[1, 2], false);
        let later = Utc::now() + chrono::TimeDelta::minutes(5);
        progressing.offline_until = Some(later);
        waves.reset(&plan(vec![progressing]));
        assert_eq!(waves.offline_until, Some(later), "from the plan");
        let deadline = waves.offline_deadline().expect("timer");
        assert!(deadline > Instant::now() + Duration::from_secs(299));
        let at = Utc::now();
        waves.disconnected(id(9), at, chrono::TimeDelta::minutes(1));
        assert_eq!(waves.offline_until, Some(later), "not a member: no timer");
        waves.disconnected(id(2), at, chrono::TimeDelta::minutes(1));
        assert_eq!(
            waves.offline_until,
            Some(at + chrono::TimeDelta::minutes(1)),
            "the earlier end"
        );
        waves.offline_fired();
        assert_eq!(waves.offline_deadline(), None);
    }
}
