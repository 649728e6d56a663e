//! What becomes of a delivery its endpoint cannot take now, decided in one place without
//! I/O. The worker's gate says why (a [`Wait`]) and for how long; this says whether the
//! delivery is dead-lettered, parked or rescheduled, and when it comes back. What an
//! attempt's answer means is [`crate::retry::judge`].
//!
//! The rules:
//! - A delivery older than its endpoint's whole retry schedule plus the grace
//!   (`GANCHO_DEFER_GRACE`) is given up on (`exhausted`), whatever the reason it waits.
//! - An open circuit, a stalled endpoint or a full queue says nothing about when the endpoint
//!   will take the delivery: it is parked (no timer) and let out when the endpoint's state
//!   changes (its circuit closes, it answers, its queue has room). A timer there only guessed:
//!   a full queue's deliveries came back every half second, doubling, several times each
//!   before a receiver's pause had even begun.
//! - A rate limit's next token and a receiver's pause are known times: it is rescheduled,
//!   never before the pause ends, and jitter only ever lengthens the wait, so a known pause is
//!   never cut short.

use std::time::Duration;

/// Why a delivery waits without an attempt: the `reason` label of
/// `gancho_delivery_deferred_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    /// The endpoint's rate limit (configured, or lowered after 429s) has no token now.
    RateLimited,
    /// Every in-flight slot is taken and its queue in this worker is full.
    InFlightCap,
    /// The receiver asked for a pause (429 or 503 with `Retry-After`).
    RetryAfter,
    /// The endpoint's circuit is open (consecutive failures).
    CircuitOpen,
    /// Every in-flight slot is taken and the endpoint has not answered for a second.
    Stalled,
}

impl Wait {
    pub const ALL: [Wait; 5] = [
        Wait::RateLimited,
        Wait::InFlightCap,
        Wait::RetryAfter,
        Wait::CircuitOpen,
        Wait::Stalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Wait::RateLimited => "rate_limited",
            Wait::InFlightCap => "in_flight_cap",
            Wait::RetryAfter => "retry_after",
            Wait::CircuitOpen => "circuit_open",
            Wait::Stalled => "stalled",
        }
    }

    /// Whether the endpoint's state, not a known time, decides when it can take the delivery:
    /// it is parked, and let out when that state changes.
    pub fn parks(self) -> bool {
        matches!(self, Wait::InFlightCap | Wait::CircuitOpen | Wait::Stalled)
    }
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt ended: an attempt record's `outcome` (a token of its subject), the
/// `outcome` label of the attempt metrics and the API's `outcome` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// An answer the endpoint's profile counts as delivered (a 2xx; 202 for `openfinance-br`).
    Success,
    /// Any other HTTP answer.
    HttpError,
    /// No answer within the endpoint's timeout.
    Timeout,
    /// The connection could not be made (refused, unreachable, DNS).
    ConnectError,
    /// The TLS handshake failed (certificate, protocol).
    TlsError,
    /// The request failed after connecting (reset, garbage, a body too large).
    RequestError,
    /// The operator's address policy refused the target: nothing was sent.
    Blocked,
    /// The egress proxy could not be reached or refused the tunnel: nothing reached the
    /// endpoint, so it does not count against the endpoint's health.
    ProxyError,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 8] = [
        AttemptOutcome::Success,
        AttemptOutcome::HttpError,
        AttemptOutcome::Timeout,
        AttemptOutcome::ConnectError,
        AttemptOutcome::TlsError,
        AttemptOutcome::RequestError,
        AttemptOutcome::Blocked,
        AttemptOutcome::ProxyError,
    ];
    /// Every outcome's name, in the order of [`AttemptOutcome::ALL`].
    pub const NAMES: [&'static str; 8] = {
        let mut names = [""; 8];
        let mut i = 0;
        while i < names.len() {
            names[i] = AttemptOutcome::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::HttpError => "http_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::TlsError => "tls_error",
            AttemptOutcome::RequestError => "request_error",
            AttemptOutcome::Blocked => "blocked",
            AttemptOutcome::ProxyError => "proxy_error",
        }
    }

    pub fn parse(s: &str) -> Option<AttemptOutcome> {
        AttemptOutcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Why an event or a delivery was given up on: a dead letter's `kind`, the last token of its
/// subject, the `reason` of the dead-letter counters and the API's `kind` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadKind {
    /// The message does not decode (an event, a delivery or a batch).
    Undecodable,
    /// The event's payload is not a JSON document.
    NotJson,
    /// The event's subject names another tenant or type than its body.
    SubjectMismatch,
    /// The event (or a delivery, for its endpoint's profile) breaks a rule.
    Invalid,
    /// The event does not match its type's JSON Schema.
    Schema,
    /// Its retry schedule is used up, or it waited longer than that plus the grace.
    Exhausted,
    /// Its endpoint was deleted, or answered 410 Gone.
    EndpointGone,
    /// Its endpoint is disabled.
    EndpointDisabled,
    /// Its endpoint's jq transform failed on it (the program's error, or a cutoff).
    Transform,
}

