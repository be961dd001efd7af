//! Load side of the end-to-end benchmark: a clock shared by every measuring
//! thread, latency distributions, the rate-limited load generator, a
//! timestamping consumer (receive time and the broker's LogAppendTime), the
//! broker's end offsets, and the bare rdkafka producers that give the floors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// The `headers` column every benchmark row carries (one passthrough header,
/// so a message has 7 headers: the relay's 6 plus this one).
pub const ROW_HEADERS: &str =
    r#"{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
pub const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// One time base for every thread: monotonic microseconds since `base`, and
/// wall-clock timestamps (from message headers) mapped onto it.
#[derive(Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_sys: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            base_sys: SystemTime::now(),
        }
    }

    pub fn now_us(&self) -> f64 {
        self.base.elapsed().as_secs_f64() * 1e6
    }

    pub fn sys_us(&self, t: SystemTime) -> f64 {
        match t.duration_since(self.base_sys) {
            Ok(d) => d.as_secs_f64() * 1e6,
            Err(e) => -e.duration().as_secs_f64() * 1e6,
        }
    }

    /// A broker timestamp (Unix milliseconds) on the clock.
    pub fn unix_ms_us(&self, ms: i64) -> f64 {
        self.sys_us(SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
    }
}

/// Latency distribution in milliseconds.
#[derive(Clone, Debug)]
pub struct Dist {
    /// % of samples at or below 0.5, 1, 2.5, 5, 10, 25, 50, 100 ms (the
    /// relay's histogram bounds, for exact comparisons with it).
    pub within: Vec<(f64, f64)>,
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    /// From samples in microseconds.
    pub fn of_us(mut v: Vec<f64>) -> Option<Dist> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] / 1e3;
        let within = [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0]
            .iter()
            .map(|&b| {
                let k = v.partition_point(|x| *x <= b * 1e3);
                (b, k as f64 / v.len() as f64 * 100.0)
            })
            .collect();
        Some(Dist {
            within,
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64 / 1e3,
            p50: q(0.50),
            p95: q(0.95),
            p99: q(0.99),
            max: v[v.len() - 1] / 1e3,
        })
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "pct_within_ms": self.within.iter().map(|(b, p)| (b.to_string(), json!(r3(*p)))).collect::<serde_json::Map<_, _>>(), "mean_ms": r3(self.mean), "p50_ms": r3(self.p50), "p95_ms": r3(self.p95),
               "p99_ms": r3(self.p99), "max_ms": r3(self.max)})
    }

    /// `p50 / p95 / p99 / max (mean)` for the table.
    pub fn cell(&self) -> String {
        format!(
            "{} / {} / {} / {} (mean {})",
            ms(self.p50),
            ms(self.p95),
            ms(self.p99),
            ms(self.max),
            ms(self.mean)
        )
    }
}

pub fn opt_json(d: &Option<Dist>) -> Value {
    d.as_ref().map_or(Value::Null, Dist::json)
}

pub fn opt_cell(d: &Option<Dist>) -> String {
    d.as_ref().map_or_else(|| "n/a".into(), Dist::cell)
}

/// Milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0} ms")
    } else if v.abs() >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

pub fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// jsonb text of `jsonb_build_object('n', n, 'pad', repeat('x', pad))`.
pub fn payload_json(n: u64, pad: usize) -> String {
    format!(r#"{{"n": {n}, "pad": "{}"}}"#, "x".repeat(pad))
}

/// The INSERT every load generator and preload uses (single row).
pub fn insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (aggregate_type, aggregate_id, event_type, event_data, headers) \
         VALUES ($1, 'agg-' || ($2::bigint % 1000), 'BenchEvent', \
         jsonb_build_object('n', $2::bigint, 'pad', repeat('x', $3::int)), '{ROW_HEADERS}'::jsonb) \
         RETURNING id"
    )
}

