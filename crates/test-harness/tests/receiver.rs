//! The receiver answers scripted statuses over real TLS signed by the test CA, and records
//! what it got.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use bytes::Bytes;
use gancho_test_harness::{Receiver, TestCa};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;

#[tokio::test]
async fn https_receiver_follows_its_script_and_records() {
    let ca = TestCa::new();
    let rx = Receiver::https_sequence(&ca, &[500, 200]).await;
    assert!(rx.url("/hook").starts_with("https://127.0.0.1:"));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);

    let mut statuses = Vec::new();
    for body in ["one", "two", "three"] {
        let req = hyper::Request::post(rx.url("/hook"))
            .header("webhook-id", body)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        statuses.push(client.request(req).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [500, 200, 200]);
    let got = rx.received();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].header("webhook-id"), Some("two"));
    assert_eq!(got[2].body.as_ref(), b"three");
    assert_eq!(got[0].path, "/hook");
}
