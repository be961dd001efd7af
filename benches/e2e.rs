//! End-to-end benchmark on a real PostgreSQL 15 and Apache Kafka 4.1 (a
//! single KRaft node from `tests/support/broker.rs`), with the real relay
//! binary.
//!
//! ```text
//! cargo bench --bench e2e -- [--events N] [--rate R] [--seconds S] [--repeat K] [--quick]
//! scripts/bench.sh [same flags]                   # release build + this
//! scripts/bench.sh --against debezium [flags]     # the Debezium comparison (issue 10)
//! scripts/bench.sh --against exactly-once [flags] # exactly-once vs at-least-once (issue 11)
//! ```
//!
//! Default parts (`--only catchup,steady,polling,memory` to pick):
//!
//! 1. **catchup** — N outbox rows (default 1,000,000, `--txn-rows` per
//!    transaction) are committed while the relay is stopped, after a second
//!    pgoutput slot was created. Timed: `pg_recvlogical` draining that slot
//!    to a file (`--endpos` = the WAL position after the backlog); the relay
//!    from process start until **the broker holds the last message** (sum of
//!    the topic's end offsets = N; with acks=all those are acknowledged and
//!    readable), and separately until its checkpoint table covers the last
//!    commit; a bare rdkafka producer (the relay's producer settings) sending
//!    the same N messages (size, keys, 7 headers) until the last ack. CPU:
//!    the relay's utime+stime from /proc per event, next to the broker JVM's.
//! 2. **steady** — single-row transactions at `--rate` for `--seconds`
//!    through the relay, a consumer attached to its topic: transaction start
//!    and commit (as the load generator saw them) and the relay's
//!    `commit_timestamp` header (PostgreSQL's commit time) → the broker's
//!    append time (topics use `message.timestamp.type=LogAppendTime`: no
//!    consumer clock involved), and commit → consumer receive. The broker
//!    floor: a bare producer at the same rate, produce → ack, → append,
//!    → receive. "Added" latency is relay minus floor at the same quantile.
//! 3. **polling** — the same load through the polling relay of
//!    `e2e_parts/polling.rs` at its default interval and at 100 ms.
//! 4. **memory** — the relay's RSS idle and through one transaction of
//!    `--big-rows` × `--big-row-bytes` (default 200,000 × 1 KiB ≈ 200 MB).
//!
//! Database cost (statements per event by role, `pg_stat_statements`) rides
//! along: the relay runs as `postgres`, the poller as `poller`, everything
//! the benchmark does as `bench`.
//!
//! `--repeat K` (default 3, 1 with `--quick`) repeats catch-up and steady;
//! the table shows the median with the spread (min–max) of every run.
//!
//! `--against debezium` runs the comparison instead (`e2e_parts/compare.rs`):
//! the relay and Debezium (PostgreSQL connector + Outbox Event Router in a
//! Kafka Connect standalone worker, jars in `$DEBEZIUM_LIBS`), one at a time
//! on the same backlog, PostgreSQL and broker.
//!
//! `--against exactly-once` runs the relay in both delivery modes the same
//! way (`e2e_parts/modes.rs`): catch-up and commit → visible to a
//! `read_committed` consumer at `--rates` (default 2,000/s).
//!
//! Prints markdown and writes JSON to `$CARGO_TARGET_DIR/bench/e2e.json`
//! (`debezium.json`, `exactly-once.json` for the comparisons). Without `--bench` in its arguments
//! (as under `cargo test --all-targets`) it prints one line and exits.
//!
//! Conditions worth knowing when reading the numbers:
//!
//! * PostgreSQL runs with the test harness's settings (`fsync = off`,
//!   `full_page_writes = off`) but `synchronous_commit = on`: with it off a
//!   commit returns before its WAL is flushed, and logical walsenders only
//!   send flushed WAL, so every event would wait for the WAL writer (up to
//!   200 ms). Before each latency part the outbox tables are vacuumed and a
//!   checkpoint is forced.
//! * The broker is one KRaft node with the harness's small JVM (`-Xmx512m`,
//!   serial GC, C1 only). One broker serves the whole run; every measurement
//!   writes a topic of its own.
//! * Everything shares the 2 cores: PostgreSQL, the broker, the contender,
//!   the load generator and the consumer. Each part reports machine CPU busy
//!   % and the CPU seconds of the contender and the broker, and whether
//!   other builds or tests were running.
//!
//! Knobs for experiments: `--relay-toml 'TOML'` merges into the relay's
//! config (e.g. `'[kafka]\nmax-in-flight = 50000'`);
//! `E2E_PRODUCER_PROPS=k=v,…` changes the bare and polling producers;
//! `E2E_PERF=DIR` records `perf record -a -g` while each relay runs;
//! `E2E_RELAY_LOG` sets the relay's log filter; `OUTBOX_RELAY_BIN` runs
//! another relay binary; `CONNECT_JAVA_OPTS` the Connect JVM's options.

#[path = "e2e_parts/compare.rs"]
mod compare;
#[path = "e2e_parts/connect.rs"]
mod connect;
#[path = "e2e_parts/harness.rs"]
mod harness;
#[path = "e2e_parts/load.rs"]
mod load;
#[path = "e2e_parts/measure.rs"]
mod measure;
#[path = "e2e_parts/modes.rs"]
mod modes;
#[path = "e2e_parts/polling.rs"]
mod polling;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_relay::sink::message::format_lsn;
use rdkafka::consumer::BaseConsumer;
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use harness::{ProcSample, Relay, Statements};
use load::{Clock, Dist};
use measure::Kind;
use support::broker::Broker;
use support::postgres::PgCluster;

const USAGE: &str =
    "usage: cargo bench --bench e2e -- [--events N] [--rate R] [--seconds S] [--quick] [--repeat K]
  [--txn-rows N] [--payload-bytes N] [--big-rows N] [--big-row-bytes N] [--partitions N]
  [--poll-interval-ms N] [--fast-poll-interval-ms N] [--poll-batch N] [--load-conns N]
  [--fetch-wait-ms N] [--only catchup,steady,polling,memory] [--relay-toml TOML]
  [--against debezium [--rates 2000,10000] [--max-rates 2000,5000,10000,15000,20000]
   [--max-rate-seconds 60] [--max-rate-conns N]]";

#[derive(Debug, Clone)]
pub struct Opts {
    events: u64,
    rate: f64,
    seconds: f64,
    txn_rows: u64,
    payload_bytes: usize,
    big_rows: u64,
    big_row_bytes: usize,
    partitions: i32,
    poll_interval_ms: u64,
    fast_poll_interval_ms: u64,
    poll_batch: i64,
    load_conns: usize,
    fetch_wait_ms: u32,
    repeat: usize,
    only: Vec<String>,
    relay_toml: String,
    against: Vec<String>,
    rates: Vec<f64>,
    max_rates: Vec<f64>,
    max_rate_seconds: f64,
    max_rate_conns: usize,
    args: Vec<String>,
}

