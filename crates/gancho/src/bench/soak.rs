//! What a `--soak` run measures besides the deliveries: each process's resident memory and
//! open descriptors every [`SAMPLE_EVERY`], and with `--faults`, a fault at a fixed interval
//! (a worker killed, the router killed, nats-server killed and restarted on its store, the
//! receiver down for 30 s, in turn) and how long the deliveries took to be back to empty
//! after each.

use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How often each process is sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How long the receiver answers 503 in a receiver outage.
pub(super) const OUTAGE: Duration = Duration::from_secs(30);

/// Without faults, the stretch of samples [`growth`] takes one median of.
const WINDOW: Duration = Duration::from_secs(300);

/// How much a role's resident memory or descriptors may grow after the warm-up (the rise of
/// the line through its medians, one per fault cycle or [`WINDOW`], over the first) before
/// the run fails.
const MOST_GROWTH: f64 = 0.10;

/// Each process's resident memory and open descriptors, sampled every [`SAMPLE_EVERY`].
pub(super) struct Samples {
    names: Vec<String>,
    pids: Vec<Option<u32>>,
    rss: Vec<Vec<f64>>,
    fds: Vec<Vec<f64>>,
    next: Instant,
}

impl Samples {
    pub(super) fn new(procs: &[(String, Option<u32>)]) -> Self {
        Self {
            names: procs.iter().map(|(n, _)| n.clone()).collect(),
            pids: procs.iter().map(|(_, p)| *p).collect(),
            rss: vec![Vec::new(); procs.len()],
            fds: vec![Vec::new(); procs.len()],
            next: Instant::now(),
        }
    }

    /// The process `name` was started again as `pid`.
    pub(super) fn restarted(&mut self, name: &str, pid: Option<u32>) {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            self.pids[i] = pid;
        }
    }

    pub(super) fn sample_if_due(&mut self) {
        if Instant::now() < self.next {
            return;
        }
        self.next += SAMPLE_EVERY;
        for (i, pid) in self.pids.iter().enumerate() {
            let rss = pid
                .and_then(|pid| gancho_telemetry::process_usage(&pid.to_string()))
                .map_or(0.0, |u| u.rss_bytes / (1024.0 * 1024.0));
            self.rss[i].push((rss * 10.0).round() / 10.0);
            let fds = pid
                .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
                .map_or(0, Iterator::count);
            self.fds[i].push(fds as f64);
        }
    }

    /// Per process: the series, the least-squares slope of memory (MiB a minute) and its
    /// change from first to last after `warm_up`, and the growth of memory and descriptors
    /// (the rise of the line through its medians of each fault cycle, or of each five
    /// minutes without faults, after the warm-up: [`growth`]).
    pub(super) fn report(&self, warm_up: Duration, cycle: Option<Duration>) -> Value {
        let cycle = cycle_samples(cycle);
        let skip = (warm_up.as_secs_f64() / SAMPLE_EVERY.as_secs_f64()).ceil() as usize;
        let mut out = serde_json::Map::new();
        for (i, name) in self.names.iter().enumerate() {
            let after: Vec<f64> = self.rss[i].iter().skip(skip).copied().collect();
            let change_pct = match (after.first(), after.last()) {
                (Some(a), Some(b)) if *a > 0.0 => (b - a) / a * 100.0,
                _ => 0.0,
            };
            let fds_after: Vec<f64> = self.fds[i].iter().skip(skip).copied().collect();
            out.insert(
                name.clone(),
                json!({"rss_mib_every_10s": self.rss[i],
                    "fds_every_10s": self.fds[i],
                    "slope_mib_per_min": (slope(&after) * 100.0).round() / 100.0,
                    "change_after_warm_up_pct": (change_pct * 10.0).round() / 10.0,
                    "rss_growth_pct": growth(&after, cycle).map(|g| (g * 1000.0).round() / 10.0),
                    "fds_growth_pct": growth(&fds_after, cycle).map(|g| (g * 1000.0).round() / 10.0)}),
            );
        }
        json!({"warm_up_s": warm_up.as_secs(), "processes": out})
    }

    /// The roles (not nats-server or the sink) whose memory or descriptors grew by more than
    /// [`MOST_GROWTH`] after `warm_up`.
    pub(super) fn grown(&self, warm_up: Duration, cycle: Option<Duration>) -> Vec<String> {
        let cycle = cycle_samples(cycle);
        let skip = (warm_up.as_secs_f64() / SAMPLE_EVERY.as_secs_f64()).ceil() as usize;
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            if matches!(name.as_str(), "nats-server" | "sink") {
                continue;
            }
            for (what, series) in [("memory", &self.rss[i]), ("descriptors", &self.fds[i])] {
                let after: Vec<f64> = series.iter().skip(skip).copied().collect();
                if let Some(g) = growth(&after, cycle).filter(|g| *g > MOST_GROWTH) {
                    out.push(format!("{name}'s {what} grew {:.1}%", g * 100.0));
                }
            }
        }
        out
    }
}

