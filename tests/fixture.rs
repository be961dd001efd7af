//! A relay environment: PostgreSQL + broker + an initialised outbox, and the
//! relay binary as a child process that tests can kill -9, SIGTERM, restart.
//!
//! Each env has a PostgreSQL cluster of its own (so its own database, slot and
//! checkpoint). The broker is the binary-wide shared Apache Kafka unless the
//! test injects broker faults ([`Env::start_own_broker`]); on the shared broker
//! the env's topics, including its DLQ, carry a prefix of their own
//! ([`Env::topic`]), and the relay's `topic-template` and `dlq-topic` say so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox_relay::sink::message::parse_lsn;
use tempfile::TempDir;
use tokio_postgres::Client;

use crate::support::broker::Broker;
use crate::support::kafka::{self, Received};
use crate::support::postgres::PgCluster;
use crate::support::proxy::TcpProxy;
use crate::support::ExitWatchdog;

/// The relay's dead-letter topic (before the env's prefix), created in every env.
pub const DLQ_TOPIC: &str = "outbox.dlq";

/// Path of the relay binary cargo built for this test run, or
/// `OUTBOX_RELAY_BIN` (to measure another build with the same tests, e.g.
/// duplicates per crash before and after a change).
pub fn relay_bin() -> PathBuf {
    std::env::var_os("OUTBOX_RELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay")))
}

/// PostgreSQL, broker and a config file for the relay.
pub struct Env {
    pub pg: PgCluster,
    /// The shared broker, or one of the test's own (see [`Env::start_own_broker`]).
    pub broker: Arc<Broker>,
    /// Prepended to every topic this env uses (empty on a broker of its own).
    pub prefix: String,
    pub dir: TempDir,
    /// Extra TOML appended to the generated config.
    pub extra_toml: String,
    pub max_in_flight: usize,
    /// Where the relay serves /metrics, /healthz, /readyz.
    pub metrics_port: u16,
}

impl Env {
    /// Start both servers, create database `app`, run `outbox-relay init`
    /// and create `topics` with 4 partitions each.
    pub async fn start(topics: &[&str]) -> Env {
        Self::start_with(topics, "", 1000).await
    }

    pub async fn start_with(topics: &[&str], extra_toml: &str, max_in_flight: usize) -> Env {
        let (pg, broker) = tokio::join!(PgCluster::start(), Broker::shared());
        pg.create_database("app").await;
        Self::assemble(pg, broker, topics, extra_toml, max_in_flight).await
    }

    /// Like [`Env::start_with`] on a single-node broker of the test's own, which it may
    /// pause, kill or restart (no topic prefix).
    pub async fn start_own_broker(topics: &[&str], extra_toml: &str, max_in_flight: usize) -> Env {
        let (pg, broker) = tokio::join!(PgCluster::start(), Broker::start());
        pg.create_database("app").await;
        Self::assemble(pg, Arc::new(broker), topics, extra_toml, max_in_flight).await
    }

    /// Like [`Env::start_with`] on a given broker (e.g. a three-node cluster).
    pub async fn start_on(
        broker: Arc<Broker>,
        topics: &[&str],
        extra_toml: &str,
        max_in_flight: usize,
    ) -> Env {
        let pg = PgCluster::start().await;
        pg.create_database("app").await;
        Self::assemble(pg, broker, topics, extra_toml, max_in_flight).await
    }

    /// The physical name of `topic` for this env (its prefix prepended).
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// `bootstrap.servers` for reading back and creating topics (the broker's internal
    /// listener).
    pub fn bootstrap(&self) -> String {
        self.broker.admin_bootstrap()
    }

