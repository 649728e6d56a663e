//! Retry schedules: the delay before each attempt, written as `0s,5s,5m,30m,2h,5h,10h,10h`
//! (the default: eight attempts over about 27 hours). The first entry is the delay before the
//! first attempt, normally `0s`.

use std::fmt;
use std::time::Duration;

/// The default schedule, as in DESIGN.md.
pub const DEFAULT_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";
/// Most attempts a schedule may list.
pub const MAX_ATTEMPTS: usize = 50;
/// Longest single delay: a week, the replay window of the events stream.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryScheduleError {
    #[error("retry schedule is empty; write delays like \"0s,5s,5m\"")]
    Empty,
    #[error("retry schedule entry {0:?} is not a duration; use a number with ms, s, m, h or d, like \"5m\"")]
    BadEntry(String),
    #[error("retry schedule entry {0:?} is longer than 7 days")]
    TooLong(String),
    #[error("retry schedule has {0} entries; the limit is 50")]
    TooMany(usize),
}

/// Delays before each attempt; `len()` is the number of attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    pub fn parse(s: &str) -> Result<Self, RetryScheduleError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        let delays = s
            .split(',')
            .map(|entry| {
                let entry = entry.trim();
                let d = parse_duration(entry)
                    .ok_or_else(|| RetryScheduleError::BadEntry(entry.to_owned()))?;
                if d > MAX_DELAY {
                    return Err(RetryScheduleError::TooLong(entry.to_owned()));
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > MAX_ATTEMPTS {
            return Err(RetryScheduleError::TooMany(delays.len()));
        }
        Ok(Self { delays })
    }

    pub fn from_delays(delays: Vec<Duration>) -> Result<Self, RetryScheduleError> {
        if delays.is_empty() {
            return Err(RetryScheduleError::Empty);
        }
        Ok(Self { delays })
    }

    /// How many attempts the schedule allows.
    pub fn attempts(&self) -> u32 {
        self.delays.len() as u32
    }

    /// Delay before attempt `n` (1-based); `None` past the last attempt.
    pub fn delay_before(&self, attempt: u32) -> Option<Duration> {
        let idx = attempt.checked_sub(1)? as usize;
        self.delays.get(idx).copied()
    }

    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::parse(DEFAULT_SCHEDULE).expect("the default schedule parses")
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.delays.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write_duration(f, *d)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for RetrySchedule {
    type Err = RetryScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Spreads a delay by up to `fraction` either way, with `unit` a random number in `[0, 1)`
/// supplied by the caller (the core does no I/O, randomness included). Retries of many
/// deliveries that failed together then don't all land in the same millisecond.
pub fn jitter(delay: Duration, fraction: f64, unit: f64) -> Duration {
    if delay.is_zero() || fraction <= 0.0 {
        return delay;
    }
    let factor = 1.0 + fraction * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
    delay.mul_f64(factor.max(0.0))
}

/// The `Nats-Schedule` header value that fires a scheduled message at `t`:
/// `@at 2026-11-23T18:35:17.720Z` (UTC, millisecond precision).
pub fn schedule_at(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "@at {:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The time a `Nats-Schedule` value of the form `@at <RFC 3339>` fires at; `None` for any
/// other form.
pub fn parse_schedule_at(value: &str) -> Option<time::OffsetDateTime> {
    let at = value.strip_prefix("@at ")?;
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

fn write_duration(f: &mut fmt::Formatter<'_>, d: Duration) -> fmt::Result {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return write!(f, "{ms}ms");
    }
    let s = d.as_secs();
    if s != 0 && s.is_multiple_of(86_400) {
        write!(f, "{}d", s / 86_400)
    } else if s != 0 && s.is_multiple_of(3600) {
        write!(f, "{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        write!(f, "{}m", s / 60)
    } else {
        write!(f, "{s}s")
    }
}

/// Longest pause a receiver's `Retry-After` may ask for; longer answers are cut to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as seconds (`120`) or an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`), as a
/// wait from `now`: a date in the past is no wait; anything longer than
/// [`MAX_RETRY_AFTER`] is cut to it; anything else is `None` (ignored).
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, format)
        .ok()?
        .assume_utc();
    let wait = at - now;
    Some(if wait.is_negative() {
        Duration::ZERO
    } else {
        wait.unsigned_abs().min(MAX_RETRY_AFTER)
    })
}

/// What an attempt produced, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The delivery counts as delivered (per the endpoint's profile).
    pub delivered: bool,
    /// The HTTP status; 0 when there was no response (timeout, connection, TLS, proxy).
    pub status: u16,
    /// The receiver's `Retry-After`, already parsed and bounded.
    pub retry_after: Option<Duration>,
}

/// What happens to the delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Attempt again after this delay.
    Retry(Duration),
    /// The schedule is used up: dead-letter it (`exhausted`).
    GiveUp,
    /// 410 Gone: the receiver says the endpoint no longer exists; disable it.
    Disable,
}

/// What an attempt's answer means, for the delivery and for its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub next: Next,
    /// Whether the answer shows a working endpoint (feeds the circuit breaker): false for no
    /// response, 5xx, 408 and 429.
    pub healthy: bool,
    /// The receiver asked for a pause (429 or 503 with `Retry-After`): no request to the
    /// endpoint starts before it ends.
    pub pause: Option<Duration>,
    /// The receiver says it gets too many requests (429): lower the endpoint's rate
    /// ([`lowered_rate`]).
    pub slow_down: bool,
}

