//! Consult's policy module: whether a consultation is live-only or recorded (and why), and who
//! may list, play, export or delete a recording. Pure decisions: no I/O, no clock, no storage —
//! the service gathers the facts and records the outcome in the audit log.
//!
//! ```text
//!   OrganisationPolicy ─┐
//!   doctor's Mode ──────┼─► decide_recording ─► Decision::LiveOnly { reasons }
//!   participants' ──────┘                      Decision::Record(RecordingPlan { retention, .. })
//!   Consent
//!
//!   Relation + Action + RecordingFacts ─► decide_access ─► Access::Allowed { .. } | Denied(reason)
//! ```
//!
//! # Recording needs the patient's explicit consent, and a withdrawal always wins
//!
//! ```
//! use consult_policy::*;
//! let org = OrganisationPolicy { recording_allowed: true, e2ee_required: false, retention_days: 30 };
//! let mut people = vec![
//!     Participant { role: Role::Clinician, consent: Consent::NotAsked },
//!     Participant { role: Role::Patient, consent: Consent::Given },
//! ];
//! let decision = decide_recording(&RecordingInput { org, mode: Mode::Recorded, e2ee: false, participants: &people });
//! assert!(decision.records());
//! people[1].consent = Consent::Withdrawn;
//! let decision = decide_recording(&RecordingInput { org, mode: Mode::Recorded, e2ee: false, participants: &people });
//! assert_eq!(decision, Decision::LiveOnly { reasons: vec![Reason::ConsentWithdrawn] });
//! ```

use serde::{Deserialize, Serialize};

/// What the organisation allows and requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganisationPolicy {
    /// Whether any consultation may be recorded.
    pub recording_allowed: bool,
    /// Whether every consultation is end-to-end encrypted.
    pub e2ee_required: bool,
    /// How long recordings are kept before they are shredded.
    pub retention_days: u32,
}

/// What the doctor chose for the consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Nothing is recorded.
    LiveOnly,
    /// Recorded, if the organisation allows it and the patient consents.
    Recorded,
}

/// A participant's role in the consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The doctor who runs the consultation, or another clinician account they added.
    Clinician,
    /// The patient.
    Patient,
    /// A medical interpreter invited into the consultation.
    Interpreter,
    /// A family member or carer invited into the consultation.
    Companion,
}

impl Role {
    /// Whether this participant's consent is needed to record: everyone's but a clinician's
    /// (clinicians record as part of their work; everyone else is recorded only if they agree).
    pub fn must_consent(self) -> bool {
        self != Role::Clinician
    }
}

/// A participant's answer to the recording question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consent {
    /// Not asked yet, or not answered.
    NotAsked,
    /// Said yes.
    Given,
    /// Said no.
    Declined,
    /// Said yes, then took it back.
    Withdrawn,
}

/// One participant, as the policy sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Their role.
    pub role: Role,
    /// Their consent to recording.
    pub consent: Consent,
}

/// Everything the recording decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct RecordingInput<'a> {
    /// The organisation's policy.
    pub org: OrganisationPolicy,
    /// The doctor's choice.
    pub mode: Mode,
    /// Whether the consultation is end-to-end encrypted.
    pub e2ee: bool,
    /// Everyone in the consultation.
    pub participants: &'a [Participant],
}

/// Why the decision is what it is. Every reason that applies is given, most decisive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Someone who must consent (anyone but a clinician) withdrew: this overrides everything
    /// else.
    ConsentWithdrawn,
    /// The organisation does not allow recording.
    OrganisationForbidsRecording,
    /// The doctor chose live-only.
    ModeLiveOnly,
    /// No patient is in the consultation yet, so nobody has consented.
    NoPatient,
    /// Someone who must consent said no.
    ConsentDeclined,
    /// Someone who must consent has not answered yet.
    ConsentNotAsked,
    /// Every participant who must consent (every patient, interpreter and companion) did, and
    /// the organisation allows it.
    AllPatientsConsented,
    /// End-to-end encrypted: the recorder keeps SFrame ciphertext it cannot open.
    ZeroKnowledge,
}