    pub fn url(&self) -> String {
        self.pg.url_db("app")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    pub fn write_config(&self) {
        let toml = format!(
            r#"
[postgres]
url = "{url}"
connect-timeout = "5s"

[kafka]
brokers = "{brokers}"
max-in-flight = {mif}
{topics}

[kafka.properties]
"linger.ms" = "2"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[relay]
checkpoint-interval = "100ms"
status-interval = "200ms"
backoff-initial = "100ms"
backoff-max = "1s"
shutdown-timeout = "10s"
{extra}
{ha}"#,
            url = self.url(),
            brokers = self.broker.bootstrap(),
            mif = self.max_in_flight,
            topics = if self.prefix.is_empty() {
                String::new()
            } else {
                format!(
                    "topic-template = \"{p}outbox.{{aggregate_type}}\"\ndlq-topic = \"{p}{DLQ_TOPIC}\"",
                    p = self.prefix
                )
            },
            metrics_port = self.metrics_port,
            // Tests that are not about failover pin the lease at 1 s (the
            // default is 500 ms): on this shared 2-core box a leader that
            // fences itself on a slow `SELECT 1` re-sends from its checkpoint,
            // and tests that count duplicates would flake. HA tests say `[ha]`
            // in their extra TOML and get the defaults.
            ha = if self.extra_toml.contains("[ha]") {
                ""
            } else {
                "[ha]\nlease = \"1s\"\n"
            },
            extra = self.extra_toml,
        );
        std::fs::write(self.config_path(), toml).expect("write config");
    }

    /// The relay binary with this env's config and quiet-ish logging.
    pub fn relay_command(&self, args: &[&str]) -> Command {
        self.relay_command_of(&relay_bin(), args)
    }

    /// [`relay_command`](Self::relay_command) of another relay binary (an
    /// older release, tests/versions.rs).
    pub fn relay_command_of(&self, bin: &std::path::Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.arg("--config").arg(self.config_path()).args(args);
        c.env_remove("OUTBOX_RELAY_POSTGRES_URL")
            .env_remove("OUTBOX_RELAY_KAFKA_BROKERS")
            .env("OUTBOX_RELAY_LOG", "info,librdkafka=warn");
        c
    }

    /// Start `outbox-relay run`; its stderr goes to a numbered log file.
    pub fn spawn_relay(&self) -> RelayProc {
        self.spawn_relay_with(&[])
    }

    /// Like [`spawn_relay`](Self::spawn_relay) with extra environment
    /// (config overrides such as `OUTBOX_RELAY_RELAY_MAX_RETRY`).
    pub fn spawn_relay_with(&self, env: &[(&str, &str)]) -> RelayProc {
        self.spawn_relay_of(&relay_bin(), env)
    }

    /// [`spawn_relay_with`](Self::spawn_relay_with) of another relay binary.
    pub fn spawn_relay_of(&self, bin: &std::path::Path, env: &[(&str, &str)]) -> RelayProc {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = self.dir.path().join(format!("relay-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = self.relay_command_of(bin, &["run"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn relay");
        let watchdog = ExitWatchdog::spawn(
            &format!("kill -9 {} 2>/dev/null", child.id()),
            &[] as &[&str],
        )
        .ok();
        RelayProc {
            child: Some(child),
            log,
            watchdog,
        }
    }

    pub async fn client(&self) -> Client {
        self.pg.client_db("app").await
    }

    /// All ids in the outbox table.
    pub async fn outbox_ids(&self) -> HashSet<i64> {
        let c = self.client().await;
        c.query("SELECT id FROM public.outbox", &[])
            .await
            .expect("select ids")
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect()
    }

    /// The checkpoint table's LSN for the default slot.
    pub async fn checkpoint(&self) -> Option<u64> {
        let c = self.client().await;
        c.query_opt(
            "SELECT lsn::text FROM public.outbox_relay_checkpoint WHERE slot_name = 'outbox_relay'",
            &[],
        )
        .await
        .expect("checkpoint query")
        .and_then(|r| parse_lsn(&r.get::<_, String>(0)))
    }

    /// The slot's confirmed_flush_lsn.
    pub async fn confirmed_flush(&self) -> u64 {
        let c = self.client().await;
        let r = c
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'outbox_relay'",
                &[],
            )
            .await
            .expect("slot query");
        parse_lsn(&r.get::<_, String>(0)).expect("lsn")
    }

    /// Reads `topic` (before the env's prefix) from the start until `expected` records.
    pub async fn read(&self, topic: &str, expected: usize, deadline: Duration) -> Vec<Received> {
        kafka::read_all_async(&self.bootstrap(), &self.topic(topic), expected, deadline).await
    }

    /// Read until every id of `ids` arrived at least once (duplicates do
    /// not count towards completion), or the deadline.
    pub async fn read_ids(
        &self,
        topic: &str,
        ids: &HashSet<i64>,
        deadline: Duration,
    ) -> Vec<Received> {
        let mut want = ids.clone();
        let mut seen = 0;
        kafka::read_until_async(
            &self.bootstrap(),
            &self.topic(topic),
            deadline,
            move |got| {
                for m in &got[seen..] {
                    if let Some(id) = m.header_str("id").and_then(|s| s.parse::<i64>().ok()) {
                        want.remove(&id);
                    }
                }
                seen = got.len();
                want.is_empty()
            },
        )
        .await
    }
}

/// Additional ways to start an [`Env`] (used by the fault and odd-data
/// tests): a broker behind a proxy, a custom `app` database.
impl Env {
    /// Like [`Env::start_with`], but the broker is started with
    /// [`Broker::start_proxied`]: it advertises the proxy, so every byte
    /// between the relay (and the test's readers) and the broker crosses the
    /// returned [`TcpProxy`], which can pause, cut or refuse it.
    pub async fn start_proxied_broker(
        topics: &[&str],
        extra_toml: &str,
        max_in_flight: usize,
    ) -> (Env, TcpProxy) {
        let (pg, (broker, proxy)) = tokio::join!(PgCluster::start(), Broker::start_proxied());
        pg.create_database("app").await;
        let env = Self::assemble(pg, Arc::new(broker), topics, extra_toml, max_in_flight).await;
        (env, proxy)
    }