/// What the load generator did.
pub struct LoadResult {
    /// (row id, µs on the clock when the client saw the commit).
    pub commits: Timeline,
    /// (row id, µs on the clock just before the INSERT was sent: the
    /// single-statement transaction's start).
    pub starts: Timeline,
    pub elapsed_s: f64,
    /// Worst lag behind the schedule (the generator could not keep up).
    pub max_behind_ms: f64,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.commits.len() as f64 / self.elapsed_s.max(1e-9)
    }
}

/// Commit single-row transactions into `table` at `rate`/s for `seconds`,
/// from `conns` connections following one shared schedule.
#[allow(clippy::too_many_arguments)]
pub async fn run_load(
    url: &str,
    table: &str,
    aggregate_type: &str,
    rate: f64,
    seconds: f64,
    pad: usize,
    conns: usize,
    clock: Clock,
) -> Result<LoadResult> {
    run_load_counted(
        url,
        table,
        aggregate_type,
        rate,
        seconds,
        pad,
        conns,
        clock,
        Arc::new(AtomicU64::new(0)),
    )
    .await
}

/// [`run_load`] that counts commits in `committed` as they happen (for lag
/// sampling while the load runs).
#[allow(clippy::too_many_arguments)]
pub async fn run_load_counted(
    url: &str,
    table: &str,
    aggregate_type: &str,
    rate: f64,
    seconds: f64,
    pad: usize,
    conns: usize,
    clock: Clock,
    committed: Arc<AtomicU64>,
) -> Result<LoadResult> {
    let total = (rate * seconds).round() as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let client = crate::support::postgres::connect(url)
            .await
            .context("load generator connect")?;
        let stmt = client.prepare(&insert_sql(table)).await?;
        let next = next.clone();
        let committed = committed.clone();
        let agg = aggregate_type.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut starts = Vec::new();
            let mut behind = 0f64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at).await;
                behind = behind.max(
                    tokio::time::Instant::now()
                        .saturating_duration_since(at)
                        .as_secs_f64(),
                );
                let sent = clock.now_us();
                let row = client
                    .query_one(&stmt, &[&agg, &(i as i64), &(pad as i32)])
                    .await?;
                let id = row.get::<_, i64>(0);
                out.push((id, clock.now_us()));
                starts.push((id, sent));
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>((out, starts, behind))
        }));
    }
    let mut commits = Vec::with_capacity(total as usize);
    let mut starts = Vec::with_capacity(total as usize);
    let mut max_behind = 0f64;
    for t in tasks {
        let (c, s, b) = t.await??;
        commits.extend(c);
        starts.extend(s);
        max_behind = max_behind.max(b);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(LoadResult {
        commits,
        starts,
        elapsed_s,
        max_behind_ms: max_behind * 1e3,
    })
}

/// (id, µs on the clock) per message: commit or send times.
pub type Timeline = Vec<(i64, f64)>;

/// One consumed message.
#[derive(Clone, Debug)]
pub struct Recv {
    pub id: i64,
    pub recv_us: f64,
    /// The `commit_timestamp` header (RFC 3339) on the clock.
    pub header_ts_us: Option<f64>,
    /// The broker's append time (topics with `message.timestamp.type=
    /// LogAppendTime`; 1 ms resolution) on the clock.
    pub append_us: Option<f64>,
}

/// A consumer thread reading every partition of a topic from the start.
pub struct ConsumerHandle {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    /// The first message read (key, value, headers, timestamp type), to show
    /// what a contender produces.
    first: Arc<std::sync::Mutex<Option<Value>>>,
    join: Option<JoinHandle<Vec<Recv>>>,
}

impl ConsumerHandle {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The first message read, as JSON (Null before any).
    pub fn sample(&self) -> Value {
        self.first
            .lock()
            .map(|g| g.clone().unwrap_or(Value::Null))
            .unwrap_or(Value::Null)
    }

