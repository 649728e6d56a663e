//! Test support for gancho: real `nats-server` processes (one per test, random ports, own
//! store directory, killed on drop), a three-node cluster, restarts on the same port and
//! store, a test certificate authority and real HTTP(S) webhook receivers.
//!
//! # Layout
//! - [`nats`]: [`NatsServer`] and [`NatsCluster`].
//! - [`tls`]: [`TestCa`], a throwaway CA issuing certificates for `127.0.0.1`/`localhost`.
//! - [`receiver`]: [`Receiver`], an HTTPS server that records every request and answers
//!   with a scripted status sequence.
//! - [`proxy`]: [`ConnectProxy`], an HTTP CONNECT proxy that leaves from its own address.
//! - [`partition`]: [`Relay`], a TCP relay that cuts traffic without closing anything (a
//!   network partition), and the cuttable routes of [`NatsCluster::start_cuttable`].
//! - [`wait`]: [`wait_until`], the replacement for a bare sleep.

pub mod nats;
pub mod partition;
pub mod proxy;
pub mod receiver;
pub mod tls;
pub mod wait;

pub use nats::{nats_server_binary, NatsCluster, NatsServer, Routes};
pub use partition::Relay;
pub use proxy::{ConnectProxy, ProxyRules, PROXY_SOURCE};
pub use receiver::{Answer, Received, Receiver};
pub use tls::TestCa;
pub use wait::wait_until;