/// The lowest rate (requests per second) repeated 429s bring an endpoint to.
pub const MIN_RATE: u32 = 1;
/// How long after one change of an endpoint's adaptive rate the next may come: one decrease
/// per second however many 429s a burst of concurrent requests brings back, and one step up
/// per second of answers without 429.
pub const RATE_STEP_EVERY: Duration = Duration::from_secs(1);

/// Multiplicative decrease: the rate after a 429 to an endpoint sending at `current` per
/// second: half, not below [`MIN_RATE`].
pub fn lowered_rate(current: u32) -> u32 {
    (current / 2).max(MIN_RATE)
}

/// Additive increase: the rate one step after `current` on the way back to `ceiling` (the
/// endpoint's configured limit, or the rate it was sent at when first slowed): a tenth of the
/// ceiling (at least 1) more; `None` once the ceiling is reached (the adaptive limit is lifted).
pub fn raised_rate(current: u32, ceiling: u32) -> Option<u32> {
    let next = current.saturating_add((ceiling / 10).max(1));
    (next < ceiling).then_some(next)
}

/// The retry policy in one place, without I/O: what `answer` to attempt `attempt` (1-based)
/// means under `schedule`. `jitter_fraction` and `unit` (a random number in `[0, 1)`) spread
/// the retry delay as [`jitter`] does; a `Retry-After` on 429 or 503 is a floor under it.
pub fn judge(
    answer: Answer,
    attempt: u32,
    schedule: &RetrySchedule,
    jitter_fraction: f64,
    unit: f64,
) -> Verdict {
    let status = answer.status;
    let healthy = answer.delivered || (status != 0 && status < 500 && !matches!(status, 408 | 429));
    let asks_pause = matches!(status, 429 | 503);
    let pause = answer
        .retry_after
        .filter(|d| asks_pause && !answer.delivered && !d.is_zero());
    let next = if answer.delivered {
        Next::Delivered
    } else if status == 410 {
        Next::Disable
    } else {
        match schedule.delay_before(attempt + 1) {
            Some(delay) => {
                let delay = jitter(delay, jitter_fraction, unit);
                Next::Retry(match pause {
                    Some(p) => delay.max(p),
                    None => delay,
                })
            }
            None => Next::GiveUp,
        }
    };
    Verdict {
        next,
        healthy,
        pause,
        slow_down: status == 429 && !answer.delivered,
    }
}

#[cfg(test)]
mod tests {
    mod policy {
        use super::super::*;

        const S: &str = "0s,5s,5m";

        fn verdict(
            delivered: bool,
            status: u16,
            retry_after: Option<u64>,
            attempt: u32,
        ) -> Verdict {
            let answer = Answer {
                delivered,
                status,
                retry_after: retry_after.map(Duration::from_secs),
            };
            judge(answer, attempt, &RetrySchedule::parse(S).unwrap(), 0.0, 0.5)
        }

        #[test]
        fn table() {
            use Next::*;
            let secs = Duration::from_secs;
            // (delivered, status, retry-after, attempt) -> (next, healthy, pause)
            type Given = (bool, u16, Option<u64>, u32);
            type Want = (Next, bool, Option<u64>);
            let rows: &[(Given, Want)] = &[
                ((true, 200, None, 1), (Delivered, true, None)),
                ((true, 202, None, 3), (Delivered, true, None)),
                // A profile may refuse a 200 (Open Finance wants 202): a healthy failure.
                ((false, 200, None, 1), (Retry(secs(5)), true, None)),
                ((false, 500, None, 1), (Retry(secs(5)), false, None)),
                ((false, 500, None, 2), (Retry(secs(300)), false, None)),
                ((false, 500, None, 3), (GiveUp, false, None)),
                ((false, 0, None, 1), (Retry(secs(5)), false, None)),
                ((false, 404, None, 1), (Retry(secs(5)), true, None)),
                ((false, 408, None, 1), (Retry(secs(5)), false, None)),
                ((false, 410, None, 1), (Disable, true, None)),
                ((false, 410, None, 3), (Disable, true, None)),
                // 429/503 with Retry-After: a pause, and the retry waits at least as long.
                ((false, 429, Some(2), 1), (Retry(secs(5)), false, Some(2))),
                (
                    (false, 429, Some(60), 1),
                    (Retry(secs(60)), false, Some(60)),
                ),
                (
                    (false, 503, Some(600), 2),
                    (Retry(secs(600)), false, Some(600)),
                ),
                ((false, 429, None, 1), (Retry(secs(5)), false, None)),
                ((false, 429, Some(0), 1), (Retry(secs(5)), false, None)),
                // Retry-After on other statuses is not a pause.
                ((false, 500, Some(60), 1), (Retry(secs(5)), false, None)),
                // The last attempt: given up on, but the pause still holds for the others.
                ((false, 429, Some(30), 3), (GiveUp, false, Some(30))),
            ];
            for ((delivered, status, ra, attempt), (next, healthy, pause)) in rows {
                let v = verdict(*delivered, *status, *ra, *attempt);
                let want = Verdict {
                    next: *next,
                    healthy: *healthy,
                    pause: pause.map(Duration::from_secs),
                    slow_down: *status == 429,
                };
                assert_eq!(
                    v, want,
                    "status {status} attempt {attempt} retry-after {ra:?}"
                );
            }
        }