    /// Shared count of messages received so far.
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }

    /// Wait until `n` messages arrived or `deadline` passed.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        while self.count() < n {
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn finish(mut self) -> Vec<Recv> {
        self.stop.store(true, Ordering::Relaxed);
        self.join
            .take()
            .map(|j| j.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Start a consumer of `topic` (must exist) and wait until it is assigned
/// and has completed a first fetch round.
pub async fn spawn_consumer(
    bootstrap: &str,
    topic: &str,
    fetch_wait_ms: u32,
    clock: Clock,
) -> Result<ConsumerHandle> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", rand::random::<u64>()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        // librdkafka's default, stated: in exactly-once mode a message counts
        // as received once its Kafka transaction committed.
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "10")
        .set("log_level", "3")
        .create()
        .context("create consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("consumer metadata")?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(AtomicBool::new(false));
    let first = Arc::new(std::sync::Mutex::new(None));
    let (s, c, r, f) = (stop.clone(), count.clone(), ready.clone(), first.clone());
    let join = std::thread::Builder::new()
        .name("bench-consumer".into())
        .spawn(move || {
            let mut got = Vec::new();
            let warm = Instant::now();
            while !s.load(Ordering::Relaxed) {
                if warm.elapsed() > Duration::from_millis(500) {
                    r.store(true, Ordering::Relaxed);
                }
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        let recv_us = clock.now_us();
                        let append_us = match m.timestamp() {
                            Timestamp::LogAppendTime(ms) => Some(clock.unix_ms_us(ms)),
                            _ => None,
                        };
                        let mut id = None;
                        let mut header_ts_us = None;
                        if let Some(h) = m.headers() {
                            for h in h.iter() {
                                let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
                                match (h.key, v) {
                                    ("id", Some(v)) => id = v.parse().ok(),
                                    ("commit_timestamp", Some(v)) => {
                                        header_ts_us = humantime::parse_rfc3339(v)
                                            .ok()
                                            .map(|t| clock.sys_us(t))
                                    }
                                    _ => {}
                                }
                            }
                        }
                        if let Ok(mut g) = f.lock() {
                            if g.is_none() {
                                let text = |b: Option<&[u8]>| {
                                    b.map(|b| String::from_utf8_lossy(b).into_owned())
                                };
                                let headers: Vec<Value> = m
                                    .headers()
                                    .map(|h| {
                                        h.iter().map(|h| json!([h.key, text(h.value)])).collect()
                                    })
                                    .unwrap_or_default();
                                *g = Some(json!({
                                    "key": text(m.key()),
                                    "value": text(m.payload()),
                                    "headers": headers,
                                    "timestamp_type": match m.timestamp() {
                                        Timestamp::LogAppendTime(_) => "LogAppendTime",
                                        Timestamp::CreateTime(_) => "CreateTime",
                                        Timestamp::NotAvailable => "none",
                                    },
                                }));
                            }
                        }
                        if let Some(id) = id {
                            got.push(Recv {
                                id,
                                recv_us,
                                header_ts_us,
                                append_us,
                            });
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Err(e)) => eprintln!("[e2e] consumer: {e}"),
                    None => {}
                }
            }
            got
        })?;
    let end = Instant::now() + Duration::from_secs(10);
    while !ready.load(Ordering::Relaxed) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(ConsumerHandle {
        stop,
        count,
        first,
        join: Some(join),
    })
}

/// Latencies from client-side commit (load generator) to consumer receive,
/// and from the `commit_timestamp` header to receive. First delivery of
/// each id counts; returns (client→recv, header→recv, missing ids).
pub fn commit_to_receive(
    commits: &[(i64, f64)],
    recvs: &[Recv],
) -> (Option<Dist>, Option<Dist>, usize) {
    let mut first: HashMap<i64, &Recv> = HashMap::with_capacity(recvs.len());
    for r in recvs {
        first.entry(r.id).or_insert(r);
    }
    let mut client = Vec::with_capacity(commits.len());
    let mut header = Vec::with_capacity(commits.len());
    let mut missing = 0;
    for (id, t) in commits {
        match first.get(id) {
            Some(r) => {
                client.push(r.recv_us - t);
                if let Some(h) = r.header_ts_us {
                    header.push(r.recv_us - h);
                }
            }
            None => missing += 1,
        }
    }
    (Dist::of_us(client), Dist::of_us(header), missing)
}