fn list(v: String) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Opts {
    fn parse(args: Vec<String>) -> Result<Opts> {
        let quick = args.iter().any(|a| a == "--quick");
        let mut o = Opts {
            events: if quick { 20_000 } else { 1_000_000 },
            rate: 2000.0,
            seconds: if quick { 5.0 } else { 60.0 },
            txn_rows: 10,
            payload_bytes: 256,
            big_rows: if quick { 20_000 } else { 200_000 },
            big_row_bytes: 1024,
            partitions: 4,
            poll_interval_ms: 5000,
            fast_poll_interval_ms: 100,
            poll_batch: 100,
            load_conns: 4,
            fetch_wait_ms: 10,
            repeat: if quick { 1 } else { 3 },
            only: Vec::new(),
            relay_toml: String::new(),
            against: Vec::new(),
            // Filled in below when `--rates` is not given.
            rates: Vec::new(),
            max_rates: if quick {
                vec![2000.0, 5000.0]
            } else {
                vec![2000.0, 5000.0, 10000.0, 15000.0, 20000.0]
            },
            max_rate_seconds: if quick { 8.0 } else { 60.0 },
            max_rate_conns: 12,
            args: args.iter().filter(|a| *a != "--bench").cloned().collect(),
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            if flag == "--bench" || flag == "--quick" {
                continue;
            }
            let mut val = || -> Result<String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))
            };
            macro_rules! num {
                () => {
                    val()?
                        .replace('_', "")
                        .parse()
                        .with_context(|| format!("{flag}: not a number"))?
                };
            }
            macro_rules! nums {
                () => {
                    list(val()?)
                        .iter()
                        .map(|s| s.replace('_', "").parse::<f64>())
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .with_context(|| format!("{flag}: not a list of numbers"))?
                };
            }
            match flag.as_str() {
                "--events" => o.events = num!(),
                "--rate" => o.rate = num!(),
                "--seconds" => o.seconds = num!(),
                "--txn-rows" => o.txn_rows = num!(),
                "--payload-bytes" => o.payload_bytes = num!(),
                "--big-rows" => o.big_rows = num!(),
                "--big-row-bytes" => o.big_row_bytes = num!(),
                "--partitions" => o.partitions = num!(),
                "--poll-interval-ms" => o.poll_interval_ms = num!(),
                "--fast-poll-interval-ms" => o.fast_poll_interval_ms = num!(),
                "--poll-batch" => o.poll_batch = num!(),
                "--load-conns" => o.load_conns = num!(),
                "--fetch-wait-ms" => o.fetch_wait_ms = num!(),
                "--repeat" => o.repeat = num!(),
                "--only" => o.only = list(val()?),
                "--relay-toml" => o.relay_toml = val()?.replace("\\n", "\n"),
                "--against" => o.against = list(val()?),
                "--rates" => o.rates = nums!(),
                "--max-rates" => o.max_rates = nums!(),
                "--max-rate-seconds" => o.max_rate_seconds = num!(),
                "--max-rate-conns" => o.max_rate_conns = num!(),
                "--help" | "-h" => bail!("{USAGE}"),
                _ => bail!("unknown argument {a:?}\n{USAGE}"),
            }
        }
        if o.events == 0 || o.rate <= 0.0 || o.seconds <= 0.0 || o.txn_rows == 0 || o.repeat == 0 {
            bail!("--events, --rate, --seconds, --txn-rows and --repeat must be > 0");
        }
        if o.payload_bytes < 32 || o.big_row_bytes < 32 {
            bail!("--payload-bytes and --big-row-bytes must be >= 32");
        }
        if let Some(x) = o
            .against
            .iter()
            .find(|a| !["debezium", "exactly-once"].contains(&a.as_str()))
        {
            bail!("--against {x}: `debezium` or `exactly-once`");
        }
        if o.against.len() > 1 {
            bail!("--against: one of `debezium` or `exactly-once` per run");
        }
        if o.rates.is_empty() {
            o.rates = if o.against_exactly_once() {
                vec![2000.0]
            } else {
                vec![2000.0, 10000.0]
            };
        }
        if o.only.is_empty() {
            o.only = if o.against.is_empty() {
                ["catchup", "steady", "polling", "memory"]
                    .map(String::from)
                    .to_vec()
            } else {
                ["catchup", "steady", "maxrate"].map(String::from).to_vec()
            };
        }
        Ok(o)
    }

    fn wants(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }

    /// `--against exactly-once`: the delivery modes side by side.
    fn against_exactly_once(&self) -> bool {
        self.against.iter().any(|a| a == "exactly-once")
    }

    /// `pad` so that the jsonb payload text is about `bytes` long.
    pub fn pad(bytes: usize) -> usize {
        bytes.saturating_sub(24)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("e2e benchmark: skipped (run with cargo bench --bench e2e)");
        return;
    }
    let opts = match Opts::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("e2e: {e:#}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(opts)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("e2e benchmark failed: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Table rows and JSON, filled by the parts.
#[derive(Default)]
pub struct Report {
    rows: Vec<[String; 3]>,
    json: Map<String, Value>,
    targets: Vec<[String; 4]>,
}

impl Report {
    pub fn row(&mut self, part: &str, metric: &str, value: impl Into<String>) {
        self.rows
            .push([part.to_string(), metric.to_string(), value.into()]);
        println!(
            "[e2e] {part}: {metric}: {}",
            self.rows.last().expect("row")[2]
        );
    }

    pub fn target(&mut self, what: &str, goal: &str, measured: String, ok: Option<bool>) {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        self.targets
            .push([what.into(), goal.into(), measured, verdict.into()]);
    }
}

/// Everything a part needs.
pub struct Env {
    opts: Opts,
    pg: PgCluster,
    broker: Broker,
    /// The broker's client listener.
    bootstrap: String,
    /// A group-less client for end offsets.
    offsets: Arc<BaseConsumer>,
    topics: Mutex<HashSet<String>>,
    dir: tempfile::TempDir,
    /// The benchmark's own connection (role `bench`, database `app`).
    ctl: Arc<Client>,
    bench_url: String,
    poller_url: String,
    relay_url: String,
    clock: Clock,
    relays_started: std::cell::Cell<usize>,
}

impl Env {
    /// Create `name` (once) with `--partitions` partitions and the broker's
    /// append time as the record timestamp.
    pub async fn topic(&self, name: &str) -> Result<()> {
        if !self.topics.lock().expect("topics").insert(name.to_string()) {
            return Ok(());
        }
        support::kafka::create_topic_with(
            &self.bootstrap,
            name,
            self.opts.partitions,
            &[("message.timestamp.type", "LogAppendTime")],
        )
        .await;
        Ok(())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    /// The exactly-once contender's config (`--against exactly-once`).
    fn exactly_once_config_path(&self) -> PathBuf {
        self.dir.path().join("relay-exactly-once.toml")
    }

    /// Write the exactly-once contender's config ([`measure::EXACTLY_ONCE_TOML`]
    /// over `--relay-toml`) with a fresh metrics port; returns the port.
    fn write_exactly_once_config(&self) -> Result<u16> {
        let port = support::free_port();
        harness::write_config(
            &self.exactly_once_config_path(),
            &self.relay_url,
            &self.bootstrap,
            port,
            &[&self.opts.relay_toml, measure::EXACTLY_ONCE_TOML],
        )?;
        Ok(port)
    }

    /// Start the relay in exactly-once mode on its own slot and topics.
    fn start_relay_exactly_once(&self) -> Result<Relay> {
        let port = self.write_exactly_once_config()?;
        self.spawn_relay(&self.exactly_once_config_path(), "relay-eo", port)
    }

    /// Write the config for `brokers` and start a relay process.
    fn start_relay(&self, brokers: &str) -> Result<Relay> {
        let port = support::free_port();
        harness::write_config(
            &self.config_path(),
            &self.relay_url,
            brokers,
            port,
            &[&self.opts.relay_toml],
        )?;
        self.spawn_relay(&self.config_path(), "relay", port)
    }

    /// Start a relay on `config`, logging to `<name>-<n>.log` (n counts
    /// every relay this run started).
    fn spawn_relay(&self, config: &Path, name: &str, port: u16) -> Result<Relay> {
        self.relays_started.set(self.relays_started.get() + 1);
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", self.relays_started.get()));
        Relay::spawn(config, log, port)
    }
}

/// Samples a process's RSS and CPU every 20 ms until stopped.
pub struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    join: std::thread::JoinHandle<ProcSample>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let join = std::thread::spawn(move || {
            let mut sample = ProcSample::default();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                sample.sample(pid);
                std::thread::sleep(Duration::from_millis(20));
            }
            sample.sample(pid);
            sample
        });
        Sampler { stop, join }
    }

    pub fn finish(self) -> ProcSample {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.join.join().unwrap_or_default()
    }
}