        #[test]
        fn adaptive_rate_halves_to_the_floor_and_climbs_back_in_tenths() {
            // (current) -> lowered
            for (current, want) in [(50, 25), (25, 12), (3, 1), (1, 1), (0, 1)] {
                assert_eq!(lowered_rate(current), want, "from {current}");
            }
            // Back to a ceiling of 50 from 1: +5 a step, lifted at the ceiling.
            let mut rate = 1;
            let mut steps = 0;
            while let Some(next) = raised_rate(rate, 50) {
                assert!(next > rate && next < 50);
                rate = next;
                steps += 1;
            }
            assert_eq!((rate, steps), (46, 9));
            // A small ceiling still climbs by 1.
            assert_eq!(raised_rate(1, 5), Some(2));
            assert_eq!(raised_rate(4, 5), None);
        }

        #[test]
        fn retry_after_seconds_and_dates() {
            let now = time::macros::datetime!(2026-10-21 07:28:00 UTC);
            let p = |v| parse_retry_after(v, now);
            assert_eq!(p("120"), Some(Duration::from_secs(120)));
            assert_eq!(p(" 0 "), Some(Duration::ZERO));
            assert_eq!(p("999999"), Some(MAX_RETRY_AFTER));
            assert_eq!(
                p("Wed, 21 Oct 2026 07:28:30 GMT"),
                Some(Duration::from_secs(30))
            );
            assert_eq!(p("Wed, 21 Oct 2026 07:00:00 GMT"), Some(Duration::ZERO));
            assert_eq!(p("Thu, 22 Oct 2026 07:28:00 GMT"), Some(MAX_RETRY_AFTER));
            for bad in ["-5", "soon", "", "1.5", "Wed, 21 Oct 2026 07:28:30 PST"] {
                assert_eq!(p(bad), None, "{bad:?}");
            }
        }
    }

    use super::*;

    #[test]
    fn parses_the_default() {
        let s = RetrySchedule::default();
        assert_eq!(s.attempts(), 8);
        let secs: Vec<u64> = s.delays().iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [0, 5, 300, 1800, 7200, 18000, 36000, 36000]);
        assert_eq!(s.to_string(), DEFAULT_SCHEDULE);
    }

    #[test]
    fn delay_before_is_one_based() {
        let s = RetrySchedule::parse("0s,200ms,1s").unwrap();
        assert_eq!(s.delay_before(0), None);
        assert_eq!(s.delay_before(1), Some(Duration::ZERO));
        assert_eq!(s.delay_before(2), Some(Duration::from_millis(200)));
        assert_eq!(s.delay_before(3), Some(Duration::from_secs(1)));
        assert_eq!(s.delay_before(4), None);
        assert_eq!(s.to_string(), "0s,200ms,1s");
    }

    #[test]
    fn rejects_bad_schedules_with_the_entry() {
        assert_eq!(
            RetrySchedule::parse(" ").unwrap_err(),
            RetryScheduleError::Empty
        );
        assert_eq!(
            RetrySchedule::parse("0s,5x").unwrap_err(),
            RetryScheduleError::BadEntry("5x".into())
        );
        assert_eq!(
            RetrySchedule::parse("0s,,5s").unwrap_err(),
            RetryScheduleError::BadEntry("".into())
        );
        assert_eq!(
            RetrySchedule::parse("5").unwrap_err(),
            RetryScheduleError::BadEntry("5".into())
        );
        assert_eq!(
            RetrySchedule::parse("8d").unwrap_err(),
            RetryScheduleError::TooLong("8d".into())
        );
        let many = vec!["1s"; 51].join(",");
        assert_eq!(
            RetrySchedule::parse(&many).unwrap_err(),
            RetryScheduleError::TooMany(51)
        );
    }

    #[test]
    fn schedule_header_format() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_795_458_917_720_000_000).unwrap();
        assert_eq!(schedule_at(t), "@at 2026-11-23T18:35:17.720Z");
        assert_eq!(parse_schedule_at(&schedule_at(t)), Some(t));
        assert_eq!(parse_schedule_at("@every 5m"), None);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let d = Duration::from_secs(100);
        assert_eq!(jitter(d, 0.2, 0.0), Duration::from_secs(80));
        assert_eq!(jitter(d, 0.2, 0.5), Duration::from_secs(100));
        assert!(jitter(d, 0.2, 0.999) <= Duration::from_secs(120));
        assert_eq!(jitter(Duration::ZERO, 0.2, 0.9), Duration::ZERO);
    }
}
