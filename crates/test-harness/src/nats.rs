//! Real nats-server processes for tests. Each [`NatsServer`] owns its process and its store
//! directory: dropping it kills the process and deletes the directory, so a failing test
//! never leaves a server behind.

use crate::partition::Relay;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start listening. Generous: CI machines are shared.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The nats-server binary: `$GANCHO_NATS_SERVER`, else `.tools/bin/nats-server` in the
/// workspace (what `make setup` installs), else `nats-server` on the `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GANCHO_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("nats-server")
}

/// A running `nats-server -js` on 127.0.0.1.
pub struct NatsServer {
    child: Option<Child>,
    /// 0 until the first start picked one; restarts reuse it.
    port: u16,
    store: PathBuf,
    // Keeps the store directory alive for as long as the server (and its restarts) need it.
    _dir: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a standalone JetStream server on a random port with a fresh store directory.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("create a store directory for nats-server");
        let store = dir.path().join("store");
        let mut server = Self {
            child: None,
            port: 0,
            store,
            _dir: Some(dir),
            extra_args: Vec::new(),
        };
        server.spawn();
        server
    }

    /// Starts a standalone JetStream server with `config` (nats-server's configuration
    /// syntax, for example `jetstream { max_file_store: 8MB }`) on top of the usual flags.
    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a store directory for nats-server");
        let store = dir.path().join("store");
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).expect("write the nats-server config file");
        let mut server = Self {
            child: None,
            port: 0,
            store,
            _dir: Some(dir),
            extra_args: vec!["-c".into(), file.display().to_string()],
        };
        server.spawn();
        server
    }

    /// Starts the process. The first start lets nats-server pick a free port (`-p -1`) and
    /// reads it from the ports file, so no other listener can take it between a probe and the
    /// bind; restarts ask for the same port again.
    fn spawn(&mut self) {
        let ports_dir = self.store.with_file_name("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("create the ports-file directory");
        let port_arg = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new(nats_server_binary());
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port_arg])
            .arg("-sd")
            .arg(&self.store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("GANCHO_TEST_NATS_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; run `make setup` to install nats-server into .tools/",
                nats_server_binary().display()
            )
        });
        self.child = Some(child);
        let child = self.child.as_mut().expect("just spawned");
        self.port = read_ports_file(&ports_dir, child);
        wait_for_port(self.port, child);
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// Connects a client.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to the test nats-server")
    }

    /// Kills the process (SIGKILL) and waits for it, keeping the store directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies on SIGKILL too; no SIGCONT needed.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, so every
    /// PubAck and every pull waits. [`NatsServer::resume`] (or drop) lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} nats-server failed");
    }

    /// Kills the server if it runs, then starts it again on the same port and store
    /// directory: JetStream state survives, clients reconnect.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three JetStream servers routed into one cluster, for R3 streams.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes; returns once all three listen for clients. JetStream may still be
    /// electing its meta leader: see [`NatsCluster::wait_for_jetstream`].
    pub fn start() -> Self {
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Self::start_nodes(&route_ports, |_| Some(routes.clone()), &[])
    }

    /// Three nodes whose routes go through relays ([`Routes`]), so that a node can be cut off
    /// from the others while it runs. Node i solicits each other node j through a relay of
    /// its own for (i, j) (JetStream in a cluster wants every node to solicit routes), and
    /// every node advertises a cluster address where nothing listens (port 1), so no node
    /// learns another's real address from gossip and routes around a cut.
    pub async fn start_cuttable() -> (Self, Routes) {
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut relays = Vec::new();
        for i in 0..3 {
            for (j, port) in route_ports.iter().enumerate().filter(|(j, _)| *j != i) {
                let target = SocketAddr::from(([127, 0, 0, 1], *port));
                relays.push(((i, j), Relay::start(target).await));
            }
        }
        let routes_of = |i: usize| {
            let urls: Vec<String> = relays
                .iter()
                .filter(|((a, _), _)| *a == i)
                .map(|(_, relay)| format!("nats://{}", relay.addr()))
                .collect();
            (!urls.is_empty()).then(|| urls.join(","))
        };
        let advertise = ["--cluster_advertise".to_string(), "127.0.0.1:1".into()];
        let cluster = Self::start_nodes(&route_ports, routes_of, &advertise);
        (cluster, Routes { relays })
    }

    /// Starts node i on cluster port `route_ports[i]`, soliciting `routes_of(i)`.
    fn start_nodes(
        route_ports: &[u16],
        routes_of: impl Fn(usize) -> Option<String>,
        extra: &[String],
    ) -> Self {
        let cluster_name = format!("gancho-test-{}", route_ports[0]);
        let mut nodes = Vec::new();
        for (i, rp) in route_ports.iter().enumerate() {
            let dir = tempfile::tempdir().expect("create a store directory for nats-server");
            let store = dir.path().join("store");
            let mut extra_args = vec![
                "--server_name".into(),
                format!("n{i}"),
                "--cluster_name".into(),
                cluster_name.clone(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{rp}"),
            ];
            if let Some(routes) = routes_of(i) {
                extra_args.extend(["--routes".into(), routes]);
            }
            extra_args.extend(extra.iter().cloned());
            let mut node = NatsServer {
                child: None,
                port: 0,
                store,
                _dir: Some(dir),
                extra_args,
            };
            node.spawn();
            nodes.push(node);
        }
        Self { nodes }
    }

    /// Every node's client URL, comma-separated, as `GANCHO_NATS_URL` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects to the cluster (all seed URLs).
    pub async fn connect(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("a valid nats URL"))
            .collect();
        async_nats::connect(urls)
            .await
            .expect("connect to the test cluster")
    }

    /// Waits until the cluster's JetStream answers account info (meta leader elected).
    pub async fn wait_for_jetstream(&self, client: &async_nats::Client) {
        let js = async_nats::jetstream::new(client.clone());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if js.query_account().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster's JetStream did not come up within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The routes of a cluster started by [`NatsCluster::start_cuttable`]: each node reaches each
/// other through a [`Relay`], so a node can be cut off from the other two, and healed, while
/// it runs and its clients stay connected to it.
pub struct Routes {
    relays: Vec<((usize, usize), Relay)>,
}

impl Routes {
    /// Cuts node `n<i>` off from the others: nothing moves on its routes, nothing is closed.
    pub fn cut_off(&self, i: usize) {
        for ((a, b), relay) in &self.relays {
            if *a == i || *b == i {
                relay.cut();
            }
        }
    }

    /// Lets node `n<i>`'s routes carry traffic again.
    pub fn heal(&self, i: usize) {
        for ((a, b), relay) in &self.relays {
            if *a == i || *b == i {
                relay.heal();
            }
        }
    }
}

/// A port that was free a moment ago, below the kernel's ephemeral range (32768 and up on
/// Linux), so no outgoing connection of a busy test run can take it between the check and
/// the bind. Ports are handed out in turn from a start that differs per process, so test
/// binaries running side by side rarely ask for the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 from {LOW} to {}", LOW + SPAN);
}

/// Waits for the ports file nats-server writes once it listens, and returns its client port.
fn read_ports_file(dir: &Path, child: &mut Child) -> u16 {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let found = std::fs::read_dir(dir)
            .ok()
            .and_then(|mut entries| entries.find_map(|e| e.ok()))
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|v| v["nats"][0].as_str().map(str::to_owned))
            .and_then(|url| url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()));
        if let Some(port) = found {
            return port;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited during start-up ({status}); rerun with GANCHO_TEST_NATS_LOG=1 to see its log");
        }
        assert!(
            Instant::now() < deadline,
            "nats-server wrote no ports file within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_port(port: u16, child: &mut Child) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited during start-up ({status}); rerun with GANCHO_TEST_NATS_LOG=1 to see its log");
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen on {addr} within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
