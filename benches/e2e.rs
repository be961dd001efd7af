//! End-to-end benchmark on a real PostgreSQL 15 and a Kafka-protocol broker
//! (tansu, plus librdkafka's mock cluster), with the real relay binary.
//!
//! ```text
//! cargo bench --bench e2e -- [--events N] [--rate R] [--seconds S] [--quick]
//! scripts/bench.sh [same flags]        # release build + this
//! ```
//!
//! Parts, all in one run (`--only catchup,memory,steady,mock,polling` to pick):
//!
//! 1. **catch-up** — N outbox rows (default 1,000,000, `--txn-rows` per
//!    transaction) are committed while the relay is stopped, after two
//!    pgoutput slots were created. Timed: `pg_recvlogical` draining the
//!    second slot to a file (`--endpos` = WAL position after the preload),
//!    the relay from process start until its checkpoint table covers the
//!    last preloaded commit, and a bare rdkafka producer (the relay's
//!    producer settings) sending the same N messages (size, keys, 7 headers).
//! 2. **memory** — peak RSS of the relay (VmHWM / sampled VmRSS) during
//!    catch-up and while relaying one transaction of `--big-rows` ×
//!    `--big-row-bytes` (default 200,000 × 1 KiB ≈ 200 MB).
//! 3. **steady** — single-row transactions at `--rate` for `--seconds`
//!    through the relay to tansu; commit → consumer-receive latency (commit
//!    as the client saw it, and the `commit_timestamp` header), the relay's
//!    own `outbox_relay_end_to_end_latency_seconds` from `/metrics` when
//!    exported, and the broker floor: a bare producer at the same rate,
//!    produce → ack and produce → receive.
//! 4. **mock** — the same against `rdkafka::mocking::MockCluster` (kept alive
//!    in this process; the relay connects to its loopback listener).
//! 5. **polling** — the same load through the polling relay of
//!    `e2e_parts/polling.rs` at its default interval and at 100 ms.
//! 6. **database cost** — statements per relayed event from
//!    `pg_stat_statements` (preloaded via `ALTER SYSTEM` + restart), by role:
//!    the relay runs as `postgres`, the poller as `poller`, everything the
//!    benchmark itself does as `bench`.
//!
//! Prints a markdown table and writes JSON to `$CARGO_TARGET_DIR/bench/e2e.json`
//! (default `target/bench/e2e.json`). Without `--bench` in its arguments (as
//! under `cargo test --all-targets`) it prints one line and exits.
//!
//! Conditions worth knowing when reading the numbers:
//!
//! * PostgreSQL runs with the test harness's settings (`fsync = off`,
//!   `full_page_writes = off`) but `synchronous_commit = on`: with it off a
//!   commit returns before its WAL is flushed, and logical walsenders only
//!   send flushed WAL, so every event would wait for the WAL writer (up to
//!   200 ms). Before each latency part the outbox tables are vacuumed and a
//!   checkpoint is forced, so autovacuum after the bulk parts does not land
//!   in the measurement.
//! * Everything shares the machine: PostgreSQL, the broker, the relay, the
//!   load generator and the consumers. Each part reports machine CPU busy %
//!   and the CPU seconds of the relay, its walsender and the broker.
//! * Latency is measured on one monotonic clock in this process: the load
//!   generator timestamps the moment a commit returned, the consumer the
//!   moment a message arrived (µs). The broker floor goes through the same
//!   consumer, so "added" latency is relay minus floor at the same quantile.
//!   The relay's own commit → ack histogram (millisecond timestamps, buckets
//!   0.5/1/2.5/5/10/25 ms) is compared with the bare producer's produce →
//!   ack for the "added latency" verdict, with exact shares per bucket bound
//!   next to the interpolated quantiles; the consumer side is the fallback.
//! * Consumers run only against the mock cluster by default (`--consumers
//!   tansu,mock` adds tansu): tansu 0.6's fetch path slows down as a topic
//!   grows — in a 60 s run at 2,000/s consumers saw p95 ≈ 11 s and the broker
//!   burnt ~0.9 core — which ruins the consumer-side numbers and steals CPU
//!   from the relay. Without a consumer, delivery is confirmed by the relay's
//!   checkpoint covering the WAL. Each measurement on tansu gets a fresh,
//!   empty broker for the same reason.
//!
//! Knobs for experiments (not needed for a normal run):
//! `--relay-toml 'TOML'` merges into the relay's config (e.g.
//! `'[kafka]\nmax-in-flight = 50000'`); `--repeat K` repeats the catch-up and
//! reports the median; `E2E_PRODUCER_PROPS=k=v,…` changes the bare and polling
//! producers; `E2E_PERF=DIR` records `perf record -a -g` while each relay runs;
//! `E2E_RELAY_LOG` sets the relay's log filter; `OUTBOX_RELAY_BIN` runs
//! another relay binary.

#[path = "e2e_parts/harness.rs"]
mod harness;
#[path = "e2e_parts/load.rs"]
mod load;
#[path = "e2e_parts/polling.rs"]
mod polling;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_relay::sink::message::format_lsn;
use rdkafka::mocking::MockCluster;
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use harness::{ProcSample, Relay, Statements};
use load::{Clock, Dist};
use support::broker::Broker;
use support::postgres::PgCluster;

const USAGE: &str =
    "usage: cargo bench --bench e2e -- [--events N] [--rate R] [--seconds S] [--quick]
  [--txn-rows N] [--payload-bytes N] [--big-rows N] [--big-row-bytes N] [--partitions N]
  [--poll-interval-ms N] [--fast-poll-interval-ms N] [--poll-batch N] [--load-conns N]
  [--fetch-wait-ms N] [--repeat N (catch-up runs, median reported)]
  [--consumers mock|tansu,mock|none (where commit→receive is measured)] [--only catchup,memory,steady,mock,polling] [--relay-toml TOML]";

