//! The gate's rules, each from outside (admissions and turns) where it can be.

use super::*;
use circuit::FIRST_COOLDOWN;
use rate::slowed_limiter;
use std::time::Instant;

fn at(rate: Option<u32>, max_in_flight: Option<u32>, revision: u64) -> Settings<'static> {
    Settings {
        rate,
        max_in_flight,
        url: "https://receiver.example/hook",
        revision,
    }
}

#[test]
fn a_receivers_pause_defers_everything_until_it_ends() {
    let g = Gate::new(&at(None, Some(1), 1), 2048);
    let busy = g.admit();
    assert!(matches!(busy, Admission::Go(_)));
    let waiting = g.admit();
    let Admission::Queue(place) = waiting else {
        panic!("the second delivery should wait in the queue");
    };
    assert!(g.pause(Duration::from_millis(300)));
    assert!(
        !g.pause(Duration::from_millis(100)),
        "a shorter pause extends nothing"
    );
    // The queued delivery is evicted; a newcomer is deferred for what is left.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let turn = rt.block_on(g.wait_turn(&place));
    assert!(
        matches!(
            turn,
            Turn::Defer {
                reason: Wait::RetryAfter,
                ..
            }
        ),
        "a receiver's pause defers what waited, for the pause"
    );
    drop(place);
    drop(busy);
    match g.admit() {
        Admission::Defer { reason, after } => {
            assert_eq!(reason, Wait::RetryAfter);
            assert!(after <= Duration::from_millis(300));
        }
        _ => panic!("paused endpoints defer"),
    }
    // A success does not end the pause early; time does.
    g.record(Heard::Healthy, Duration::from_millis(1));
    assert!(g.is_paused());
    std::thread::sleep(Duration::from_millis(320));
    assert!(!g.is_paused());
    assert!(matches!(g.admit(), Admission::Go(_)));
}

#[test]
fn an_endpoint_full_and_silent_for_a_second_is_stalled_until_it_answers() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let g = Gate::new(&at(None, Some(2), 1), 2048);
    // It answered long ago, then was idle: a burst that fills its slots owes an answer
    // from its first request, not from that old answer.
    g.record(Heard::Healthy, Duration::from_millis(1));
    std::thread::sleep(STALL_AFTER + Duration::from_millis(50));
    let a = g.admit();
    let b = g.admit();
    assert!(matches!(a, Admission::Go(_)) && matches!(b, Admission::Go(_)));
    assert!(
        !g.stalled(),
        "an endpoint is not stalled the moment it is busy"
    );
    let Admission::Queue(place) = g.admit() else {
        panic!("the third delivery should wait in the queue");
    };
    // No answer for a second with every slot taken: the queue is handed over for parking,
    // newcomers are parked, and parked deliveries stay.
    let started = Instant::now();
    let turn = rt.block_on(g.wait_turn(&place));
    assert!(
        matches!(
            turn,
            Turn::Defer {
                reason: Wait::Stalled,
                ..
            }
        ),
        "the queued one is parked"
    );
    assert!(started.elapsed() < STALL_AFTER + Duration::from_millis(500));
    drop(place);
    assert!(g.stalled());
    assert!(matches!(
        g.admit(),
        Admission::Defer {
            reason: Wait::Stalled,
            ..
        }
    ));
    assert_eq!(g.parked(), Parked::Keep);
    // Any answer, even a 500, says it is there: no longer stalled, parked ones go back.
    g.record(Heard::Failed, Duration::from_millis(1200));
    assert!(!g.stalled());
    assert!(matches!(g.admit(), Admission::Queue(_)));
    assert!(matches!(g.parked(), Parked::Release(n) if n > 0));
    // A timeout is no answer.
    std::thread::sleep(STALL_AFTER + Duration::from_millis(50));
    g.record(Heard::Silent, Duration::from_secs(5));
    assert!(g.stalled());
    drop((a, b));
    assert!(!g.stalled(), "a free slot is not a stall");
}

#[test]
fn a_429_is_no_failure_for_the_circuit() {
    let g = Gate::new(&at(None, None, 1), 2048);
    for _ in 0..3 {
        g.record(Heard::Failed, Duration::ZERO);
    }
    for _ in 0..10 {
        g.record(Heard::Throttled, Duration::ZERO);
    }
    assert!(!g.is_open(), "429s say the endpoint is there");
    for _ in 0..4 {
        g.record(Heard::Failed, Duration::ZERO);
    }
    assert!(!g.is_open(), "a 429 ends a run of failures");
    g.record(Heard::Silent, Duration::ZERO);
    assert!(g.is_open());
    assert!(
        !matches!(g.admit(), Admission::Go(_)),
        "an open circuit sends nothing"
    );
}

