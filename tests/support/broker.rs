//! Apache Kafka for the tests: KRaft nodes (combined controller + broker) run from the jars
//! `scripts/setup.sh` fetched from Maven Central, on free loopback ports, storage formatted in
//! a temp dir.
//!
//! - [`Broker::shared`]: one single-node broker per test binary, for tests that inject no
//!   broker fault. Tests sharing it isolate themselves by topic prefix (see the fixture).
//! - [`Broker::start`] / [`Broker::start_with`]: a broker of the test's own, which it may
//!   pause, kill, restart; [`Broker::cluster`]: three nodes, replication factor 3,
//!   `min.insync.replicas=2`; [`Broker::start_proxied`]: a node that advertises a
//!   [`TcpProxy`] so every client byte crosses it.
//!
//! No JVM outlives the test process. A Rust static is never dropped, and `PR_SET_PDEATHSIG`
//! fires when the spawning *thread* ends (tokio test threads end early), so neither holds.
//! Each JVM is a process-group leader, and beside it runs a watchdog (`sh`) whose stdin is a
//! pipe whose write end only this process holds (close-on-exec, so no child inherits it).
//! When the test process ends for any reason — even `kill -9` — the kernel closes the pipe,
//! the watchdog reads EOF and SIGKILLs the JVM's group. `Drop` kills the group directly.
//!
//! The JVM runs small (`-Xmx512m`, serial GC, C1 only, one compiler thread): left alone it
//! takes a quarter of the RAM and its threads starve PostgreSQL's walsender on 2 cores.
//!
//! Jars: `$KAFKA_LIBS`, else `~/.cache/outbox-relay/kafka/$KAFKA_VERSION/libs`.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::proxy::TcpProxy;

/// The Apache Kafka release the tests run (keep in step with scripts/setup.sh).
pub const KAFKA_VERSION: &str = "4.1.1";
const START_ATTEMPTS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const JVM_OPTS: &[&str] = &[
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=1",
    "-Djava.awt.headless=true",
];

/// Folder with the Kafka jars.
pub fn kafka_libs() -> PathBuf {
    if let Some(p) = std::env::var_os("KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(format!(".cache/outbox-relay/kafka/{KAFKA_VERSION}/libs"))
}

/// How clients reach the broker on its client listener.
#[derive(Clone, Debug, Default)]
pub enum ClientSecurity {
    /// The client listener is the plain internal one.
    #[default]
    Plaintext,
    /// SASL/SCRAM-SHA-512 without TLS (principals for ACL tests).
    SaslPlaintext,
    /// SASL/SCRAM-SHA-512 over TLS with this PEM certificate chain and PKCS#8 key.
    SaslSsl {
        cert_chain_pem: PathBuf,
        key_pem: PathBuf,
    },
}

/// Options for a broker of the test's own.
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// Number of nodes (default 1). More than one: replication factor and min ISR of the
    /// internal topics follow (`min(3, n)`, `min(2, n)`), and `min.insync.replicas=2`.
    pub nodes: usize,
    /// Extra `server.properties` lines for every node.
    pub props: Vec<(String, String)>,
    /// The security of the client listener ([`Broker::bootstrap`]). The harness itself always
    /// uses the internal PLAINTEXT listener ([`Broker::admin_bootstrap`]), whose principal
    /// (`User:ANONYMOUS`) is a super user when an authorizer is configured.
    pub client: ClientSecurity,
    /// SCRAM-SHA-512 credentials (user, password) written at format time.
    pub scram_users: Vec<(String, String)>,
}

/// A running broker or cluster. Dropping it kills every node (and keeps its temp dir, with
/// the logs, when the test panicked).
pub struct Broker {
    nodes: Vec<Mutex<Node>>,
    dir: Option<tempfile::TempDir>,
    shared: bool,
    paused: AtomicBool,
    advertised_override: Option<String>,
}

/// One KRaft node: its ports, its files and (when running) its JVM and watchdog.
struct Node {
    id: usize,
    client_port: u16,
    internal_port: u16,
    controller_port: u16,
    dir: PathBuf,
    process: Option<NodeProcess>,
    starts: usize,
}

struct NodeProcess {
    jvm: Child,
    /// SIGKILLs the JVM's group if this process ends without killing it.
    watchdog: super::ExitWatchdog,
}

