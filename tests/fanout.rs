//! Routing never stalls, whatever the fan-out and the router's concurrency. A backlog at
//! fan-out 100 (400 events), 1,000 (40 events) and 10,000 (4 events), 1 KiB payloads, is
//! delivered to an HTTPS receiver with every (endpoint, webhook-id) exactly once: with the
//! router and the worker as separate processes and with every role in one process (the
//! `gancho dev` shape), at the router's smallest, default and largest concurrency.
//!
//! Before the fix, the first of these hung after ~27,000 deliveries: every routing task held
//! PubAcks it was not awaiting while it waited for a publish permit that only those PubAcks
//! could free.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::Receiver;
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Env;

/// (tenant, endpoints on `>`, events in the backlog): 40,000 deliveries each, 120,000 a run,
/// past the ~27,000 after which the stall used to come.
const TENANTS: [(&str, usize, usize); 3] =
    [("f100", 100, 400), ("f1k", 1_000, 40), ("f10k", 10_000, 4)];
/// The router's concurrency: its smallest, default and largest allowed values.
const CONCURRENCY: [usize; 3] = [1, 1024, 20_000];
/// A run that makes no progress for this long has stalled.
const STALL: Duration = Duration::from_secs(60);

struct Fixture {
    env: Env,
    rx: Receiver,
    /// Deliveries expected at the receiver so far, over every run.
    expected: usize,
}

impl Fixture {
    async fn new() -> Self {
        let env = Env::new().await;
        let rx = Receiver::https_tally(&env.ca).await;
        for (tenant, endpoints, _) in TENANTS {
            env.tenant(tenant).await;
            let ids = (0..endpoints).map(|i| format!("e{i}"));
            env.endpoints_on_all(tenant, ids, |id| rx.url(&format!("/{tenant}/{id}")))
                .await;
        }
        eprintln!(
            "fixture: {} endpoints created",
            TENANTS.iter().map(|t| t.1).sum::<usize>()
        );
        Self {
            env,
            rx,
            expected: 0,
        }
    }

    /// Publishes the backlog of every tenant, events named after `run`.
    async fn publish_backlog(&mut self, run: &str) {
        let pad = "x".repeat(1024 - 40);
        for (tenant, endpoints, events) in TENANTS {
            let backlog = (0..events).map(|n| {
                let payload = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
                (format!("{run}-{tenant}-{n}"), payload.into_bytes())
            });
            self.env.publish_many(tenant, "charge.paid", backlog).await;
            self.expected += endpoints * events;
        }
        eprintln!("{run}: backlog published");
    }

    /// Waits until the receiver holds every expected delivery, failing when nothing arrives
    /// for [`STALL`]; then checks that none arrived twice and the deliveries stream is empty.
    async fn drain(&self, label: &str) {
        let started = Instant::now();
        let (mut last, mut last_change) = (self.rx.distinct(), Instant::now());
        let mut last_report = Instant::now();
        while self.rx.distinct() < self.expected {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.rx.distinct();
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!(
                    "{label}: {now} of {} delivered; deliveries stream holds {}, worker consumer (pending, ack pending) {:?}",
                    self.expected,
                    self.env.deliveries_left().await,
                    self.env.worker_consumer_state().await
                );
            }
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
            assert!(
                last_change.elapsed() < STALL,
                "{label}: stalled at {now} of {} deliveries (nothing new for {STALL:?})",
                self.expected
            );
        }
        self.env.wait_drained(Duration::from_secs(30)).await;
        let tally = self.rx.tally();
        let twice: Vec<_> = tally.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "{label}: delivered more than once: {twice:?}"
        );
        assert_eq!(tally.len(), self.expected, "{label}");
        assert_eq!(self.rx.count(), self.expected, "{label}");
        println!(
            "{label}: {} deliveries in {:.1?}",
            TENANTS.iter().map(|(_, e, n)| e * n).sum::<usize>(),
            started.elapsed()
        );
    }
}

