//! Measurements shared by the issue-9 parts and the Debezium comparison: a
//! contender (the relay, or Debezium in Kafka Connect) drains a backlog or
//! follows a steady load, one at a time, on the same PostgreSQL and broker.
//!
//! * **Delivered** means the broker holds it: for catch-up the sum of the
//!   topic's high watermarks (acks=all, so acknowledged and readable), for
//!   steady runs what a consumer attached to the topic actually read.
//! * **Latency** is transaction start (the load generator, just before it
//!   sends the single-row INSERT) or commit (when the client saw it return)
//!   → the broker's append time: every topic is created with
//!   `message.timestamp.type=LogAppendTime`, and the broker and PostgreSQL
//!   share this machine's clock. The append time has 1 ms resolution
//!   (truncated), so these latencies read up to 1 ms low.
//! * **CPU** is the contender's own utime+stime from /proc (all threads; the
//!   JVM's too), next to the broker's over the same window.
//! * A steady run measures only after a warm-up: first events until they
//!   flow, then the target rate for `seconds / 6` (1–10 s) until the
//!   consumer caught up, so the JVM's JIT and every buffer are warm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::connect::{self, Connect};
use crate::harness::{self, ProcSample, Relay};
use crate::load::{self, Dist};
use crate::{Env, Opts, Sampler};

/// Who moves the outbox rows to Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Relay,
    /// The relay in `kafka.delivery = "exactly-once"` on a slot and topics
    /// of its own (`--against exactly-once`).
    RelayExactlyOnce,
    Debezium,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Relay => "outbox-relay",
            Kind::RelayExactlyOnce => "outbox-relay (exactly-once)",
            Kind::Debezium => "Debezium",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kind::Relay => "relay",
            Kind::RelayExactlyOnce => "relay_exactly_once",
            Kind::Debezium => "debezium",
        }
    }

    /// The topic rows of `aggregate_type` land in.
    pub fn topic(self, agg: &str) -> String {
        match self {
            Kind::Relay => format!("outbox.{agg}"),
            Kind::RelayExactlyOnce => format!("eo.{agg}"),
            Kind::Debezium => format!("dbz.{agg}"),
        }
    }

    /// Its replication slot.
    pub fn slot(self) -> &'static str {
        match self {
            Kind::Relay => "outbox_relay",
            Kind::RelayExactlyOnce => EXACTLY_ONCE_SLOT,
            Kind::Debezium => connect::SLOT,
        }
    }
}

/// The exactly-once relay's slot.
pub const EXACTLY_ONCE_SLOT: &str = "outbox_relay_eo";

/// What the exactly-once contender runs with on top of `--relay-toml`: its
/// own slot (so both modes drain the same backlog), its own topics, the mode.
pub const EXACTLY_ONCE_TOML: &str = "[postgres]\nslot = \"outbox_relay_eo\"\n\n\
     [kafka]\ndelivery = \"exactly-once\"\ntopic-template = \"eo.{aggregate_type}\"\n";

/// A running contender process.
pub enum Running {
    Relay(Relay),
    Connect(Connect),
}

impl Running {
    pub fn pid(&self) -> u32 {
        match self {
            Running::Relay(r) => r.pid(),
            Running::Connect(c) => c.pid(),
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            Running::Relay(r) => r.check_alive(),
            Running::Connect(c) => c.check_alive(),
        }
    }

    pub fn stop(&mut self) {
        match self {
            Running::Relay(r) => r.stop(Duration::from_secs(30)),
            Running::Connect(c) => c.stop(Duration::from_secs(30)),
        }
    }

    pub fn metrics_port(&self) -> Option<u16> {
        match self {
            Running::Relay(r) => Some(r.metrics_port),
            Running::Connect(_) => None,
        }
    }

    pub fn log(&self) -> String {
        match self {
            Running::Relay(r) => r.log.display().to_string(),
            Running::Connect(c) => c.log.display().to_string(),
        }
    }
}

impl Env {
    /// Start `kind` against the benchmark's broker.
    pub fn start(&self, kind: Kind) -> Result<Running> {
        match kind {
            Kind::Relay => Ok(Running::Relay(self.start_relay(&self.bootstrap)?)),
            Kind::RelayExactlyOnce => Ok(Running::Relay(self.start_relay_exactly_once()?)),
            Kind::Debezium => Ok(Running::Connect(Connect::spawn(
                &self.dir.path().join("connect"),
                &self.bootstrap,
                self.pg.port(),
                "app",
            )?)),
        }
    }