impl Broker {
    /// The single-node broker shared by this test binary's fault-free tests (started once).
    pub async fn shared() -> Arc<Broker> {
        static SHARED: tokio::sync::OnceCell<Arc<Broker>> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                let mut b = Self::start_with(BrokerOptions::default()).await;
                b.shared = true;
                if !super::keep_artifacts() {
                    remove_at_exit(b.dir_path());
                }
                Arc::new(b)
            })
            .await
            .clone()
    }

    /// A single-node broker of the test's own.
    pub async fn start() -> Broker {
        Self::start_with(BrokerOptions::default()).await
    }

    /// Three nodes (replication factor 3, `min.insync.replicas=2`).
    pub async fn cluster() -> Broker {
        Self::start_with(BrokerOptions {
            nodes: 3,
            ..Default::default()
        })
        .await
    }

    /// A single node that advertises a [`TcpProxy`] in front of it, so all client traffic
    /// (bootstrap and partition leader) crosses the proxy, which can pause or cut it.
    pub async fn start_proxied() -> (Broker, TcpProxy) {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut b = Self::layout(&BrokerOptions::default());
            let port = b.nodes[0].get_mut().unwrap().client_port;
            let proxy = TcpProxy::start(([127, 0, 0, 1], port).into()).await;
            b.advertised_override = Some(proxy.addr().to_string());
            match b.boot(&BrokerOptions::default()).await {
                Ok(()) => return (b, proxy),
                Err(e) => last = e,
            }
        }
        panic!("Kafka (proxied) did not start: {last}");
    }

    /// A broker (or cluster) with `opts`; panics with the logs if it does not start.
    pub async fn start_with(mut opts: BrokerOptions) -> Broker {
        opts.nodes = opts.nodes.max(1);
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut b = Self::layout(&opts);
            match b.boot(&opts).await {
                Ok(()) => return b,
                Err(e) => last = e,
            }
        }
        panic!("Kafka did not start: {last}");
    }

    fn layout(opts: &BrokerOptions) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("outbox-it-kafka-")
            .tempdir_in(super::tmp_root())
            .expect("temp dir for Kafka");
        let separate_client = !matches!(opts.client, ClientSecurity::Plaintext);
        let nodes = (1..=opts.nodes.max(1))
            .map(|id| {
                let internal_port = super::free_port();
                Mutex::new(Node {
                    id,
                    client_port: if separate_client {
                        super::free_port()
                    } else {
                        internal_port
                    },
                    internal_port,
                    controller_port: super::free_port(),
                    dir: dir.path().join(format!("node-{id}")),
                    process: None,
                    starts: 0,
                })
            })
            .collect();
        Broker {
            nodes,
            dir: Some(dir),
            shared: false,
            paused: AtomicBool::new(false),
            advertised_override: None,
        }
    }

    /// Writes every node's properties, formats storage, starts the JVMs and waits until the
    /// cluster answers metadata with every broker registered.
    async fn boot(&mut self, opts: &BrokerOptions) -> Result<(), String> {
        let cluster_id = random_cluster_id();
        let voters = self
            .nodes
            .iter_mut()
            .map(|n| {
                let n = n.get_mut().unwrap();
                format!("{}@127.0.0.1:{}", n.id, n.controller_port)
            })
            .collect::<Vec<_>>()
            .join(",");
        let count = self.nodes.len();
        for node in &mut self.nodes {
            let node = node.get_mut().unwrap();
            std::fs::create_dir_all(&node.dir).map_err(|e| e.to_string())?;
            let props = node.properties(&voters, count, opts, self.advertised_override.as_deref());
            std::fs::write(node.dir.join("server.properties"), props).map_err(|e| e.to_string())?;
            node.format(&cluster_id, opts)?;
        }
        for node in &mut self.nodes {
            node.get_mut().unwrap().spawn()?;
        }
        self.wait_ready().await
    }

    /// Waits until every node logged "Kafka Server started" and metadata lists all brokers.
    async fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut all_started = true;
            for node in &self.nodes {
                let mut n = node.lock().unwrap();
                if let Some(status) = n.exited() {
                    return Err(format!(
                        "node {} exited with {status}\n{}",
                        n.id,
                        n.log_tail(40)
                    ));
                }
                all_started &= n.started_marker_seen();
            }
            if all_started {
                let bootstrap = self.admin_bootstrap();
                let want = self.nodes.len();
                let ok = tokio::task::spawn_blocking(move || broker_count(&bootstrap) == want)
                    .await
                    .unwrap_or(false);
                if ok {
                    eprintln!(
                        "[support] Kafka {KAFKA_VERSION}: {} node(s), clients {} (dir {})",
                        self.nodes.len(),
                        self.bootstrap(),
                        self.dir_path().display()
                    );
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready within {READY_TIMEOUT:?}\n{}",
                    self.logs_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn dir_path(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    /// `bootstrap.servers` for the relay (the client listener; the proxy for a proxied node).
    pub fn bootstrap(&self) -> String {
        if let Some(a) = &self.advertised_override {
            return a.clone();
        }
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.lock().unwrap().client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `bootstrap.servers` of the internal PLAINTEXT listener (test helpers: topic creation,
    /// reading back). The same as [`bootstrap`](Self::bootstrap) unless the client listener is
    /// secured; for a proxied node the proxy.
    pub fn admin_bootstrap(&self) -> String {
        if let Some(a) = &self.advertised_override {
            return a.clone();
        }
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.lock().unwrap().internal_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port the (first) node's client listener binds.
    pub fn listen_port(&self) -> u16 {
        self.nodes[0].lock().unwrap().client_port
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Whether this is the binary-wide shared broker (no faults allowed).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// JVM pid of node 1.
    pub fn pid(&self) -> u32 {
        self.node_pid(1).expect("node 1 running")
    }

    /// JVM pid of node `id` (1-based), if running.
    pub fn node_pid(&self, id: usize) -> Option<u32> {
        self.nodes[id - 1]
            .lock()
            .unwrap()
            .process
            .as_ref()
            .map(|p| p.jvm.id())
    }

    pub fn log_path(&self) -> PathBuf {
        self.nodes[0].lock().unwrap().log_path()
    }

    /// Node 1's log so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` of every node's log, headed by its path.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let _ = writeln!(out, "{}", n.lock().unwrap().log_tail(lines));
        }
        out
    }

    fn assert_own(&self, what: &str) {
        assert!(
            !self.shared,
            "{what} on the shared broker would break other tests: start a broker of the test's own"
        );
    }

    /// SIGSTOP every node: the broker stops answering but connections stay open.
    pub fn pause(&self) {
        self.assert_own("pause");
        for n in &self.nodes {
            n.lock().unwrap().signal(libc::SIGSTOP);
        }
        self.paused.store(true, Ordering::SeqCst);
    }

    /// SIGCONT every node.
    pub fn resume(&self) {
        for n in &self.nodes {
            n.lock().unwrap().signal(libc::SIGCONT);
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// `kill -9` node `id` (1-based); its data stays for [`restart_node`](Self::restart_node).
    pub fn kill_node(&self, id: usize) {
        self.assert_own("kill");
        self.nodes[id - 1].lock().unwrap().kill();
    }

    /// SIGTERM node `id` and wait for its controlled shutdown (up to 60 s, then SIGKILL).
    pub fn stop_node(&self, id: usize) {
        self.assert_own("stop");
        self.nodes[id - 1]
            .lock()
            .unwrap()
            .stop(Duration::from_secs(60));
    }

    /// Start a stopped or killed node again on the same ports and data, and wait until the
    /// cluster lists every broker again.
    pub async fn restart_node(&self, id: usize) {
        self.assert_own("restart");
        {
            let mut n = self.nodes[id - 1].lock().unwrap();
            n.kill();
            n.spawn()
                .unwrap_or_else(|e| panic!("restart node {id}: {e}"));
        }
        if let Err(e) = self.wait_ready().await {
            panic!("node {id} did not come back: {e}");
        }
    }

    /// Restart every node one after the other (controlled shutdown, start, wait for the
    /// cluster to be whole again before the next).
    pub async fn rolling_restart(&self) {
        for id in 1..=self.nodes.len() {
            self.stop_node(id);
            self.restart_node(id).await;
        }
    }
}

impl Node {
    fn properties(
        &self,
        voters: &str,
        count: usize,
        opts: &BrokerOptions,
        advertised_override: Option<&str>,
    ) -> String {
        let rf = count.min(3);
        let isr = count.min(2);
        let mut p = String::new();
        let _ = writeln!(p, "process.roles=broker,controller");
        let _ = writeln!(p, "node.id={}", self.id);
        let _ = writeln!(p, "controller.quorum.voters={voters}");
        let _ = writeln!(p, "controller.listener.names=CONTROLLER");
        let _ = writeln!(p, "inter.broker.listener.name=INTERNAL");
        let advertised_internal =
            advertised_override.map_or(format!("127.0.0.1:{}", self.internal_port), str::to_string);
        match &opts.client {
            ClientSecurity::Plaintext => {
                let _ = writeln!(
                    p,
                    "listeners=INTERNAL://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                    self.internal_port, self.controller_port
                );
                let _ = writeln!(p, "advertised.listeners=INTERNAL://{advertised_internal}");
                let _ = writeln!(
                    p,
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT"
                );
            }
            sec => {
                let proto = match sec {
                    ClientSecurity::SaslSsl { .. } => "SASL_SSL",
                    _ => "SASL_PLAINTEXT",
                };
                let _ = writeln!(
                    p,
                    "listeners=INTERNAL://127.0.0.1:{},CONTROLLER://127.0.0.1:{},CLIENT://127.0.0.1:{}",
                    self.internal_port, self.controller_port, self.client_port
                );
                let _ = writeln!(
                    p,
                    "advertised.listeners=INTERNAL://{advertised_internal},CLIENT://127.0.0.1:{}",
                    self.client_port
                );
                let _ = writeln!(
                    p,
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,CLIENT:{proto}"
                );
                let _ = writeln!(p, "sasl.enabled.mechanisms=SCRAM-SHA-512");
                let _ = writeln!(
                    p,
                    "listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
                );
                if let ClientSecurity::SaslSsl {
                    cert_chain_pem,
                    key_pem,
                } = sec
                {
                    let _ = writeln!(p, "listener.name.client.ssl.keystore.type=PEM");
                    let _ = writeln!(
                        p,
                        "listener.name.client.ssl.keystore.location={}",
                        combined_pem(&self.dir, cert_chain_pem, key_pem).display()
                    );
                }
            }
        }
        let _ = writeln!(p, "log.dirs={}", self.dir.join("data").display());
        for (k, v) in [
            ("num.partitions", "3".to_string()),
            ("auto.create.topics.enable", "false".into()),
            ("default.replication.factor", rf.to_string()),
            ("min.insync.replicas", isr.to_string()),
            ("offsets.topic.replication.factor", rf.to_string()),
            ("offsets.topic.num.partitions", "4".into()),
            ("transaction.state.log.replication.factor", rf.to_string()),
            ("transaction.state.log.min.isr", isr.to_string()),
            ("transaction.state.log.num.partitions", "4".into()),
            (
                "share.coordinator.state.topic.replication.factor",
                rf.to_string(),
            ),
            ("share.coordinator.state.topic.min.isr", isr.to_string()),
            ("group.initial.rebalance.delay.ms", "0".into()),
            ("num.network.threads", "2".into()),
            ("num.io.threads", "2".into()),
            ("num.recovery.threads.per.data.dir", "1".into()),
            ("num.replica.fetchers", "1".into()),
            ("background.threads", "2".into()),
            ("log.cleaner.threads", "1".into()),
            ("log.cleaner.dedupe.buffer.size", "2097152".into()),
            ("controlled.shutdown.enable", "true".into()),
            // Faster failure detection and leader moves for the failover tests.
            ("broker.session.timeout.ms", "6000".into()),
            ("broker.heartbeat.interval.ms", "1000".into()),
            ("replica.lag.time.max.ms", "10000".into()),
        ] {
            if !opts.props.iter().any(|(pk, _)| pk == k) {
                let _ = writeln!(p, "{k}={v}");
            }
        }
        for (k, v) in &opts.props {
            let _ = writeln!(p, "{k}={v}");
        }
        p
    }

    fn java(&self) -> Command {
        let mut c = Command::new("java");
        c.args(JVM_OPTS)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("deploy/kafka/log4j2.yaml")
                    .display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", kafka_libs().display()));
        c
    }

    fn format(&self, cluster_id: &str, opts: &BrokerOptions) -> Result<(), String> {
        let mut c = self.java();
        c.arg("kafka.tools.StorageTool")
            .arg("format")
            .arg("-t")
            .arg(cluster_id)
            .arg("-c")
            .arg(self.dir.join("server.properties"));
        for (user, password) in &opts.scram_users {
            c.arg("--add-scram")
                .arg(format!("SCRAM-SHA-512=[name={user},password={password}]"));
        }
        let out = c.stdin(Stdio::null()).output().map_err(|e| {
            format!(
                "run java (is a JRE 17+ installed? run scripts/setup.sh): {e}; jars {}",
                kafka_libs().display()
            )
        })?;
        if !out.status.success() {
            return Err(format!(
                "storage format failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        // Each start writes its own marker, so readiness is not read from an earlier start.
        let mut marker = log.try_clone().map_err(|e| e.to_string())?;
        let _ = std::io::Write::write_all(
            &mut marker,
            format!("=== outbox-it start {} ===\n", self.starts).as_bytes(),
        );
        let jvm = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn java: {e}"))?;
        let pgid = jvm.id();
        let watchdog =
            super::ExitWatchdog::spawn(&format!("kill -9 -{pgid} 2>/dev/null"), &[] as &[&str])
                .map_err(|e| format!("spawn watchdog: {e}"))?;
        self.process = Some(NodeProcess { jvm, watchdog });
        Ok(())
    }

    fn started_marker_seen(&self) -> bool {
        let text = std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let marker = format!("=== outbox-it start {} ===", self.starts);
        text.rsplit_once(&marker)
            .is_some_and(|(_, after)| after.contains("Kafka Server started"))
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut()?.jvm.try_wait().ok().flatten()
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(p) = &self.process {
            let rc = unsafe { libc::kill(-(p.jvm.id() as libc::pid_t), sig) };
            assert_eq!(rc, 0, "kill(-{}, {sig}) failed", p.jvm.id());
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            unsafe {
                libc::kill(-(p.jvm.id() as libc::pid_t), libc::SIGCONT);
                libc::kill(-(p.jvm.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = p.jvm.wait();
            drop(p.watchdog);
        }
    }

    fn stop(&mut self, deadline: Duration) {
        if let Some(p) = self.process.as_mut() {
            unsafe { libc::kill(p.jvm.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + deadline;
            while Instant::now() < end {
                if let Ok(Some(_)) = p.jvm.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- node {} log {} ---\n{}",
            self.id,
            self.log_path().display(),
            super::tail_file(&self.log_path(), lines)
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.get_mut().unwrap_or_else(|e| e.into_inner()).kill();
        }
        if let Some(dir) = self.dir.take() {
            if super::keep_artifacts() {
                let path = dir.keep();
                eprintln!("[support] kept Kafka dir {}", path.display());
                for n in &self.nodes {
                    let n = n.lock().unwrap_or_else(|e| e.into_inner());
                    eprintln!("{}", n.log_tail(30));
                }
            }
        }
    }
}

/// A static is never dropped: a second watchdog removes the shared broker's files once this
/// process has ended (after the node's watchdog killed the JVM).
fn remove_at_exit(dir: &Path) {
    if let Ok(w) = super::ExitWatchdog::spawn(r#"sleep 2; rm -rf "$1""#, &[dir]) {
        std::mem::forget(w);
    }
}

/// A Kafka cluster id: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
/// `Uuid.randomUuid`, never one that starts with `-`: the storage tool's argument parser
/// would take it for an option and refuse the format (1 start in 64).
fn random_cluster_id() -> String {
    loop {
        let id = base64_url(&rand::random::<[u8; 16]>());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// URL-safe base64 without padding.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

/// Kafka's PEM keystore wants the private key and the chain in one file.
fn combined_pem(dir: &Path, chain: &Path, key: &Path) -> PathBuf {
    let out = dir.join("keystore.pem");
    let mut text = std::fs::read_to_string(key).expect("read key PEM");
    text.push_str(&std::fs::read_to_string(chain).expect("read cert PEM"));
    std::fs::write(&out, text).expect("write keystore PEM");
    out
}

/// Number of brokers a metadata request to `bootstrap` lists (0 on failure; blocking).
pub fn broker_count(bootstrap: &str) -> usize {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "2000")
        .set("log_level", "3")
        .create()
    {
        Ok(c) => c,
        Err(_) => return 0,
    };
    consumer
        .fetch_metadata(None, Duration::from_secs(3))
        .map(|m| m.brokers().len())
        .unwrap_or(0)
}

/// True if a metadata request to `bootstrap` succeeds within ~3 s (blocking).
pub fn metadata_ok(bootstrap: &str) -> bool {
    broker_count(bootstrap) > 0
}