fn stop(children: &mut [Child]) {
    for child in children {
        assert!(support::terminate(child), "a role did not drain on SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_fan_out_drains_with_roles_as_separate_processes() {
    let mut fx = Fixture::new().await;
    for concurrency in CONCURRENCY {
        let run = format!("sep{concurrency}");
        fx.publish_backlog(&run).await;
        let c = concurrency.to_string();
        let env = [("GANCHO_ROUTER_CONCURRENCY", c.as_str())];
        let mut roles = [fx.env.spawn_with(&["router"], &env), fx.env.spawn("worker")];
        fx.drain(&format!(
            "separate processes, router concurrency {concurrency}"
        ))
        .await;
        stop(&mut roles);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_fan_out_drains_with_every_role_in_one_process() {
    let mut fx = Fixture::new().await;
    for concurrency in CONCURRENCY {
        let run = format!("one{concurrency}");
        fx.publish_backlog(&run).await;
        let c = concurrency.to_string();
        let env = [
            ("GANCHO_ROUTER_CONCURRENCY", c.as_str()),
            ("GANCHO_ADMIN_TOKEN", "fanout-test-admin-token"),
            ("GANCHO_API_LISTEN", "127.0.0.1:0"),
        ];
        // `gancho dev` keeps its data under ./.gancho/: run it in a directory of its own.
        let dir = tempfile::tempdir().unwrap();
        let mut dev = [fx
            .env
            .command(&["dev", "--demo-listen", "127.0.0.1:0"], &env)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()];
        fx.drain(&format!("one process, router concurrency {concurrency}"))
            .await;
        stop(&mut dev);
    }
}

/// A role whose stderr is collected line by line, with its /metrics address.
struct Watched {
    child: Child,
    metrics: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watched {
    fn spawn(env: &Env, role: &str, envs: &[(&str, &str)]) -> Self {
        let port = gancho_test_harness::nats::free_port();
        let metrics = format!("127.0.0.1:{port}");
        let mut all = vec![("GANCHO_METRICS_LISTEN", metrics.as_str())];
        all.extend_from_slice(envs);
        let mut child = env
            .command(&[role], &all)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            metrics,
            lines,
        }
    }

    fn metric(&self, series: &str) -> f64 {
        let page = support::http_get(&self.metrics, "/metrics");
        support::metric(&page, series).unwrap_or(0.0)
    }

    fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

/// Holding every PubAck back (nats-server frozen with SIGSTOP) while the router is fanning
/// out and the worker is recording outcomes: both roles show the age of their oldest message
/// in hand, count a stall and log one warning; once the server goes on, everything is
/// delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_is_visible_and_passes() {
    let env = Env::new().await;
    let rx = Receiver::https_tally(&env.ca).await;
    env.tenant("acme").await;
    for i in 0..100 {
        let id = format!("e{i}");
        env.endpoint(
            "acme",
            &id,
            &rx.url(&format!("/acme/{id}")),
            &[">"],
            &[],
            None,
        )
        .await;
    }
    let events = 1_000;
    for n in 0..events {
        let id = format!("evt-{n}");
        env.publish(
            "acme",
            "charge.paid",
            &id,
            format!(r#"{{"n":{n}}}"#).as_bytes(),
            &[],
        )
        .await;
    }
    // The worker first, serving every partition, then the router: the first webhook arrives
    // while the router is still fanning out the backlog (one message per event and partition
    // routes it within a second or two), so both have messages in hand when the server
    // freezes.
    let stall = [("GANCHO_STALL_WARNING_AFTER", "1s")];
    let mut worker = Watched::spawn(&env, "worker", &stall);
    gancho_test_harness::wait_until("the worker's partitions", Duration::from_secs(30), || {
        std::future::ready(worker.metric("gancho_worker_partitions") >= 16.0)
    })
    .await;
    let mut router = Watched::spawn(&env, "router", &stall);
    gancho_test_harness::wait_until("the first delivery", Duration::from_secs(60), || {
        std::future::ready(rx.count() >= 1)
    })
    .await;

    env.nats.pause();
    let seen = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            let r = router.metric(r#"gancho_consumer_stalls_total{stream="events"}"#);
            let w = worker.metric(r#"gancho_consumer_stalls_total{stream="deliveries"}"#);
            if r >= 1.0 && w >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let router_oldest = router.metric(r#"gancho_consumer_oldest_in_hand_seconds{stream="events"}"#);
    let worker_oldest =
        worker.metric(r#"gancho_consumer_oldest_in_hand_seconds{stream="deliveries"}"#);
    let stalls = (
        router.metric(r#"gancho_consumer_stalls_total{stream="events"}"#),
        worker.metric(r#"gancho_consumer_stalls_total{stream="deliveries"}"#),
    );
    env.nats.resume();
    assert!(
        seen.is_ok(),
        "no stall counted within 4 s of freezing nats-server: (router, worker) stalls {stalls:?}, oldest in hand {router_oldest} s, {worker_oldest} s"
    );
    assert!(
        router_oldest >= 1.0,
        "router oldest in hand {router_oldest}"
    );
    assert!(
        worker_oldest >= 1.0,
        "worker oldest in hand {worker_oldest}"
    );
    assert!(
        router.logged("No message finished for"),
        "the router logged no stall warning"
    );
    assert!(
        worker.logged("No message finished for"),
        "the worker logged no stall warning"
    );

    // It passes: every delivery arrives once, and the gauges come back down.
    gancho_test_harness::wait_until("every delivery", Duration::from_secs(120), || {
        std::future::ready(rx.distinct() == events * 100)
    })
    .await;
    gancho_test_harness::wait_until("the stall gauge to fall", Duration::from_secs(20), || {
        std::future::ready(
            router.metric(r#"gancho_consumer_oldest_in_hand_seconds{stream="events"}"#) < 1.0,
        )
    })
    .await;
    assert!(
        router.logged("the stall is over"),
        "the router did not log the end of the stall"
    );
    assert_eq!(rx.count(), events * 100, "some delivery arrived twice");
    assert!(support::terminate(&mut router.child));
    assert!(support::terminate(&mut worker.child));
}
