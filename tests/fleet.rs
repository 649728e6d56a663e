//! An endpoint's limits hold for a fleet of workers, not per worker: three `gancho worker`
//! processes share the partitions (each served by one of them at a time), so a receiver sees
//! the rate limit, the in-flight cap and its own `Retry-After` honoured as if one worker
//! delivered; and a killed worker's partitions move to the others with nothing lost.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{nats::free_port, wait_until, Answer, Receiver};
use std::process::Child;
use std::time::{Duration, Instant};
use support::{http_get, kill9, metric, terminate, Env};

/// Three workers with metrics on known ports, and a router.
struct Fleet {
    workers: Vec<(Child, String)>,
    router: Child,
}

impl Fleet {
    fn start(env: &Env, n: usize) -> Self {
        let workers = (0..n)
            .map(|_| {
                let listen = format!("127.0.0.1:{}", free_port());
                let child = env.spawn_with(
                    &["worker"],
                    &[
                        ("GANCHO_METRICS_LISTEN", listen.as_str()),
                        ("GANCHO_WORKER_CONCURRENCY", "64"),
                    ],
                );
                (child, listen)
            })
            .collect();
        Self {
            workers,
            router: env.spawn("router"),
        }
    }

    /// Partitions each live worker serves, as its metrics say (`None` when it does not answer).
    fn partitions(&self) -> Vec<Option<f64>> {
        self.workers
            .iter()
            .map(|(_, addr)| metric(&http_get(addr, "/metrics"), "gancho_worker_partitions"))
            .collect()
    }

    /// Waits until the live workers (those not in `dead`) split the 16 partitions evenly.
    async fn settled(&self, dead: &[usize]) {
        let alive = self.workers.len() - dead.len();
        wait_until(
            "the workers share the 16 partitions",
            Duration::from_secs(45),
            || async {
                let shares: Vec<f64> = self
                    .partitions()
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| !dead.contains(i))
                    .filter_map(|(_, s)| s)
                    .collect();
                let even = (16 / alive) as f64;
                shares.len() == alive
                    && shares.iter().sum::<f64>() == 16.0
                    && shares.iter().all(|&s| s == even || s == even + 1.0)
            },
        )
        .await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (w, _) in &mut self.workers {
            terminate(w);
        }
        terminate(&mut self.router);
    }
}

/// An endpoint id in the same partition as `other`.
fn same_partition(other: &str, prefix: &str) -> String {
    let want = gancho_core::subject::partition("acme", other, gancho_core::subject::PARTITIONS);
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| {
            gancho_core::subject::partition("acme", id, gancho_core::subject::PARTITIONS) == want
        })
        .expect("some id lands there")
}