/// Median, min and max of `v` (None when empty).
pub fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((m, v[0], v[v.len() - 1]))
}

/// `12,345/s (11,900–12,800, 3 runs)` style cell.
pub fn spread_cell(v: &[f64], fmt: impl Fn(f64) -> String) -> String {
    match spread(v) {
        None => "n/a".into(),
        Some((m, lo, hi)) if v.len() > 1 => {
            format!("{} ({}–{}, {} runs)", fmt(m), fmt(lo), fmt(hi), v.len())
        }
        Some((m, _, _)) => fmt(m),
    }
}

pub fn spread_json(v: &[f64]) -> Value {
    match spread(v) {
        None => Value::Null,
        Some((m, lo, hi)) => json!({"median": m, "min": lo, "max": hi, "runs": v}),
    }
}

/// `12,345` with thousands separators.
pub fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

async fn run(opts: Opts) -> Result<()> {
    let started = Instant::now();
    let clock = Clock::new();
    let mut rep = Report::default();
    let compare_mode = !opts.against.is_empty();
    let command = if compare_mode {
        format!("scripts/bench.sh {}", opts.args.join(" "))
    } else {
        format!("cargo bench --bench e2e -- {}", opts.args.join(" "))
    };
    rep.json.insert("command".into(), json!(command.trim()));
    rep.json.insert("machine".into(), harness::machine());
    rep.json.insert(
        "options".into(),
        json!({"events": opts.events, "rate": opts.rate, "seconds": opts.seconds,
               "txn_rows": opts.txn_rows, "payload_bytes": opts.payload_bytes,
               "big_rows": opts.big_rows, "big_row_bytes": opts.big_row_bytes,
               "partitions": opts.partitions, "poll_interval_ms": opts.poll_interval_ms,
               "fast_poll_interval_ms": opts.fast_poll_interval_ms, "poll_batch": opts.poll_batch,
               "load_conns": opts.load_conns, "fetch_wait_ms": opts.fetch_wait_ms,
               "repeat": opts.repeat, "only": opts.only, "against": opts.against,
               "rates": opts.rates, "max_rates": opts.max_rates,
               "max_rate_seconds": opts.max_rate_seconds, "max_rate_conns": opts.max_rate_conns,
               "relay_toml": opts.relay_toml, "relay_bin": harness::relay_bin()}),
    );
    let modes_mode = opts.against_exactly_once();
    let compare_mode = compare_mode && !modes_mode;
    if compare_mode && connect::libs().is_none() {
        bail!("--against debezium needs DEBEZIUM_LIBS (scripts/bench.sh --against debezium fetches the jars)");
    }

    let env = setup(opts.clone(), clock).await?;
    let pg_version: String = env.ctl.query_one("SHOW server_version", &[]).await?.get(0);
    if let Some(m) = rep.json.get_mut("machine").and_then(Value::as_object_mut) {
        m.insert("postgresql".into(), json!(pg_version));
        m.insert(
            "broker".into(),
            json!(format!(
                "Apache Kafka {} (1 KRaft node, -Xmx512m, serial GC, C1)",
                support::broker::KAFKA_VERSION
            )),
        );
        if let Some(libs) = connect::libs() {
            let (c, d) = connect::versions(&libs);
            m.insert("kafka_connect".into(), json!(c));
            m.insert("debezium".into(), json!(d));
            m.insert(
                "connect_java_opts".into(),
                json!(connect::java_opts().join(" ")),
            );
        }
        let java = std::process::Command::new("java")
            .arg("-version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .map(str::to_string)
            });
        m.insert("java".into(), json!(java));
    }

    let mut failures = Vec::new();
    macro_rules! part {
        ($name:literal, $e:expr) => {
            if env.opts.wants($name) {
                let t = Instant::now();
                eprintln!("[e2e] --- {} ---", $name);
                let before = harness::foreign_activity();
                let result = $e;
                let after = harness::foreign_activity();
                let busy = |v: &Value| v["build_or_test_processes"].as_u64().unwrap_or(0);
                let load = |v: &Value| v["loadavg_1m"].as_f64().unwrap_or(0.0);
                // Only other builds or tests skew the numbers: the load
                // average alone also counts the benchmark's own processes
                // (broker, Connect, load generator), so it is only reported.
                if busy(&before) + busy(&after) > 0 {
                    rep.row(
                        "note",
                        &format!("{}: machine load", $name),
                        format!(
                            "{} other build/test processes at start, {} at end; load average {:.1} → {:.1} (numbers are skewed)",
                            busy(&before),
                            busy(&after),
                            load(&before),
                            load(&after)
                        ),
                    );
                }
                rep.json.insert(
                    format!("{}_foreign_activity", $name),
                    json!({"start": before, "end": after}),
                );
                if let Err(e) = result {
                    eprintln!("[e2e] part {} failed: {e:#}", $name);
                    failures.push(format!("{}: {e:#}", $name));
                    rep.json
                        .insert(format!("{}_error", $name), json!(format!("{e:#}")));
                }
                eprintln!("[e2e] {} took {:.1} s", $name, t.elapsed().as_secs_f64());
            }
        };
    }
    let mut relay_mean = RelayLatency::default();
    if modes_mode {
        let mut m = modes::Modes::default();
        part!("catchup", modes::catchup(&env, &mut rep, &mut m).await);
        part!("steady", modes::steady(&env, &mut rep, &mut m).await);
        modes::finish(&env, &mut rep, &m);
    } else if compare_mode {
        let mut cmp = compare::Compare::default();
        part!("catchup", compare::catchup(&env, &mut rep, &mut cmp).await);
        part!("steady", compare::steady(&env, &mut rep, &mut cmp).await);
        part!("maxrate", compare::max_rate(&env, &mut rep, &mut cmp).await);
        compare::finish(&env, &mut rep, &cmp);
    } else {
        part!("catchup", catchup(&env, &mut rep).await);
        part!("steady", {
            steady(&env, &mut rep).await.map(|m| relay_mean = m)
        });
        part!("polling", polling(&env, &mut rep, relay_mean).await);
        part!("memory", memory(&env, &mut rep).await);
    }

    rep.json
        .insert("elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    print_report(&rep, &command);
    let path = json_path(if modes_mode {
        "exactly-once.json"
    } else if compare_mode {
        "debezium.json"
    } else {
        "e2e.json"
    });
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut out = Value::Object(rep.json.clone());
    out["table"] = json!(rep.rows);
    out["targets"] = json!(rep
        .targets
        .iter()
        .map(|t| json!({"target": t[0], "goal": t[1], "measured": t[2], "verdict": t[3]}))
        .collect::<Vec<_>>());
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("\nJSON: {}", path.display());
    if !failures.is_empty() {
        bail!("{} part(s) failed: {}", failures.len(), failures.join("; "));
    }
    drop(env);
    Ok(())
}

/// `$CARGO_TARGET_DIR/bench/NAME`, else the target dir this bench binary
/// lives in (`…/target/release/deps/e2e-…`).
fn json_path(name: &str) -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("bench").join(name);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench")
        .join(name)
}

