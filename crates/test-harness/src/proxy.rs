//! A real HTTP CONNECT proxy for tests: it answers `CONNECT host:port`, checks Basic
//! credentials when it has them (407 otherwise), refuses targets outside its allow-list
//! (403), and relays bytes both ways. Its outgoing connections leave from a source address of
//! its own (`127.0.0.2`), so a receiver can tell a request that came through it from one that
//! did not. Dropping it closes the listener and every tunnel, as a proxy that goes down.

use base64::Engine as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// The source address of every connection the proxy opens.
pub const PROXY_SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

pub struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    tasks: JoinSet<()>,
}

#[derive(Clone, Default)]
pub struct ProxyRules {
    /// `user:password` the client must send; none: no credentials asked.
    pub credentials: Option<String>,
    /// Targets refused with 403: the proxy's own policy.
    pub refuse_port_443: bool,
}

impl ConnectProxy {
    /// Starts on `port` of 127.0.0.1 (0: any free port).
    pub async fn start(port: u16, rules: ProxyRules) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let targets = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let seen = targets.clone();
        let rules = Arc::new(rules);
        tasks.spawn(async move {
            let mut tunnels = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (seen, rules) = (seen.clone(), rules.clone());
                tunnels.spawn(async move {
                    let _ = serve(client, &seen, &rules).await;
                });
                while tunnels.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            targets,
            tasks,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every CONNECT target asked for, in order (refused ones included).
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().expect("proxy lock").clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn serve(
    mut client: TcpStream,
    seen: &Mutex<Vec<String>>,
    rules: &ProxyRules,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "CONNECT" {
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await?;
        return Ok(());
    }
    seen.lock().expect("proxy lock").push(target.to_owned());
    if let Some(credentials) = &rules.credentials {
        let want = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        let sent = lines.any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("proxy-authorization")
                    && v.trim().eq_ignore_ascii_case(&want)
            })
        });
        if !sent {
            client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
                .await?;
            return Ok(());
        }
    }
    if rules.refuse_port_443 && target.ends_with(":443") {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await?;
        return Ok(());
    }
    let Ok(dest) = target.parse::<SocketAddr>() else {
        // By name: resolve here, as a name-filtering proxy does.
        let Some(dest) = tokio::net::lookup_host(target).await?.next() else {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Ok(());
        };
        return relay(client, dest).await;
    };
    relay(client, dest).await
}

async fn relay(mut client: TcpStream, dest: SocketAddr) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(PROXY_SOURCE, 0))?;
    let mut upstream = match socket.connect(dest).await {
        Ok(s) => s,
        Err(_) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Ok(());
        }
    };
    client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    Ok(())
}