    /// Like [`Env::start_with`], but database `app` is created with
    /// `create_db_sql` (which must create a database named `app`), e.g.
    /// `CREATE DATABASE app TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'`.
    pub async fn start_with_app_db(
        topics: &[&str],
        extra_toml: &str,
        max_in_flight: usize,
        create_db_sql: &str,
    ) -> Env {
        let (pg, broker) = tokio::join!(PgCluster::start(), Broker::shared());
        pg.client()
            .await
            .batch_execute(create_db_sql)
            .await
            .unwrap_or_else(|e| panic!("{create_db_sql}: {e}"));
        Self::assemble(pg, broker, topics, extra_toml, max_in_flight).await
    }

    /// Config file, topics (4 partitions each, plus the DLQ) and `init`.
    async fn assemble(
        pg: PgCluster,
        broker: Arc<Broker>,
        topics: &[&str],
        extra_toml: &str,
        max_in_flight: usize,
    ) -> Env {
        static ENVS: AtomicUsize = AtomicUsize::new(0);
        let prefix = if broker.is_shared() {
            format!("it{}.", ENVS.fetch_add(1, Ordering::SeqCst))
        } else {
            String::new()
        };
        let env = Env {
            pg,
            broker,
            prefix,
            dir: tempfile::tempdir().expect("tempdir"),
            extra_toml: extra_toml.to_string(),
            max_in_flight,
            metrics_port: crate::support::free_port(),
        };
        env.write_config();
        for t in topics.iter().chain(&[DLQ_TOPIC]) {
            kafka::create_topic(&env.bootstrap(), &env.topic(t), 4).await;
        }
        let out = env.relay_command(&["init"]).output().expect("run init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    /// Status and retry count of outbox row `id`.
    pub async fn row_status(&self, id: i64) -> (String, i32) {
        let r = self
            .client()
            .await
            .query_one(
                "SELECT status, retry_count FROM public.outbox WHERE id = $1",
                &[&id],
            )
            .await
            .expect("row status");
        (r.get(0), r.get(1))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() && self.broker.is_shared() {
            let kept = crate::support::tmp_root().join(format!(
                "outbox-it-shared-kafka-{}-{}.log",
                std::process::id(),
                self.prefix.trim_end_matches('.')
            ));
            let _ = std::fs::copy(self.broker.log_path(), &kept);
            eprintln!(
                "--- shared broker (topics of this env start with {:?}; log copied to {}) ---\n{}",
                self.prefix,
                kept.display(),
                self.broker.logs_tail(30)
            );
        }
    }
}

impl RelayProc {
    /// Process id of the running relay.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident set size so far (`VmHWM` of /proc/PID/status), in kB.
    pub fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// A running relay process.
pub struct RelayProc {
    child: Option<Child>,
    pub log: PathBuf,
    /// Kills the relay if the test process ends without dropping this (a
    /// test binary killed mid-test left its relays running); dropped with
    /// the child once it is reaped, so it never outlives the pid.
    watchdog: Option<ExitWatchdog>,
}

impl RelayProc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.watchdog = None;
        }
    }

