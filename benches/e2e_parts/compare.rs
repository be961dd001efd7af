//! The Debezium comparison (`--against debezium`): outbox-relay and Debezium
//! (PostgreSQL connector + Outbox Event Router in a Kafka Connect standalone
//! worker), one at a time, on the same backlog, PostgreSQL and broker, with
//! `pg_recvlogical` (PostgreSQL's own decode speed) and a bare producer (the
//! broker's) as references.
//!
//! * catch-up: one backlog of `--events` rows per run sits in every
//!   contender's slot; each drains it from process start until the broker
//!   holds the last event (end offsets). The order alternates per run.
//! * steady: `--rates` (default 2,000 and 10,000/s) for `--seconds` each;
//!   transaction start → broker append time (LogAppendTime), p50/p99/max.
//! * maxrate: `--max-rates` steps of `--max-rate-seconds` (default 60 s);
//!   the highest a contender follows without its lag growing.
//! * peak RSS (any phase), CPU seconds per million events (catch-up, which
//!   includes the start, and steady state), process start → first event.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{json, Value};

use crate::load;
use crate::measure::{self, Kind};
use crate::{bare_burst, preload, recvlogical, spread, spread_cell, spread_json, thousands};
use crate::{Env, Report};

/// Results gathered across the parts.
#[derive(Default)]
pub struct Compare {
    /// contender key → catch-up runs (JSON of each).
    catchup: BTreeMap<String, Vec<Value>>,
    /// rate → contender key → steady JSON.
    steady: BTreeMap<u64, BTreeMap<String, Value>>,
    /// contender key → max-rate JSON.
    max: BTreeMap<String, Value>,
}

const CONTENDERS: [Kind; 2] = [Kind::Relay, Kind::Debezium];

pub async fn catchup(env: &Env, rep: &mut Report, cmp: &mut Compare) -> Result<()> {
    let runs = catchup_runs(env, rep, "comparison", |i| async move {
        let b = preload(env, &format!("cmp{i}"), true).await?;
        let mut run = drain_in_turn(env, &b, &CONTENDERS, i).await?;
        let (_, bare) = bare_burst(env, &format!("bare.cmp{i}"), b.n).await?;
        run.insert("bare".into(), bare);
        Ok(run)
    })
    .await?;
    for run in runs {
        for (k, v) in run {
            cmp.catchup.entry(k).or_default().push(v);
        }
    }
    Ok(())
}

/// A catch-up run's JSON by contender key.
pub type Run = BTreeMap<String, Value>;

/// `--repeat` catch-up runs of `one` (given the run's index): a failed run
/// is reported and left out whole (so the runs stay paired); an error only
/// when every run failed.
pub async fn catchup_runs<F, Fut>(
    env: &Env,
    rep: &mut Report,
    what: &str,
    one: F,
) -> Result<Vec<Run>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Run>>,
{
    let (mut runs, mut errors) = (Vec::new(), Vec::new());
    for i in 0..env.opts.repeat {
        eprintln!("[e2e] {what} catch-up run {} of {}", i + 1, env.opts.repeat);
        match one(i).await {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("[e2e] {what} catch-up run {} failed: {e:#}", i + 1);
                errors.push(format!("run {}: {e:#}", i + 1));
            }
        }
    }
    if !errors.is_empty() {
        rep.row("catch-up", "failed runs (left out)", errors.join("; "));
    }
    if runs.is_empty() {
        anyhow::bail!("every catch-up run failed");
    }
    Ok(runs)
}

/// `pg_recvlogical`, then each of `kinds` (in turn; the order alternates
/// with `i`, so none always meets a cold cache) draining backlog `b`.
pub async fn drain_in_turn(env: &Env, b: &crate::Backlog, kinds: &[Kind], i: usize) -> Result<Run> {
    let (_, last_end, recv) = recvlogical(env, b).await?;
    let mut run = Run::new();
    run.insert("pg_recvlogical".into(), recv);
    let mut order = kinds.to_vec();
    if !i.is_multiple_of(2) {
        order.reverse();
    }
    for kind in order {
        let d = measure::drain(env, kind, &b.agg, b.n, last_end).await?;
        run.insert(kind.key().into(), d.json);
    }
    Ok(run)
}

pub async fn steady(env: &Env, rep: &mut Report, cmp: &mut Compare) -> Result<()> {
    let o = env.opts.clone();
    for &rate in &o.rates {
        steady_at(env, rep, rate, &CONTENDERS, &mut cmp.steady).await;
        let f = crate::floor(env, &format!("bare.s{}", rate as u64), rate, o.seconds).await?;
        cmp.steady
            .entry(rate as u64)
            .or_default()
            .insert("bare".into(), f.json);
    }
    Ok(())
}

