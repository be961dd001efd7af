//! Processes and probes of the end-to-end benchmark: the relay binary as a
//! child process, its memory and CPU from /proc, its Prometheus endpoint,
//! and the PostgreSQL queries that observe progress and statement counts.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use outbox_relay::sink::message::parse_lsn;
use serde_json::{json, Value};
use tokio_postgres::Client;

use crate::load::r3;

/// The relay binary cargo built next to this bench (same profile).
pub fn relay_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OUTBOX_RELAY_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_BIN_EXE_outbox-relay"))
}

/// Write a relay configuration: defaults everywhere except connections,
/// the metrics port and whatever `extra` (TOML, merged key by key, so it
/// may have its own `[kafka]` section) adds.
pub fn write_config(
    path: &Path,
    pg_url: &str,
    brokers: &str,
    metrics_port: u16,
    extras: &[&str],
) -> Result<()> {
    let base = format!(
        "[postgres]\nurl = \"{pg_url}\"\n\n[kafka]\nbrokers = \"{brokers}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let mut table: toml::Table = toml::from_str(&base)?;
    for extra in extras {
        let extra: toml::Table = toml::from_str(extra).context("--relay-toml is not valid TOML")?;
        merge(&mut table, extra);
    }
    std::fs::write(path, toml::to_string(&table)?)
        .with_context(|| format!("write {}", path.display()))
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// `outbox-relay --config FILE init`.
pub fn relay_init(config: &Path) -> Result<()> {
    let out = Command::new(relay_bin())
        .arg("--config")
        .arg(config)
        .arg("init")
        .env("OUTBOX_RELAY_LOG", "warn")
        .output()
        .context("run outbox-relay init")?;
    if !out.status.success() {
        bail!(
            "outbox-relay init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running `outbox-relay run`.
pub struct Relay {
    child: Option<Child>,
    /// `perf record` attached to the relay when `E2E_PERF=DIR` is set.
    perf: Option<Child>,
    pub log: PathBuf,
    pub metrics_port: u16,
}

impl Relay {
    pub fn spawn(config: &Path, log: PathBuf, metrics_port: u16) -> Result<Relay> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(relay_bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("OUTBOX_RELAY_POSTGRES_URL")
            .env_remove("OUTBOX_RELAY_KAFKA_BROKERS")
            .env(
                "OUTBOX_RELAY_LOG",
                std::env::var("E2E_RELAY_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .context("spawn outbox-relay run")?;
        // Profiling: E2E_PERF=/some/dir records the whole machine (relay,
        // its librdkafka threads, walsender, broker) with `perf record -a -g`
        // while this relay runs, into DIR/<log name>.perf.data; then e.g.
        // `perf report -i FILE --sort comm,dso`.
        let perf = std::env::var_os("E2E_PERF").and_then(|dir| {
            let name = log.file_stem()?.to_string_lossy().into_owned();
            let out = PathBuf::from(dir).join(format!("{name}.perf.data"));
            Command::new("perf")
                .args(["record", "-a", "-F", "499", "-g", "-o"])
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| eprintln!("[e2e] perf record failed to start: {e}"))
                .ok()
        });
        Ok(Relay {
            child: Some(child),
            perf,
            log,
            metrics_port,
        })
    }

    fn stop_perf(&mut self) {
        if let Some(mut p) = self.perf.take() {
            unsafe {
                libc::kill(p.id() as i32, libc::SIGINT);
            }
            let _ = p.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Err with the log tail if the process exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "relay exited with {st}; log {}:\n{}",
                    self.log.display(),
                    crate::support::tail_file(&self.log, 30)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM and wait; SIGKILL after `deadline`.
    pub fn stop(&mut self, deadline: Duration) {
        self.stop_perf();
        let Some(mut c) = self.child.take() else {
            return;
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("[e2e] relay did not stop within {deadline:?}; killing it");
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop_perf();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (VmRSS, VmHWM) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime of a process, seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// Busy and total jiffies of the whole machine (/proc/stat).
pub fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Machine CPU and a few processes' CPU over one phase.
pub struct PhaseCpu {
    start: (u64, u64),
    procs: Vec<(String, u32, f64)>,
}

impl PhaseCpu {
    pub fn start(procs: &[(&str, u32)]) -> PhaseCpu {
        PhaseCpu {
            start: machine_jiffies(),
            procs: procs
                .iter()
                .filter_map(|(n, pid)| Some((n.to_string(), *pid, cpu_secs(*pid)?)))
                .collect(),
        }
    }

    /// `machine busy %` (of all cores) and CPU seconds per process.
    pub fn finish(&self) -> Value {
        let (b, t) = machine_jiffies();
        let busy = (b - self.start.0) as f64 / (t - self.start.1).max(1) as f64 * 100.0;
        let mut m = serde_json::Map::new();
        m.insert("machine_busy_pct".into(), json!(r3(busy)));
        for (n, pid, c0) in &self.procs {
            if let Some(c) = cpu_secs(*pid) {
                m.insert(format!("{n}_cpu_s"), json!(r3(c - c0)));
            }
        }
        Value::Object(m)
    }
}

/// Peak RSS and CPU of a process, sampled while a phase runs.
#[derive(Default, Clone)]
pub struct ProcSample {
    pub peak_rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_start: Option<f64>,
    pub cpu_last: Option<f64>,
}

impl ProcSample {
    pub fn sample(&mut self, pid: u32) {
        if let Some((rss, hwm)) = rss_kib(pid) {
            self.peak_rss_kib = self.peak_rss_kib.max(rss);
            self.hwm_kib = self.hwm_kib.max(hwm);
        }
        if let Some(c) = cpu_secs(pid) {
            self.cpu_start.get_or_insert(c);
            self.cpu_last = Some(c);
        }
    }

    pub fn cpu(&self) -> Option<f64> {
        Some(self.cpu_last? - self.cpu_start?)
    }

    pub fn peak_mib(&self) -> f64 {
        self.peak_rss_kib.max(self.hwm_kib) as f64 / 1024.0
    }
}

/// GET /metrics from the relay; None when nothing listens.
pub fn scrape(port: u16) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| rest.to_string())
}

fn sample_value(line: &str) -> Option<f64> {
    line.rsplit_once(' ')?.1.trim().parse().ok()
}

fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}=\""))? + key.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

/// Quantiles (ms) of a Prometheus summary or histogram named `name` in a
/// scrape; series with other labels are merged (histogram) or the largest
/// by count is taken (summary).
pub fn metric_quantiles(text: &str, name: &str) -> Option<Value> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(name))
        .collect();
    if lines.is_empty() {
        return None;
    }
    let count: f64 = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{name}_count")))
        .filter_map(|l| sample_value(l))
        .sum();
    let sum: f64 = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{name}_sum")))
        .filter_map(|l| sample_value(l))
        .sum();
    let mean_ms = (count > 0.0).then(|| r3(sum / count * 1e3));
    let bucket = format!("{name}_bucket");
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.starts_with(&bucket)) {
        let le = label(l, "le")?;
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().ok()?
        };
        let e = buckets.entry(le.to_bits()).or_insert((le, 0.0));
        e.1 += sample_value(l)?;
    }
    if !buckets.is_empty() {
        let mut b: Vec<(f64, f64)> = buckets.into_values().collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let total = b.last()?.1;
        let q = |p: f64| -> Option<f64> {
            let want = p * total;
            let mut prev = (0.0, 0.0);
            for &(le, c) in &b {
                if c >= want {
                    if le.is_infinite() {
                        return Some(prev.0 * 1e3);
                    }
                    let frac = if c > prev.1 {
                        (want - prev.1) / (c - prev.1)
                    } else {
                        1.0
                    };
                    return Some((prev.0 + (le - prev.0) * frac) * 1e3);
                }
                prev = (le, c);
            }
            None
        };
        // Exact, unlike the interpolated quantiles: the share of samples at
        // or below each bucket bound.
        let within: serde_json::Map<String, Value> = b
            .iter()
            .filter(|(le, _)| le.is_finite() && *le <= 0.1)
            .map(|(le, c)| {
                (
                    format!("{}", r3(le * 1e3)),
                    json!(r3(c / total.max(1.0) * 100.0)),
                )
            })
            .collect();
        return Some(
            json!({"kind": "histogram", "count": total, "mean_ms": mean_ms,
            "p50_ms": q(0.5).map(r3), "p95_ms": q(0.95).map(r3), "p99_ms": q(0.99).map(r3),
            "pct_within_ms": within}),
        );
    }
    let mut qs = BTreeMap::new();
    for l in &lines {
        if let (Some(q), Some(v)) = (label(l, "quantile"), sample_value(l)) {
            let e = qs.entry(q.to_string()).or_insert(v);
            *e = e.max(v);
        }
    }
    if qs.is_empty() {
        return None;
    }
    let g = |q: &str| qs.get(q).map(|v| r3(v * 1e3));
    Some(
        json!({"kind": "summary", "count": count, "mean_ms": mean_ms,
        "p50_ms": g("0.5"), "p95_ms": g("0.95"), "p99_ms": g("0.99"), "max_ms": g("1")}),
    )
}

// ---------------------------------------------------------------- PostgreSQL

pub async fn insert_lsn(c: &Client) -> Result<u64> {
    let s: String = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    parse_lsn(&s).context("lsn")
}

pub async fn checkpoint_lsn(c: &Client, slot: &str) -> Result<u64> {
    let row = c
        .query_opt(
            "SELECT lsn::text FROM public.outbox_relay_checkpoint WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row
        .and_then(|r| parse_lsn(&r.get::<_, String>(0)))
        .unwrap_or(0))
}

/// Whether a walsender streams from the relay's slot.
pub async fn slot_active(c: &Client, slot: &str) -> Result<bool> {
    Ok(c.query_opt(
        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await?
    .is_some_and(|r| r.get::<_, bool>(0)))
}

/// The walsender serving `slot`.
pub async fn walsender_pid(c: &Client, slot: &str) -> Result<Option<u32>> {
    Ok(c.query_opt(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
        &[&slot],
    )
    .await?
    .and_then(|r| r.get::<_, Option<i32>>(0))
    .map(|p| p as u32))
}

/// Wait until the relay streams (its slot is active).
pub async fn wait_streaming(c: &Client, relay: &mut Relay) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        relay.check_alive()?;
        if slot_active(c, "outbox_relay").await? {
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "relay did not start streaming within 60 s; log:\n{}",
                crate::support::tail_file(&relay.log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Statement counts per role since the last reset (pg_stat_statements).
#[derive(Default, Clone)]
pub struct Statements {
    pub available: bool,
    pub total: i64,
    /// (calls, query) sorted by calls, descending.
    pub by_query: Vec<(i64, String)>,
    /// Server time spent executing the checkpoint writes, ms.
    pub checkpoint_exec_ms: f64,
}

impl Statements {
    pub async fn reset(c: &Client) -> bool {
        c.batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .is_ok()
    }

    pub async fn of_role(c: &Client, role: &str) -> Statements {
        let rows = c
            .query(
                "SELECT s.calls, s.query, s.total_exec_time FROM pg_stat_statements s \
                 JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 ORDER BY s.calls DESC",
                &[&role],
            )
            .await;
        match rows {
            Err(_) => Statements::default(),
            Ok(rows) => {
                let checkpoint_exec_ms = rows
                    .iter()
                    .filter(|r| {
                        let q: String = r.get(1);
                        q.starts_with("INSERT") && q.contains("outbox_relay_checkpoint")
                    })
                    .map(|r| r.get::<_, f64>(2))
                    .sum();
                let by_query: Vec<(i64, String)> = rows
                    .iter()
                    .map(|r| {
                        let q: String = r.get(1);
                        let q: String = q.split_whitespace().collect::<Vec<_>>().join(" ");
                        (r.get::<_, i64>(0), q.chars().take(110).collect())
                    })
                    .collect();
                Statements {
                    available: true,
                    checkpoint_exec_ms,
                    total: by_query.iter().map(|x| x.0).sum(),
                    by_query,
                }
            }
        }
    }

    /// Calls of statements that write the checkpoint table.
    pub fn checkpoint_writes(&self) -> i64 {
        self.by_query
            .iter()
            .filter(|(_, q)| q.contains("outbox_relay_checkpoint") && q.starts_with("INSERT"))
            .map(|x| x.0)
            .sum()
    }

    pub fn json(&self, events: u64, seconds: f64) -> Value {
        if !self.available {
            return json!({"available": false});
        }
        let ev = events.max(1) as f64;
        json!({
            "total": self.total,
            "per_event": self.total as f64 / ev,
            "checkpoint_writes": self.checkpoint_writes(),
            "checkpoint_exec_ms": self.checkpoint_exec_ms,
            "other_per_event": (self.total - self.checkpoint_writes()) as f64 / ev,
            "per_second": self.total as f64 / seconds.max(1e-9),
            "top": self.by_query.iter().take(8).map(|(c, q)| json!({"calls": c, "query": q})).collect::<Vec<_>>(),
        })
    }
}

/// Other work on the machine that would skew the numbers: processes of
/// `cargo test` / `cargo build` runs and test binaries (debug builds), and
/// the 1-minute load average.
pub fn foreign_activity() -> Value {
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("cargo test")
                || cmd.contains("cargo build")
                || cmd.contains("/debug/deps/")
                || cmd.contains("rustc ")
            {
                n += 1;
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok());
    json!({"build_or_test_processes": n, "loadavg_1m": load})
}

/// Machine facts for the report.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": r3(mem_kib as f64 / 1024.0 / 1024.0),
        "kernel": kernel,
        "librdkafka": rdkafka::util::get_rdkafka_version().1,
    })
}