    /// SIGTERM, then wait up to `deadline` for exit.
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let end = std::time::Instant::now() + deadline;
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.watchdog = None;
                return st;
            }
            if std::time::Instant::now() > end {
                let _ = c.kill();
                panic!("relay did not exit within {deadline:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status once the relay has exited (`None` while it runs).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().expect("try_wait");
        if st.is_some() {
            self.watchdog = None;
        }
        st
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- relay log {} ---\n{}",
                self.log.display(),
                crate::support::tail_file(&self.log, 60)
            );
        }
        self.kill9();
    }
}

/// Analysis of what arrived on a topic.
pub struct Arrival {
    /// Count per outbox id.
    pub counts: HashMap<i64, usize>,
    /// Messages per partition, in offset order.
    pub by_partition: BTreeMap<i32, Vec<Received>>,
}

impl Arrival {
    pub fn of(msgs: &[Received]) -> Arrival {
        let mut counts = HashMap::new();
        let mut by_partition: BTreeMap<i32, Vec<Received>> = BTreeMap::new();
        for m in msgs {
            let id: i64 = m
                .header_str("id")
                .expect("id header")
                .parse()
                .expect("numeric id");
            *counts.entry(id).or_default() += 1;
            by_partition.entry(m.partition).or_default().push(m.clone());
        }
        for v in by_partition.values_mut() {
            v.sort_by_key(|m| m.offset);
        }
        Arrival {
            counts,
            by_partition,
        }
    }

    pub fn duplicates(&self) -> usize {
        self.counts.values().map(|c| c - 1).sum()
    }

    /// Every id in `expected` arrived at least once and nothing else did.
    pub fn assert_complete(&self, expected: &HashSet<i64>) {
        let got: HashSet<i64> = self.counts.keys().copied().collect();
        let missing: Vec<_> = expected.difference(&got).take(10).collect();
        let extra: Vec<_> = got.difference(expected).take(10).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing {} ids (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
            expected.difference(&got).count(),
            got.difference(expected).count()
        );
    }

    /// Within every partition, the first delivery of each message is in
    /// commit order: commit LSN never decreases, and within one transaction
    /// ids increase. Re-deliveries after a crash (duplicates) are skipped.
    pub fn assert_commit_order(&self) {
        for (p, msgs) in &self.by_partition {
            let mut seen = HashSet::new();
            let mut last: Option<(u64, i64)> = None;
            for m in msgs {
                let id: i64 = m.header_str("id").unwrap().parse().unwrap();
                if !seen.insert(id) {
                    continue;
                }
                let lsn = parse_lsn(&m.header_str("lsn").expect("lsn header")).expect("lsn");
                if let Some(prev) = last {
                    assert!(
                        (lsn, id) > prev,
                        "partition {p}: id {id} at lsn {lsn:X} came after id {} at lsn {:X}",
                        prev.1,
                        prev.0
                    );
                }
                last = Some((lsn, id));
            }
        }
    }
}