/// A fault cycle's length in samples.
fn cycle_samples(cycle: Option<Duration>) -> Option<usize> {
    cycle.map(|c| (c.as_secs_f64() / SAMPLE_EVERY.as_secs_f64()).round() as usize)
}

/// The least-squares slope of `series` (one sample every [`SAMPLE_EVERY`]), per minute.
fn slope(series: &[f64]) -> f64 {
    if series.len() < 2 {
        return 0.0;
    }
    let n = series.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = series.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        num += (i as f64 - mean_x) * (y - mean_y);
        den += (i as f64 - mean_x).powi(2);
    }
    num / den / (SAMPLE_EVERY.as_secs_f64() / 60.0)
}

/// How much `series` grew: the series is cut into stretches of one fault cycle (`cycle`,
/// in samples: from one fault to the next of the same kind) or, without faults, of one
/// [`WINDOW`]; a stretch left over at the end is dropped. The result is the rise of the
/// least-squares line through the stretches' medians, from the first stretch to the last,
/// over its value at the first.
///
/// Each stretch sees every fault once, so a backlog (and the memory a role holds while it
/// works one off, or a killed role's new start) is in every median alike, and a role whose
/// memory creeps rises from stretch to stretch. The line uses every stretch, not only the
/// first and the last, so one stretch whose backlogs happened to leave more (a role's level
/// after a backlog varies by a few MiB with the backlog's size) moves it by a share, not
/// whole. `None` when fewer than two stretches fit.
fn growth(series: &[f64], cycle: Option<usize>) -> Option<f64> {
    let window = (WINDOW.as_secs_f64() / SAMPLE_EVERY.as_secs_f64()) as usize;
    let stretch = cycle.filter(|c| *c > 0).unwrap_or(window);
    let medians: Vec<f64> = series
        .chunks_exact(stretch)
        .map(|s| {
            let mut v = s.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    if medians.len() < 2 {
        return None;
    }
    let n = medians.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = medians.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in medians.iter().enumerate() {
        num += (i as f64 - mean_x) * (y - mean_y);
        den += (i as f64 - mean_x).powi(2);
    }
    let per_stretch = num / den;
    let first = mean_y - per_stretch * mean_x;
    (first > 0.0).then(|| per_stretch * (n - 1.0) / first)
}

/// A fault of `--faults`, in the order they come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    WorkerKill,
    RouterKill,
    NatsRestart,
    ReceiverOutage,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::WorkerKill,
        Fault::RouterKill,
        Fault::NatsRestart,
        Fault::ReceiverOutage,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Fault::WorkerKill => "worker SIGKILL, started again",
            Fault::RouterKill => "router SIGKILL, started again",
            Fault::NatsRestart => "nats-server SIGKILL, started again on its store",
            Fault::ReceiverOutage => "receiver answers 503 for 30 s",
        }
    }
}

/// One fault: when, and when the deliveries were back to empty after it.
struct Injected {
    fault: Fault,
    at: Duration,
    back_after: Option<Duration>,
}

/// The faults of a run: one every `every`, in turn, and for each how long until what waits
/// in the deliveries and held streams was back under one second of traffic.
pub(super) struct Faults {
    every: Duration,
    /// How long the load lasts: no fault comes later than one interval before its end, so
    /// each is under load and its way back is seen (the hour's twentieth fault, due as the
    /// sending ended, was never seen back to empty).
    run: Duration,
    /// Messages in the deliveries and held streams that count as empty under load.
    empty_below: u64,
    done: Vec<Injected>,
}

impl Faults {
    pub(super) fn new(every: Duration, rate: u64, run: Duration) -> Self {
        Self {
            every,
            run,
            empty_below: rate.max(100),
            done: Vec::new(),
        }
    }

    /// The next fault, when it is due at `elapsed` (the first after one interval); noted as
    /// done.
    pub(super) fn due(&mut self, elapsed: Duration) -> Option<Fault> {
        let next = self.every * (self.done.len() as u32 + 1);
        if elapsed < next || next + self.every > self.run {
            return None;
        }
        let fault = Fault::ALL[self.done.len() % Fault::ALL.len()];
        self.done.push(Injected {
            fault,
            at: elapsed,
            back_after: None,
        });
        Some(fault)
    }

    /// `waiting` messages in the deliveries and held streams at `elapsed`.
    pub(super) fn observe(&mut self, elapsed: Duration, waiting: u64) {
        if let Some(last) = self.done.last_mut() {
            if last.back_after.is_none() && waiting < self.empty_below {
                // A receiver outage is over only once the receiver answers again.
                let outage = if last.fault == Fault::ReceiverOutage {
                    OUTAGE
                } else {
                    Duration::ZERO
                };
                let after = elapsed.saturating_sub(last.at);
                if after >= outage {
                    last.back_after = Some(after);
                }
            }
        }
    }