fn events(prefix: &str, n: usize) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    (0..n).map(move |i| {
        (
            format!("{prefix}-{i}"),
            format!(r#"{{"n":{i}}}"#).into_bytes(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoints_limits_hold_across_three_workers() {
    let env = Env::new().await;
    env.tenant("acme").await;

    // Limited to 20 requests/s; answers at once.
    let limited_rx = Receiver::https(&env.ca, |_, _| Answer::status(200)).await;
    // At most 2 in flight; each answer takes 200 ms.
    let capped_rx = Receiver::https(&env.ca, |_, _| {
        Answer::status(200).after(Duration::from_millis(200))
    })
    .await;
    // The first request gets 429 with Retry-After: 2, every other one 200.
    let busy_rx = Receiver::https(&env.ca, |n, _| {
        if n == 0 {
            Answer::status(429).header("retry-after", "2")
        } else {
            Answer::status(200)
        }
    })
    .await;
    // Shares the busy endpoint's partition, so the same worker serves both.
    let other_rx = Receiver::https(&env.ca, |_, _| {
        Answer::status(200).after(Duration::from_millis(50))
    })
    .await;

    env.endpoint(
        "acme",
        "limited",
        &limited_rx.url("/"),
        &["limited"],
        &[],
        None,
    )
    .await;
    env.change("acme", "limited", |ep| ep.rate_limit_per_sec = Some(20))
        .await;
    env.endpoint(
        "acme",
        "capped",
        &capped_rx.url("/"),
        &["capped"],
        &[],
        None,
    )
    .await;
    env.change("acme", "capped", |ep| ep.max_in_flight = Some(2))
        .await;
    env.endpoint("acme", "busy", &busy_rx.url("/"), &["busy"], &[], None)
        .await;
    // One at a time, so every request after the 429 started after the worker read it.
    env.change("acme", "busy", |ep| ep.max_in_flight = Some(1))
        .await;
    let other = same_partition("busy", "other");
    env.endpoint("acme", &other, &other_rx.url("/"), &["busy"], &[], None)
        .await;

    let fleet = Fleet::start(&env, 3);
    fleet.settled(&[]).await;

    // A backlog for each, all at once.
    env.publish_many("acme", "limited", events("lim", 400))
        .await;
    env.publish_many("acme", "capped", events("cap", 30)).await;
    env.publish_many("acme", "busy", events("busy", 40)).await;

    wait_until(
        "the capped and busy endpoints drain",
        Duration::from_secs(60),
        || async {
            capped_rx.distinct() == 30 && busy_rx.distinct() == 40 && other_rx.distinct() == 40
        },
    )
    .await;
    wait_until(
        "the limited endpoint gets its first request",
        Duration::from_secs(20),
        || async { limited_rx.distinct() > 0 },
    )
    .await;
    // Counted at the receiver over 10 s from the first request: 20/s plus the burst of 20.
    let first = limited_rx.received()[0].at;
    tokio::time::sleep_until((first + Duration::from_secs(10)).into()).await;
    let in_window = limited_rx
        .received()
        .iter()
        .filter(|r| r.at < first + Duration::from_secs(10))
        .count();
    println!("limited to 20/s: {in_window} requests in the first 10 s");
    // The limiter spaces the starts; a start reaches the receiver a little later, the first
    // one later still (it opens the connection): a window anchored at the first arrival may
    // hold one start more than one anchored at the first start.
    assert!(
        in_window <= 20 * 10 + 20 + 1,
        "{in_window} requests in 10 s to an endpoint limited to 20/s across 3 workers"
    );
    let gaps: Vec<String> = limited_rx
        .received()
        .windows(2)
        .filter(|w| w[1].at - w[0].at > Duration::from_millis(300))
        .map(|w| {
            format!(
                "{:?} after {:.1} s",
                w[1].at - w[0].at,
                (w[0].at - first).as_secs_f64()
            )
        })
        .collect();
    assert!(
        in_window >= 150,
        "only {in_window} requests in 10 s: the limit starves it; pauses: {gaps:?}"
    );

    let concurrent = capped_rx.max_concurrent();
    println!("max_in_flight 2: at most {concurrent} at once");
    assert!(
        concurrent <= 2,
        "{concurrent} requests at once with max_in_flight 2"
    );

    let busy = busy_rx.received();
    let answered_429 = busy[0].at;
    let next = busy[1].at - answered_429;
    println!("after the 429 with Retry-After: 2, the next request came {next:?} later");
    assert!(
        next >= Duration::from_secs(2),
        "a request reached the endpoint {next:?} after its 429 with Retry-After: 2"
    );
    let meanwhile = other_rx
        .received()
        .iter()
        .filter(|r| r.at > answered_429 && r.at < answered_429 + Duration::from_secs(2))
        .count();
    println!("the other endpoint of that partition got {meanwhile} requests during the pause");
    assert!(meanwhile > 0, "the paused endpoint held up its neighbour");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_partitions_move_to_the_others_and_nothing_is_lost() {
    let env = Env::new().await;
    env.tenant("acme").await;
    let rx = Receiver::https_tally(&env.ca).await;
    // 32 endpoints, so every partition has some.
    let ids: Vec<String> = (0..32).map(|i| format!("ep-{i}")).collect();
    env.endpoints_on_all("acme", ids.clone(), |id| rx.url(id))
        .await;

    let mut fleet = Fleet::start(&env, 3);
    fleet.settled(&[]).await;
    let events = 400;
    let producer =
        env.publish_in_background("acme", "order.paid", events, 20, Duration::from_millis(50));
    wait_until("deliveries flow", Duration::from_secs(30), || async {
        rx.count() >= 1000
    })
    .await;
    kill9(&mut fleet.workers[0].0);
    let killed_at = Instant::now();
    producer.await.unwrap();
    fleet.settled(&[0]).await;
    println!(
        "the two survivors serve all 16 partitions {:?} after the kill",
        killed_at.elapsed()
    );
    let expected = events * ids.len();
    wait_until(
        "every delivery arrives",
        Duration::from_secs(90),
        || async { rx.distinct() == expected },
    )
    .await;
    let tally = rx.tally();
    let duplicates: u32 = tally.values().map(|c| c - 1).sum();
    println!(
        "{expected} deliveries, {} received, {duplicates} duplicates",
        rx.count()
    );
    assert_eq!(tally.len(), expected, "lost deliveries");
    // Only what the dead worker had in hand can come twice: its intake is 64 x 4.
    assert!(duplicates <= 256, "{duplicates} duplicates");
}
