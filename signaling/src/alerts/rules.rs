//! The detection rules, sans-IO: [`Detector::observe`] takes what happened and when, and
//! returns the rules it made fire. Nothing here touches the database, the network or a clock,
//! so every rule is tested with exact times.
//!
//! Each rule counts per subject (a source address, an account, a participant, or the whole
//! service) within a sliding window and fires when its threshold is reached; it then starts
//! counting afresh, so a sustained attack fires again once per further threshold's worth of
//! events (the store turns repeated firings into one open alert with a count).

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit_tally::source_key;

/// A detection rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Failed sign-ins against many different accounts from one source.
    CredentialStuffing,
    /// Wrong passwords for many different existing accounts, from any sources.
    PasswordSpraying,
    /// Wrong second factors (TOTP or recovery codes) for one account: its password is known.
    SecondFactorGuessing,
    /// Unknown invite links tried from one source, or from everywhere at once.
    InviteGuessing,
    /// Signaling messages to other consultations, or before admission, from one participant.
    CrossConsultation,
    /// Recording exports refused to one account.
    RefusedExports,
    /// Many recording exports by one account.
    ExportBurst,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 7] = [
        Rule::CredentialStuffing,
        Rule::PasswordSpraying,
        Rule::SecondFactorGuessing,
        Rule::InviteGuessing,
        Rule::CrossConsultation,
        Rule::RefusedExports,
        Rule::ExportBurst,
    ];

    /// The snake_case name (stored, in metrics and in webhooks).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::CredentialStuffing => "credential_stuffing",
            Rule::PasswordSpraying => "password_spraying",
            Rule::SecondFactorGuessing => "second_factor_guessing",
            Rule::InviteGuessing => "invite_guessing",
            Rule::CrossConsultation => "cross_consultation",
            Rule::RefusedExports => "refused_exports",
            Rule::ExportBurst => "export_burst",
        }
    }

    /// How urgent it is.
    pub fn severity(self) -> Severity {
        match self {
            Rule::SecondFactorGuessing | Rule::PasswordSpraying => Severity::Critical,
            Rule::CredentialStuffing | Rule::CrossConsultation | Rule::ExportBurst => {
                Severity::High
            }
            Rule::InviteGuessing | Rule::RefusedExports => Severity::Warning,
        }
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Someone is probing; look when you can.
    Warning,
    /// An attack in progress.
    High,
    /// An attack that already has part of a credential, or spans the service.
    Critical,
}

impl Severity {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One rule's threshold: `count` events within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Events (or, for distinct-account rules, different accounts) that make it fire.
    pub count: u32,
    /// Within how long.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

const fn threshold(count: u32, window_secs: u64) -> Threshold {
    Threshold {
        count,
        window: Duration::from_secs(window_secs),
    }
}

/// Every rule's threshold (`[alerts.rules]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Different accounts (or unknown emails) failed from one source.
    pub credential_stuffing: Threshold,
    /// Different existing accounts given a wrong password, from anywhere.
    pub password_spraying: Threshold,
    /// Wrong TOTP or recovery codes for one account.
    pub second_factor_guessing: Threshold,
    /// Unknown invite links from one source.
    pub invite_guessing: Threshold,
    /// Unknown invite links from all sources together.
    pub invite_guessing_service_wide: Threshold,
    /// Cross-consultation or pre-admission messages from one participant.
    pub cross_consultation: Threshold,
    /// Refused exports for one account.
    pub refused_exports: Threshold,
    /// Exports by one account.
    pub export_burst: Threshold,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            credential_stuffing: threshold(10, 300),
            password_spraying: threshold(10, 3600),
            second_factor_guessing: threshold(5, 900),
            invite_guessing: threshold(20, 300),
            invite_guessing_service_wide: threshold(200, 300),
            cross_consultation: threshold(10, 60),
            refused_exports: threshold(3, 600),
            export_burst: threshold(20, 600),
        }
    }
}