#[test]
fn in_flight_cap_then_queue_then_defer() {
    let g = Gate::new(&at(None, Some(2), 1), 2048);
    let a = g.admit();
    let b = g.admit();
    assert!(matches!(a, Admission::Go(_)));
    assert!(matches!(b, Admission::Go(_)));
    // Two slots taken: the next 8 (4 per slot) wait in the queue, then deferrals.
    let queued: Vec<Admission> = (0..8).map(|_| g.admit()).collect();
    assert!(queued.iter().all(|a| matches!(a, Admission::Queue(_))));
    assert!(matches!(
        g.admit(),
        Admission::Defer {
            reason: Wait::InFlightCap,
            ..
        }
    ));
    // The one refused is parked; its queue full, none are let out yet.
    g.overflowed();
    assert_eq!(g.parked(), Parked::Keep);
    assert!(!g.drained(), "the queue is not empty");
    drop(queued);
    // The queue emptied: the release loop is poked once, and lets out as many as the
    // queue has room for (untrusted: 4 per slot).
    assert!(g.drained());
    assert!(!g.drained(), "once per overflow");
    assert_eq!(g.parked(), Parked::Release(8));
    // Trusted after a quick success: room for the worker's whole intake.
    g.record(Heard::Healthy, Duration::from_millis(5));
    assert_eq!(g.parked(), Parked::Release(2048));
    // While the receiver's pause lasts, none.
    g.pause(Duration::from_secs(5));
    assert_eq!(g.parked(), Parked::Keep);
    drop(a);
}

#[test]
fn after_a_pause_the_parked_go_out_and_the_queue_admits() {
    let g = Gate::new(&at(None, Some(2), 1), 2048);
    g.pause(Duration::from_millis(50));
    assert_eq!(g.parked(), Parked::Keep);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(g.parked(), Parked::Release(8));
    assert!(matches!(g.admit(), Admission::Go(_)));
}

#[test]
fn rate_limit_defers_past_the_burst() {
    let g = Gate::new(&at(Some(2), Some(100), 1), 2048);
    let mut go = 0;
    let mut queued = Vec::new();
    for _ in 0..5 {
        match g.admit() {
            Admission::Go(p) => {
                go += 1;
                drop(p)
            }
            Admission::Queue(q) => queued.push(q),
            Admission::Defer { .. } => {}
        }
    }
    assert_eq!(go, 2, "a burst of the per-second rate goes at once");
    assert_eq!(queued.len(), 3);
}

#[test]
fn circuit_opens_probes_and_closes() {
    let g = Gate::new(&at(None, None, 1), 2048);
    for _ in 0..FAILURES_TO_OPEN - 1 {
        g.record(Heard::Silent, Duration::ZERO);
    }
    assert!(matches!(g.admit(), Admission::Go(_)));
    g.record(Heard::Silent, Duration::ZERO);
    assert!(g.is_open());
    match g.admit() {
        Admission::Defer { reason, after } => {
            assert_eq!(reason, Wait::CircuitOpen);
            assert!(after <= FIRST_COOLDOWN);
        }
        _ => panic!("an open circuit defers"),
    }
    // The cool-down ends: one probe goes, the others wait for it.
    g.circuit.lock().open_until = Some(Instant::now());
    assert!(matches!(g.admit(), Admission::Go(_)));
    assert!(matches!(
        g.admit(),
        Admission::Defer {
            reason: Wait::CircuitOpen,
            ..
        }
    ));
    // A failed probe doubles the cool-down; a good one closes the circuit.
    g.record(Heard::Silent, Duration::ZERO);
    assert_eq!(g.circuit.lock().cooldown, FIRST_COOLDOWN * 2);
    g.circuit.lock().open_until = Some(Instant::now());
    assert!(matches!(g.admit(), Admission::Go(_)));
    g.record(Heard::Healthy, Duration::ZERO);
    assert!(!g.is_open());
    assert!(matches!(g.admit(), Admission::Go(_)));
}

