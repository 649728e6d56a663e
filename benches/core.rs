//! Hot-path costs in the core: signing a webhook, matching an event against a tenant's
//! subscriptions, rendering the body. Run with `make bench`; numbers go to BENCHMARKS.md.
//! A plain harness (no extra crates): each case runs for about a second, several rounds,
//! and the median round is printed.

use gancho_core::matching::Subscription;
use gancho_core::signature::{Secret, Signer};
use gancho_core::webhook::standard_body;
use std::hint::black_box;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_millis(300);

fn bench(name: &str, mut f: impl FnMut()) {
    let mut rates = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < ROUND {
            for _ in 0..64 {
                f();
            }
            n += 64;
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let median = rates[ROUNDS / 2];
    println!(
        "{name:<44} {:>12.0} ops/s  {:>8.0} ns/op",
        median,
        1e9 / median
    );
}

fn main() {
    let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
    let signer = Signer::new(secret.clone());
    let rotating = Signer::new(secret.clone()).with_previous(secret);
    let body = vec![b'x'; 512];
    bench("sign 512 B body, one key", || {
        black_box(signer.header("evt_01HZX", 1_700_000_000, black_box(&body)));
    });
    bench("sign 512 B body, two keys (rotation)", || {
        black_box(rotating.header("evt_01HZX", 1_700_000_000, black_box(&body)));
    });

    let subs: Vec<Subscription> = (0..30)
        .map(|i| {
            let f = match i % 3 {
                0 => format!("invoice.t{i}"),
                1 => "charge.*".to_string(),
                _ => "pix.>".to_string(),
            };
            Subscription::new(&[f.as_str()], &[]).expect("valid filter")
        })
        .collect();
    bench("match one event against 30 endpoints", || {
        let n = subs
            .iter()
            .filter(|s| s.matches::<&str>(black_box("pix.payment.accepted"), &[]))
            .count();
        black_box(n);
    });

    let payload = br#"{"id":"ch_1","amount":1990,"currency":"BRL","customer":"cus_9"}"#;
    let at = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
    bench("render standard body (64 B payload)", || {
        black_box(standard_body("charge.paid", at, black_box(payload)));
    });
}