async fn setup(opts: Opts, clock: Clock) -> Result<Env> {
    let (mut pg, broker) = tokio::join!(PgCluster::start(), Broker::start());
    {
        let c = pg.client().await;
        for s in [
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
            "ALTER SYSTEM SET max_wal_size = '4GB'",
            // The harness runs with synchronous_commit = off, which lets a
            // commit return before its WAL is flushed; logical walsenders
            // only send flushed WAL, so every event would wait up to
            // wal_writer_delay (200 ms). Production default: on.
            "ALTER SYSTEM SET synchronous_commit = on",
        ] {
            c.batch_execute(s).await?;
        }
    }
    pg.restart("fast").await;
    pg.create_database("app").await;
    pg.create_role("bench", "bench", "SUPERUSER").await;
    pg.create_role("poller", "poller", "SUPERUSER").await;
    let bench_url = pg.url_for("app", "bench", "bench");
    let poller_url = pg.url_for("app", "poller", "poller");
    let relay_url = pg.url_db("app");
    let ctl = Arc::new(support::postgres::connect(&bench_url).await?);
    if let Err(e) = ctl
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
    {
        eprintln!("[e2e] pg_stat_statements unavailable ({e}); statement counts will be missing");
    }
    let dir = tempfile::Builder::new()
        .prefix("outbox-bench-")
        .tempdir_in("/tmp")?;
    let bootstrap = broker.bootstrap();
    let env = Env {
        offsets: Arc::new(load::offsets_client(&bootstrap)?),
        bootstrap,
        opts,
        pg,
        broker,
        topics: Mutex::new(HashSet::new()),
        dir,
        ctl,
        bench_url,
        poller_url,
        relay_url,
        clock,
        relays_started: std::cell::Cell::new(0),
    };
    harness::write_config(
        &env.config_path(),
        &env.relay_url,
        &env.bootstrap,
        support::free_port(),
        &[&env.opts.relay_toml],
    )?;
    harness::relay_init(&env.config_path())?;
    if env.opts.against_exactly_once() {
        // Its own slot and the progress topic.
        env.write_exactly_once_config()?;
        harness::relay_init(&env.exactly_once_config_path())?;
    }
    env.ctl
        .batch_execute(
            "CREATE TABLE public.outbox_poll (LIKE public.outbox INCLUDING ALL);
             CREATE INDEX ON public.outbox_poll (status, created_at, id)",
        )
        .await?;
    if !env.opts.against.is_empty() {
        // Debezium's own publication, inserts only like the relay's.
        env.ctl
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE public.outbox WITH (publish = 'insert')",
                connect::PUBLICATION
            ))
            .await?;
    }
    eprintln!(
        "[e2e] PostgreSQL {} · Apache Kafka {} · work dir {}",
        env.pg.port(),
        env.bootstrap,
        env.dir.path().display()
    );
    Ok(env)
}

// ------------------------------------------------------------------ catch-up

/// A backlog committed while every contender was stopped.
pub struct Backlog {
    pub agg: String,
    pub n: u64,
    pub txns: u64,
    /// WAL position after the backlog (pg_recvlogical's --endpos).
    pub end_pos: u64,
    pub wal_bytes: u64,
    pub preload_s: f64,
}

/// Write `n` rows of `agg` after creating pg_recvlogical's slot (and, when
/// comparing, a fresh Debezium slot) and moving the relay's slot to now:
/// every slot then holds exactly this backlog.
pub async fn preload(env: &Env, agg: &str, with_dbz: bool) -> Result<Backlog> {
    let n = env.opts.events;
    let c = &*env.ctl;
    env.skip_slot("outbox_relay").await?;
    env.skip_slot(measure::EXACTLY_ONCE_SLOT).await?;
    // A failed run may have left pg_recvlogical's slot behind.
    c.batch_execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = 'bench_recv'",
    )
    .await?;
    c.batch_execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        .await?;
    if with_dbz {
        env.recreate_dbz_slot().await?;
    }
    let before = harness::insert_lsn(c).await?;
    let t = Instant::now();
    c.batch_execute(&preload_sql(
        agg,
        n,
        env.opts.txn_rows,
        Opts::pad(env.opts.payload_bytes),
    ))
    .await
    .context("preload")?;
    let preload_s = t.elapsed().as_secs_f64();
    let end_pos = harness::insert_lsn(c).await?;
    c.batch_execute("CHECKPOINT").await?;
    Ok(Backlog {
        agg: agg.to_string(),
        n,
        txns: n.div_ceil(env.opts.txn_rows),
        end_pos,
        wal_bytes: end_pos - before,
        preload_s,
    })
}

fn preload_sql(agg: &str, n: u64, txn_rows: u64, pad: usize) -> String {
    format!(
        "DO $$ DECLARE i bigint := 0; BEGIN WHILE i < {n} LOOP \
         INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
         SELECT '{agg}', 'agg-' || (g % 1000), 'BenchEvent', \
         jsonb_build_object('n', g, 'pad', repeat('x', {pad})), '{h}'::jsonb \
         FROM generate_series(i + 1, LEAST(i + {txn_rows}, {n})) g; \
         i := i + {txn_rows}; COMMIT; END LOOP; END $$",
        h = load::ROW_HEADERS
    )
}

/// Counts in a `pg_recvlogical` pgoutput file: (inserts, commits, end LSN
/// of the last commit). Messages are written back to back, each followed
/// by a newline.
fn scan_pgoutput(buf: &[u8]) -> Option<(u64, u64, u64)> {
    let (mut inserts, mut commits, mut last_end) = (0, 0, 0);
    let mut pos = 0usize;
    let u16_at = |p: usize| Some(u16::from_be_bytes(buf.get(p..p + 2)?.try_into().ok()?) as usize);
    let u32_at = |p: usize| Some(u32::from_be_bytes(buf.get(p..p + 4)?.try_into().ok()?) as usize);
    let cstr_end = |p: usize| Some(p + buf.get(p..)?.iter().position(|&b| b == 0)? + 1);
    while pos < buf.len() {
        let tag = *buf.get(pos)?;
        let mut p = pos + 1;
        match tag {
            b'B' => p += 20,
            b'C' => {
                last_end = u64::from_be_bytes(buf.get(p + 9..p + 17)?.try_into().ok()?);
                commits += 1;
                p += 25;
            }
            b'R' => {
                p = cstr_end(cstr_end(p + 4)?)? + 1;
                let n = u16_at(p)?;
                p += 2;
                for _ in 0..n {
                    p = cstr_end(p + 1)? + 8;
                }
            }
            b'Y' => p = cstr_end(cstr_end(p + 4)?)?,
            b'O' => p = cstr_end(p + 8)?,
            b'I' => {
                p += 5;
                let n = u16_at(p)?;
                p += 2;
                for _ in 0..n {
                    let kind = *buf.get(p)?;
                    p += 1;
                    if kind == b't' || kind == b'b' {
                        p += 4 + u32_at(p)?;
                    }
                }
                inserts += 1;
            }
            _ => return None,
        }
        if buf.get(p) != Some(&b'\n') {
            return None;
        }
        pos = p + 1;
    }
    Some((inserts, commits, last_end))
}

