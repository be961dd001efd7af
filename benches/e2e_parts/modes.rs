//! Exactly-once against at-least-once (`--against exactly-once`, issue 11):
//! the relay in both delivery modes, one at a time, on the same backlog,
//! PostgreSQL and broker — each mode on a slot and topics of its own
//! ([`measure::EXACTLY_ONCE_TOML`]), `pg_recvlogical` beside them.
//!
//! * catch-up: `--events` rows per run sit in every slot; each mode drains
//!   them from process start until they are readable — at-least-once when
//!   the broker holds the last one (end offsets), exactly-once when its
//!   checkpoint covers the last commit (written only after the Kafka commit;
//!   end offsets there also count commit markers). The order alternates.
//! * steady: single-row transactions at `--rates` (default 2,000/s) for
//!   `--seconds`: commit (as the load generator saw it) → received by a
//!   `read_committed` consumer. In exactly-once mode that is the time until
//!   the Kafka transaction holding the row committed and its markers were
//!   written — what a consumer of the mode waits.
//!
//! Targets: catch-up ≥ 0.7 × at-least-once; commit → visible p99 ≤
//! `kafka.transaction-interval` + 20 ms.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::compare;
use crate::load;
use crate::measure::{self, Kind};
use crate::{preload, spread, spread_cell, spread_json, thousands};
use crate::{Env, Report};

/// Results gathered across the parts.
#[derive(Default)]
pub struct Modes {
    /// contender key → catch-up runs (JSON of each).
    catchup: BTreeMap<String, Vec<Value>>,
    /// rate → contender key → steady JSON.
    steady: BTreeMap<u64, BTreeMap<String, Value>>,
}

const MODES: [Kind; 2] = [Kind::Relay, Kind::RelayExactlyOnce];

pub async fn catchup(env: &Env, rep: &mut Report, m: &mut Modes) -> Result<()> {
    let runs = compare::catchup_runs(env, rep, "modes", |i| async move {
        let b = preload(env, &format!("modes{i}"), false).await?;
        compare::drain_in_turn(env, &b, &MODES, i).await
    })
    .await?;
    for run in runs {
        for (k, v) in run {
            m.catchup.entry(k).or_default().push(v);
        }
    }
    Ok(())
}

pub async fn steady(env: &Env, rep: &mut Report, m: &mut Modes) -> Result<()> {
    for &rate in &env.opts.rates.clone() {
        compare::steady_at(env, rep, rate, &MODES, &mut m.steady).await;
    }
    Ok(())
}

fn col(runs: &[Value], key: &str) -> Vec<f64> {
    compare::col(runs, &[key])
}

/// `kafka.transaction-interval` the exactly-once relay ran with.
fn transaction_interval(env: &Env) -> Duration {
    let set = toml::from_str::<toml::Table>(&env.opts.relay_toml)
        .ok()
        .and_then(|t| {
            let v = t.get("kafka")?.get("transaction-interval")?.as_str()?;
            humantime::parse_duration(v).ok()
        });
    set.unwrap_or(
        outbox_relay::config::Config::default()
            .kafka
            .transaction_interval,
    )
}

/// The table rows, targets and JSON.
pub fn finish(env: &Env, rep: &mut Report, m: &Modes) {
    let none = Vec::new();
    let runs = |k: &str| m.catchup.get(k).unwrap_or(&none);
    let (alo, eo) = (Kind::Relay.key(), Kind::RelayExactlyOnce.key());
    let rate = |v: f64| format!("{}/s", thousands(v));
    for (k, label) in [
        ("pg_recvlogical", "pg_recvlogical (the ceiling)"),
        (alo, "at-least-once"),
        (eo, "exactly-once"),
    ] {
        let r = runs(k);
        let mut cell = spread_cell(&col(r, "events_per_s"), rate);
        if k != "pg_recvlogical" {
            cell.push_str(&format!(
                " · CPU {} µs/event · first event {} · peak RSS {}",
                spread_cell(&col(r, "cpu_us_per_event"), |v| format!("{v:.1}")),
                spread_cell(&col(r, "first_event_s"), |v| format!("{v:.2} s")),
                spread_cell(&col(r, "peak_rss_mib"), |v| format!("{v:.0} MiB")),
            ));
        }
        rep.row("catch-up", &format!("{label}: events/s"), cell);
    }
    // Runs are paired (same backlog), so the ratio is taken per run.
    let ratios: Vec<f64> = col(runs(eo), "events_per_s")
        .iter()
        .zip(col(runs(alo), "events_per_s"))
        .map(|(e, a)| e / a)
        .collect();
    rep.row(
        "catch-up",
        "ratio exactly-once / at-least-once",
        spread_cell(&ratios, |v| format!("{v:.2}")),
    );
    let ratio = spread(&ratios).map(|x| x.0);
    rep.target(
        "exactly-once catch-up vs at-least-once",
        "≥ 0.7 ×",
        ratio.map_or("n/a".into(), |r| format!("{r:.2} × (median)")),
        ratio.map(|r| r >= 0.7),
    );

    let interval = transaction_interval(env);
    let bound_ms = interval.as_secs_f64() * 1e3 + 20.0;
    for (r, by) in &m.steady {
        for (k, label) in [(alo, "at-least-once"), (eo, "exactly-once")] {
            let Some(s) = by.get(k) else { continue };
            let d = &s["commit_to_receive"];
            let f = |key: &str| d[key].as_f64().map_or("n/a".into(), load::ms);
            rep.row(
                "steady",
                &format!(
                    "{label} at {}/s: commit → read_committed consumer p50 / p99 / max",
                    thousands(*r as f64)
                ),
                format!(
                    "{} / {} / {} (achieved {}/s, CPU {} µs/event)",
                    f("p50_ms"),
                    f("p99_ms"),
                    f("max_ms"),
                    thousands(s["achieved_rate"].as_f64().unwrap_or(0.0)),
                    s["cpu_us_per_event"]
                        .as_f64()
                        .map_or("n/a".into(), |v| format!("{v:.0}"))
                ),
            );
        }
        let p99 = by
            .get(eo)
            .and_then(|s| s["commit_to_receive"]["p99_ms"].as_f64());
        rep.target(
            &format!(
                "exactly-once commit → visible p99 at {}/s",
                thousands(*r as f64)
            ),
            &format!("≤ transaction-interval + 20 ms = {}", load::ms(bound_ms)),
            p99.map_or("n/a".into(), load::ms),
            p99.map(|p| p <= bound_ms),
        );
    }

    let catchup: serde_json::Map<String, Value> = m
        .catchup
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"events_per_s": spread_json(&col(v, "events_per_s")), "runs": v}),
            )
        })
        .collect();
    let steady: serde_json::Map<String, Value> = m
        .steady
        .iter()
        .map(|(r, by)| (r.to_string(), json!(by)))
        .collect();
    rep.json.insert(
        "modes".into(),
        json!({
            "catchup": catchup,
            "ratio_exactly_once_over_at_least_once": spread_json(&ratios),
            "steady": steady,
            "transaction_interval_ms": interval.as_millis() as u64,
            "exactly_once_toml": measure::EXACTLY_ONCE_TOML,
            "relay_toml_extra": env.opts.relay_toml,
        }),
    );
}