#[tokio::test]
async fn trust_widens_the_queue_and_losing_it_evicts() {
    let g = Gate::new(&at(None, Some(1), 1), 2048);
    let _busy = match g.admit() {
        Admission::Go(p) => p,
        _ => panic!("the first goes"),
    };
    // Untrusted: 4 may wait, the 5th is deferred.
    let small: Vec<Admission> = (0..4).map(|_| g.admit()).collect();
    assert!(small.iter().all(|a| matches!(a, Admission::Queue(_))));
    assert!(matches!(g.admit(), Admission::Defer { .. }));
    drop(small);
    // A quick success earns trust: the queue takes far more.
    g.record(Heard::Healthy, Duration::from_millis(5));
    let mut big: Vec<QueueGuard> = Vec::new();
    for _ in 0..100 {
        match g.admit() {
            Admission::Queue(q) => big.push(q),
            _ => panic!("a trusted endpoint queues"),
        }
    }
    // A failure evicts everyone waiting.
    let waiter = big.pop().unwrap();
    let g = Arc::new(g);
    let g2 = g.clone();
    let waiting = tokio::spawn(async move {
        match g2.wait_turn(&waiter).await {
            Turn::Defer { reason, .. } => Some(reason),
            _ => None,
        }
    });
    tokio::task::yield_now().await;
    g.record(Heard::Silent, Duration::from_secs(1));
    let evicted = waiting.await.unwrap();
    assert_eq!(evicted, Some(Wait::InFlightCap));
    // And a slow success does not earn trust back.
    g.record(Heard::Healthy, SLOW_ANSWER + Duration::from_millis(1));
    assert!(!g.queue.trusted.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifting_a_lowered_rate_releases_no_burst() {
    // Limited to 20/s, climbing back from 429s at 19/s, 10 deliveries queued behind it.
    let g = Arc::new(Gate::new(&at(Some(20), None, 1), 2048));
    {
        let mut a = g.rate.adaptive.lock().unwrap();
        a.slowed = Some((19, Arc::new(slowed_limiter(19))));
        a.ceiling = 20;
    }
    assert!(matches!(g.admit(), Admission::Go(_)));
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for _ in 0..10 {
        let Admission::Queue(place) = g.admit() else {
            panic!("the lowered rate queues the rest");
        };
        let (g, done) = (g.clone(), done.clone());
        waiters.push(tokio::spawn(async move {
            let permit = g.wait_turn(&place).await;
            done.lock().unwrap().push(Instant::now());
            matches!(permit, Turn::Go(_))
        }));
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    // Answers without 429: the next step reaches the ceiling and lifts the lowered rate.
    g.rate.adaptive.lock().unwrap().last_change = None;
    assert_eq!(speed_up(&g), Some(None));
    for w in waiters {
        assert!(w.await.unwrap(), "every waiter gets its turn");
    }
    // They go at the configured 20/s: no more than a few within any 100 ms.
    let done = done.lock().unwrap();
    let most = done
        .iter()
        .map(|t| {
            done.iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_millis(100))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        most <= 4,
        "{most} of 10 queued deliveries started within 100 ms of each other after the lift"
    );
}

#[test]
fn idle_gates_are_pruned_but_open_circuits_kept() {
    let gates = Gates::new(2048);
    let held = gates.get("t", "held", at(None, None, 1));
    let open = gates.get("t", "open", at(None, None, 1));
    for _ in 0..FAILURES_TO_OPEN {
        open.record(Heard::Silent, Duration::ZERO);
    }
    drop(open);
    for i in 0..PRUNE_AT {
        gates.get("t", &format!("idle{i}"), at(None, None, 1));
    }
    let map = gates.map.lock().unwrap();
    assert!(
        map.len() < PRUNE_AT,
        "idle gates were dropped ({})",
        map.len()
    );
    assert!(map.contains_key(&("t".into(), "held".into())));
    assert!(map.contains_key(&("t".into(), "open".into())));
    drop(map);
    drop(held);
}

#[test]
fn changed_settings_get_a_new_gate_and_an_older_revision_never_replaces_it() {
    let gates = Gates::new(2048);
    let a = gates.get("t", "e", at(None, Some(2), 1));
    assert!(Arc::ptr_eq(&a, &gates.get("t", "e", at(None, Some(2), 3))));
    let b = gates.get("t", "e", at(Some(5), Some(2), 4));
    assert!(!Arc::ptr_eq(&a, &b));
    // A delivery that read the config before the change uses the new gate.
    assert!(Arc::ptr_eq(&b, &gates.get("t", "e", at(None, Some(2), 3))));
}

#[tokio::test]
async fn a_config_change_sends_the_queue_round_again_to_the_new_gate() {
    let gates = Gates::new(2048);
    let old = gates.get("t", "e", at(Some(1), Some(1), 1));
    let Admission::Go(busy) = old.admit() else {
        panic!("the first goes");
    };
    let Admission::Queue(place) = old.admit() else {
        panic!("the second waits");
    };
    let waiting = {
        let old = old.clone();
        tokio::spawn(async move { matches!(old.wait_turn(&place).await, Turn::Again) })
    };
    tokio::task::yield_now().await;
    let faster = Settings {
        rate: Some(50),
        ..at(Some(1), Some(1), 2)
    };
    let changed = gates.follow(|_, _| Current::Live(faster));
    assert_eq!(changed, 1);
    assert!(waiting.await.unwrap(), "the waiter was sent round again");
    let new = gates.peek("t", "e").unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    // A new rate at the same URL keeps the circuit (the same receiver).
    for _ in 0..FAILURES_TO_OPEN {
        new.record(Heard::Silent, Duration::ZERO);
    }
    let slower = Settings {
        rate: Some(20),
        ..at(Some(1), Some(1), 3)
    };
    assert_eq!(gates.follow(|_, _| Current::Live(slower)), 1);
    assert!(gates.peek("t", "e").unwrap().is_open());
    // At another URL the circuit starts closed.
    let moved = Settings {
        url: "https://elsewhere.example/hook",
        ..at(Some(20), Some(1), 4)
    };
    assert_eq!(gates.follow(|_, _| Current::Live(moved)), 1);
    assert!(!gates.peek("t", "e").unwrap().is_open());
    // Nothing changed: nothing to do.
    assert_eq!(gates.follow(|_, _| Current::Live(moved)), 0);
    // Deleted: the gate goes.
    assert_eq!(gates.follow(|_, _| Current::Gone), 1);
    assert!(gates.peek("t", "e").is_none());
    drop(busy);
}

#[test]
fn repeated_429s_halve_the_rate_and_answers_without_them_bring_it_back() {
    // No configured limit: 30 requests in this second are the rate it was sent at.
    let g = Gate::new(&at(None, None, 1), 2048);
    for _ in 0..30 {
        assert!(matches!(g.admit(), Admission::Go(_)));
    }
    assert_eq!(slow_down(&g), Some(15));
    assert_eq!(
        slow_down(&g),
        None,
        "one decrease a second, however many 429s"
    );
    assert!(g.is_slowed());
    // Evenly spaced now: one goes, the next right after it waits.
    assert!(matches!(g.admit(), Admission::Go(_)));
    assert!(!matches!(g.admit(), Admission::Go(_)));
    std::thread::sleep(Duration::from_millis(1050));
    // A tenth of the ceiling (30) more per second without 429.
    assert_eq!(speed_up(&g), Some(Some(18)));
    assert_eq!(speed_up(&g), None, "one step a second");
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(slow_down(&g), Some(9));

    // A configured limit is the ceiling, and 429s bring it down from what was sent.
    let g = Gate::new(&at(Some(10), None, 1), 2048);
    for _ in 0..4 {
        assert!(matches!(g.admit(), Admission::Go(_)));
    }
    assert_eq!(slow_down(&g), Some(2), "sent at 4/s under a limit of 10");
    let a = g.rate.adaptive.lock().unwrap();
    assert_eq!(a.ceiling, 10);
}

fn answered(heard: Heard) -> Answered {
    Answered {
        heard,
        latency: Duration::from_millis(1),
        pause: None,
    }
}

/// A 429 applied: the lowered rate, when it changed.
fn slow_down(g: &Gate) -> Option<u32> {
    match g.apply(answered(Heard::Throttled)).rate {
        Some(RateChange::Lowered(rate)) => Some(rate),
        None => None,
        other => panic!("a 429 only lowers the rate, not {other:?}"),
    }
}

/// A quick success applied: `Some(None)` when the lowered rate is lifted, `Some(Some(rate))`
/// on a step up.
fn speed_up(g: &Gate) -> Option<Option<u32>> {
    match g.apply(answered(Heard::Healthy)).rate {
        Some(RateChange::Raised(rate)) => Some(Some(rate)),
        Some(RateChange::Restored) => Some(None),
        None => None,
        other => panic!("a success only raises the rate, not {other:?}"),
    }
}

#[test]
fn apply_says_what_an_answer_changed() {
    let g = Gate::new(&at(None, None, 1), 2048);
    // A 503 with Retry-After: paused, one failure counted, nothing else.
    let applied = g.apply(Answered {
        pause: Some(Duration::from_secs(2)),
        ..answered(Heard::Failed)
    });
    assert_eq!(applied.paused, Some(Duration::from_secs(2)));
    assert_eq!((applied.rate, applied.circuit), (None, None));
    assert!(g.is_paused());
    // A shorter pause inside it changes nothing.
    let applied = g.apply(Answered {
        pause: Some(Duration::from_millis(10)),
        ..answered(Heard::Failed)
    });
    assert_eq!(applied, Applied::default());
    // The fifth failure in a row opens the circuit, once.
    for _ in 3..FAILURES_TO_OPEN {
        assert_eq!(g.apply(answered(Heard::Silent)), Applied::default());
    }
    assert_eq!(g.apply(answered(Heard::Silent)).circuit, Some(Flip::Opened));
    assert_eq!(g.apply(answered(Heard::Silent)).circuit, None);
    assert!(g.is_open());
    // An answer that shows the endpoint up closes it.
    assert_eq!(
        g.apply(answered(Heard::Healthy)).circuit,
        Some(Flip::Closed)
    );
    assert!(!g.is_open());
}