/// Latency from each `start` (id, µs on the clock) to the broker's append
/// time of the first delivery of that id; (distribution, missing ids).
pub fn to_append(start: &[(i64, f64)], recvs: &[Recv]) -> (Option<Dist>, usize) {
    let ends: Vec<(i64, f64)> = recvs
        .iter()
        .filter_map(|r| Some((r.id, r.append_us?)))
        .collect();
    match_latency(start, &ends)
}

/// The relay's `commit_timestamp` header (PostgreSQL's commit time) → the
/// broker's append time, over messages whose id is in `ids`.
pub fn header_to_append(ids: &[(i64, f64)], recvs: &[Recv]) -> Option<Dist> {
    let want: std::collections::HashSet<i64> = ids.iter().map(|x| x.0).collect();
    let mut seen = std::collections::HashSet::new();
    let v = recvs
        .iter()
        .filter(|r| want.contains(&r.id) && seen.insert(r.id))
        .filter_map(|r| Some(r.append_us? - r.header_ts_us?))
        .collect();
    Dist::of_us(v)
}

/// Messages the broker holds in `topic`: the sum of its partitions' high
/// watermarks (with acks=all, acknowledged and readable). Blocking.
/// Transient answers (a new topic whose leader metadata has not spread
/// yet: NotLeaderForPartition) are retried for up to 30 s.
pub fn end_offsets(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Result<i64> {
    let mut sum = 0;
    for p in 0..partitions {
        let end = Instant::now() + Duration::from_secs(30);
        let high = loop {
            match consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                Ok((_, high)) => break high,
                Err(e) if Instant::now() < end => {
                    eprintln!("[e2e] watermarks of {topic}/{p}: {e} (retrying)");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("watermarks of {topic}/{p}"));
                }
            }
        };
        sum += high;
    }
    Ok(sum)
}

/// A group-less client for [`end_offsets`].
pub fn offsets_client(bootstrap: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()?)
}

/// Latency from each `start` (id, µs) to the matching `end` (first per id);
/// returns the distribution and how many starts had no end.
pub fn match_latency(start: &[(i64, f64)], end: &[(i64, f64)]) -> (Option<Dist>, usize) {
    let mut first: HashMap<i64, f64> = HashMap::with_capacity(end.len());
    for (id, t) in end {
        first.entry(*id).or_insert(*t);
    }
    let mut v = Vec::with_capacity(start.len());
    let mut missing = 0;
    for (id, t) in start {
        match first.get(id) {
            Some(e) => v.push(e - t),
            None => missing += 1,
        }
    }
    (Dist::of_us(v), missing)
}

/// The relay's producer configuration, for the bare producers.
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "300000")
        .set("log_level", "3");
    // Experiments: E2E_PRODUCER_PROPS="linger.ms=0,socket.nagle.disable=true".
    if let Ok(extra) = std::env::var("E2E_PRODUCER_PROPS") {
        for kv in extra.split(',').filter(|s| !s.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                c.set(k.trim(), v.trim());
            }
        }
    }
    c
}

/// Delivery reports of a bare producer: counts, and the ack time per message.
struct AckContext {
    clock: Clock,
    acked: AtomicU64,
    failed: AtomicU64,
    ack_us: Vec<AtomicU64>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, i: usize) {
        let now = self.clock.now_us();
        match r {
            Ok(_) => {
                if let Some(slot) = self.ack_us.get(i) {
                    slot.store(now.to_bits(), Ordering::Relaxed);
                }
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("[e2e] bare producer delivery failed: {e}");
                }
            }
        }
    }
}