/// Each of `kinds` in turn at `rate`/s for `--seconds` (12 load connections
/// above 5,000/s): its steady JSON into `out[rate][kind]`, a failure into a
/// row of the report.
pub async fn steady_at(
    env: &Env,
    rep: &mut Report,
    rate: f64,
    kinds: &[Kind],
    out: &mut BTreeMap<u64, BTreeMap<String, Value>>,
) {
    let o = &env.opts;
    let conns = if rate > 5000.0 {
        o.max_rate_conns
    } else {
        o.load_conns
    };
    for &kind in kinds {
        let agg = format!("s{}{}", rate as u64, kind.key());
        match measure::steady(env, kind, &agg, rate, o.seconds, conns).await {
            Ok(s) => {
                out.entry(rate as u64)
                    .or_default()
                    .insert(kind.key().into(), s.json);
            }
            Err(e) => {
                eprintln!("[e2e] {} at {rate}/s failed: {e:#}", kind.name());
                rep.row(
                    "steady",
                    &format!("{} at {rate}/s failed", kind.name()),
                    format!("{e:#}").lines().next().unwrap_or("").to_string(),
                );
            }
        }
    }
}

pub async fn max_rate(env: &Env, rep: &mut Report, cmp: &mut Compare) -> Result<()> {
    let o = env.opts.clone();
    for kind in CONTENDERS {
        match measure::max_rate(
            env,
            kind,
            &o.max_rates,
            o.max_rate_seconds,
            o.max_rate_conns,
        )
        .await
        {
            Ok(m) => {
                cmp.max.insert(kind.key().into(), m);
            }
            Err(e) => {
                eprintln!("[e2e] {} max rate failed: {e:#}", kind.name());
                rep.row(
                    "maxrate",
                    &format!("{} failed", kind.name()),
                    format!("{e:#}").lines().next().unwrap_or("").to_string(),
                );
            }
        }
    }
    Ok(())
}

/// The numbers at `path` in each run.
pub fn col(runs: &[Value], path: &[&str]) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let mut v = r;
            for p in path {
                v = &v[*p];
            }
            v.as_f64()
        })
        .collect()
}

fn median(v: &[f64]) -> Option<f64> {
    spread(v).map(|x| x.0)
}

