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

#[cfg(test)]
mod tests {
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