    /// From one fault to the next of the same kind.
    pub(super) fn cycle(&self) -> Duration {
        self.every * Fault::ALL.len() as u32
    }

    /// Every fault, with when it came and how long until the deliveries were back to empty.
    pub(super) fn report(&self) -> Value {
        let rows: Vec<Value> = self
            .done
            .iter()
            .map(|f| {
                json!({"fault": f.fault.as_str(), "at_s": f.at.as_secs(),
                    "back_to_empty_s": f.back_after.map(|d| d.as_secs())})
            })
            .collect();
        json!({"every_s": self.every.as_secs(), "empty_below_messages": self.empty_below,
            "faults": rows})
    }

    /// The faults after which the deliveries were not back to empty.
    pub(super) fn not_back(&self) -> Vec<String> {
        self.done
            .iter()
            .filter(|f| f.back_after.is_none())
            .map(|f| format!("{} at {} s", f.fault.as_str(), f.at.as_secs()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_come_in_turn_and_count_the_way_back() {
        let mut f = Faults::new(Duration::from_secs(180), 1000, Duration::from_secs(3600));
        assert_eq!(f.due(Duration::from_secs(179)), None);
        assert_eq!(f.due(Duration::from_secs(180)), Some(Fault::WorkerKill));
        assert_eq!(f.due(Duration::from_secs(200)), None);
        f.observe(Duration::from_secs(190), 5_000);
        f.observe(Duration::from_secs(200), 10);
        assert_eq!(f.due(Duration::from_secs(360)), Some(Fault::RouterKill));
        assert_eq!(f.due(Duration::from_secs(540)), Some(Fault::NatsRestart));
        f.observe(Duration::from_secs(545), 0);
        assert_eq!(f.due(Duration::from_secs(720)), Some(Fault::ReceiverOutage));
        // Empty during the outage does not count: the receiver is still down.
        f.observe(Duration::from_secs(730), 0);
        f.observe(Duration::from_secs(760), 0);
        let r = f.report();
        let back: Vec<Value> = r["faults"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["back_to_empty_s"].clone())
            .collect();
        assert_eq!(back, [json!(20), Value::Null, json!(5), json!(40)]);
        // The last fault comes one interval before the load ends, not as it ends.
        let mut hour = Faults::new(Duration::from_secs(180), 1000, Duration::from_secs(3600));
        let due: Vec<u64> = (1..=4000)
            .filter_map(|s| hour.due(Duration::from_secs(s)).map(|_| s))
            .collect();
        assert_eq!((due.len(), due.last()), (19, Some(&3420)));
        assert_eq!(f.not_back(), ["router SIGKILL, started again at 360 s"]);
    }

    #[test]
    fn growth_is_the_rise_of_the_line_through_five_minute_medians() {
        let flat: Vec<f64> = (0..90).map(|i| 50.0 + f64::from(i % 3)).collect();
        assert!(growth(&flat, None).unwrap().abs() < 0.05);
        let rising: Vec<f64> = (0..90).map(|i| 50.0 + f64::from(i)).collect();
        // Medians 65, 95, 125: a line from 65 to 125.
        let g = growth(&rising, None).unwrap();
        assert!((g - 60.0 / 65.0).abs() < 1e-9, "{g}");
        assert_eq!(growth(&flat[..50], None), None, "under two windows");
        assert!((slope(&rising) - 6.0).abs() < 1e-9, "{}", slope(&rising));
    }

    #[test]
    fn with_faults_growth_is_measured_cycle_by_cycle() {
        // A role that holds a backlog for 5 minutes after every fault of one kind (a cycle
        // of 12 minutes, 72 samples), and is otherwise flat: no growth, wherever the
        // measure ends.
        let backlog = |i: usize| {
            if (i % 72) >= 36 && (i % 72) < 66 {
                80.0
            } else {
                40.0
            }
        };
        let series: Vec<f64> = (0..330).map(backlog).collect();
        assert!(growth(&series, Some(72)).unwrap().abs() < 1e-9);
        // A killed role whose lives settle at levels a few percent apart, in no order, has
        // not grown; lives that each settle higher have.
        let lives = |levels: [f64; 4]| -> Vec<f64> {
            (0..300)
                .map(|i| levels[(i / 72).min(3)] + 0.1 * f64::from(i as u32 % 7))
                .collect()
        };
        let g = growth(&lives([33.2, 37.4, 37.2, 33.4]), Some(72)).unwrap();
        assert!(g.abs() < 0.02, "{g}");
        assert!(growth(&lives([33.0, 37.0, 41.0, 45.0]), Some(72)).unwrap() > 0.3);
        // Growth through the cycles is still growth.
        let creeping: Vec<f64> = (0..330).map(|i| backlog(i) + 0.1 * i as f64).collect();
        assert!(growth(&creeping, Some(72)).unwrap() > 0.3);
        assert_eq!(growth(&series[..140], Some(72)), None, "under two cycles");
    }
}