#[derive(Debug, Clone)]
struct Opts {
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
    consumers: Vec<String>,
    only: Vec<String>,
    relay_toml: String,
    args: Vec<String>,
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
            repeat: 1,
            consumers: vec!["mock".into()],
            only: ["catchup", "memory", "steady", "mock", "polling"]
                .map(String::from)
                .to_vec(),
            relay_toml: String::new(),
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
                "--consumers" => {
                    o.consumers = val()?.split(',').map(|s| s.trim().to_string()).collect()
                }
                "--only" => o.only = val()?.split(',').map(|s| s.trim().to_string()).collect(),
                "--relay-toml" => o.relay_toml = val()?.replace("\\n", "\n"),
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
        Ok(o)
    }

    fn wants(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }

    /// `pad` so that the jsonb payload text is about `bytes` long.
    fn pad(bytes: usize) -> usize {
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
struct Report {
    rows: Vec<[String; 3]>,
    json: Map<String, Value>,
    targets: Vec<[String; 4]>,
}

impl Report {
    fn row(&mut self, part: &str, metric: &str, value: impl Into<String>) {
        self.rows
            .push([part.to_string(), metric.to_string(), value.into()]);
        println!(
            "[e2e] {part}: {metric}: {}",
            self.rows.last().expect("row")[2]
        );
    }

    fn target(&mut self, what: &str, goal: &str, measured: String, ok: Option<bool>) {
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
struct Env {
    opts: Opts,
    pg: PgCluster,
    broker: Broker,
    dir: tempfile::TempDir,
    /// The benchmark's own connection (role `bench`, database `app`).
    ctl: std::sync::Arc<Client>,
    bench_url: String,
    poller_url: String,
    relay_url: String,
    clock: Clock,
    relays_started: std::cell::Cell<usize>,
}

impl Env {
    /// Replace the broker with a fresh one holding only `topics`. tansu's
    /// in-memory storage slows down as it fills (fetches of a topic cost
    /// more CPU and time with every stored message; after the 1M-event
    /// catch-up consumers wait seconds), so every measurement gets its own
    /// empty broker.
    async fn fresh_broker(&mut self, topics: &[&str]) {
        let b = Broker::start().await;
        for t in topics {
            support::kafka::create_topic(&b.bootstrap(), t, self.opts.partitions).await;
        }
        self.broker = b;
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    /// Write the config for `brokers` and start a relay process.
    fn start_relay(&self, brokers: &str) -> Result<Relay> {
        let port = support::free_port();
        harness::write_config(
            &self.config_path(),
            &self.relay_url,
            brokers,
            port,
            &self.opts.relay_toml,
        )?;
        self.relays_started.set(self.relays_started.get() + 1);
        let log = self
            .dir
            .path()
            .join(format!("relay-{}.log", self.relays_started.get()));
        Relay::spawn(&self.config_path(), log, port)
    }
}

/// Samples a process's RSS and CPU every 20 ms until stopped.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    join: std::thread::JoinHandle<ProcSample>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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

    fn finish(self) -> ProcSample {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.join.join().unwrap_or_default()
    }
}

async fn run(opts: Opts) -> Result<()> {
    let started = Instant::now();
    let clock = Clock::new();
    let mut rep = Report {
        rows: Vec::new(),
        json: Map::new(),
        targets: Vec::new(),
    };
    let command = format!("cargo bench --bench e2e -- {}", opts.args.join(" "));
    rep.json.insert("command".into(), json!(command.trim()));
    rep.json.insert("machine".into(), harness::machine());
    rep.json.insert(
        "options".into(),
        json!({"events": opts.events, "rate": opts.rate, "seconds": opts.seconds,
               "txn_rows": opts.txn_rows, "payload_bytes": opts.payload_bytes,
               "big_rows": opts.big_rows, "big_row_bytes": opts.big_row_bytes,
               "partitions": opts.partitions, "poll_interval_ms": opts.poll_interval_ms,
               "fast_poll_interval_ms": opts.fast_poll_interval_ms, "poll_batch": opts.poll_batch,
               "load_conns": opts.load_conns, "fetch_wait_ms": opts.fetch_wait_ms, "repeat": opts.repeat, "consumers": opts.consumers,
               "relay_toml": opts.relay_toml, "relay_bin": harness::relay_bin()}),
    );

    let mut env = setup(opts.clone(), clock).await?;
    let pg_version: String = env.ctl.query_one("SHOW server_version", &[]).await?.get(0);
    if let Some(m) = rep.json.get_mut("machine").and_then(Value::as_object_mut) {
        m.insert("postgresql".into(), json!(pg_version));
        m.insert("broker".into(), json!("tansu 0.6.0 (memory storage)"));
    }

    let mut relay_means = RelayMeans::default();
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
                if busy(&before) + busy(&after) > 0 {
                    rep.row(
                        "note",
                        &format!("{}: other builds/tests were running", $name),
                        format!(
                            "{} processes at start, {} at end (numbers are skewed)",
                            busy(&before),
                            busy(&after)
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
    part!("catchup", catchup(&mut env, &mut rep).await);
    part!("memory", memory(&mut env, &mut rep).await);
    part!("steady", {
        steady_tansu(&mut env, &mut rep)
            .await
            .map(|m| relay_means = m)
    });
    part!("mock", mock(&mut env, &mut rep).await);
    part!("polling", polling(&mut env, &mut rep, relay_means).await);

    rep.json
        .insert("elapsed_s".into(), json!(started.elapsed().as_secs_f64()));
    print_report(&rep, &command);
    let path = json_path();
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

/// `$CARGO_TARGET_DIR/bench/e2e.json`, else the target dir this bench
/// binary lives in (`…/target/release/deps/e2e-…`).
fn json_path() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("bench/e2e.json");
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("bench/e2e.json")
}

async fn setup(opts: Opts, clock: Clock) -> Result<Env> {
    // The first broker only answers `init`'s reachability check; every
    // part starts its own (Env::fresh_broker).
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
    let ctl = std::sync::Arc::new(support::postgres::connect(&bench_url).await?);
    if let Err(e) = ctl
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
    {
        eprintln!("[e2e] pg_stat_statements unavailable ({e}); statement counts will be missing");
    }
    let dir = tempfile::Builder::new()
        .prefix("outbox-bench-")
        .tempdir_in("/tmp")?;
    let env = Env {
        opts,
        pg,
        broker,
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
        &env.broker.bootstrap(),
        support::free_port(),
        &env.opts.relay_toml,
    )?;
    harness::relay_init(&env.config_path())?;
    env.ctl
        .batch_execute(
            "CREATE TABLE public.outbox_poll (LIKE public.outbox INCLUDING ALL);
             CREATE INDEX ON public.outbox_poll (status, created_at, id)",
        )
        .await?;
    let b = env.broker.bootstrap();
    eprintln!(
        "[e2e] PostgreSQL {} · tansu {} · work dir {}",
        env.pg.port(),
        b,
        env.dir.path().display()
    );
    Ok(env)
}

// ------------------------------------------------------------------ catch-up

fn preload_sql(n: u64, txn_rows: u64, pad: usize) -> String {
    format!(
        "DO $$ DECLARE i bigint := 0; BEGIN WHILE i < {n} LOOP \
         INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
         SELECT 'catchup', 'agg-' || (g % 1000), 'BenchEvent', \
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

async fn catchup(env: &mut Env, rep: &mut Report) -> Result<()> {
    let mut runs = Vec::new();
    for i in 0..env.opts.repeat {
        if env.opts.repeat > 1 {
            eprintln!("[e2e] catch-up run {} of {}", i + 1, env.opts.repeat);
        }
        runs.push(catchup_once(env).await?);
    }
    let ratio = |r: &Report| r.json["catchup"]["ratio_relay_over_pg_recvlogical"].as_f64();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|a, b| {
        ratio(&runs[*a])
            .unwrap_or(0.0)
            .total_cmp(&ratio(&runs[*b]).unwrap_or(0.0))
    });
    let median = order[order.len() / 2];
    let peak = runs
        .iter()
        .filter_map(|r| r.json["catchup"]["relay"]["peak_rss_mib"].as_f64())
        .fold(0.0, f64::max);
    let all: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.2}", ratio(r).unwrap_or(0.0)))
        .collect();
    let chosen = runs.swap_remove(median);
    let r = ratio(&chosen).unwrap_or(0.0);
    rep.rows.extend(chosen.rows);
    if all.len() > 1 {
        rep.row(
            "catch-up",
            "ratio relay / pg_recvlogical, every run (median shown above)",
            all.join(", "),
        );
    }
    rep.target(
        "catch-up rate",
        "≥ 0.6 × pg_recvlogical",
        format!("{r:.2} ×{}", if all.len() > 1 { " (median)" } else { "" }),
        Some(r >= 0.6),
    );
    rep.target(
        "peak RSS, catch-up",
        "≤ 64 MB",
        format!("{peak:.1} MiB"),
        Some(peak <= 64.0),
    );
    let mut j = chosen.json["catchup"].clone();
    j["all_runs"] = json!(runs
        .iter()
        .map(|r| r.json["catchup"].clone())
        .collect::<Vec<_>>());
    j["ratio_every_run"] = json!(all);
    rep.json.insert("catchup".into(), j);
    Ok(())
}

/// One catch-up measurement; its rows and JSON in a report of its own.
async fn catchup_once(env: &mut Env) -> Result<Report> {
    let mut rep = Report::default();
    let rep = &mut rep;
    let n = env.opts.events;
    let pad = Opts::pad(env.opts.payload_bytes);
    let ctl = env.ctl.clone();
    let c = &*ctl;
    c.batch_execute("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        .await?;
    let before = harness::insert_lsn(c).await?;
    let t = Instant::now();
    c.batch_execute(&preload_sql(n, env.opts.txn_rows, pad))
        .await
        .context("preload")?;
    let preload_s = t.elapsed().as_secs_f64();
    let end_pos = harness::insert_lsn(c).await?;
    let txns = n.div_ceil(env.opts.txn_rows);
    rep.row(
        "catch-up",
        "backlog",
        format!(
            "{n} rows in {txns} transactions ({} rows/txn, payload {} B), {:.0} MB WAL, preloaded in {preload_s:.1} s",
            env.opts.txn_rows,
            env.opts.payload_bytes,
            (end_pos - before) as f64 / 1e6
        ),
    );

    // pg_recvlogical drains the second slot.
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
        .arg(format_lsn(end_pos))
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let recv_s = t.elapsed().as_secs_f64();
    let recv_cpu = children_cpu() - cpu0;
    let recv_machine = cpu.finish();
    if !status.success() {
        bail!("pg_recvlogical exited with {status}");
    }
    let bytes = std::fs::read(&file)?;
    let scan = scan_pgoutput(&bytes);
    let _ = std::fs::remove_file(&file);
    c.batch_execute("SELECT pg_drop_replication_slot('bench_recv')")
        .await?;
    let recv_rate = n as f64 / recv_s;
    let (recv_inserts, last_end) = match scan {
        Some((ins, _, end)) => (Some(ins), Some(end)),
        None => (None, None),
    };
    if recv_inserts.is_some_and(|i| i != n) {
        eprintln!("[e2e] pg_recvlogical wrote {recv_inserts:?} inserts, expected {n}");
    }
    rep.row(
        "catch-up",
        "pg_recvlogical (pgoutput → file)",
        format!(
            "{recv_rate:.0} events/s ({recv_s:.2} s, {:.0} MB out, inserts seen {}; CPU: pg_recvlogical {recv_cpu:.1} s, walsender {:.1} s, {})",
            bytes.len() as f64 / 1e6,
            recv_inserts.map_or("?".into(), |i| i.to_string()),
            ws.cpu().unwrap_or(0.0),
            harness::cpu_cell(&recv_machine)
        ),
    );

    // The relay drains its slot.
    let target = last_end.unwrap_or(end_pos.saturating_sub(64));
    Statements::reset(c).await;
    env.fresh_broker(&["outbox.catchup"]).await;
    let cpu = harness::PhaseCpu::start(&[("broker", env.broker.pid())]);
    let t = Instant::now();
    let mut relay = env.start_relay(&env.broker.bootstrap())?;
    let sampler = Sampler::start(relay.pid());
    let mut ws = ProcSample::default();
    let mut streaming_at = None;
    let deadline = Instant::now() + Duration::from_secs(120 + n / 2000);
    loop {
        relay.check_alive()?;
        if harness::checkpoint_lsn(c).await? >= target {
            break;
        }
        if let Some(pid) = harness::walsender_pid(c, "outbox_relay").await? {
            streaming_at.get_or_insert_with(|| t.elapsed().as_secs_f64());
            ws.sample(pid);
        }
        if Instant::now() > deadline {
            bail!(
                "relay did not checkpoint {} within the deadline; log {}",
                format_lsn(target),
                relay.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_s = t.elapsed().as_secs_f64();
    let relay_machine = cpu.finish();
    let sample = sampler.finish();
    let stmts = Statements::of_role(c, "postgres").await;
    relay.stop(Duration::from_secs(30));
    let relay_rate = n as f64 / relay_s;
    let startup_s = streaming_at.unwrap_or(0.0);
    let streaming_rate = n as f64 / (relay_s - startup_s).max(1e-9);
    rep.row(
        "catch-up",
        "relay (start → all acked + checkpointed)",
        format!(
            "{relay_rate:.0} events/s ({relay_s:.2} s, of which {startup_s:.2} s process start → streaming; {streaming_rate:.0} events/s once streaming; CPU: relay {:.1} s, walsender {:.1} s, {})",
            sample.cpu().unwrap_or(0.0),
            ws.cpu().unwrap_or(0.0),
            harness::cpu_cell(&relay_machine)
        ),
    );

    // The bare producer sends the same messages.
    env.fresh_broker(&["bare.catchup"]).await;
    let bootstrap = env.broker.bootstrap();
    let bare_s =
        tokio::task::spawn_blocking(move || load::bare_burst(&bootstrap, "bare.catchup", n, pad))
            .await??;
    let bare_rate = n as f64 / bare_s;
    rep.row(
        "catch-up",
        "bare rdkafka producer (same messages)",
        format!("{bare_rate:.0} events/s ({bare_s:.2} s)"),
    );
    let r_recv = relay_rate / recv_rate;
    let r_bare = relay_rate / bare_rate;
    rep.row(
        "catch-up",
        "ratio relay / pg_recvlogical",
        format!("{r_recv:.2}"),
    );
    rep.row(
        "catch-up",
        "ratio relay / bare producer",
        format!("{r_bare:.2}"),
    );
    rep.row(
        "memory",
        "relay peak RSS during catch-up",
        format!("{:.1} MiB", sample.peak_mib()),
    );
    rep.row(
        "db cost",
        "relay statements during catch-up",
        stmt_cell(&stmts, n),
    );
    rep.json.insert(
        "catchup".into(),
        json!({
            "events": n, "transactions": txns, "wal_bytes": end_pos - before, "preload_s": preload_s,
            "pg_recvlogical": {"seconds": recv_s, "events_per_s": recv_rate, "bytes": bytes.len(),
                "inserts_seen": recv_inserts, "cpu_s": recv_cpu, "walsender_cpu_s": ws.cpu(),
                "machine": recv_machine},
            "relay": {"seconds": relay_s, "events_per_s": relay_rate, "cpu_s": sample.cpu(),
                "startup_s": startup_s, "events_per_s_once_streaming": streaming_rate,
                "machine": relay_machine,
                "walsender_cpu_s": ws.cpu(), "peak_rss_mib": sample.peak_mib(),
                "statements": stmts.json(n, relay_s)},
            "bare_producer": {"seconds": bare_s, "events_per_s": bare_rate},
            "ratio_relay_over_pg_recvlogical": r_recv,
            "ratio_relay_over_bare_producer": r_bare,
        }),
    );
    Ok(std::mem::take(rep))
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

// -------------------------------------------------------------------- memory

async fn memory(env: &mut Env, rep: &mut Report) -> Result<()> {
    let rows = env.opts.big_rows;
    let pad = Opts::pad(env.opts.big_row_bytes);
    env.fresh_broker(&["outbox.big"]).await;
    let mut relay = env.start_relay(&env.broker.bootstrap())?;
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
    let (end, ok) = wait_relayed(env, &mut relay, "big", Duration::from_secs(300)).await?;
    if !ok {
        bail!("relay did not checkpoint the big transaction within 300 s");
    }
    let relay_s = t.elapsed().as_secs_f64();
    let sample = sampler.finish();
    relay.stop(Duration::from_secs(30));
    let mb = (end - before) as f64 / 1e6;
    rep.row(
        "memory",
        "relay RSS idle (streaming, caught up)",
        format!("{idle:.1} MiB"),
    );
    rep.row(
        "memory",
        "relay peak RSS, one big transaction",
        format!(
            "{:.1} MiB ({rows} rows × {} B = {:.0} MB of WAL; relayed {relay_s:.1} s after commit, insert took {insert_s:.1} s)",
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
            "wal_mb": mb, "insert_s": insert_s, "relay_s_after_commit": relay_s,
            "peak_rss_mib": sample.peak_mib(), "relay_cpu_s": sample.cpu()}}),
    );
    Ok(())
}

// ------------------------------------------------------------ steady / mock

/// What a steady-state run through the relay measured.
struct SteadyOut {
    client: Option<Dist>,
    header: Option<Dist>,
    metrics_e2e: Option<Value>,
    json: Value,
}

/// Let PostgreSQL settle after bulk loads (autovacuum of the outbox, a
/// checkpoint) so it does not stall the latency measurement.
async fn quiesce(c: &Client) -> Result<()> {
    c.batch_execute("VACUUM (ANALYZE) public.outbox").await?;
    c.batch_execute("VACUUM (ANALYZE) public.outbox_poll")
        .await?;
    c.batch_execute("CHECKPOINT").await?;
    Ok(())
}

async fn relay_steady(
    env: &mut Env,
    brokers: &str,
    agg: &str,
    broker_pid: u32,
    with_consumer: bool,
    seconds: f64,
) -> Result<SteadyOut> {
    let o = env.opts.clone();
    let topic = format!("outbox.{agg}");
    quiesce(&env.ctl).await?;
    let mut relay = env.start_relay(brokers)?;
    let sampler = Sampler::start(relay.pid());
    harness::wait_streaming(&env.ctl, &mut relay).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumer = if with_consumer {
        Some(load::spawn_consumer(brokers, &topic, o.fetch_wait_ms, env.clock).await?)
    } else {
        None
    };
    // Warm-up: a few events end to end, so the relay's producer has its
    // producer id and the consumer its fetch positions before measuring.
    let warm = load::run_load(
        &env.bench_url,
        "public.outbox",
        agg,
        100.0,
        0.2,
        Opts::pad(o.payload_bytes),
        1,
        env.clock,
    )
    .await?
    .commits
    .len();
    if !delivered(
        env,
        &mut relay,
        consumer.as_ref(),
        agg,
        warm,
        Duration::from_secs(30),
    )
    .await?
    {
        bail!("{agg}: warm-up events did not arrive within 30 s");
    }
    Statements::reset(&env.ctl).await;
    let cpu = harness::PhaseCpu::start(&[("broker", broker_pid)]);
    let load = load::run_load(
        &env.bench_url,
        "public.outbox",
        agg,
        o.rate,
        seconds,
        Opts::pad(o.payload_bytes),
        o.load_conns,
        env.clock,
    )
    .await?;
    let n = load.commits.len();
    let all = delivered(
        env,
        &mut relay,
        consumer.as_ref(),
        agg,
        warm + n,
        Duration::from_secs(60),
    )
    .await?;
    let machine = cpu.finish();
    let stmts = Statements::of_role(&env.ctl, "postgres").await;
    relay.check_alive()?;
    let scrape = harness::scrape(relay.metrics_port);
    let metrics_e2e = scrape
        .as_deref()
        .and_then(|t| harness::metric_quantiles(t, "outbox_relay_end_to_end_latency_seconds"));
    let metrics_produce = scrape
        .as_deref()
        .and_then(|t| harness::metric_quantiles(t, "outbox_relay_produce_latency_seconds"));
    let recvs = consumer
        .map(load::ConsumerHandle::finish)
        .unwrap_or_default();
    let sample = sampler.finish();
    relay.stop(Duration::from_secs(30));
    let (client, header, missing) = if with_consumer {
        load::commit_to_receive(&load.commits, &recvs)
    } else {
        (None, None, 0)
    };
    if !all || missing > 0 {
        eprintln!("[e2e] {agg}: not all of {n} events delivered within 60 s ({missing} missing at the consumer)");
    }
    let json = json!({
        "events": n, "achieved_rate": load.rate(), "generator_max_behind_ms": load.max_behind_ms,
        "missing": missing, "all_delivered": all, "consumer": with_consumer,
        "commit_to_receive": load::opt_json(&client),
        "commit_timestamp_header_to_receive": load::opt_json(&header),
        "relay_metrics_end_to_end": metrics_e2e.clone().unwrap_or(Value::Null),
        "relay_metrics_produce": metrics_produce.unwrap_or(Value::Null),
        "metrics_endpoint": if scrape.is_some() { "up" } else { "absent" },
        "relay_peak_rss_mib": sample.peak_mib(),
        "relay_cpu_s": sample.cpu(),
        "machine": machine,
        "statements": stmts.json(n as u64, load.elapsed_s),
    });
    println!(
        "[e2e] {agg}: load {:.0}/s (max behind schedule {:.1} ms), relay CPU {:.1} s, {}, statements: {}",
        load.rate(),
        load.max_behind_ms,
        sample.cpu().unwrap_or(0.0),
        harness::cpu_cell(&machine),
        stmt_cell(&stmts, n as u64)
    );
    Ok(SteadyOut {
        client,
        header,
        metrics_e2e,
        json,
    })
}

/// Wait until `n` events of this relay run were delivered: counted by the
/// consumer if there is one, else until the relay's checkpoint covers the
/// WAL written so far (everything committed was acknowledged).
async fn delivered(
    env: &Env,
    relay: &mut Relay,
    consumer: Option<&load::ConsumerHandle>,
    agg: &str,
    n: usize,
    deadline: Duration,
) -> Result<bool> {
    if let Some(c) = consumer {
        return Ok(c.wait_for(n, deadline).await);
    }
    Ok(wait_relayed(env, relay, agg, deadline).await?.1)
}

/// Wait until the relay has checkpointed everything committed so far.
///
/// The WAL position after the last commit is no target by itself: other
/// WAL (autovacuum after a bulk load, checkpoints, the relay's own writes)
/// may follow it, and the relay's checkpoint only ever lands on the end of
/// an outbox transaction. So: note the position `p`, commit one marker row
/// (topic `outbox.{agg}`) after it, and wait until the checkpoint reaches
/// `p` — only the marker's end can satisfy that, and the marker commits
/// after everything before it. Returns (`p`, whether it was reached).
async fn wait_relayed(
    env: &Env,
    relay: &mut Relay,
    agg: &str,
    deadline: Duration,
) -> Result<(u64, bool)> {
    let p = harness::insert_lsn(&env.ctl).await?;
    env.ctl
        .execute(&load::insert_sql("public.outbox"), &[&agg, &-1i64, &8i32])
        .await
        .context("marker row")?;
    let end = Instant::now() + deadline;
    while harness::checkpoint_lsn(&env.ctl).await? < p {
        relay.check_alive()?;
        if Instant::now() > end {
            return Ok((p, false));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((p, true))
}

/// The broker floor: a bare producer at the same rate.
async fn floor(
    env: &Env,
    brokers: &str,
    topic: &str,
    seconds: f64,
    with_consumer: bool,
) -> Result<(Option<Dist>, Option<Dist>, Value)> {
    let o = &env.opts;
    let consumer = if with_consumer {
        Some(load::spawn_consumer(brokers, topic, o.fetch_wait_ms, env.clock).await?)
    } else {
        None
    };
    let (b, t, rate, pad, clock) = (
        brokers.to_string(),
        topic.to_string(),
        o.rate,
        Opts::pad(o.payload_bytes),
        env.clock,
    );
    let seen = consumer.as_ref().map_or_else(
        || std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
        load::ConsumerHandle::counter,
    );
    let (acks, sent) = tokio::task::spawn_blocking(move || {
        load::bare_rate(&b, &t, rate, seconds, pad, clock, &seen)
    })
    .await??;
    let (recv, missing) = match consumer {
        Some(c) => {
            c.wait_for(sent.len() + load::WARM_UP as usize, Duration::from_secs(60))
                .await;
            let recvs = c.finish();
            let (recv, _, missing) = load::commit_to_receive(&sent, &recvs);
            (recv, missing)
        }
        None => (None, 0),
    };
    let ack = Dist::of_us(acks);
    let json = json!({"events": sent.len(), "produce_to_ack": load::opt_json(&ack),
        "produce_to_receive": load::opt_json(&recv), "missing": missing});
    Ok((ack, recv, json))
}

fn added(relay: &Option<Dist>, floor: &Option<Dist>) -> Option<(f64, f64, f64)> {
    let (r, f) = (relay.as_ref()?, floor.as_ref()?);
    Some((r.p50 - f.p50, r.p99 - f.p99, r.mean - f.mean))
}

fn metric_ms(v: &Option<Value>, key: &str) -> Option<f64> {
    v.as_ref()?.get(key)?.as_f64()
}

fn metric_cell(v: &Option<Value>) -> String {
    match v {
        None => "not exported".into(),
        Some(m) => {
            let f = |k: &str| metric_ms(v, k).map_or("?".into(), load::ms);
            format!(
                "{} / {} / {} (mean {}; {} samples, {})",
                f("p50_ms"),
                f("p95_ms"),
                f("p99_ms"),
                f("mean_ms"),
                m.get("count").and_then(Value::as_f64).unwrap_or(0.0),
                m.get("kind").and_then(Value::as_str).unwrap_or("?")
            )
        }
    }
}

/// Exact shares from the relay's histogram bounds next to the bare
/// producer's, since the interpolated quantiles are coarse.
fn share_row(rep: &mut Report, part: &str, metrics_e2e: &Option<Value>, f_ack: &Option<Dist>) {
    let Some(m) = metrics_e2e else {
        return;
    };
    let cell = |b: &str, bf: f64| {
        let relay = m["pct_within_ms"][b].as_f64();
        let bare = f_ack
            .as_ref()
            .and_then(|d| d.within.iter().find(|x| x.0 == bf).map(|x| x.1));
        format!(
            "≤ {b} ms: relay {} % vs bare {} %",
            relay.map_or("?".into(), |v| format!("{v:.2}")),
            bare.map_or("?".into(), |v| format!("{v:.2}"))
        )
    };
    rep.row(
        part,
        "share acked within (exact, histogram bounds)",
        format!(
            "{} · {} · {}",
            cell("2.5", 2.5),
            cell("10", 10.0),
            cell("25", 25.0)
        ),
    );
}

/// Where a steady-state measurement runs.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// A fresh tansu broker per measurement.
    Tansu,
    /// The mock cluster at this bootstrap address (topics created ahead).
    Mock,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Tansu => "tansu",
            Target::Mock => "mock",
        }
    }
}

/// The brokers for one measurement: a fresh tansu with `topic`, or the mock.
async fn brokers_for(env: &mut Env, t: Target, mock: &str, topic: &str) -> (String, u32) {
    match t {
        Target::Tansu => {
            env.fresh_broker(&[topic]).await;
            (env.broker.bootstrap(), env.broker.pid())
        }
        Target::Mock => (mock.to_string(), std::process::id()),
    }
}

/// Commit → consumer receive for the relay and the bare producer, in a
/// pass of its own (at most 20 s): the consumer's fetching costs CPU that
/// would otherwise distort the commit → ack pass.
async fn consumer_pass(
    env: &mut Env,
    rep: &mut Report,
    t: Target,
    mock: &str,
) -> Result<(Option<f64>, Value)> {
    let part = format!("steady ({}), consumer attached", t.name());
    let secs = env.opts.seconds.min(20.0);
    let agg = format!("{}c", t.name());
    let (b, pid) = brokers_for(env, t, mock, &format!("outbox.{agg}")).await;
    let s = relay_steady(env, &b, &agg, pid, true, secs).await?;
    let bare_topic = format!("bare.{agg}");
    let (b, _) = brokers_for(env, t, mock, &bare_topic).await;
    let (_, f_recv, f_json) = floor(env, &b, &bare_topic, secs, true).await?;
    rep.row(
        &part,
        &format!("relay commit→receive p50/p95/p99/max ({secs} s)"),
        load::opt_cell(&s.client),
    );
    rep.row(
        &part,
        "relay commit_timestamp→receive",
        load::opt_cell(&s.header),
    );
    rep.row(
        &part,
        "bare producer produce→receive",
        load::opt_cell(&f_recv),
    );
    let add = added(&s.client, &f_recv);
    if let Some((a50, a99, amean)) = add {
        rep.row(
            &part,
            "added (relay commit→receive − bare produce→receive)",
            format!(
                "p50 {} · p99 {} · mean {}",
                load::ms(a50),
                load::ms(a99),
                load::ms(amean)
            ),
        );
    }
    let mut j = s.json;
    j["floor"] = f_json;
    j["added"] = add.map_or(
        Value::Null,
        |(a, b, c)| json!({"p50_ms": a, "p99_ms": b, "mean_ms": c}),
    );
    Ok((s.client.map(|d| d.mean), j))
}

/// The commit → ack pass (no consumer) plus, if asked, the consumer pass.
/// Returns (ack-side result, bare floor, consumer-side mean, JSON).
async fn steady_on(
    env: &mut Env,
    rep: &mut Report,
    t: Target,
    mock: &str,
) -> Result<(SteadyOut, Option<Dist>, Option<f64>, Value)> {
    let part = format!("steady ({})", t.name());
    let (b, pid) = brokers_for(env, t, mock, &format!("outbox.{}", t.name())).await;
    let secs = env.opts.seconds;
    let s = relay_steady(env, &b, t.name(), pid, false, secs).await?;
    let bare_topic = format!("bare.{}", t.name());
    let (b, _) = brokers_for(env, t, mock, &bare_topic).await;
    let floor_secs = if t == Target::Mock {
        secs.min(20.0)
    } else {
        secs
    };
    let (f_ack, _, f_json) = floor(env, &b, &bare_topic, floor_secs, false).await?;
    rep.row(
        &part,
        "load",
        format!(
            "{} single-row txns/s for {secs} s (floor: {floor_secs} s)",
            env.opts.rate
        ),
    );
    rep.row(
        &part,
        "relay /metrics commit→ack p50/p95/p99",
        metric_cell(&s.metrics_e2e),
    );
    rep.row(
        &part,
        "bare producer produce→ack p50/p95/p99/max",
        load::opt_cell(&f_ack),
    );
    share_row(rep, &part, &s.metrics_e2e, &f_ack);
    let add_ack = match (
        metric_ms(&s.metrics_e2e, "p50_ms"),
        metric_ms(&s.metrics_e2e, "p99_ms"),
        &f_ack,
    ) {
        (Some(p50), Some(p99), Some(f)) => Some((p50 - f.p50, p99 - f.p99)),
        _ => None,
    };
    if let Some((a50, a99)) = add_ack {
        rep.row(
            &part,
            "added (relay commit→ack − bare produce→ack)",
            format!("p50 {} · p99 {}", load::ms(a50), load::ms(a99)),
        );
    }
    let mut j = s.json.clone();
    j["floor"] = f_json;
    j["added_ack_side"] = add_ack.map_or(Value::Null, |(a, b)| json!({"p50_ms": a, "p99_ms": b}));
    let mut recv_mean = None;
    if env.opts.consumers.iter().any(|c| c == t.name()) {
        let (m, cj) = consumer_pass(env, rep, t, mock).await?;
        recv_mean = m;
        j["consumer_pass"] = cj;
    }
    Ok((s, f_ack, recv_mean, j))
}

/// Returns the relay's mean latencies for the polling ratio.
async fn steady_tansu(env: &mut Env, rep: &mut Report) -> Result<RelayMeans> {
    let (s, f_ack, recv_mean, j) = steady_on(env, rep, Target::Tansu, "").await?;
    // Commit → ack (the relay's histogram) against produce → ack (the bare
    // producer's delivery reports), as the issue defines it. The histogram
    // is quantised (1 ms commit timestamps, buckets 0.5/1/2.5/5/10/25 ms);
    // the shares per bucket bound in the table are exact.
    let add = match (
        metric_ms(&s.metrics_e2e, "p50_ms"),
        metric_ms(&s.metrics_e2e, "p99_ms"),
        &f_ack,
    ) {
        (Some(p50), Some(p99), Some(f)) => Some((p50 - f.p50, p99 - f.p99)),
        _ => None,
    };
    let how = "relay /metrics commit→ack − bare produce→ack";
    rep.target(
        "added latency p50 (tansu, 2,000/s)",
        "≤ 2 ms",
        add.map_or("n/a (no /metrics)".into(), |v| {
            format!("{} ({how})", load::ms(v.0))
        }),
        add.map(|v| v.0 <= 2.0),
    );
    rep.target(
        "added latency p99 (tansu, 2,000/s)",
        "≤ 10 ms",
        add.map_or("n/a (no /metrics)".into(), |v| {
            format!("{} ({how})", load::ms(v.1))
        }),
        add.map(|v| v.1 <= 10.0),
    );
    rep.row(
        "db cost",
        "relay statements, steady state",
        j["statements"]["per_event"]
            .as_f64()
            .map_or("n/a".into(), |v| {
                format!(
                    "{v:.4}/event ({} checkpoint writes, other {:.4}/event)",
                    j["statements"]["checkpoint_writes"],
                    j["statements"]["other_per_event"].as_f64().unwrap_or(0.0)
                )
            }),
    );
    let other = j["statements"]["other_per_event"].as_f64();
    rep.target(
        "statements per event (relay)",
        "0 beyond the periodic checkpoint write",
        other.map_or("n/a".into(), |v| format!("{v:.4} other/event")),
        other.map(|v| v < 0.001),
    );
    rep.json.insert("steady_tansu".into(), j);
    Ok(RelayMeans {
        receive: recv_mean,
        ack: metric_ms(&s.metrics_e2e, "mean_ms"),
    })
}

async fn mock(env: &mut Env, rep: &mut Report) -> Result<()> {
    let cluster = MockCluster::new(1).context("mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    for t in ["outbox.mock", "bare.mock", "outbox.mockc", "bare.mockc"] {
        cluster.create_topic(t, env.opts.partitions, 1)?;
    }
    let (s, _, _, j) = steady_on(env, rep, Target::Mock, &brokers).await?;
    let p99 = metric_ms(&s.metrics_e2e, "p99_ms");
    rep.target(
        "mock cluster commit→ack p99",
        "≤ 10 ms",
        p99.map_or("n/a (no /metrics)".into(), |v| {
            format!("{} (relay /metrics commit→ack)", load::ms(v))
        }),
        p99.map(|v| v <= 10.0),
    );
    rep.json.insert("steady_mock".into(), j);
    drop(cluster);
    Ok(())
}

// ------------------------------------------------------------------- polling

/// The relay's mean latencies (ms) from the steady tansu part: commit →
/// consumer receive, and commit → ack from its `/metrics`.
#[derive(Default, Clone, Copy)]
struct RelayMeans {
    receive: Option<f64>,
    ack: Option<f64>,
}

async fn polling(env: &mut Env, rep: &mut Report, relay: RelayMeans) -> Result<()> {
    let o = env.opts.clone();
    let mut results = Vec::new();
    for ms in [o.poll_interval_ms, o.fast_poll_interval_ms] {
        let topic = format!("poll.{ms}ms");
        env.fresh_broker(&[&topic]).await;
        let brokers = env.broker.bootstrap();
        env.ctl.batch_execute("TRUNCATE public.outbox_poll").await?;
        quiesce(&env.ctl).await?;
        let consumer = load::spawn_consumer(&brokers, &topic, o.fetch_wait_ms, env.clock).await?;
        Statements::reset(&env.ctl).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (url, b, t, clock) = (
            env.poller_url.clone(),
            brokers.clone(),
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
        let (ack, _) = load::match_latency(&load.commits, &stats.acks);
        if !ok || missing > 0 {
            eprintln!("[e2e] polling {ms} ms: {missing} of {n} not received");
        }
        let label = format!("polling relay, every {ms} ms, batch {}", o.poll_batch);
        rep.row(
            "polling",
            &format!("{label}: commit→ack"),
            load::opt_cell(&ack),
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
        let ratio = |p: &Option<Dist>, r: Option<f64>| match (p, r) {
            (Some(p), Some(r)) if r > 0.0 => Some(p.mean / r),
            _ => None,
        };
        let ratio_ack = ratio(&ack, relay.ack);
        let ratio_recv = ratio(&client, relay.receive);
        rep.row(
            "polling",
            &format!("{label}: mean latency polling / relay"),
            format!(
                "commit→ack {} · commit→receive {}",
                ratio_ack.map_or("n/a".into(), |r| format!("{r:.0} ×")),
                ratio_recv.map_or("n/a".into(), |r| format!("{r:.0} ×")),
            ),
        );
        if ms == o.poll_interval_ms {
            let (r, how) = match ratio_ack {
                Some(r) => (Some(r), "commit→ack"),
                None => (ratio_recv, "commit→receive"),
            };
            rep.target(
                "mean latency, polling (default interval) / relay",
                "≥ 100 ×",
                r.map_or("n/a".into(), |r| format!("{r:.0} × ({how})")),
                r.map(|r| r >= 100.0),
            );
        }
        results.push(json!({
            "interval_ms": ms, "batch": o.poll_batch, "events": n, "missing": missing,
            "achieved_rate": load.rate(),
            "commit_to_ack": load::opt_json(&ack),
            "commit_to_receive": load::opt_json(&client),
            "mean_ratio_over_relay_ack": ratio_ack,
            "mean_ratio_over_relay_receive": ratio_recv,
            "polls": stats.polls, "batches": stats.batches, "published": stats.events,
            "machine": machine,
            "statements": stmts.json(n as u64, load.elapsed_s),
        }));
    }
    rep.json.insert("polling".into(), json!(results));
    Ok(())
}

// -------------------------------------------------------------------- report

fn print_report(rep: &Report, command: &str) {
    let m = &rep.json["machine"];
    println!("\n## outbox-relay end-to-end benchmark\n");
    println!("Command: `{}`  ", command.trim());
    println!(
        "Machine: {} × {}, {} GiB RAM, Linux {}; PostgreSQL {}; {}; librdkafka {}\n",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["postgresql"].as_str().unwrap_or("?"),
        m["broker"].as_str().unwrap_or("?"),
        m["librdkafka"].as_str().unwrap_or("?"),
    );
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