impl DeadKind {
    pub const ALL: [DeadKind; 9] = [
        DeadKind::Undecodable,
        DeadKind::NotJson,
        DeadKind::SubjectMismatch,
        DeadKind::Invalid,
        DeadKind::Schema,
        DeadKind::Exhausted,
        DeadKind::EndpointGone,
        DeadKind::EndpointDisabled,
        DeadKind::Transform,
    ];
    /// Every kind's name, in the order of [`DeadKind::ALL`].
    pub const NAMES: [&'static str; 9] = {
        let mut names = [""; 9];
        let mut i = 0;
        while i < names.len() {
            names[i] = DeadKind::ALL[i].as_str();
            i += 1;
        }
        names
    };
    /// The kinds the router gives events it cannot route.
    pub const OF_EVENTS: [DeadKind; 5] = [
        DeadKind::Undecodable,
        DeadKind::NotJson,
        DeadKind::SubjectMismatch,
        DeadKind::Invalid,
        DeadKind::Schema,
    ];
    /// The kinds the worker gives deliveries.
    pub const OF_DELIVERIES: [DeadKind; 6] = [
        DeadKind::Exhausted,
        DeadKind::EndpointGone,
        DeadKind::EndpointDisabled,
        DeadKind::Undecodable,
        DeadKind::Invalid,
        DeadKind::Transform,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DeadKind::Undecodable => "undecodable",
            DeadKind::NotJson => "not_json",
            DeadKind::SubjectMismatch => "subject_mismatch",
            DeadKind::Invalid => "invalid",
            DeadKind::Schema => "schema",
            DeadKind::Exhausted => "exhausted",
            DeadKind::EndpointGone => "endpoint_gone",
            DeadKind::EndpointDisabled => "endpoint_disabled",
            DeadKind::Transform => "transform",
        }
    }

    pub fn parse(s: &str) -> Option<DeadKind> {
        DeadKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether `recover` sends it again: the delivery failed and its endpoint still exists.
    pub fn recoverable(self) -> bool {
        matches!(self, DeadKind::Exhausted | DeadKind::EndpointDisabled)
    }
}

impl std::fmt::Display for DeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a deferral's wait is lengthened at most, as a fraction of it (so deliveries
/// deferred together do not all come back in the same millisecond).
pub const DEFER_JITTER: f64 = 0.2;

/// What the worker knows when the endpoint cannot take a delivery now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub wait: Wait,
    /// How long the gate says the wait lasts: the rate's next token, or the pause's or the
    /// cool-down's end.
    pub after: Duration,
    /// How old the delivery is (since the router made it), when known.
    pub age: Option<Duration>,
    /// The endpoint's whole retry schedule: the sum of its delays.
    pub patience: Duration,
    /// How much longer than `patience` it may wait (`GANCHO_DEFER_GRACE`).
    pub grace: Duration,
    /// What remains of a pause the receiver asked for, when one is in force.
    pub paused_for: Option<Duration>,
}

/// What becomes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Dead-letter it as `exhausted`: it outlived its patience and the grace.
    GiveUp,
    /// Park it on its endpoint's held subject until the endpoint's state changes.
    Park,
    /// Reschedule it after this long, without counting an attempt.
    Defer(Duration),
}

/// Whether a delivery of `age` outlived `patience` plus `grace` (an unknown age never does).
pub fn outlived(age: Option<Duration>, patience: Duration, grace: Duration) -> bool {
    age.is_some_and(|a| a > patience.saturating_add(grace))
}

/// `delay` lengthened by up to `fraction` of it, with `unit` a random number in `[0, 1)`
/// supplied by the caller: never shorter than `delay`.
pub fn lengthen(delay: Duration, fraction: f64, unit: f64) -> Duration {
    delay.mul_f64(1.0 + fraction.max(0.0) * unit.clamp(0.0, 1.0))
}

