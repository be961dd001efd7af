//! Topic drift: at startup and every `kafka.topic-check-interval`, the relay
//! asks the broker for the topics it writes and reports two changes nobody
//! told it about.
//!
//! * **DLQ topic missing** (`kind="dlq_missing"`): the first row that cannot
//!   be published would stall the stream, because a dead-letter is written
//!   before its row leaves the ordered stream (invariant 4). Not checked with
//!   `kafka.create-topics`, which creates the DLQ on first use.
//! * **Partition count changed** (`kind="partitions"`): keys hash to other
//!   partitions from then on, so one aggregate's events written before and
//!   after the change sit in different partitions and a consumer may read them
//!   out of order. Checked for the DLQ topic and every topic the relay has
//!   written since it started (noted by the producer the first time it uses
//!   a topic: [`note_topic`]).
//!
//! **Baseline.** The count a topic had when the relay first saw it. It is
//! kept in the checkpoint table's `topic_check` column (jsonb, per slot,
//! added by `init`), so a change made while the relay was down, or across a
//! takeover, is still caught: the first count ever seen for the slot stays
//! the baseline until an operator accepts the change (README, "Topic
//! drift"). The column is written only when the baseline or the findings
//! change, and only by the leader, and only once the slot has a checkpoint
//! row (before the first checkpoint the baseline lives in memory). Without
//! the column (an `init` from before this feature) the check still runs and
//! reports; it only forgets its baseline on restart.
//!
//! Outcome: an ERROR (DLQ missing) or WARN (partitions) log line naming the
//! topic and the counts when a finding appears, an INFO line when it clears;
//! the gauges `outbox_relay_topic_drift{topic,kind}` (1 while found, 0 once
//! checked and fine) and `outbox_relay_topic_partitions{topic}`; the
//! findings in `outbox-relay status` (read from the column).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::metrics as m;
use crate::sink::kafka_config::ClientRole;
use crate::source::control;

/// Topics the producer has written (or verified) since the process started.
static NOTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Called by the producer the first time a session uses `topic` (not per
/// message): from then on the drift check watches its partition count.
pub fn note_topic(topic: &str) {
    let mut noted = NOTED.lock().unwrap_or_else(|p| p.into_inner());
    if !noted.contains(topic) {
        noted.insert(topic.to_string());
    }
}

fn noted_topics() -> Vec<String> {
    NOTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// What kind of drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The dead-letter topic does not exist.
    DlqMissing,
    /// The partition count differs from the baseline.
    Partitions,
}

impl Kind {
    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::DlqMissing => "dlq_missing",
            Kind::Partitions => "partitions",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The topic.
    pub topic: String,
    /// What changed.
    pub kind: Kind,
    /// Partitions at the baseline (`None` for a missing DLQ never seen).
    pub expected: Option<i32>,
    /// Partitions now (`None`: the topic does not exist).
    pub actual: Option<i32>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: Option<i32>| v.map_or("-".to_string(), |v| v.to_string());
        match self.kind {
            Kind::DlqMissing => write!(
                f,
                "dead-letter topic {} is missing (kafka.dlq-topic): the stream stalls at the first row it cannot publish",
                self.topic
            ),
            Kind::Partitions => write!(
                f,
                "topic {} has {} partitions, {} when the relay first saw it: keys now map to other partitions",
                self.topic,
                n(self.actual),
                n(self.expected)
            ),
        }
    }
}

/// The persisted state (`topic_check` column).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Partitions per topic when first seen.
    #[serde(default)]
    pub baseline: BTreeMap<String, i32>,
    /// Findings of the last check that changed anything.
    #[serde(default)]
    pub drift: Vec<Finding>,
}