/// `pg_recvlogical` drains its slot (created by [`preload`]) to a file, then
/// the slot is dropped. Returns (events/s, end LSN of the last commit, JSON).
pub async fn recvlogical(env: &Env, b: &Backlog) -> Result<(f64, u64, Value)> {
    let c = &*env.ctl;
    let file = env.dir.path().join("recvlogical.bin");
    let cpu0 = children_cpu();
    let t = Instant::now();
    let mut child = tokio::process::Command::new(recvlogical_bin())
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env.pg.port().to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-d",
            "app",
            "--slot",
            "bench_recv",
            "--start",
            "--no-loop",
            "-F",
            "0",
        ])
        .arg("--endpos")
        .arg(format_lsn(b.end_pos))
        .arg("-f")
        .arg(&file)
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=outbox_relay_pub",
        ])
        .args(["--plugin", "pgoutput"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("spawn pg_recvlogical")?;
    let cpu = harness::PhaseCpu::start(&[]);
    let mut ws = ProcSample::default();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if let Some(pid) = harness::walsender_pid(c, "bench_recv").await? {
            ws.sample(pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    let recv_cpu = children_cpu() - cpu0;
    let machine = cpu.finish();
    if !status.success() {
        bail!("pg_recvlogical exited with {status}");
    }
    let bytes = std::fs::read(&file)?;
    let scan = scan_pgoutput(&bytes);
    let _ = std::fs::remove_file(&file);
    c.batch_execute("SELECT pg_drop_replication_slot('bench_recv')")
        .await?;
    let rate = b.n as f64 / secs;
    let (inserts, last_end) = match scan {
        Some((ins, _, end)) => (Some(ins), end),
        None => (None, b.end_pos.saturating_sub(64)),
    };
    if inserts.is_some_and(|i| i != b.n) {
        eprintln!(
            "[e2e] pg_recvlogical wrote {inserts:?} inserts, expected {}",
            b.n
        );
    }
    eprintln!(
        "[e2e] pg_recvlogical: {} events in {secs:.2} s = {rate:.0}/s",
        b.n
    );
    Ok((
        rate,
        last_end,
        json!({"seconds": secs, "events_per_s": rate, "bytes": bytes.len(),
            "inserts_seen": inserts, "cpu_s": recv_cpu, "walsender_cpu_s": ws.cpu(),
            "machine": machine}),
    ))
}

/// A bare rdkafka producer (the relay's settings) sends `n` messages shaped
/// like the relay's to a topic of its own: first send → last ack (after a
/// warm-up that gets the producer id).
pub async fn bare_burst(env: &Env, topic: &str, n: u64) -> Result<(f64, Value)> {
    env.topic(topic).await?;
    // The bench process's own CPU over the burst is the bare producer's (its
    // other threads idle meanwhile): what librdkafka alone costs per event,
    // the floor for the relay's CPU per event.
    let cpu =
        harness::PhaseCpu::start(&[("broker", env.broker.pid()), ("bare", std::process::id())]);
    let (b, t, pad) = (
        env.bootstrap.clone(),
        topic.to_string(),
        Opts::pad(env.opts.payload_bytes),
    );
    let secs = tokio::task::spawn_blocking(move || load::bare_burst(&b, &t, n, pad)).await??;
    let machine = cpu.finish();
    let held = env.end_offsets(topic).await?;
    let rate = n as f64 / secs;
    let cpu_us = machine["bare_cpu_s"].as_f64().map(|s| s * 1e6 / n as f64);
    eprintln!(
        "[e2e] bare producer: {n} events in {secs:.2} s = {rate:.0}/s, {:.1} µs CPU per event",
        cpu_us.unwrap_or(f64::NAN)
    );
    Ok((
        rate,
        json!({"seconds": secs, "events_per_s": rate, "broker_end_offsets_after": held,
               "broker_cpu_s": machine["broker_cpu_s"], "cpu_us_per_event": cpu_us,
               "machine": machine}),
    ))
}

/// One catch-up run: backlog, pg_recvlogical, the relay, the bare producer.
async fn catchup_once(env: &Env, i: usize) -> Result<Value> {
    let b = preload(env, &format!("catchup{i}"), false).await?;
    Statements::reset(&env.ctl).await;
    let (recv_rate, last_end, recv_json) = recvlogical(env, &b).await?;
    Statements::reset(&env.ctl).await;
    let relay = measure::drain(env, Kind::Relay, &b.agg, b.n, last_end).await?;
    let stmts = Statements::of_role(&env.ctl, "postgres").await;
    let (bare_rate, bare_json) = bare_burst(env, &format!("bare.catchup{i}"), b.n).await?;
    Ok(json!({
        "events": b.n, "transactions": b.txns, "wal_bytes": b.wal_bytes, "preload_s": b.preload_s,
        "pg_recvlogical": recv_json, "relay": relay.json, "bare_producer": bare_json,
        "relay_statements": stmts.json(b.n, relay.json["seconds"].as_f64().unwrap_or(1.0)),
        "relay_statements_cell": stmt_cell(&stmts, b.n),
        "ratio_relay_over_pg_recvlogical": relay.events_per_s / recv_rate,
        "ratio_relay_over_bare_producer": relay.events_per_s / bare_rate,
    }))
}

async fn catchup(env: &Env, rep: &mut Report) -> Result<()> {
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    for i in 0..env.opts.repeat {
        eprintln!("[e2e] catch-up run {} of {}", i + 1, env.opts.repeat);
        match catchup_once(env, i).await {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("[e2e] catch-up run {} failed: {e:#}", i + 1);
                errors.push(format!("run {}: {e:#}", i + 1));
            }
        }
    }
    if runs.is_empty() {
        bail!("every catch-up run failed: {}", errors.join("; "));
    }
    if !errors.is_empty() {
        rep.row("catch-up", "failed runs (left out)", errors.join("; "));
    }

    let col = |path: &[&str]| -> Vec<f64> {
        runs.iter()
            .filter_map(|r| {
                let mut v = r;
                for p in path {
                    v = &v[*p];
                }
                v.as_f64()
            })
            .collect()
    };
    let rate = |v: f64| format!("{}/s", thousands(v));
    let secs = |v: f64| format!("{v:.2} s");
    let r0 = &runs[0];
    let part = "catch-up";
    rep.row(
        part,
        "backlog",
        format!(
            "{} rows in {} transactions ({} rows/txn, payload {} B, 7 headers), {:.0} MB WAL, preloaded in {:.1} s",
            thousands(env.opts.events as f64),
            thousands(r0["transactions"].as_f64().unwrap_or(0.0)),
            env.opts.txn_rows,
            env.opts.payload_bytes,
            r0["wal_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            r0["preload_s"].as_f64().unwrap_or(0.0)
        ),
    );
    rep.row(
        part,
        "pg_recvlogical (pgoutput → file), events/s",
        spread_cell(&col(&["pg_recvlogical", "events_per_s"]), rate),
    );
    rep.row(
        part,
        "relay: process start → broker holds the last event (end offsets = N), events/s",
        spread_cell(&col(&["relay", "events_per_s"]), rate),
    );
    rep.row(
        part,
        "relay: seconds (start → all on the broker · → checkpoint covers the last commit · start → first event)",
        format!(
            "{} · {} · {}",
            spread_cell(&col(&["relay", "seconds"]), secs),
            spread_cell(&col(&["relay", "checkpoint_covers_last_commit_s"]), secs),
            spread_cell(&col(&["relay", "first_event_s"]), secs)
        ),
    );
    rep.row(
        part,
        "bare rdkafka producer, same messages (first send → last ack), events/s",
        spread_cell(&col(&["bare_producer", "events_per_s"]), rate),
    );
    let ratio = |v: f64| format!("{v:.2}");
    rep.row(
        part,
        "ratio relay / pg_recvlogical",
        spread_cell(&col(&["ratio_relay_over_pg_recvlogical"]), ratio),
    );
    rep.row(
        part,
        "ratio relay / bare producer",
        spread_cell(&col(&["ratio_relay_over_bare_producer"]), ratio),
    );
    let us = |v: f64| format!("{v:.1} µs");
    rep.row(
        part,
        "CPU per event (utime+stime from /proc): relay · broker JVM · bare producer (same messages)",
        format!(
            "{} · {} · {}",
            spread_cell(&col(&["relay", "cpu_us_per_event"]), us),
            spread_cell(&col(&["relay", "broker_cpu_us_per_event"]), us),
            spread_cell(&col(&["bare_producer", "cpu_us_per_event"]), us)
        ),
    );
    rep.row(
        part,
        "CPU seconds: relay · its walsender · pg_recvlogical · its walsender",
        format!(
            "{} · {} · {} · {}",
            spread_cell(&col(&["relay", "cpu_s"]), secs),
            spread_cell(&col(&["relay", "walsender_cpu_s"]), secs),
            spread_cell(&col(&["pg_recvlogical", "cpu_s"]), secs),
            spread_cell(&col(&["pg_recvlogical", "walsender_cpu_s"]), secs)
        ),
    );
    let mib = |v: f64| format!("{v:.1} MiB");
    rep.row(
        part,
        "relay peak RSS during catch-up",
        spread_cell(&col(&["relay", "peak_rss_mib"]), mib),
    );
    rep.row(
        part,
        "machine busy during the relay's drain",
        spread_cell(&col(&["relay", "machine", "machine_busy_pct"]), |v| {
            format!("{v:.0} %")
        }),
    );
    rep.row(
        "db cost",
        "relay statements during catch-up (first run)",
        r0["relay_statements_cell"].as_str().unwrap_or("n/a"),
    );
    // Issue 17's targets: the slower of the two references bounds what the
    // relay could reach; CPU per event from the relay's own accounting.
    let slower: Vec<f64> = col(&["ratio_relay_over_pg_recvlogical"])
        .iter()
        .zip(col(&["ratio_relay_over_bare_producer"]))
        .map(|(a, b)| a.max(b))
        .collect();
    let (r, _, _) = spread(&slower).unwrap_or_default();
    rep.target(
        "catch-up rate",
        "≥ 0.9 × the slower of pg_recvlogical and the bare producer",
        format!("{r:.2} × (median)"),
        Some(r >= 0.9),
    );
    let (cpu, _, _) = spread(&col(&["relay", "cpu_us_per_event"])).unwrap_or_default();
    rep.target(
        "relay CPU per event, catch-up",
        "≤ 3 µs",
        format!("{cpu:.1} µs (median)"),
        Some(cpu <= 3.0),
    );
    let peak = col(&["relay", "peak_rss_mib"])
        .into_iter()
        .fold(0.0, f64::max);
    rep.target(
        "peak RSS, catch-up",
        "≤ 64 MB",
        format!("{peak:.1} MiB (highest run)"),
        Some(peak <= 64.0),
    );
    rep.json.insert(
        "catchup".into(),
        json!({
            "how": "relay and Debezium: process start until the sum of the topic's end offsets is N (acks=all: acknowledged and readable); bare producer: first send until the last ack; pg_recvlogical: start until it exits at --endpos",
            "relay_events_per_s": spread_json(&col(&["relay", "events_per_s"])),
            "pg_recvlogical_events_per_s": spread_json(&col(&["pg_recvlogical", "events_per_s"])),
            "bare_producer_events_per_s": spread_json(&col(&["bare_producer", "events_per_s"])),
            "ratio_relay_over_pg_recvlogical": spread_json(&col(&["ratio_relay_over_pg_recvlogical"])),
            "ratio_relay_over_bare_producer": spread_json(&col(&["ratio_relay_over_bare_producer"])),
            "relay_cpu_us_per_event": spread_json(&col(&["relay", "cpu_us_per_event"])),
            "broker_cpu_us_per_event": spread_json(&col(&["relay", "broker_cpu_us_per_event"])),
            "relay_peak_rss_mib": spread_json(&col(&["relay", "peak_rss_mib"])),
            "runs": runs,
        }),
    );
    Ok(())
}

fn stmt_cell(s: &Statements, events: u64) -> String {
    if !s.available {
        return "n/a (pg_stat_statements missing)".into();
    }
    let ck = s.checkpoint_writes();
    format!(
        "{} total = {:.4}/event ({} checkpoint writes; other {:.4}/event)",
        s.total,
        s.total as f64 / events.max(1) as f64,
        ck,
        (s.total - ck) as f64 / events.max(1) as f64
    )
}

fn recvlogical_bin() -> PathBuf {
    let p = PathBuf::from("/usr/bin/pg_recvlogical");
    if p.exists() {
        return p;
    }
    PathBuf::from("/usr/lib/postgresql/15/bin/pg_recvlogical")
}

fn children_cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// -------------------------------------------------------------------- steady

/// Let PostgreSQL settle after bulk loads (autovacuum of the outbox, a
/// checkpoint) so it does not stall the latency measurement.
pub async fn quiesce(c: &Client) -> Result<()> {
    c.batch_execute("VACUUM (ANALYZE) public.outbox").await?;
    c.batch_execute("VACUUM (ANALYZE) public.outbox_poll")
        .await?;
    c.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// The broker floor: a bare producer at `rate` for `seconds` to a topic of
/// its own with a consumer attached: produce → ack, → append, → receive.
pub struct Floor {
    pub ack: Option<Dist>,
    pub append: Option<Dist>,
    pub receive: Option<Dist>,
    pub json: Value,
}

pub async fn floor(env: &Env, topic: &str, rate: f64, seconds: f64) -> Result<Floor> {
    let o = &env.opts;
    env.topic(topic).await?;
    let consumer = load::spawn_consumer(&env.bootstrap, topic, o.fetch_wait_ms, env.clock).await?;
    let (b, t, pad, clock) = (
        env.bootstrap.clone(),
        topic.to_string(),
        Opts::pad(o.payload_bytes),
        env.clock,
    );
    let seen = consumer.counter();
    let cpu = harness::PhaseCpu::start(&[("broker", env.broker.pid())]);
    let (acks, sent) = tokio::task::spawn_blocking(move || {
        load::bare_rate(&b, &t, rate, seconds, pad, clock, &seen)
    })
    .await??;
    consumer
        .wait_for(sent.len() + load::WARM_UP as usize, Duration::from_secs(60))
        .await;
    let machine = cpu.finish();
    let recvs = consumer.finish();
    let (receive, _, missing) = load::commit_to_receive(&sent, &recvs);
    let (append, _) = load::to_append(&sent, &recvs);
    let ack = Dist::of_us(acks);
    let json = json!({"events": sent.len(), "produce_to_ack": load::opt_json(&ack),
        "produce_to_append": load::opt_json(&append),
        "produce_to_receive": load::opt_json(&receive), "missing": missing,
        "broker_cpu_us_per_event": machine["broker_cpu_s"].as_f64().map(|c| c * 1e6 / sent.len().max(1) as f64),
        "machine": machine});
    Ok(Floor {
        ack,
        append,
        receive,
        json,
    })
}

fn metric_ms(v: &Option<Value>, key: &str) -> Option<f64> {
    v.as_ref()?.get(key)?.as_f64()
}

/// The relay's commit → append latency (ms, medians over the runs), for
/// the polling comparison.
#[derive(Default, Clone, Copy)]
struct RelayLatency {
    mean: Option<f64>,
    p50: Option<f64>,
}

/// Steady state through the relay and the bare floor, `--repeat` times.
async fn steady(env: &Env, rep: &mut Report) -> Result<RelayLatency> {
    let o = env.opts.clone();
    let mut runs = Vec::new();
    for i in 0..o.repeat {
        eprintln!("[e2e] steady run {} of {}", i + 1, o.repeat);
        Statements::reset(&env.ctl).await;
        let s = measure::steady(
            env,
            Kind::Relay,
            &format!("steady{i}"),
            o.rate,
            o.seconds,
            o.load_conns,
        )
        .await?;
        let stmts = Statements::of_role(&env.ctl, "postgres").await;
        let f = floor(env, &format!("bare.steady{i}"), o.rate, o.seconds).await?;
        let d = |x: &Option<Dist>, g: fn(&Dist) -> f64| x.as_ref().map(g);
        let sub = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        let p50 = |x: &Dist| x.p50;
        let p99 = |x: &Dist| x.p99;
        let mut j = s.json.clone();
        if let Some(m) = j.as_object_mut() {
            m.remove("cdf_start_to_append_ms");
        }
        runs.push(json!({
            "relay": j,
            "floor": f.json,
            "statements": stmts.json(s.json["events"].as_u64().unwrap_or(0), o.seconds),
            "statements_cell": stmt_cell(&stmts, s.json["events"].as_u64().unwrap_or(0)),
            "added_append_p50_ms": sub(d(&s.commit_to_append, p50), d(&f.append, p50)),
            "added_append_p99_ms": sub(d(&s.commit_to_append, p99), d(&f.append, p99)),
            "added_receive_p50_ms": sub(d(&s.commit_to_receive, p50), d(&f.receive, p50)),
            "added_receive_p99_ms": sub(d(&s.commit_to_receive, p99), d(&f.receive, p99)),
            "added_ack_p50_ms": sub(metric_ms(&s.metrics_e2e, "p50_ms"), d(&f.ack, p50)),
            "added_ack_p99_ms": sub(metric_ms(&s.metrics_e2e, "p99_ms"), d(&f.ack, p99)),
            "cells": {
                "start_to_append": load::opt_cell(&s.start_to_append),
                "commit_to_append": load::opt_cell(&s.commit_to_append),
                "header_to_append": load::opt_cell(&s.header_to_append),
                "commit_to_receive": load::opt_cell(&s.commit_to_receive),
                "floor_ack": load::opt_cell(&f.ack),
                "floor_append": load::opt_cell(&f.append),
                "floor_receive": load::opt_cell(&f.receive),
            },
            "mean_commit_to_append_ms": s.commit_to_append.as_ref().map(|x| x.mean),
            "p50_commit_to_append_ms": s.commit_to_append.as_ref().map(|x| x.p50),
        }));
    }
    let col = |path: &[&str]| -> Vec<f64> {
        runs.iter()
            .filter_map(|r| {
                let mut v = r;
                for p in path {
                    v = &v[*p];
                }
                v.as_f64()
            })
            .collect()
    };
    let ms = |v: f64| load::ms(v);
    let part = "steady";
    let first = &runs[0];
    rep.row(
        part,
        "load",
        format!(
            "{} single-row txns/s for {} s from {} connections, consumer attached; achieved {}",
            thousands(o.rate),
            o.seconds,
            o.load_conns,
            spread_cell(&col(&["relay", "achieved_rate"]), |v| format!(
                "{}/s",
                thousands(v)
            ))
        ),
    );
    let q = |what: &str, p: &str| col(&["relay", what, p]);
    let qf = |what: &str, p: &str| col(&["floor", what, p]);
    let trio = |v50: Vec<f64>, v99: Vec<f64>, vmax: Vec<f64>| {
        format!(
            "p50 {} · p99 {} · max {}",
            spread_cell(&v50, ms),
            spread_cell(&v99, ms),
            spread_cell(&vmax, ms)
        )
    };
    for (label, key) in [
        (
            "relay: commit (client) → broker append time",
            "commit_to_append",
        ),
        (
            "relay: commit_timestamp header (PostgreSQL) → broker append time",
            "commit_timestamp_header_to_append",
        ),
        (
            "relay: transaction start → broker append time",
            "start_to_append",
        ),
        (
            "relay: commit (client) → consumer receive",
            "commit_to_receive",
        ),
    ] {
        rep.row(
            part,
            label,
            trio(q(key, "p50_ms"), q(key, "p99_ms"), q(key, "max_ms")),
        );
    }
    rep.row(
        part,
        "relay /metrics commit→ack (histogram, interpolated)",
        trio(
            col(&["relay", "relay_metrics_end_to_end", "p50_ms"]),
            col(&["relay", "relay_metrics_end_to_end", "p99_ms"]),
            Vec::new(),
        ),
    );
    for (label, key) in [
        ("bare producer: produce → ack", "produce_to_ack"),
        (
            "bare producer: produce → broker append time",
            "produce_to_append",
        ),
        (
            "bare producer: produce → consumer receive",
            "produce_to_receive",
        ),
    ] {
        rep.row(
            part,
            label,
            trio(qf(key, "p50_ms"), qf(key, "p99_ms"), qf(key, "max_ms")),
        );
    }
    let add = |k50: &str, k99: &str| {
        format!(
            "p50 {} · p99 {}",
            spread_cell(&col(&[k50]), ms),
            spread_cell(&col(&[k99]), ms)
        )
    };
    rep.row(
        part,
        "added: relay commit→append − bare produce→append",
        add("added_append_p50_ms", "added_append_p99_ms"),
    );
    rep.row(
        part,
        "added: relay commit→receive − bare produce→receive",
        add("added_receive_p50_ms", "added_receive_p99_ms"),
    );
    rep.row(
        part,
        "added: relay /metrics commit→ack − bare produce→ack",
        add("added_ack_p50_ms", "added_ack_p99_ms"),
    );
    let us = |v: f64| format!("{v:.1} µs");
    rep.row(
        part,
        "CPU per event: relay · broker (relay run) · broker (bare run)",
        format!(
            "{} · {} · {}",
            spread_cell(&col(&["relay", "cpu_us_per_event"]), us),
            spread_cell(&col(&["relay", "broker_cpu_us_per_event"]), us),
            spread_cell(&col(&["floor", "broker_cpu_us_per_event"]), us)
        ),
    );
    rep.row(
        part,
        "relay peak RSS",
        spread_cell(&col(&["relay", "peak_rss_mib"]), |v| format!("{v:.1} MiB")),
    );
    rep.row(
        part,
        "machine busy (relay run)",
        spread_cell(&col(&["relay", "machine", "machine_busy_pct"]), |v| {
            format!("{v:.0} %")
        }),
    );
    rep.row(
        "db cost",
        "relay statements, steady state (first run)",
        first["statements_cell"].as_str().unwrap_or("n/a"),
    );
    let a50 = spread(&col(&["added_append_p50_ms"])).map(|x| x.0);
    let a99 = spread(&col(&["added_append_p99_ms"])).map(|x| x.0);
    let how = "median; relay commit→append − bare produce→append";
    rep.target(
        &format!("added latency p50 ({}/s)", thousands(o.rate)),
        "≤ 2 ms",
        a50.map_or("n/a".into(), |v| format!("{} ({how})", load::ms(v))),
        a50.map(|v| v <= 2.0),
    );
    rep.target(
        &format!("added latency p99 ({}/s)", thousands(o.rate)),
        "≤ 10 ms",
        a99.map_or("n/a".into(), |v| format!("{} ({how})", load::ms(v))),
        a99.map(|v| v <= 10.0),
    );
    let other = first["statements"]["other_per_event"].as_f64();
    rep.target(
        "statements per event (relay)",
        "0 beyond the periodic checkpoint write",
        other.map_or("n/a".into(), |v| format!("{v:.4} other/event")),
        other.map(|v| v < 0.001),
    );
    let mean = RelayLatency {
        mean: spread(&col(&["mean_commit_to_append_ms"])).map(|x| x.0),
        p50: spread(&col(&["p50_commit_to_append_ms"])).map(|x| x.0),
    };
    rep.json.insert(
        "steady".into(),
        json!({
            "how": "single-row transactions; latency = broker LogAppendTime (1 ms resolution) − the load generator's commit (or start) time, or − the relay's commit_timestamp header; a consumer is attached for commit→receive",
            "added_append_p50_ms": spread_json(&col(&["added_append_p50_ms"])),
            "added_append_p99_ms": spread_json(&col(&["added_append_p99_ms"])),
            "added_receive_p50_ms": spread_json(&col(&["added_receive_p50_ms"])),
            "added_receive_p99_ms": spread_json(&col(&["added_receive_p99_ms"])),
            "relay_cpu_us_per_event": spread_json(&col(&["relay", "cpu_us_per_event"])),
            "runs": runs,
        }),
    );
    Ok(mean)
}

// ------------------------------------------------------------------- polling

async fn polling(env: &Env, rep: &mut Report, relay: RelayLatency) -> Result<()> {
    let o = env.opts.clone();
    let mut results = Vec::new();
    for ms in [o.poll_interval_ms, o.fast_poll_interval_ms] {
        let topic = format!("poll.{ms}ms");
        env.topic(&topic).await?;
        env.ctl.batch_execute("TRUNCATE public.outbox_poll").await?;
        quiesce(&env.ctl).await?;
        let consumer =
            load::spawn_consumer(&env.bootstrap, &topic, o.fetch_wait_ms, env.clock).await?;
        Statements::reset(&env.ctl).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (url, b, t, clock) = (
            env.poller_url.clone(),
            env.bootstrap.clone(),
            topic.clone(),
            env.clock,
        );
        let interval = Duration::from_millis(ms);
        let batch = o.poll_batch;
        let poller = tokio::spawn(async move {
            polling::run_poller(
                &url,
                "public.outbox_poll",
                &b,
                &t,
                interval,
                batch,
                clock,
                stop_rx,
            )
            .await
        });
        let cpu = harness::PhaseCpu::start(&[("broker", env.broker.pid())]);
        let load = load::run_load(
            &env.bench_url,
            "public.outbox_poll",
            "poll",
            o.rate,
            o.seconds,
            Opts::pad(o.payload_bytes),
            o.load_conns,
            env.clock,
        )
        .await?;
        let n = load.commits.len();
        let ok = consumer
            .wait_for(n, Duration::from_secs(120) + interval * 2)
            .await;
        let machine = cpu.finish();
        let _ = stop_tx.send(true);
        let stats = poller.await??;
        let stmts = Statements::of_role(&env.ctl, "poller").await;
        let recvs = consumer.finish();
        let (client, _, missing) = load::commit_to_receive(&load.commits, &recvs);
        let (append, _) = load::to_append(&load.commits, &recvs);
        let (ack, _) = load::match_latency(&load.commits, &stats.acks);
        if !ok || missing > 0 {
            eprintln!("[e2e] polling {ms} ms: {missing} of {n} not received");
        }
        let label = format!("polling relay, every {ms} ms, batch {}", o.poll_batch);
        rep.row(
            "polling",
            &format!("{label}: commit→append"),
            load::opt_cell(&append),
        );
        rep.row(
            "polling",
            &format!("{label}: commit→receive"),
            load::opt_cell(&client),
        );
        rep.row(
            "db cost",
            &format!("{label}: statements"),
            stmt_cell(&stmts, n as u64),
        );
        let ratio = match (&append, relay.mean) {
            (Some(p), Some(r)) if r > 0.0 => Some(p.mean / r),
            _ => None,
        };
        let ratio50 = match (&append, relay.p50) {
            (Some(p), Some(r)) if r > 0.0 => Some(p.p50 / r),
            _ => None,
        };
        rep.row(
            "polling",
            &format!("{label}: commit→append, polling / relay"),
            format!(
                "mean {} · p50 {}",
                ratio.map_or("n/a".into(), |r| format!("{r:.0} ×")),
                ratio50.map_or("n/a".into(), |r| format!("{r:.0} ×"))
            ),
        );
        if ms == o.poll_interval_ms {
            rep.target(
                "mean latency, polling (default interval) / relay",
                "≥ 100 ×",
                ratio.map_or("n/a".into(), |r| format!("{r:.0} × (commit→append)")),
                ratio.map(|r| r >= 100.0),
            );
        }
        results.push(json!({
            "interval_ms": ms, "batch": o.poll_batch, "events": n, "missing": missing,
            "achieved_rate": load.rate(),
            "commit_to_ack": load::opt_json(&ack),
            "commit_to_append": load::opt_json(&append),
            "commit_to_receive": load::opt_json(&client),
            "mean_ratio_over_relay_append": ratio,
            "p50_ratio_over_relay_append": ratio50,
            "polls": stats.polls, "batches": stats.batches, "published": stats.events,
            "machine": machine,
            "statements": stmts.json(n as u64, load.elapsed_s),
        }));
    }
    rep.json.insert("polling".into(), json!(results));
    Ok(())
}

// -------------------------------------------------------------------- memory

async fn memory(env: &Env, rep: &mut Report) -> Result<()> {
    let rows = env.opts.big_rows;
    let pad = Opts::pad(env.opts.big_row_bytes);
    env.topic("outbox.big").await?;
    env.skip_slot("outbox_relay").await?;
    let mut relay = env.start_relay(&env.bootstrap)?;
    let sampler = Sampler::start(relay.pid());
    harness::wait_streaming(&env.ctl, &mut relay).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = harness::rss_kib(relay.pid()).map_or(0.0, |x| x.0 as f64 / 1024.0);
    let before = harness::insert_lsn(&env.ctl).await?;
    let t = Instant::now();
    env.ctl
        .batch_execute(&format!(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
             SELECT 'big', 'agg-' || (g % 1000), 'BenchEvent', \
             jsonb_build_object('n', g, 'pad', repeat('x', {pad})), '{}'::jsonb \
             FROM generate_series(1, {rows}) g",
            load::ROW_HEADERS
        ))
        .await
        .context("big transaction")?;
    let insert_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let end = Instant::now() + Duration::from_secs(300);
    while (env.end_offsets("outbox.big").await? as u64) < rows {
        relay.check_alive()?;
        if Instant::now() > end {
            bail!("relay did not deliver the big transaction within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_s = t.elapsed().as_secs_f64();
    let sample = sampler.finish();
    relay.stop(Duration::from_secs(30));
    let mb = (harness::insert_lsn(&env.ctl).await? - before) as f64 / 1e6;
    rep.row(
        "memory",
        "relay RSS idle (streaming, caught up)",
        format!("{idle:.1} MiB"),
    );
    rep.row(
        "memory",
        "relay peak RSS, one big transaction",
        format!(
            "{:.1} MiB ({rows} rows × {} B ≈ {:.0} MB of WAL; on the broker {relay_s:.1} s after commit, insert took {insert_s:.1} s)",
            sample.peak_mib(),
            env.opts.big_row_bytes,
            mb
        ),
    );
    rep.target(
        "peak RSS, big transaction",
        "≤ 128 MB",
        format!("{:.1} MiB for {mb:.0} MB", sample.peak_mib()),
        Some(sample.peak_mib() <= 128.0),
    );
    rep.json.insert(
        "memory".into(),
        json!({"idle_rss_mib": idle, "big_txn": {"rows": rows, "row_bytes": env.opts.big_row_bytes,
            "wal_mb": mb, "insert_s": insert_s, "on_broker_s_after_commit": relay_s,
            "peak_rss_mib": sample.peak_mib(), "relay_cpu_s": sample.cpu()}}),
    );
    Ok(())
}

// -------------------------------------------------------------------- report

fn print_report(rep: &Report, command: &str) {
    let m = &rep.json["machine"];
    println!("\n## outbox-relay end-to-end benchmark\n");
    println!("Command: `{}`  ", command.trim());
    println!(
        "Machine: {} × {}, {} GiB RAM, Linux {}; PostgreSQL {}; {}; librdkafka {}{}\n",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["postgresql"].as_str().unwrap_or("?"),
        m["broker"].as_str().unwrap_or("?"),
        m["librdkafka"].as_str().unwrap_or("?"),
        match (m["debezium"].as_str(), m["kafka_connect"].as_str()) {
            (Some(d), Some(c)) => format!(
                "; Debezium {d} in Kafka Connect {c} ({}; JVM opts {})",
                m["java"].as_str().unwrap_or("?"),
                m["connect_java_opts"].as_str().unwrap_or("?")
            ),
            _ => String::new(),
        }
    );
    if let Some(t) = rep.json.get("compare_table").and_then(Value::as_str) {
        println!("{t}\n");
    }
    println!("| Part | Metric | Value |\n|---|---|---|");
    for r in &rep.rows {
        println!("| {} | {} | {} |", r[0], r[1], r[2].replace('|', "/"));
    }
    if !rep.targets.is_empty() {
        println!("\n| Target | Goal | Measured | Verdict |\n|---|---|---|---|");
        for t in &rep.targets {
            println!("| {} | {} | {} | {} |", t[0], t[1], t[2], t[3]);
        }
    }
}