/// How a recording is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingPlan {
    /// Shred after this many days.
    pub retention_days: u32,
    /// The recorder stores SFrame ciphertext; only the clinician's recording key opens it.
    pub zero_knowledge: bool,
    /// Why.
    pub reasons: Vec<Reason>,
}

/// Live-only or recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing joins, nothing is written.
    LiveOnly {
        /// Why.
        reasons: Vec<Reason>,
    },
    /// A recorder joins and writes into the vault.
    Record(RecordingPlan),
}

impl Decision {
    /// Whether a recording is made.
    pub fn records(&self) -> bool {
        matches!(self, Decision::Record(_))
    }

    /// The reasons given.
    pub fn reasons(&self) -> &[Reason] {
        match self {
            Decision::LiveOnly { reasons } => reasons,
            Decision::Record(plan) => &plan.reasons,
        }
    }
}

/// Decide whether the consultation is recorded now. Call it again on every change (a consent
/// given or withdrawn, someone joining): the answer may change mid-call. A recording needs a
/// patient, and the consent of everyone but the clinicians: patients, interpreters, companions.
pub fn decide_recording(input: &RecordingInput<'_>) -> Decision {
    let asked: Vec<Consent> = input
        .participants
        .iter()
        .filter(|p| p.role.must_consent())
        .map(|p| p.consent)
        .collect();
    // A withdrawal wins over everything, and is the only reason given: it must be obeyed even
    // if other facts change at the same moment.
    if asked.contains(&Consent::Withdrawn) {
        return Decision::LiveOnly {
            reasons: vec![Reason::ConsentWithdrawn],
        };
    }
    let mut reasons = Vec::new();
    if !input.org.recording_allowed {
        reasons.push(Reason::OrganisationForbidsRecording);
    }
    if input.mode == Mode::LiveOnly {
        reasons.push(Reason::ModeLiveOnly);
    }
    if !input.participants.iter().any(|p| p.role == Role::Patient) {
        reasons.push(Reason::NoPatient);
    }
    if asked.contains(&Consent::Declined) {
        reasons.push(Reason::ConsentDeclined);
    }
    if asked.contains(&Consent::NotAsked) {
        reasons.push(Reason::ConsentNotAsked);
    }
    if !reasons.is_empty() {
        return Decision::LiveOnly { reasons };
    }
    let zero_knowledge = input.e2ee || input.org.e2ee_required;
    let mut reasons = vec![Reason::AllPatientsConsented];
    if zero_knowledge {
        reasons.push(Reason::ZeroKnowledge);
    }
    Decision::Record(RecordingPlan {
        retention_days: input.org.retention_days,
        zero_knowledge,
        reasons,
    })
}

/// Who asks, relative to the recording's consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The clinician who ran the consultation.
    OwnerClinician,
    /// Another clinician of the organisation.
    OtherClinician,
    /// The patient of the consultation.
    Patient,
    /// An operator (administrator of the service).
    Operator,
}

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// See that the recording exists (time, duration, size) — not its content.
    List,
    /// Watch it.
    Play,
    /// Download a playable file.
    Export,
    /// Shred it (destroy its key).
    Delete,
}

/// What is known about the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingFacts {
    /// Its key is destroyed: no content can be read any more.
    pub shredded: bool,
    /// Made of SFrame ciphertext: the clinician's recording key is needed to open it.
    pub zero_knowledge: bool,
}

/// Why access is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Denial {
    /// Only the consultation's clinician may see or handle its recordings.
    #[error("only the consultation's clinician may do this")]
    NotTheirConsultation,
    /// Operators manage storage, never content.
    #[error("operators may list and shred recordings, never play or export them")]
    OperatorsNeverSeeContent,
    /// Patients see that a recording exists; copies go through their clinician.
    #[error("patients may see that a recording exists; ask the clinician for a copy")]
    PatientsListOnly,
    /// The recording was shredded.
    #[error("the recording was shredded and cannot be opened")]
    Shredded,
}