/// The comparison table, targets and JSON.
pub fn finish(env: &Env, rep: &mut Report, cmp: &Compare) {
    let none = Vec::new();
    let runs = |k: &str| cmp.catchup.get(k).unwrap_or(&none);
    let rate = |v: f64| format!("{}/s", thousands(v));
    let ms = |v: f64| load::ms(v);
    let lat = |k: &str, r: u64| -> String {
        let Some(s) = cmp.steady.get(&r).and_then(|m| m.get(k)) else {
            return "–".into();
        };
        let key = if k == "bare" {
            "produce_to_append"
        } else {
            "start_to_append"
        };
        let d = &s[key];
        match (
            d["p50_ms"].as_f64(),
            d["p99_ms"].as_f64(),
            d["max_ms"].as_f64(),
        ) {
            (Some(a), Some(b), Some(c)) => {
                let achieved = s["achieved_rate"].as_f64();
                let short = achieved.is_some_and(|x| x < 0.95 * r as f64);
                format!(
                    "{} / {} / {}{}",
                    ms(a),
                    ms(b),
                    ms(c),
                    if short {
                        format!(" (load reached {}/s)", thousands(achieved.unwrap_or(0.0)))
                    } else {
                        String::new()
                    }
                )
            }
            _ => "n/a".into(),
        }
    };
    let rates: Vec<u64> = cmp.steady.keys().copied().collect();
    let peak = |k: &str| -> Option<f64> {
        let mut v = col(runs(k), &["peak_rss_mib"]);
        for m in cmp.steady.values() {
            if let Some(x) = m.get(k).and_then(|s| s["peak_rss_mib"].as_f64()) {
                v.push(x);
            }
        }
        v.into_iter().reduce(f64::max)
    };
    let steady_cpu = |k: &str| -> Option<f64> {
        let r = *rates.first()?;
        cmp.steady.get(&r)?.get(k)?["cpu_us_per_event"].as_f64()
    };
    let max_cell = |k: &str| -> String {
        let Some(m) = cmp.max.get(k) else {
            return "–".into();
        };
        match m["highest_sustained"].as_f64() {
            Some(v) => format!("{} ({})", rate(v), m["limited_by"].as_str().unwrap_or("?")),
            None => format!(
                "< {} ({})",
                rate(env.opts.max_rates.first().copied().unwrap_or(0.0)),
                m["limited_by"].as_str().unwrap_or("?")
            ),
        }
    };
    let mut t = String::new();
    let mut head = "| Contender | Catch-up of the backlog | ".to_string();
    for r in &rates {
        head.push_str(&format!(
            "Latency at {}/s p50 / p99 / max | ",
            thousands(*r as f64)
        ));
    }
    head.push_str(&format!(
        "Highest rate sustained {} s | Peak RSS | CPU s per million events (catch-up incl. start · steady {}/s) | Process start → first event |",
        env.opts.max_rate_seconds,
        rates.first().map_or("?".into(), |r| thousands(*r as f64))
    ));
    t.push_str(&head);
    t.push('\n');
    t.push_str(&"|---".repeat(6 + rates.len()));
    t.push_str("|\n");
    for (k, label) in [
        ("relay", "**outbox-relay**"),
        ("debezium", "Debezium (Connect + Event Router)"),
        (
            "pg_recvlogical",
            "pg_recvlogical (PostgreSQL's decode, to a file)",
        ),
        ("bare", "bare rdkafka producer (the broker)"),
    ] {
        let r = runs(k);
        let mut line = format!(
            "| {label} | {} | ",
            spread_cell(&col(r, &["events_per_s"]), rate)
        );
        for rt in &rates {
            line.push_str(&lat(k, *rt));
            line.push_str(" | ");
        }
        let contender = k == "relay" || k == "debezium";
        line.push_str(&format!(
            "{} | {} | {} | {} |",
            if contender { max_cell(k) } else { "–".into() },
            if contender {
                peak(k).map_or("n/a".into(), |v| format!("{v:.0} MiB"))
            } else {
                "–".into()
            },
            if contender {
                format!(
                    "{} · {}",
                    spread_cell(&col(r, &["cpu_s_per_million"]), |v| format!("{v:.1}")),
                    steady_cpu(k).map_or("n/a".into(), |v| format!("{v:.1}"))
                )
            } else {
                "–".into()
            },
            if contender {
                spread_cell(&col(r, &["first_event_s"]), |v| format!("{v:.2} s"))
            } else {
                "–".into()
            },
        ));
        t.push_str(&line);
        t.push('\n');
    }
    t.push_str(&format!(
        "\nLatency: transaction start (load generator, just before the single-row INSERT) → the broker's LogAppendTime; for the bare producer, produce call → append time. \
         Catch-up: {} rows, process start → the broker holds the last event (sum of end offsets), median of {} run(s) with min–max. \
         The broker's own CPU is in the JSON.",
        thousands(env.opts.events as f64),
        env.opts.repeat
    ));
    rep.json.insert("compare_table".into(), json!(t));

    // Issue 10's targets.
    let relay_rate = median(&col(runs("relay"), &["events_per_s"]));
    let dbz_rate = median(&col(runs("debezium"), &["events_per_s"]));
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let r = ratio(relay_rate, dbz_rate);
    rep.target(
        "catch-up vs Debezium",
        "≥ 3 × Debezium's events/s",
        r.map_or("n/a".into(), |r| format!("{r:.2} ×")),
        r.map(|r| r >= 3.0),
    );
    let p99 = |k: &str| -> Option<f64> {
        cmp.steady.get(rates.first()?)?.get(k)?["start_to_append"]["p99_ms"].as_f64()
    };
    let r = ratio(p99("debezium"), p99("relay"));
    rep.target(
        &format!(
            "p99 latency at {}/s vs Debezium",
            rates.first().map_or("?".into(), |r| thousands(*r as f64))
        ),
        "≥ 10 × lower",
        r.map_or("n/a".into(), |r| {
            format!(
                "{r:.1} × lower ({} vs {})",
                ms(p99("relay").unwrap_or(0.0)),
                ms(p99("debezium").unwrap_or(0.0))
            )
        }),
        r.map(|r| r >= 10.0),
    );
    let r = ratio(peak("relay"), peak("debezium"));
    rep.target(
        "peak RSS vs Debezium",
        "≤ 1/10",
        r.map_or("n/a".into(), |r| {
            format!(
                "1/{:.0} ({:.0} vs {:.0} MiB)",
                1.0 / r,
                peak("relay").unwrap_or(0.0),
                peak("debezium").unwrap_or(0.0)
            )
        }),
        r.map(|r| r <= 0.1),
    );
    let cpu_c = |k: &str| median(&col(runs(k), &["cpu_s_per_million"]));
    let r = ratio(cpu_c("relay"), cpu_c("debezium"));
    let rs = ratio(steady_cpu("relay"), steady_cpu("debezium"));
    rep.target(
        "CPU per event vs Debezium",
        "≤ 1/3",
        match (r, rs) {
            (Some(r), Some(rs)) => format!("catch-up 1/{:.1} · steady 1/{:.1}", 1.0 / r, 1.0 / rs),
            (Some(r), None) => format!("catch-up 1/{:.1}", 1.0 / r),
            _ => "n/a".into(),
        },
        r.map(|r| r <= 1.0 / 3.0 && rs.is_none_or(|x| x <= 1.0 / 3.0)),
    );

    let catchup: serde_json::Map<String, Value> = cmp
        .catchup
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"events_per_s": spread_json(&col(v, &["events_per_s"])), "runs": v}),
            )
        })
        .collect();
    let steady: serde_json::Map<String, Value> = cmp
        .steady
        .iter()
        .map(|(r, m)| (r.to_string(), json!(m)))
        .collect();
    rep.json.insert(
        "compare".into(),
        json!({
            "catchup": catchup,
            "steady": steady,
            "max_rate": cmp.max,
            "peak_rss_mib": {"relay": peak("relay"), "debezium": peak("debezium")},
            "settings": {
                "debezium_worker": std::fs::read_to_string(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/debezium/worker.properties")).ok(),
                "debezium_connector": std::fs::read_to_string(
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/debezium/connector.properties")).ok(),
                "relay_toml_extra": env.opts.relay_toml,
            },
        }),
    );
}
