//! Network partitions for tests: a TCP relay in front of a server that can cut the traffic
//! through it without closing anything, as a partition does. Cut, it moves no byte either way
//! (what was sent waits, as in a kernel's buffers while TCP retransmits), keeps every
//! connection open, and accepts new ones that get nothing; healed, what waited flows on. A
//! peer notices only by its own timeouts (NATS pings, raft heartbeats, request timeouts),
//! never by a reset or a close: the case a kill or a restart does not test.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A relay from a port of its own on 127.0.0.1 to `target`.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    _tasks: JoinSet<()>,
}

impl Relay {
    /// Starts relaying to `target` (which need not listen yet: a connection made while it
    /// does not is closed, as a refused one).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a relay on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let cut = Arc::new(watch::channel(false).0);
        let mut tasks = JoinSet::new();
        let watch = cut.clone();
        tasks.spawn(async move {
            let mut pairs = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let cut = watch.subscribe();
                pairs.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, cut.clone()), pump(sr, cw, cut));
                });
                while pairs.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            cut,
            _tasks: tasks,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every byte through the relay, both ways, until [`Relay::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets the traffic through again, what waited first.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

/// Copies `from` to `to` while the relay is not cut; cut, it neither reads nor writes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // Cut while waiting for bytes: stop reading (a read is cancel-safe).
            _ = cut.wait_for(|c| *c) => continue,
        };
        // Bytes read just as the cut came wait for the heal like the rest.
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