impl Thresholds {
    /// Every threshold with its name, for validation.
    pub fn all(&self) -> [(&'static str, Threshold); 8] {
        [
            ("credential_stuffing", self.credential_stuffing),
            ("password_spraying", self.password_spraying),
            ("second_factor_guessing", self.second_factor_guessing),
            ("invite_guessing", self.invite_guessing),
            (
                "invite_guessing_service_wide",
                self.invite_guessing_service_wide,
            ),
            ("cross_consultation", self.cross_consultation),
            ("refused_exports", self.refused_exports),
            ("export_burst", self.export_burst),
        ]
    }
}

/// Which account a failed sign-in was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// An existing account.
    Account(Uuid),
    /// An email with no account, kept only as a keyed hash in memory ([`Detector::email`]).
    UnknownEmail(u64),
}

/// Which factor failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    /// The password (or a lock refused the attempt before it was checked).
    Password,
    /// A TOTP or recovery code, after a right password.
    SecondFactor,
    /// Anything else counted as a failure (a replayed code, a passkey assertion).
    Other,
}

/// Something the rules watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A sign-in step failed.
    SignInFailed {
        /// The client's address.
        source: IpAddr,
        /// The account tried.
        target: Target,
        /// What failed.
        factor: Factor,
    },
    /// An invite link that does not exist was tried (looked up or redeemed).
    UnknownInvite {
        /// The client's address.
        source: IpAddr,
    },
    /// A signaling message was refused as outside the sender's consultation or before
    /// admission.
    SignalRefused {
        /// The sender's participant id.
        participant: Uuid,
        /// The sender's consultation.
        consultation: Uuid,
        /// `outside_consultation` or `not_admitted`.
        reason: &'static str,
    },
    /// A recording export was refused by the policy.
    ExportRefused {
        /// The account asking.
        user: Uuid,
    },
    /// A recording was exported.
    Exported {
        /// The account exporting.
        user: Uuid,
    },
}

/// A rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// Which.
    pub rule: Rule,
    /// About whom: `address:IP`, `user:ID`, `participant:ID` or `service`.
    pub subject: String,
    /// One line for a person.
    pub summary: String,
    /// The facts behind it (counts, window), never a secret.
    pub detail: Value,
}

/// Timestamps of the last events of one subject, at most the threshold's count of them.
#[derive(Debug, Default)]
struct Recent {
    times: VecDeque<OffsetDateTime>,
}

impl Recent {
    /// Add an event; true when `threshold` events now lie within its window (and start afresh).
    fn push(&mut self, now: OffsetDateTime, threshold: Threshold) -> bool {
        let count = threshold.count.max(1) as usize;
        self.times.push_back(now);
        while self.times.len() > count {
            self.times.pop_front();
        }
        let fired = self.times.len() == count
            && self
                .times
                .front()
                .is_some_and(|first| now - *first <= threshold.window);
        if fired {
            self.times.clear();
        }
        fired
    }

    fn stale(&self, now: OffsetDateTime, window: Duration) -> bool {
        self.times.back().is_none_or(|last| now - *last > window)
    }