    /// Move `slot` to the current end of WAL, so a contender starts with
    /// nothing but what the next measurement writes (it may not be active).
    pub async fn skip_slot(&self, slot: &str) -> Result<()> {
        self.ctl
            .execute(
                "SELECT pg_replication_slot_advance($1, pg_current_wal_flush_lsn()) \
                 FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&slot],
            )
            .await
            .with_context(|| format!("advance slot {slot}"))?;
        Ok(())
    }

    /// A fresh Debezium slot at the current end of WAL.
    pub async fn recreate_dbz_slot(&self) -> Result<()> {
        self.ctl
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&connect::SLOT],
            )
            .await?;
        self.ctl
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&connect::SLOT],
            )
            .await?;
        Ok(())
    }

    /// Messages the broker holds in `topic` (blocking client, run off the
    /// runtime).
    pub async fn end_offsets(&self, topic: &str) -> Result<i64> {
        let c = self.offsets.clone();
        let t = topic.to_string();
        let parts = self.opts.partitions;
        tokio::task::spawn_blocking(move || load::end_offsets(&c, &t, parts)).await?
    }
}

/// One contender draining a backlog already in its slot.
pub struct Drain {
    pub events_per_s: f64,
    pub json: Value,
}

/// Start `kind`, time from process start until the broker holds all `n`
/// events of `agg` (sum of end offsets), then stop it.
pub async fn drain(env: &Env, kind: Kind, agg: &str, n: u64, last_end: u64) -> Result<Drain> {
    let topic = kind.topic(agg);
    env.topic(&topic).await?;
    // Until the new topic's leader is known everywhere, end offsets answer
    // NotLeaderForPartition (retried); settle that before the clock starts.
    env.end_offsets(&topic).await?;
    let cpu = harness::PhaseCpu::start(&[("broker", env.broker.pid())]);
    let t = Instant::now();
    let mut proc = env.start(kind)?;
    let sampler = Sampler::start(proc.pid());
    let mut ws = ProcSample::default();
    let (mut first_event, mut streaming_at) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(180 + n / 1000);
    let mut next_ws = Instant::now();
    loop {
        proc.check_alive()?;
        let held = env.end_offsets(&topic).await?;
        if held > 0 {
            first_event.get_or_insert_with(|| t.elapsed().as_secs_f64());
        }
        if held as u64 >= n {
            break;
        }
        if Instant::now() >= next_ws {
            if let Some(pid) = harness::walsender_pid(&env.ctl, kind.slot()).await? {
                streaming_at.get_or_insert_with(|| t.elapsed().as_secs_f64());
                ws.sample(pid);
            }
            next_ws = Instant::now() + Duration::from_millis(250);
        }
        if Instant::now() > deadline {
            bail!(
                "{}: {held} of {n} events on the broker at the deadline; log {}",
                kind.name(),
                proc.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    if let Some(pid) = harness::walsender_pid(&env.ctl, kind.slot()).await? {
        ws.sample(pid);
    }
    let machine = cpu.finish();
    let sample = sampler.finish();
    // The relay's own durable position: how long after the broker held the
    // last event its checkpoint covered the last commit.
    let mut checkpointed_s = None;
    if matches!(kind, Kind::Relay | Kind::RelayExactlyOnce) {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if harness::checkpoint_lsn(&env.ctl, kind.slot()).await? >= last_end {
                checkpointed_s = Some(t.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    proc.stop();
    let held = env.end_offsets(&topic).await?;
    // In exactly-once mode the end offsets count commit markers too, and a
    // message is readable (read_committed) only once its transaction
    // committed: the clock stops when the checkpoint covers the last commit,
    // which the relay writes only after the Kafka commit (at most
    // relay.checkpoint-interval later — never in the mode's favour).
    let secs = match (kind, checkpointed_s) {
        (Kind::RelayExactlyOnce, Some(c)) => c,
        (Kind::RelayExactlyOnce, None) => bail!(
            "{}: the checkpoint did not cover the last commit within 30 s; log {}",
            kind.name(),
            proc.log()
        ),
        _ => secs,
    };
    let rate = n as f64 / secs;
    let first = first_event.unwrap_or(secs);
    let cpu_s = sample.cpu().unwrap_or(0.0);
    let json = json!({
        "contender": kind.key(), "events": n, "seconds": secs, "events_per_s": rate,
        "first_event_s": first,
        "streaming_s": streaming_at,
        "events_per_s_after_first": n as f64 / (secs - first).max(1e-9),
        "checkpoint_covers_last_commit_s": checkpointed_s,
        "broker_end_offsets_after": held,
        "peak_rss_mib": sample.peak_mib(),
        "cpu_s": cpu_s,
        "cpu_us_per_event": cpu_s * 1e6 / n as f64,
        "cpu_s_per_million": cpu_s * 1e6 / n as f64,
        "walsender_cpu_s": ws.cpu(),
        "broker_cpu_s": machine["broker_cpu_s"],
        "broker_cpu_us_per_event": machine["broker_cpu_s"].as_f64().map(|c| c * 1e6 / n as f64),
        "machine": machine,
    });
    eprintln!(
        "[e2e] {}: {n} events in {secs:.2} s = {rate:.0}/s (first event after {first:.2} s, CPU {cpu_s:.1} s, peak RSS {:.0} MiB)",
        kind.name(),
        sample.peak_mib()
    );
    Ok(Drain {
        events_per_s: rate,
        json,
    })
}

/// What one steady run measured.
pub struct Steady {
    pub start_to_append: Option<Dist>,
    pub commit_to_append: Option<Dist>,
    pub commit_to_receive: Option<Dist>,
    /// The relay's `commit_timestamp` header (PostgreSQL's commit time).
    pub header_to_append: Option<Dist>,
    pub metrics_e2e: Option<Value>,
    pub achieved_rate: f64,
    /// Lag (committed − consumed) sampled every second while the load ran.
    pub lag: Vec<(f64, i64)>,
    pub all_delivered: bool,
    pub json: Value,
}

impl Steady {
    /// Whether the contender kept up: every event delivered, the lag at the
    /// end of the load under `max_lag_s` seconds' worth, and the median lag
    /// of the last third of the run at most one second's worth above that of
    /// the first third (a spike that drains again is no growing lag). Also
    /// returns the least-squares slope of the lag (events/s) for the record.
    pub fn sustained(&self, rate: f64, max_lag_s: f64) -> (bool, f64) {
        let n = self.lag.len() as f64;
        let slope = if self.lag.len() >= 3 {
            let mx = self.lag.iter().map(|x| x.0).sum::<f64>() / n;
            let my = self.lag.iter().map(|x| x.1 as f64).sum::<f64>() / n;
            let num: f64 = self
                .lag
                .iter()
                .map(|x| (x.0 - mx) * (x.1 as f64 - my))
                .sum();
            let den: f64 = self.lag.iter().map(|x| (x.0 - mx).powi(2)).sum();
            if den > 0.0 {
                num / den
            } else {
                0.0
            }
        } else {
            0.0
        };
        let third = (self.lag.len() / 3).max(1);
        let med = |v: &[(f64, i64)]| -> f64 {
            let mut x: Vec<i64> = v.iter().map(|l| l.1).collect();
            x.sort_unstable();
            x.get(x.len() / 2).copied().unwrap_or(0) as f64
        };
        let first = med(&self.lag[..third.min(self.lag.len())]);
        let last_third = med(&self.lag[self.lag.len().saturating_sub(third)..]);
        let last = self.lag.last().map_or(0, |l| l.1) as f64;
        (
            self.all_delivered && last <= rate * max_lag_s && last_third <= first + rate,
            slope,
        )
    }
}

/// `kind` follows single-row transactions at `rate`/s for `seconds` with a
/// consumer attached to its topic from the start.
pub async fn steady(
    env: &Env,
    kind: Kind,
    agg: &str,
    rate: f64,
    seconds: f64,
    conns: usize,
) -> Result<Steady> {
    let o = env.opts.clone();
    let topic = kind.topic(agg);
    env.topic(&topic).await?;
    env.end_offsets(&topic).await?;
    crate::quiesce(&env.ctl).await?;
    match kind {
        Kind::Relay | Kind::RelayExactlyOnce => env.skip_slot(kind.slot()).await?,
        Kind::Debezium => env.recreate_dbz_slot().await?,
    }
    let t0 = Instant::now();
    let mut proc = env.start(kind)?;
    let sampler = Sampler::start(proc.pid());
    let consumer = load::spawn_consumer(&env.bootstrap, &topic, o.fetch_wait_ms, env.clock).await?;
    // Warm-up: events end to end until they flow (the JVM also compiles the
    // hot paths); the first delivered one dates the start.
    let mut warm = 0usize;
    let mut first_delivery = None;
    let warm_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        proc.check_alive()?;
        let l = load::run_load(
            &env.bench_url,
            "public.outbox",
            agg,
            200.0,
            0.5,
            Opts::pad(o.payload_bytes),
            1,
            env.clock,
        )
        .await?;
        warm += l.commits.len();
        let end = Instant::now() + Duration::from_secs(2);
        while consumer.count() < warm && Instant::now() < end {
            if consumer.count() > 0 {
                first_delivery.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if consumer.count() > 0 {
            first_delivery.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        }
        if consumer.count() >= warm && warm >= 500 {
            break;
        }
        if Instant::now() > warm_deadline {
            bail!(
                "{}: warm-up events did not arrive within 180 s; log {}",
                kind.name(),
                proc.log()
            );
        }
    }
    // Then the target rate for a while, so both the JVM's JIT and the
    // relay's buffers reach their steady state before anything is measured.
    let warm_s = (seconds / 6.0).clamp(1.0, 10.0);
    let l = load::run_load(
        &env.bench_url,
        "public.outbox",
        agg,
        rate,
        warm_s,
        Opts::pad(o.payload_bytes),
        conns,
        env.clock,
    )
    .await?;
    warm += l.commits.len();
    if !consumer.wait_for(warm, Duration::from_secs(120)).await {
        eprintln!(
            "[e2e] {} at {rate}/s: still behind 120 s after the {warm_s:.0} s warm-up",
            kind.name()
        );
    }
    let cpu = harness::PhaseCpu::start(&[("broker", env.broker.pid()), ("contender", proc.pid())]);
    let committed = Arc::new(AtomicU64::new(0));
    let lag_task = {
        let committed = committed.clone();
        let count = consumer.counter();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let h = tokio::spawn(async move {
            let t = Instant::now();
            let mut v = Vec::new();
            while !d.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let c = committed.load(Ordering::Relaxed) as i64;
                let r = count.load(Ordering::Relaxed) as i64 - warm as i64;
                v.push((t.elapsed().as_secs_f64(), c - r));
            }
            v
        });
        (h, done)
    };
    let load = load::run_load_counted(
        &env.bench_url,
        "public.outbox",
        agg,
        rate,
        seconds,
        Opts::pad(o.payload_bytes),
        conns,
        env.clock,
        committed,
    )
    .await?;
    lag_task.1.store(true, Ordering::Relaxed);
    let lag = lag_task.0.await?;
    let n = load.commits.len();
    let all = consumer.wait_for(warm + n, Duration::from_secs(120)).await;
    let machine = cpu.finish();
    let scrape = proc.metrics_port().and_then(harness::scrape);
    let metrics_e2e = scrape
        .as_deref()
        .and_then(|t| harness::metric_quantiles(t, "outbox_relay_end_to_end_latency_seconds"));
    proc.check_alive()?;
    let sample_message = consumer.sample();
    let recvs = consumer.finish();
    let sample = sampler.finish();
    proc.stop();
    let (start_to_append, missing) = load::to_append(&load.starts, &recvs);
    let (commit_to_append, _) = load::to_append(&load.commits, &recvs);
    let (commit_to_receive, _, _) = load::commit_to_receive(&load.commits, &recvs);
    let header_to_append = match kind {
        Kind::Relay | Kind::RelayExactlyOnce => load::header_to_append(&load.commits, &recvs),
        Kind::Debezium => None,
    };
    if !all || missing > 0 {
        eprintln!(
            "[e2e] {} at {rate}/s: {missing} of {n} events not read within 120 s",
            kind.name()
        );
    }
    let contender_cpu = machine["contender_cpu_s"].as_f64();
    let broker_cpu = machine["broker_cpu_s"].as_f64();
    let json = json!({
        "contender": kind.key(), "target_rate": rate, "seconds": seconds, "load_conns": conns,
        "events": n, "achieved_rate": load.rate(), "generator_max_behind_ms": load.max_behind_ms,
        "missing": missing, "all_delivered": all,
        "first_delivery_s": first_delivery,
        "sample_message": sample_message,
        "start_to_append": load::opt_json(&start_to_append),
        "commit_to_append": load::opt_json(&commit_to_append),
        "commit_to_receive": load::opt_json(&commit_to_receive),
        "commit_timestamp_header_to_append": load::opt_json(&header_to_append),
        "relay_metrics_end_to_end": metrics_e2e.clone().unwrap_or(Value::Null),
        "lag_samples": lag.iter().map(|(t, l)| json!([load::r3(*t), l])).collect::<Vec<_>>(),
        "peak_rss_mib": sample.peak_mib(),
        "cpu_s": contender_cpu,
        "cpu_us_per_event": contender_cpu.map(|c| c * 1e6 / n.max(1) as f64),
        "broker_cpu_us_per_event": broker_cpu.map(|c| c * 1e6 / n.max(1) as f64),
        "machine": machine,
        // The distribution as [percentile, ms] points, for the plots.
        "cdf_start_to_append_ms": cdf(samples_ms(&load.starts, &recvs)),
    });
    eprintln!(
        "[e2e] {} at {rate}/s: achieved {:.0}/s, start→append {}, CPU {:.1} s",
        kind.name(),
        load.rate(),
        load::opt_cell(&start_to_append),
        contender_cpu.unwrap_or(0.0)
    );
    Ok(Steady {
        start_to_append,
        commit_to_append,
        commit_to_receive,
        header_to_append,
        metrics_e2e,
        achieved_rate: load.rate(),
        lag,
        all_delivered: all && missing == 0,
        json,
    })
}

/// Start → append samples in ms (rounded to 0.1 ms), in id order.
fn samples_ms(starts: &[(i64, f64)], recvs: &[load::Recv]) -> Vec<f64> {
    let mut first = std::collections::HashMap::with_capacity(recvs.len());
    for r in recvs {
        if let Some(a) = r.append_us {
            first.entry(r.id).or_insert(a);
        }
    }
    let mut v: Vec<(i64, f64)> = starts
        .iter()
        .filter_map(|(id, t)| Some((*id, (first.get(id)? - t) / 1e3)))
        .collect();
    v.sort_by_key(|x| x.0);
    v.into_iter().map(|x| (x.1 * 10.0).round() / 10.0).collect()
}

/// [percentile, value] points: every 0.5 % plus the tail (99.9, 99.99, max).
fn cdf(mut v: Vec<f64>) -> Vec<[f64; 2]> {
    if v.is_empty() {
        return Vec::new();
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1];
    let mut ps: Vec<f64> = (0..=200).map(|i| i as f64 * 0.5).collect();
    ps.extend([99.9, 99.99]);
    ps.sort_by(f64::total_cmp);
    ps.into_iter().map(|p| [p, at(p)]).collect()
}

/// The highest rate among `steps` that `kind` sustains for `seconds`
/// (see [`Steady::sustained`]); stops at the first step it misses, or where
/// the load generator itself falls short of the rate.
pub async fn max_rate(
    env: &Env,
    kind: Kind,
    steps: &[f64],
    seconds: f64,
    conns: usize,
) -> Result<Value> {
    let mut best = None;
    let mut tried = Vec::new();
    let mut bound = "every step sustained (the ceiling is higher)";
    for (i, &rate) in steps.iter().enumerate() {
        let agg = format!("max{}{}", kind.key(), i);
        let s = steady(env, kind, &agg, rate, seconds, conns).await?;
        let (ok, slope) = s.sustained(rate, 2.0);
        let gen_ok = s.achieved_rate >= 0.95 * rate;
        tried.push(json!({
            "rate": rate, "achieved_rate": s.achieved_rate, "sustained": ok && gen_ok,
            "generator_kept_up": gen_ok, "lag_slope_per_s": slope,
            "final_lag": s.lag.last().map(|l| l.1), "all_delivered": s.all_delivered,
            "start_to_append": load::opt_json(&s.start_to_append),
            "cpu_us_per_event": s.json["cpu_us_per_event"],
        }));
        eprintln!(
            "[e2e] {} max-rate step {rate}/s: achieved {:.0}/s, lag slope {slope:.0}/s, final lag {:?}, sustained {}",
            kind.name(),
            s.achieved_rate,
            s.lag.last().map(|l| l.1),
            ok && gen_ok
        );
        if !ok {
            bound = "the contender fell behind at the next step";
            break;
        }
        if !gen_ok {
            bound = "the load generator fell short of the next step";
            best = Some(s.achieved_rate);
            break;
        }
        best = Some(rate);
    }
    Ok(
        json!({"contender": kind.key(), "seconds": seconds, "highest_sustained": best,
              "limited_by": bound, "steps": tried}),
    )
}