/// The answer to an access request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "access", rename_all = "snake_case")]
pub enum Access {
    /// Go ahead.
    Allowed {
        /// The clinician's recording key must be unlocked to open the content.
        needs_clinician_key: bool,
    },
    /// Refused.
    Denied {
        /// Why.
        reason: Denial,
    },
}

/// Decide an access request to a recording. Every call should be audited, allowed or not.
pub fn decide_access(who: Relation, action: Action, recording: RecordingFacts) -> Access {
    let deny = |reason| Access::Denied { reason };
    let reads_content = matches!(action, Action::Play | Action::Export);
    if reads_content && recording.shredded {
        return deny(Denial::Shredded);
    }
    let allowed = Access::Allowed {
        needs_clinician_key: reads_content && recording.zero_knowledge,
    };
    match (who, action) {
        (Relation::OwnerClinician, _) => allowed,
        (Relation::OtherClinician, _) => deny(Denial::NotTheirConsultation),
        (Relation::Operator, Action::List | Action::Delete) => allowed,
        (Relation::Operator, _) => deny(Denial::OperatorsNeverSeeContent),
        (Relation::Patient, Action::List) => allowed,
        (Relation::Patient, _) => deny(Denial::PatientsListOnly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn consent() -> impl Strategy<Value = Consent> {
        prop_oneof![
            Just(Consent::NotAsked),
            Just(Consent::Given),
            Just(Consent::Declined),
            Just(Consent::Withdrawn),
        ]
    }

    fn participant() -> impl Strategy<Value = Participant> {
        (
            prop_oneof![
                Just(Role::Clinician),
                Just(Role::Patient),
                Just(Role::Interpreter),
                Just(Role::Companion),
            ],
            consent(),
        )
            .prop_map(|(role, consent)| Participant { role, consent })
    }

    fn org() -> impl Strategy<Value = OrganisationPolicy> {
        (any::<bool>(), any::<bool>(), 0u32..4000).prop_map(
            |(recording_allowed, e2ee_required, retention_days)| OrganisationPolicy {
                recording_allowed,
                e2ee_required,
                retention_days,
            },
        )
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(Mode::LiveOnly), Just(Mode::Recorded)]
    }

    proptest! {
        #[test]
        fn nothing_is_recorded_without_the_explicit_consent_of_everyone_but_the_clinicians(
            org in org(), mode in mode(), e2ee in any::<bool>(),
            people in proptest::collection::vec(participant(), 0..6),
        ) {
            let decision = decide_recording(&RecordingInput { org, mode, e2ee, participants: &people });
            if decision.records() {
                prop_assert!(people.iter().any(|p| p.role == Role::Patient));
                prop_assert!(people
                    .iter()
                    .filter(|p| p.role != Role::Clinician)
                    .all(|p| p.consent == Consent::Given));
                prop_assert!(org.recording_allowed && mode == Mode::Recorded);
            }
            prop_assert!(!decision.reasons().is_empty());
        }

        #[test]
        fn when_everyone_but_the_clinicians_consents_it_records_where_allowed(
            org in org(), e2ee in any::<bool>(),
            mut people in proptest::collection::vec(participant(), 0..6),
        ) {
            people.push(Participant { role: Role::Patient, consent: Consent::Given });
            for p in people.iter_mut().filter(|p| p.role != Role::Clinician) {
                p.consent = Consent::Given;
            }
            let decision = decide_recording(&RecordingInput { org, mode: Mode::Recorded, e2ee, participants: &people });
            prop_assert_eq!(decision.records(), org.recording_allowed);
        }

        #[test]
        fn a_withdrawn_consent_always_wins(
            org in org(), mode in mode(), e2ee in any::<bool>(),
            mut people in proptest::collection::vec(participant(), 0..6),
            at in any::<prop::sample::Index>(),
            who in prop_oneof![Just(Role::Patient), Just(Role::Interpreter), Just(Role::Companion)],
        ) {
            people.push(Participant { role: who, consent: Consent::Withdrawn });
            let (i, last) = (at.index(people.len()), people.len() - 1);
            people.swap(i, last);
            let decision = decide_recording(&RecordingInput { org, mode, e2ee, participants: &people });
            prop_assert_eq!(decision, Decision::LiveOnly { reasons: vec![Reason::ConsentWithdrawn] });
        }

        #[test]
        fn operators_and_other_clinicians_never_read_content(
            action in prop_oneof![Just(Action::Play), Just(Action::Export)],
            shredded in any::<bool>(), zero_knowledge in any::<bool>(),
        ) {
            let facts = RecordingFacts { shredded, zero_knowledge };
            for who in [Relation::Operator, Relation::OtherClinician, Relation::Patient] {
                let allowed = matches!(decide_access(who, action, facts), Access::Allowed { .. });
                prop_assert!(!allowed);
            }
        }
    }

    #[test]
    fn a_consented_recording_of_an_e2ee_call_is_zero_knowledge_with_the_org_retention() {
        let org = OrganisationPolicy {
            recording_allowed: true,
            e2ee_required: false,
            retention_days: 90,
        };
        let people = [
            Participant {
                role: Role::Clinician,
                consent: Consent::NotAsked,
            },
            Participant {
                role: Role::Patient,
                consent: Consent::Given,
            },
        ];
        let decision = decide_recording(&RecordingInput {
            org,
            mode: Mode::Recorded,
            e2ee: true,
            participants: &people,
        });
        assert_eq!(
            decision,
            Decision::Record(RecordingPlan {
                retention_days: 90,
                zero_knowledge: true,
                reasons: vec![Reason::AllPatientsConsented, Reason::ZeroKnowledge],
            })
        );
    }

    #[test]
    fn live_only_gives_every_reason_that_applies() {
        let org = OrganisationPolicy {
            recording_allowed: false,
            e2ee_required: false,
            retention_days: 30,
        };
        let people = [Participant {
            role: Role::Patient,
            consent: Consent::NotAsked,
        }];
        let decision = decide_recording(&RecordingInput {
            org,
            mode: Mode::LiveOnly,
            e2ee: false,
            participants: &people,
        });
        assert_eq!(
            decision.reasons(),
            [
                Reason::OrganisationForbidsRecording,
                Reason::ModeLiveOnly,
                Reason::ConsentNotAsked
            ]
        );
        let no_patient = decide_recording(&RecordingInput {
            org: OrganisationPolicy {
                recording_allowed: true,
                ..org
            },
            mode: Mode::Recorded,
            e2ee: false,
            participants: &[],
        });
        assert_eq!(no_patient.reasons(), [Reason::NoPatient]);
    }

    #[test]
    fn access_by_role_and_relationship() {
        let plain = RecordingFacts {
            shredded: false,
            zero_knowledge: false,
        };
        let zk = RecordingFacts {
            shredded: false,
            zero_knowledge: true,
        };
        let shredded = RecordingFacts {
            shredded: true,
            zero_knowledge: false,
        };
        let ok = |key| Access::Allowed {
            needs_clinician_key: key,
        };
        let no = |reason| Access::Denied { reason };
        assert_eq!(
            decide_access(Relation::OwnerClinician, Action::Export, plain),
            ok(false)
        );
        assert_eq!(
            decide_access(Relation::OwnerClinician, Action::Play, zk),
            ok(true)
        );
        assert_eq!(
            decide_access(Relation::OwnerClinician, Action::List, zk),
            ok(false)
        );
        assert_eq!(
            decide_access(Relation::OwnerClinician, Action::Export, shredded),
            no(Denial::Shredded)
        );
        assert_eq!(
            decide_access(Relation::OtherClinician, Action::List, plain),
            no(Denial::NotTheirConsultation)
        );
        assert_eq!(
            decide_access(Relation::Operator, Action::Delete, plain),
            ok(false)
        );
        assert_eq!(
            decide_access(Relation::Operator, Action::Export, plain),
            no(Denial::OperatorsNeverSeeContent)
        );
        assert_eq!(
            decide_access(Relation::Patient, Action::List, plain),
            ok(false)
        );
        assert_eq!(
            decide_access(Relation::Patient, Action::Play, plain),
            no(Denial::PatientsListOnly)
        );
    }
}
