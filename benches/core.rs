//! Hot-path costs in the core: signing a webhook, matching an event against a tenant's
//! subscriptions, rendering the body. Run with `make bench`; numbers go to BENCHMARKS.md.
//! A plain harness (no extra crates): each case runs for about a second, several rounds,
//! and the median round is printed.

use gancho_core::matching::{Index, Subscription};
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

    large_tenants();

    let payload = br#"{"id":"ch_1","amount":1990,"currency":"BRL","customer":"cus_9"}"#;
    let at = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("valid");
    bench("render standard body (64 B payload)", || {
        black_box(standard_body("charge.paid", at, black_box(payload)));
    });
}

/// 100,000 subscriptions as 1,000 tenants x 100 endpoints: half exact types, a third
/// `prefix.*`, the rest `prefix.>` or `>`, a fifth with a channel; types are `p<0-9>.a<0-9>`,
/// so an event matches about 10 endpoints of its tenant.
fn large_tenants() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let tenants: Vec<Vec<Subscription>> = (0..1000)
        .map(|_| {
            (0..100)
                .map(|i| {
                    let p = next(10);
                    let filter = match i % 30 {
                        0..=14 => format!("p{p}.a{}", next(10)),
                        15..=24 => format!("p{p}.*"),
                        25..=27 => format!("p{p}.>"),
                        _ => ">".to_owned(),
                    };
                    let channels: &[&str] = if i % 5 == 0 { &["pix"] } else { &[] };
                    Subscription::new(&[filter.as_str()], channels).expect("valid filter")
                })
                .collect()
        })
        .collect();
    let indexes: Vec<Index> = tenants.iter().map(Index::new).collect();
    let events: Vec<(usize, String, Vec<&str>)> = (0..4096)
        .map(|i| {
            let tags = if i % 2 == 0 { vec!["pix"] } else { vec![] };
            (
                next(1000) as usize,
                format!("p{}.a{}", next(10), next(10)),
                tags,
            )
        })
        .collect();
    let mut out = Vec::new();
    let matches: usize = events
        .iter()
        .map(|(t, ty, tags)| {
            indexes[*t].matching(ty, tags, &mut out);
            out.len()
        })
        .sum();
    println!(
        "(1,000 tenants x 100 endpoints: {:.1} matches per event)",
        matches as f64 / events.len() as f64
    );
    let mut i = 0usize;
    bench("match an event, 100k subscriptions, index", || {
        let (t, ty, tags) = &events[i % events.len()];
        i += 1;
        indexes[*t].matching(black_box(ty), tags, &mut out);
        black_box(out.len());
    });
    let mut i = 0usize;
    bench("match an event, 100k subscriptions, scan", || {
        let (t, ty, tags) = &events[i % events.len()];
        i += 1;
        let n = tenants[*t]
            .iter()
            .filter(|s| s.matches(black_box(ty), tags))
            .count();
        black_box(n);
    });
    // A config change rebuilds its tenant's index (the other tenants' are shared).
    bench("index a tenant of 100 endpoints", || {
        black_box(Index::new(&tenants[0]));
    });
    let big: Vec<Subscription> = tenants.iter().take(100).flatten().cloned().collect();
    bench("index a tenant of 10,000 endpoints", || {
        black_box(Index::new(&big));
    });
}