    fn last(&self) -> OffsetDateTime {
        self.times
            .back()
            .copied()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Different targets seen for one subject, each with when it was last seen.
#[derive(Debug, Default)]
struct Distinct {
    seen: HashMap<Target, OffsetDateTime>,
}

impl Distinct {
    /// Add a target; true when `threshold` different ones now lie within its window.
    fn push(&mut self, now: OffsetDateTime, target: Target, threshold: Threshold) -> bool {
        self.seen.retain(|_, at| now - *at <= threshold.window);
        self.seen.insert(target, now);
        let fired = self.seen.len() >= threshold.count.max(1) as usize;
        if fired {
            self.seen.clear();
        }
        fired
    }

    fn stale(&self, now: OffsetDateTime, window: Duration) -> bool {
        self.seen.values().all(|at| now - *at > window)
    }

    fn last(&self) -> OffsetDateTime {
        self.seen
            .values()
            .max()
            .copied()
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// The median of `times`: keeping what is at least as recent keeps about half.
fn newer_half(times: impl Iterator<Item = OffsetDateTime>) -> OffsetDateTime {
    let mut times: Vec<_> = times.collect();
    let middle = times.len() / 2;
    if times.is_empty() {
        return OffsetDateTime::UNIX_EPOCH;
    }
    *times.select_nth_unstable(middle).1
}

/// Subjects tracked per rule before stale ones are dropped: bounds memory under a flood of
/// sources.
const MAX_SUBJECTS: usize = 50_000;

/// The rules' state.
pub struct Detector {
    thresholds: Thresholds,
    /// Keys the hash of unknown emails: fixed per process, never stored.
    email_key: std::collections::hash_map::RandomState,
    events: HashMap<(Rule, String), Recent>,
    distinct: HashMap<(Rule, String), Distinct>,
}

impl Detector {
    /// Rules with these thresholds.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            email_key: std::collections::hash_map::RandomState::new(),
            events: HashMap::new(),
            distinct: HashMap::new(),
        }
    }

    /// The [`Target`] for an email that has no account: a keyed hash, so that different
    /// unknown emails count as different accounts without keeping them.
    pub fn email(&self, email: &str) -> Target {
        Target::UnknownEmail(self.email_key.hash_one(email.trim().to_lowercase()))
    }

    /// Count `observation` at `now`; the rules it made fire.
    pub fn observe(&mut self, now: OffsetDateTime, observation: &Observation) -> Vec<Firing> {
        let t = self.thresholds.clone();
        let mut fired = Vec::new();
        match *observation {
            Observation::SignInFailed {
                source,
                target,
                factor,
            } => {
                let address = format!("address:{}", source_key(source));
                if self.distinct_push(Rule::CredentialStuffing, &address, now, target) {
                    fired.push(Firing {
                        rule: Rule::CredentialStuffing,
                        summary: format!(
                            "failed sign-ins for {} different accounts from {} within {}",
                            t.credential_stuffing.count,
                            source_key(source),
                            humantime::format_duration(t.credential_stuffing.window)
                        ),
                        detail: json!({ "source": source_key(source),
                            "accounts": t.credential_stuffing.count,
                            "window_seconds": t.credential_stuffing.window.as_secs() }),
                        subject: address,
                    });
                }
                if let (Target::Account(_), Factor::Password) = (target, factor)
                    && self.distinct_push(Rule::PasswordSpraying, "service", now, target)
                {
                    fired.push(Firing {
                        rule: Rule::PasswordSpraying,
                        subject: "service".into(),
                        summary: format!(
                            "wrong passwords for {} different accounts within {}",
                            t.password_spraying.count,
                            humantime::format_duration(t.password_spraying.window)
                        ),
                        detail: json!({ "accounts": t.password_spraying.count,
                            "window_seconds": t.password_spraying.window.as_secs() }),
                    });
                }
                if let (Target::Account(user), Factor::SecondFactor) = (target, factor) {
                    let subject = format!("user:{user}");
                    if self.events_push(Rule::SecondFactorGuessing, &subject, now) {
                        fired.push(Firing {
                            rule: Rule::SecondFactorGuessing,
                            summary: format!(
                                "{} wrong second factors for one account within {}: its password is known to whoever is trying",
                                t.second_factor_guessing.count,
                                humantime::format_duration(t.second_factor_guessing.window)
                            ),
                            detail: json!({ "user_id": user, "last_source": source_key(source),
                                "failures": t.second_factor_guessing.count,
                                "window_seconds": t.second_factor_guessing.window.as_secs() }),
                            subject,
                        });
                    }
                }
            }
            Observation::UnknownInvite { source } => {
                let address = format!("address:{}", source_key(source));
                if self.events_push(Rule::InviteGuessing, &address, now) {
                    fired.push(Firing {
                        rule: Rule::InviteGuessing,
                        summary: format!(
                            "{} unknown invite links tried from {} within {}",
                            t.invite_guessing.count,
                            source_key(source),
                            humantime::format_duration(t.invite_guessing.window)
                        ),
                        detail: json!({ "source": source_key(source),
                            "attempts": t.invite_guessing.count,
                            "window_seconds": t.invite_guessing.window.as_secs() }),
                        subject: address,
                    });
                }
                let wide = t.invite_guessing_service_wide;
                if self
                    .events
                    .entry((Rule::InviteGuessing, "service".into()))
                    .or_default()
                    .push(now, wide)
                {
                    fired.push(Firing {
                        rule: Rule::InviteGuessing,
                        subject: "service".into(),
                        summary: format!(
                            "{} unknown invite links tried from all sources within {}",
                            wide.count,
                            humantime::format_duration(wide.window)
                        ),
                        detail: json!({ "attempts": wide.count,
                            "window_seconds": wide.window.as_secs() }),
                    });
                }
            }
            Observation::SignalRefused {
                participant,
                consultation,
                reason,
            } => {
                let subject = format!("participant:{participant}");
                if self.events_push(Rule::CrossConsultation, &subject, now) {
                    fired.push(Firing {
                        rule: Rule::CrossConsultation,
                        summary: format!(
                            "{} signaling messages refused as outside the sender's consultation or before admission within {}",
                            t.cross_consultation.count,
                            humantime::format_duration(t.cross_consultation.window)
                        ),
                        detail: json!({ "participant_id": participant,
                            "consultation_id": consultation, "last_reason": reason,
                            "refused": t.cross_consultation.count,
                            "window_seconds": t.cross_consultation.window.as_secs() }),
                        subject,
                    });
                }
            }
            Observation::ExportRefused { user } => {
                let subject = format!("user:{user}");
                if self.events_push(Rule::RefusedExports, &subject, now) {
                    fired.push(Firing {
                        rule: Rule::RefusedExports,
                        summary: format!(
                            "{} recording exports refused to one account within {}",
                            t.refused_exports.count,
                            humantime::format_duration(t.refused_exports.window)
                        ),
                        detail: json!({ "user_id": user, "refused": t.refused_exports.count,
                            "window_seconds": t.refused_exports.window.as_secs() }),
                        subject,
                    });
                }
            }
            Observation::Exported { user } => {
                let subject = format!("user:{user}");
                if self.events_push(Rule::ExportBurst, &subject, now) {
                    fired.push(Firing {
                        rule: Rule::ExportBurst,
                        summary: format!(
                            "{} recording exports by one account within {}",
                            t.export_burst.count,
                            humantime::format_duration(t.export_burst.window)
                        ),
                        detail: json!({ "user_id": user, "exports": t.export_burst.count,
                            "window_seconds": t.export_burst.window.as_secs() }),
                        subject,
                    });
                }
            }
        }
        self.forget_stale(now);
        fired
    }

    fn threshold(&self, rule: Rule) -> Threshold {
        let t = &self.thresholds;
        match rule {
            Rule::CredentialStuffing => t.credential_stuffing,
            Rule::PasswordSpraying => t.password_spraying,
            Rule::SecondFactorGuessing => t.second_factor_guessing,
            Rule::InviteGuessing => t.invite_guessing,
            Rule::CrossConsultation => t.cross_consultation,
            Rule::RefusedExports => t.refused_exports,
            Rule::ExportBurst => t.export_burst,
        }
    }

    fn events_push(&mut self, rule: Rule, subject: &str, now: OffsetDateTime) -> bool {
        let threshold = self.threshold(rule);
        self.events
            .entry((rule, subject.to_owned()))
            .or_default()
            .push(now, threshold)
    }

    fn distinct_push(
        &mut self,
        rule: Rule,
        subject: &str,
        now: OffsetDateTime,
        target: Target,
    ) -> bool {
        let threshold = self.threshold(rule);
        self.distinct
            .entry((rule, subject.to_owned()))
            .or_default()
            .push(now, target, threshold)
    }

    /// Past [`MAX_SUBJECTS`], drop subjects with nothing left in their window.
    fn forget_stale(&mut self, now: OffsetDateTime) {
        let longest = self
            .thresholds
            .all()
            .iter()
            .map(|(_, t)| t.window)
            .max()
            .unwrap_or_default();
        if self.events.len() > MAX_SUBJECTS {
            self.events.retain(|_, r| !r.stale(now, longest));
            if self.events.len() > MAX_SUBJECTS {
                // Still too many within the window: keep the more recent half.
                let cut = newer_half(self.events.values().map(Recent::last));
                self.events.retain(|_, r| r.last() >= cut);
            }
        }
        if self.distinct.len() > MAX_SUBJECTS {
            self.distinct.retain(|_, d| !d.stale(now, longest));
            if self.distinct.len() > MAX_SUBJECTS {
                let cut = newer_half(self.distinct.values().map(Distinct::last));
                self.distinct.retain(|_, d| d.last() >= cut);
            }
        }
    }

    /// Subjects tracked now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.events.len() + self.distinct.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn secs(s: u64) -> time::Duration {
        time::Duration::seconds(s as i64)
    }

    fn failed(source: &str, target: Target, factor: Factor) -> Observation {
        Observation::SignInFailed {
            source: source.parse().unwrap(),
            target,
            factor,
        }
    }

    fn rules(fired: &[Firing]) -> Vec<(Rule, &str)> {
        fired.iter().map(|f| (f.rule, f.subject.as_str())).collect()
    }

    #[test]
    fn stuffing_fires_at_the_tenth_different_account_from_one_source() {
        let mut d = Detector::new(Thresholds::default());
        for n in 0..9 {
            let target = d.email(&format!("victim{n}@example.org"));
            let fired = d.observe(
                t0() + secs(n),
                &failed("203.0.113.5", target, Factor::Password),
            );
            assert!(fired.is_empty(), "fired early at {n}: {fired:?}");
        }
        // The same account again is not a tenth account.
        let again = d.email("VICTIM0@example.org ");
        assert!(d
            .observe(
                t0() + secs(10),
                &failed("203.0.113.5", again, Factor::Password)
            )
            .is_empty());
        let tenth = d.email("victim9@example.org");
        let fired = d.observe(
            t0() + secs(11),
            &failed("203.0.113.5", tenth, Factor::Password),
        );
        assert_eq!(
            rules(&fired),
            vec![(Rule::CredentialStuffing, "address:203.0.113.5")]
        );
        assert_eq!(fired[0].detail["source"], "203.0.113.5");
    }

    #[test]
    fn stuffing_spread_wider_than_its_window_never_fires() {
        let mut d = Detector::new(Thresholds::default());
        for n in 0..30u64 {
            let target = d.email(&format!("slow{n}@example.org"));
            let fired = d.observe(
                t0() + secs(n * 60),
                &failed("203.0.113.6", target, Factor::Password),
            );
            assert!(fired.is_empty(), "{n}: {fired:?}");
        }
    }

    #[test]
    fn one_user_mistyping_never_fires() {
        // A doctor who cannot remember their password, from one place, all day.
        let mut d = Detector::new(Thresholds::default());
        let me = Target::Account(Uuid::new_v4());
        for n in 0..200 {
            assert!(d
                .observe(
                    t0() + secs(n * 10),
                    &failed("192.0.2.10", me, Factor::Password)
                )
                .is_empty());
        }
    }

    #[test]
    fn spraying_fires_for_ten_accounts_from_ten_sources() {
        let mut d = Detector::new(Thresholds::default());
        let mut all = Vec::new();
        for n in 0..10u64 {
            let source = format!("198.51.100.{n}");
            all.extend(d.observe(
                t0() + secs(n * 300),
                &failed(&source, Target::Account(Uuid::new_v4()), Factor::Password),
            ));
        }
        assert_eq!(rules(&all), vec![(Rule::PasswordSpraying, "service")]);
    }

    #[test]
    fn second_factor_guessing_fires_per_account() {
        let mut d = Detector::new(Thresholds::default());
        let user = Uuid::new_v4();
        let mut all = Vec::new();
        for n in 0..5 {
            all.extend(d.observe(
                t0() + secs(n * 60),
                &failed("192.0.2.44", Target::Account(user), Factor::SecondFactor),
            ));
        }
        assert_eq!(
            rules(&all),
            vec![(Rule::SecondFactorGuessing, &*format!("user:{user}"))]
        );
        assert_eq!(all[0].rule.severity(), Severity::Critical);
        // Counting starts afresh: the next one alone does not fire again.
        assert!(d
            .observe(
                t0() + secs(301),
                &failed("192.0.2.44", Target::Account(user), Factor::SecondFactor)
            )
            .is_empty());
    }

    #[test]
    fn invite_guessing_from_one_source_and_from_everywhere() {
        let mut d = Detector::new(Thresholds::default());
        let mut all = Vec::new();
        for n in 0..20 {
            all.extend(d.observe(
                t0() + secs(n),
                &Observation::UnknownInvite {
                    source: "192.0.2.99".parse().unwrap(),
                },
            ));
        }
        assert_eq!(
            rules(&all),
            vec![(Rule::InviteGuessing, "address:192.0.2.99")]
        );
        // Distributed: 200 addresses, 1 each.
        let mut wide = Vec::new();
        for n in 0..180u32 {
            let source = std::net::Ipv4Addr::from(0x0a00_0000 + n).into();
            wide.extend(d.observe(t0() + secs(30), &Observation::UnknownInvite { source }));
        }
        assert_eq!(rules(&wide), vec![(Rule::InviteGuessing, "service")]);
    }

    #[test]
    fn ipv6_guesses_from_one_slash_64_count_together() {
        let mut d = Detector::new(Thresholds::default());
        let mut all = Vec::new();
        for n in 0..20u16 {
            let source = format!("2001:db8:7:8:{n:x}::9").parse().unwrap();
            all.extend(d.observe(t0(), &Observation::UnknownInvite { source }));
        }
        assert_eq!(
            rules(&all),
            vec![(Rule::InviteGuessing, "address:2001:db8:7:8::/64")]
        );
    }

    #[test]
    fn cross_consultation_exports_and_refusals() {
        let mut d = Detector::new(Thresholds::default());
        let (participant, consultation, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut all = Vec::new();
        for n in 0..10 {
            all.extend(d.observe(
                t0() + secs(n),
                &Observation::SignalRefused {
                    participant,
                    consultation,
                    reason: "outside_consultation",
                },
            ));
        }
        for n in 0..3 {
            all.extend(d.observe(t0() + secs(n), &Observation::ExportRefused { user }));
        }
        for n in 0..20 {
            all.extend(d.observe(t0() + secs(n * 20), &Observation::Exported { user }));
        }
        let subject_p = format!("participant:{participant}");
        let subject_u = format!("user:{user}");
        assert_eq!(
            rules(&all),
            vec![
                (Rule::CrossConsultation, subject_p.as_str()),
                (Rule::RefusedExports, subject_u.as_str()),
                (Rule::ExportBurst, subject_u.as_str()),
            ]
        );
    }

    #[test]
    fn a_flood_of_sources_keeps_memory_bounded() {
        let mut d = Detector::new(Thresholds::default());
        for n in 0..120_000u32 {
            let source = std::net::Ipv4Addr::from(0x0b00_0000 + n).into();
            // One guess each, all within the window: nothing goes stale.
            d.observe(
                t0() + secs(u64::from(n) / 100),
                &Observation::UnknownInvite { source },
            );
            assert!(
                d.tracked() <= MAX_SUBJECTS + 2,
                "tracked {} at {n}",
                d.tracked()
            );
        }
        // A source seen after the flood is still counted to its threshold.
        let mut fired = Vec::new();
        for _ in 0..20 {
            let source = "192.0.2.200".parse().unwrap();
            fired.extend(d.observe(t0() + secs(1300), &Observation::UnknownInvite { source }));
        }
        assert!(
            fired.iter().any(|f| f.subject == "address:192.0.2.200"),
            "{fired:?}"
        );
    }
}