/// Headers shaped like the relay's: 6 relay headers + 1 passthrough.
fn bare_headers(i: u64, agg: &str) -> OwnedHeaders {
    let id = (10_000_000 + i).to_string();
    let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let mut h = OwnedHeaders::new_with_capacity(7);
    for (k, v) in [
        ("id", id.as_str()),
        ("event_type", "BenchEvent"),
        ("aggregate_type", "bare"),
        ("aggregate_id", agg),
        ("lsn", "1/6B374D48"),
        ("commit_timestamp", ts.as_str()),
        ("traceparent", TRACEPARENT),
    ] {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// The id the consumer sees for bare message `i`.
pub fn bare_id(i: u64) -> i64 {
    10_000_000 + i as i64
}

fn bare_producer(bootstrap: &str, n: usize, clock: Clock) -> Result<ThreadedProducer<AckContext>> {
    let ctx = AckContext {
        clock,
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ack_us: (0..n).map(|_| AtomicU64::new(0)).collect(),
    };
    Ok(producer_config(bootstrap).create_with_context(ctx)?)
}

fn send_one(p: &ThreadedProducer<AckContext>, topic: &str, i: u64, payload: &str) -> Result<()> {
    let agg = format!("agg-{}", i % 1000);
    loop {
        let rec = BaseRecord::with_opaque_to(topic, i as usize)
            .key(agg.as_bytes())
            .payload(payload.as_bytes())
            .headers(bare_headers(i, &agg));
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                _,
            )) => std::thread::sleep(Duration::from_micros(200)),
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Messages sent (and acknowledged) before measuring: the idempotent
/// producer first needs a producer id, and the first messages wait for it.
pub const WARM_UP: u64 = 20;

/// Ids of warm-up messages (`bare_id` of indexes past any run).
fn warm_up(p: &ThreadedProducer<AckContext>, topic: &str, pad: usize) -> Result<()> {
    let base = 1_000_000_000;
    for i in 0..WARM_UP {
        send_one(p, topic, base + i, &payload_json(i, pad))?;
    }
    let ctx = p.context();
    let end = Instant::now() + Duration::from_secs(30);
    while ctx.acked.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < WARM_UP {
        anyhow::ensure!(
            Instant::now() < end,
            "bare producer: warm-up not acknowledged"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Send `n` messages as fast as librdkafka takes them; seconds from the
/// first send to the last ack.
pub fn bare_burst(bootstrap: &str, topic: &str, n: u64, pad: usize) -> Result<f64> {
    let clock = Clock::new();
    let p = bare_producer(bootstrap, 0, clock)?;
    p.client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let ctx = p.context().clone();
    warm_up(&p, topic, pad)?;
    let start = Instant::now();
    for i in 0..n {
        send_one(&p, topic, i, &payload_json(i, pad))?;
    }
    let end = Instant::now() + Duration::from_secs(600);
    while ctx.acked.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed) < n + WARM_UP {
        anyhow::ensure!(Instant::now() < end, "bare producer: acks missing");
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        ctx.failed.load(Ordering::Relaxed) == 0,
        "bare producer: deliveries failed"
    );
    Ok(secs)
}

/// The broker floor: `rate`/s for `seconds`, same size and headers;
/// returns produce→ack latencies (µs) and (id, send µs) per message.
pub fn bare_rate(
    bootstrap: &str,
    topic: &str,
    rate: f64,
    seconds: f64,
    pad: usize,
    clock: Clock,
    consumed: &AtomicUsize,
) -> Result<(Vec<f64>, Timeline)> {
    let n = (rate * seconds).round() as usize;
    let p = bare_producer(bootstrap, n, clock)?;
    p.client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    warm_up(&p, topic, pad)?;
    // The consumer has its fetch positions once the warm-up arrived.
    let end = Instant::now() + Duration::from_secs(30);
    while consumed.load(Ordering::Relaxed) < WARM_UP as usize && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut sent = Vec::with_capacity(n);
    let start = Instant::now() + Duration::from_millis(100);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let t = clock.now_us();
        send_one(&p, topic, i as u64, &payload_json(i as u64, pad))?;
        sent.push((bare_id(i as u64), t));
    }
    let ctx = p.context().clone();
    let end = Instant::now() + Duration::from_secs(120);
    while ctx.acked.load(Ordering::Relaxed) + ctx.failed.load(Ordering::Relaxed)
        < n as u64 + WARM_UP
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let lat = sent
        .iter()
        .enumerate()
        .filter_map(|(i, (_, t))| {
            let bits = ctx.ack_us[i].load(Ordering::Relaxed);
            (bits != 0).then(|| f64::from_bits(bits) - t)
        })
        .collect();
    Ok((lat, sent))
}
