//! Receivers that misbehave, against a worker process: one that answers garbage, one that
//! sends a 100 MB body, one that trickles its headers a byte a second and one that never
//! answers. Each attempt ends by the endpoint's timeout with the outcome it deserves, the
//! healthy endpoint beside them keeps being delivered, and the worker's memory stays bounded.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use gancho_test_harness::{wait_until, Receiver};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A plain-HTTP server on 127.0.0.1 that runs `behave` on every connection.
async fn server<F, Fut>(behave: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let behave = std::sync::Arc::new(behave);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(behave(stream));
        }
    });
    port
}

/// Reads the request head (up to the blank line) so the client has sent it.
async fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_receivers_end_at_the_timeout_and_cost_no_memory() {
    let env = support::Env::new().await;
    env.tenant("acme").await;
    let garbage = server(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"SPAM SPAM SPAM\r\n\r\n").await;
    })
    .await;
    let huge = server(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 104857600\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1600 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let trickle = server(|mut s| async move {
        read_head(&mut s).await;
        for b in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let stall = server(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    })
    .await;
    let healthy = Receiver::https_sequence(&env.ca, &[200]).await;
    for (id, port) in [
        ("garbage", garbage),
        ("huge", huge),
        ("trickle", trickle),
        ("stall", stall),
    ] {
        env.endpoint(
            "acme",
            id,
            &format!("http://127.0.0.1:{port}/hook"),
            &[&format!("{id}.*")],
            &[],
            Some("0s"),
        )
        .await;
        env.change("acme", id, |ep| ep.timeout_ms = 2_000).await;
    }
    env.endpoint(
        "acme",
        "healthy",
        &healthy.url("/hook"),
        &["ok.*"],
        &[],
        None,
    )
    .await;
    let mut router = env.spawn("router");
    let mut worker = env.spawn_with(&["worker"], &[("GANCHO_ALLOW_HTTP_ENDPOINTS", "true")]);

    for n in 0..5 {
        for ty in ["garbage.x", "huge.x", "trickle.x", "stall.x"] {
            env.publish("acme", ty, &format!("{ty}-{n}"), b"{}", &[])
                .await;
        }
    }
    for n in 0..50 {
        env.publish("acme", "ok.x", &format!("ok-{n}"), b"{}", &[])
            .await;
    }
    wait_until("the healthy deliveries", Duration::from_secs(20), || {
        std::future::ready(healthy.distinct() == 50)
    })
    .await;
    let attempts = |id: &'static str| {
        let env = &env;
        async move { env.attempts("acme", id).await }
    };
    wait_until(
        "an attempt for each misbehaving receiver",
        Duration::from_secs(30),
        || async {
            attempts("garbage").await.len() == 5
                && attempts("huge").await.len() == 5
                && attempts("trickle").await.len() == 5
                && attempts("stall").await.len() == 5
        },
    )
    .await;
    let timeout_us = 2_000_000;
    for a in attempts("garbage").await {
        assert_eq!(a.outcome, "request_error", "{a:?}");
        assert!(a.latency_us < timeout_us, "{a:?}");
    }
    for a in attempts("huge").await {
        // The status line came: the webhook was delivered; only 4 KiB of the body are kept.
        assert_eq!(a.outcome, "success", "{a:?}");
        assert_eq!(a.status, 200);
        assert!(a.response_body.len() <= 4096);
        assert!(a.latency_us < timeout_us + 500_000, "{a:?}");
    }
    for id in ["trickle", "stall"] {
        for a in attempts(id).await {
            assert_eq!(a.outcome, "timeout", "{id}: {a:?}");
            assert!(
                (timeout_us..timeout_us + 1_000_000).contains(&a.latency_us),
                "{id}: the attempt took {} us, not the 2 s timeout",
                a.latency_us
            );
        }
    }
    let rss = gancho_telemetry::process_usage(&worker.id().to_string())
        .unwrap()
        .peak_rss_bytes;
    assert!(
        rss < 150.0 * 1024.0 * 1024.0,
        "the worker peaked at {:.0} MiB with 500 MB of bodies thrown at it",
        rss / 1048576.0
    );
    assert!(support::terminate(&mut worker));
    assert!(support::terminate(&mut router));
}