/// What becomes of a delivery the endpoint refused now; `unit` is a random number in
/// `[0, 1)` for the jitter.
pub fn refused(r: &Refused, unit: f64) -> Waiting {
    if outlived(r.age, r.patience, r.grace) {
        return Waiting::GiveUp;
    }
    if r.wait.parks() {
        return Waiting::Park;
    }
    let after = r.after.max(r.paused_for.unwrap_or_default());
    Waiting::Defer(lengthen(after, DEFER_JITTER, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const PATIENCE: Duration = Duration::from_secs(45);
    const GRACE: Duration = Duration::from_secs(3600);

    fn refusal(wait: Wait, after: Duration) -> Refused {
        Refused {
            wait,
            after,
            age: Some(SECOND),
            patience: PATIENCE,
            grace: GRACE,
            paused_for: None,
        }
    }

    /// Every combination of the inputs' values, checked against the rules.
    #[test]
    fn the_rules_hold_over_the_cross_product() {
        let afters = [
            Duration::ZERO,
            Duration::from_millis(500),
            2 * SECOND,
            300 * SECOND,
        ];
        let ages = [
            None,
            Some(Duration::ZERO),
            Some(PATIENCE),
            Some(PATIENCE + GRACE),
            Some(PATIENCE + GRACE + SECOND),
        ];
        let pauses = [
            None,
            Some(Duration::from_millis(10)),
            Some(2 * SECOND),
            Some(600 * SECOND),
        ];
        let units = [0.0, 0.5, 0.999_999];
        let mut cases = 0;
        let all = Wait::ALL.into_iter().flat_map(|wait| {
            afters.into_iter().flat_map(move |after| {
                ages.into_iter().flat_map(move |age| {
                    pauses.into_iter().map(move |paused_for| Refused {
                        wait,
                        after,
                        age,
                        patience: PATIENCE,
                        grace: GRACE,
                        paused_for,
                    })
                })
            })
        });
        for r in all {
            for unit in units {
                cases += 1;
                let old = outlived(r.age, PATIENCE, GRACE);
                match refused(&r, unit) {
                    Waiting::GiveUp => assert!(old, "{r:?}: gave up young"),
                    Waiting::Park => assert!(!old && r.wait.parks(), "{r:?}: parked"),
                    Waiting::Defer(t) => {
                        assert!(!old && !r.wait.parks(), "{r:?}: deferred");
                        // Never before the gate's wait or a known pause.
                        let pause = r.paused_for.unwrap_or_default();
                        assert!(t >= r.after, "{r:?}: {t:?} < the gate's wait");
                        assert!(t >= pause, "{r:?}: {t:?} ends in the pause");
                        // The jitter adds at most its fraction.
                        let most = r.after.max(pause).mul_f64(1.0 + DEFER_JITTER);
                        assert!(t <= most, "{r:?}: {t:?} more than the jitter allows");
                    }
                }
            }
        }
        assert_eq!(cases, 5 * 4 * 5 * 4 * 3);
    }

    #[test]
    fn named_cases() {
        let ms = Duration::from_millis;
        // A receiver's Retry-After of 2 s: a delivery that met the pause comes back after it,
        // however the jitter falls.
        let mut r = refusal(Wait::RetryAfter, 2 * SECOND);
        r.paused_for = Some(2 * SECOND);
        for unit in [0.0, 0.5, 0.99] {
            let Waiting::Defer(t) = refused(&r, unit) else {
                panic!("deferred")
            };
            assert!(t >= 2 * SECOND && t <= ms(2400), "{t:?}");
        }
        // A rate limit's next token: its wait, lengthened by the jitter at most.
        let r = refusal(Wait::RateLimited, ms(40));
        assert_eq!(refused(&r, 0.0), Waiting::Defer(ms(40)));
        assert_eq!(refused(&r, 0.5), Waiting::Defer(ms(44)));
        // The rate's token while the receiver's pause lasts: after the pause.
        let mut r = refusal(Wait::RateLimited, ms(40));
        r.paused_for = Some(ms(1800));
        assert_eq!(refused(&r, 0.0), Waiting::Defer(ms(1800)));
        // An open circuit, a stalled endpoint, a full queue: parked, whatever the gate's wait.
        assert_eq!(
            refused(&refusal(Wait::CircuitOpen, 300 * SECOND), 0.3),
            Waiting::Park
        );
        assert_eq!(refused(&refusal(Wait::Stalled, SECOND), 0.3), Waiting::Park);
        assert_eq!(
            refused(&refusal(Wait::InFlightCap, ms(500)), 0.3),
            Waiting::Park
        );
        // Older than the retry schedule plus the grace: given up on, parked or not.
        for wait in Wait::ALL {
            let mut r = refusal(wait, SECOND);
            r.age = Some(PATIENCE + GRACE + ms(1));
            assert_eq!(refused(&r, 0.5), Waiting::GiveUp, "{wait}");
            r.age = Some(PATIENCE + GRACE);
            assert_ne!(refused(&r, 0.5), Waiting::GiveUp, "{wait} at the limit");
            // A delivery without a creation time is never given up on by age.
            r.age = None;
            assert_ne!(refused(&r, 0.5), Waiting::GiveUp, "{wait} of unknown age");
        }
    }

    #[test]
    fn every_dead_kind_has_its_own_name_and_parses_back() {
        for (k, name) in DeadKind::ALL.iter().zip(DeadKind::NAMES) {
            assert_eq!(k.as_str(), name);
            assert_eq!(DeadKind::parse(name), Some(*k));
        }
        let names: std::collections::HashSet<_> = DeadKind::NAMES.into_iter().collect();
        assert_eq!(names.len(), DeadKind::ALL.len());
        // Every kind is given by the router or the worker.
        for k in DeadKind::ALL {
            assert!(
                DeadKind::OF_EVENTS.contains(&k) || DeadKind::OF_DELIVERIES.contains(&k),
                "{k}"
            );
        }
        assert_eq!(DeadKind::parse("gone"), None);
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: std::collections::HashSet<_> = Wait::ALL.iter().map(|w| w.as_str()).collect();
        assert_eq!(labels.len(), Wait::ALL.len());
        assert_eq!(Wait::ALL.iter().filter(|w| w.parks()).count(), 3);
    }
}