/// Compare what the broker says (`partitions`: topic → count, existing topics
/// only) with the baseline, extending the baseline with topics seen for the
/// first time. Pure.
pub fn evaluate(
    baseline: &mut BTreeMap<String, i32>,
    watched: &[String],
    dlq: Option<&str>,
    partitions: &HashMap<String, i32>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(dlq) = dlq {
        if !partitions.contains_key(dlq) {
            out.push(Finding {
                topic: dlq.to_string(),
                kind: Kind::DlqMissing,
                expected: baseline.get(dlq).copied(),
                actual: None,
            });
        }
    }
    for topic in watched {
        let Some(&now) = partitions.get(topic) else {
            continue;
        };
        match baseline.get(topic) {
            None => {
                baseline.insert(topic.clone(), now);
            }
            Some(&first) if first != now => out.push(Finding {
                topic: topic.clone(),
                kind: Kind::Partitions,
                expected: Some(first),
                actual: Some(now),
            }),
            Some(_) => {}
        }
    }
    out.sort_by(|a, b| (a.kind, &a.topic).cmp(&(b.kind, &b.topic)));
    out
}

/// Partition counts of every existing topic (one metadata request for all
/// topics: a request naming a topic could auto-create it on some brokers).
fn fetch_partitions(
    admin: &AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> Result<HashMap<String, i32>> {
    let md = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|e| RelayError::kafka("topic drift check: metadata request", e))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// `SELECT` of the recorded state; tolerant of a checkpoint table without
/// the column (`to_jsonb(row)` has no such key then).
fn load_sql(cfg: &Config) -> String {
    format!(
        "SELECT (to_jsonb(c) -> 'topic_check')::text FROM {} c WHERE slot_name = $1",
        cfg.outbox.checkpoint_table
    )
}

/// The recorded state of `cfg`'s slot; `None` when there is no checkpoint
/// row, no `topic_check` column or nothing recorded yet.
pub async fn load(client: &Client, cfg: &Config) -> Result<Option<Recorded>> {
    let row = client
        .query_opt(&load_sql(cfg), &[&cfg.postgres.slot])
        .await
        .map_err(|e| RelayError::postgres("reading topic_check (outbox.checkpoint-table)", e))?;
    let text: Option<String> = row.and_then(|r| r.get(0));
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Write the state (nothing happens while the slot has no checkpoint row).
async fn save(client: &Client, cfg: &Config, rec: &Recorded) -> Result<()> {
    let json = serde_json::to_string(rec).expect("serializable");
    client
        .execute(
            &format!(
                "UPDATE {} SET topic_check = $2::text::jsonb WHERE slot_name = $1",
                cfg.outbox.checkpoint_table
            ),
            &[&cfg.postgres.slot, &json],
        )
        .await
        .map_err(|e| RelayError::postgres("writing topic_check (run `outbox-relay init`)", e))?;
    Ok(())
}

/// Export, and log what appeared or cleared since `before`.
fn report(
    cfg: &Config,
    partitions: &HashMap<String, i32>,
    watched: &[String],
    before: &[Finding],
    now: &[Finding],
) {
    for f in now.iter().filter(|f| !before.contains(f)) {
        match f.kind {
            Kind::DlqMissing => tracing::error!(topic = %f.topic, "topic drift: {f}"),
            Kind::Partitions => tracing::warn!(
                topic = %f.topic,
                expected = f.expected.unwrap_or(0),
                actual = f.actual.unwrap_or(0),
                "topic drift: {f}"
            ),
        }
    }
    for f in before.iter().filter(|f| !now.contains(f)) {
        tracing::info!(topic = %f.topic, kind = f.kind.label(), "topic drift cleared");
    }
    let dlq = (!cfg.kafka.create_topics).then_some(cfg.kafka.dlq_topic.as_str());
    let found = |t: &str, k: Kind| now.iter().any(|f| f.topic == t && f.kind == k);
    if let Some(d) = dlq {
        let v = if found(d, Kind::DlqMissing) { 1.0 } else { 0.0 };
        metrics::gauge!(m::TOPIC_DRIFT, "topic" => d.to_string(), "kind" => Kind::DlqMissing.label())
            .set(v);
    }
    for t in watched {
        if let Some(&n) = partitions.get(t) {
            metrics::gauge!(m::TOPIC_PARTITIONS, "topic" => t.clone()).set(f64::from(n));
            let v = if found(t, Kind::Partitions) { 1.0 } else { 0.0 };
            metrics::gauge!(m::TOPIC_DRIFT, "topic" => t.clone(), "kind" => Kind::Partitions.label())
                .set(v);
        }
    }
}

/// Check until `shutdown`; returns at once when the interval is 0. Failures
/// (broker or PostgreSQL unreachable) are logged and retried next interval:
/// the stream has its own health checks.
pub async fn run_periodic(cfg: Config, mut shutdown: watch::Receiver<bool>) {
    let interval = cfg.kafka.topic_check_interval;
    if interval.is_zero() {
        tracing::info!("topic drift check disabled (kafka.topic-check-interval = 0)");
        return;
    }
    let admin: AdminClient<DefaultClientContext> = match cfg
        .kafka
        .to_rdkafka(ClientRole::Admin)
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "topic drift check: cannot create an admin client; not checking");
            return;
        }
    };
    let admin = std::sync::Arc::new(admin);
    let mut client: Option<Client> = None;
    // The last state, used when nothing is recorded in PostgreSQL (yet).
    let mut memory = Recorded::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return; }
                continue;
            }
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = control::connect(&cfg, "topic-check").await.ok();
        }
        // The recorded state is read every time: it is authoritative once
        // written (an operator accepts a change by editing it).
        let recorded = match &client {
            Some(c) => load(c, &cfg).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "topic drift check: cannot read the recorded baseline");
                None
            }),
            None => None,
        };
        let a = admin.clone();
        let timeout = cfg.postgres.connect_timeout.max(Duration::from_secs(5));
        let partitions =
            match tokio::task::spawn_blocking(move || fetch_partitions(&a, timeout)).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "topic drift check failed; retrying next interval");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "topic drift check panicked");
                    continue;
                }
            };
        let mut watched = noted_topics();
        if !watched.contains(&cfg.kafka.dlq_topic) {
            watched.push(cfg.kafka.dlq_topic.clone());
        }
        let mut next = recorded.clone().unwrap_or_else(|| memory.clone());
        let dlq = (!cfg.kafka.create_topics).then_some(cfg.kafka.dlq_topic.as_str());
        next.drift = evaluate(&mut next.baseline, &watched, dlq, &partitions);
        report(&cfg, &partitions, &watched, &memory.drift, &next.drift);
        if recorded.as_ref() != Some(&next) && crate::leader::may_act() {
            if let Some(c) = &client {
                if let Err(e) = save(c, &cfg, &next).await {
                    tracing::warn!(error = %e, "topic drift check: baseline not persisted");
                }
            }
        }
        memory = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(v: &[(&str, i32)]) -> HashMap<String, i32> {
        v.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn first_count_is_the_baseline_and_a_change_is_reported() {
        let mut base = BTreeMap::new();
        let watched = vec!["a".to_string(), "dlq".to_string()];
        let f = evaluate(
            &mut base,
            &watched,
            Some("dlq"),
            &parts(&[("a", 4), ("dlq", 1)]),
        );
        assert!(f.is_empty());
        assert_eq!(base["a"], 4);
        let f = evaluate(
            &mut base,
            &watched,
            Some("dlq"),
            &parts(&[("a", 6), ("dlq", 1)]),
        );
        assert_eq!(
            f,
            vec![Finding {
                topic: "a".into(),
                kind: Kind::Partitions,
                expected: Some(4),
                actual: Some(6)
            }]
        );
        assert_eq!(base["a"], 4, "the baseline stays until accepted");
    }

    #[test]
    fn a_missing_dlq_is_reported_and_a_missing_data_topic_is_not_drift() {
        let mut base = BTreeMap::new();
        let watched = vec!["a".to_string(), "dlq".to_string()];
        let f = evaluate(&mut base, &watched, Some("dlq"), &parts(&[]));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, Kind::DlqMissing);
        assert!(f[0].to_string().contains("dlq"), "{}", f[0]);
        // With create-topics there is no DLQ check.
        assert!(evaluate(&mut base, &watched, None, &parts(&[])).is_empty());
    }

    #[test]
    fn recorded_state_round_trips() {
        let r = Recorded {
            baseline: [("a".to_string(), 3)].into(),
            drift: vec![Finding {
                topic: "d".into(),
                kind: Kind::DlqMissing,
                expected: None,
                actual: None,
            }],
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("dlq_missing"), "{s}");
        assert_eq!(serde_json::from_str::<Recorded>(&s).unwrap(), r);
    }
}
