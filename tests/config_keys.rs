//! Every config key with a bad value: `check-config` exits 2 and prints one
//! line naming the key — from the config file and from the environment.
//!
//! The key list is derived from `Config::default()`, so a new key without a
//! bad-value case here fails [`every_key_has_a_bad_value_case`]. Every key
//! has at least one invalid value (a wrong type at least); keys whose every
//! well-typed value is legal are listed in [`ANY_WELL_TYPED_VALUE`] with why.

use std::collections::BTreeSet;
use std::process::Command;

use outbox_relay::config::Config;
use serde_json::Value;

use crate::fixture::relay_bin;

/// A valid base: only the two required keys.
const URL: &str = "postgres://relay:base-pw-6f3a@127.0.0.1:5432/app";
const BROKERS: &str = "127.0.0.1:9092";

/// (dotted key, TOML value, what is wrong with it). Several per key.
const CASES: &[(&str, &str, &str)] = &[
    // postgres
    ("postgres.url", "42", "wrong type"),
    ("postgres.url", "\"\"", "empty"),
    (
        "postgres.url",
        "\"postgres://relay:base-pw-6f3a@/app\"",
        "no host",
    ),
    (
        "postgres.url",
        "\"postgres://127.0.0.1:5432/app\"",
        "no user",
    ),
    (
        "postgres.url",
        "\"postgres://relay:base-pw-6f3a@127.0.0.1:notaport/app\"",
        "bad port",
    ),
    (
        "postgres.url",
        "\"postgres://relay:base-pw-6f3a@127.0.0.1/app?sslmode=sometimes\"",
        "bad sslmode",
    ),
    (
        "postgres.url",
        "\"postgres://relay:base-pw-6f3a@127.0.0.1/app?sslmode=verify-full\"",
        "verify-full without sslrootcert",
    ),
    (
        "postgres.url",
        "\"postgres://relay:base-pw-6f3a@127.0.0.1/app?sslcert=/c.pem\"",
        "sslcert without sslkey",
    ),
    (
        "postgres.url",
        "\"postgres://relay:base-pw-6f3a@127.0.0.1/app?no_such_option=1\"",
        "unknown option",
    ),
    (
        "postgres.url",
        "\"host=127.0.0.1 user=relay password='base-pw-6f3a\"",
        "unterminated quote",
    ),
    ("postgres.slot", "\"Outbox-Slot!\"", "not an identifier"),
    ("postgres.slot", "\"\"", "empty"),
    (
        "postgres.publication",
        "\"pub; DROP TABLE x\"",
        "not an identifier",
    ),
    ("postgres.connect-timeout", "\"0s\"", "zero"),
    (
        "postgres.connect-timeout",
        "\"ten seconds\"",
        "bad duration",
    ),
    ("postgres.connect-timeout", "10", "wrong type"),
    // outbox
    ("outbox.table", "\"public.outbox.x\"", "three parts"),
    ("outbox.table", "\"1outbox\"", "not an identifier"),
    ("outbox.checkpoint-table", "\"public.\"", "empty name"),
    ("outbox.emit-function", "\"emit()\"", "not an identifier"),
    ("outbox.columns.id", "\"row id\"", "not an identifier"),
    ("outbox.columns.id", "\"\"", "required"),
    (
        "outbox.columns.aggregate-type",
        "\"aggregate-type\"",
        "not an identifier",
    ),
    (
        "outbox.columns.aggregate-id",
        "\"9id\"",
        "not an identifier",
    ),
    ("outbox.columns.event-type", "\"\"", "required"),
    (
        "outbox.columns.payload",
        "\"event data\"",
        "not an identifier",
    ),
    (
        "outbox.columns.headers",
        "\"head\\\"ers\"",
        "not an identifier",
    ),
    (
        "outbox.columns.topic",
        "\"topic.name\"",
        "not an identifier",
    ),
    ("outbox.columns.status", "\"\"", "required"),
    (
        "outbox.columns.created-at",
        "\"created at\"",
        "not an identifier",
    ),
    (
        "outbox.columns.processed-at",
        "\"processed at\"",
        "not an identifier",
    ),
    (
        "outbox.columns.retry-count",
        "\"retry-count\"",
        "not an identifier",
    ),
    ("outbox.columns.version", "\"v$\"", "not an identifier"),
    ("outbox.columns.txid", "\"tx id\"", "not an identifier"),
    ("outbox.columns.txid", "7", "wrong type"),
    // kafka
    ("kafka.brokers", "\"\"", "empty"),
    ("kafka.brokers", "\"127.0.0.1:notaport\"", "bad port"),
    ("kafka.brokers", "\"127.0.0.1:0\"", "port 0"),
    ("kafka.brokers", "\"a:9092, ,b:9092\"", "empty entry"),
    ("kafka.brokers", "[\"127.0.0.1:9092\"]", "wrong type"),
    (
        "kafka.topic-template",
        "\"outbox.{aggregate}\"",
        "unknown placeholder",
    ),
    (
        "kafka.topic-template",
        "\"outbox.{aggregate_type\"",
        "unclosed placeholder",
    ),
    (
        "kafka.topic-template",
        "\"outbox events/{aggregate_type}\"",
        "illegal characters",
    ),
    ("kafka.topic-template", "\"\"", "empty"),
    ("kafka.max-in-flight", "0", "zero"),
    ("kafka.max-in-flight", "-1", "negative"),
    ("kafka.max-in-flight", "\"lots\"", "wrong type"),
    ("kafka.max-in-flight-bytes", "0", "zero"),
    ("kafka.max-in-flight-bytes", "-1", "negative"),
    ("kafka.create-topics", "\"yes\"", "wrong type"),
    ("kafka.topic-partitions", "0", "zero"),
    ("kafka.topic-replication-factor", "-1", "negative"),
    ("kafka.topic-replication-factor", "33", "over 32"),
    ("kafka.topic-partitions", "3000000000", "out of range"),
    (
        "kafka.topic-replication-factor",
        "-1",
        "0 (min(3, brokers)) or 1-32",
    ),
    (
        "kafka.topic-replication-factor",
        "33",
        "0 (min(3, brokers)) or 1-32",
    ),
    ("kafka.dlq-topic", "\"dead letters\"", "illegal characters"),
    ("kafka.dlq-topic", "\"..\"", "reserved name"),
    ("kafka.format", "\"cloudevents\"", "bad enum"),
    ("kafka.format", "1", "wrong type"),
    (
        "kafka.cloudevents.source",
        "\"/outbox/{aggregate}\"",
        "unknown placeholder",
    ),
    (
        "kafka.cloudevents.source",
        "\"/outbox events\"",
        "not a URI reference",
    ),
    ("kafka.cloudevents.source", "\"\"", "empty"),
    (
        "kafka.cloudevents.id-column",
        "\"event id\"",
        "not an identifier",
    ),
    ("kafka.properties", "\"linger.ms=5\"", "wrong type"),
    (
        "kafka.properties",
        "{ \"no.such.property\" = \"1\" }",
        "unknown librdkafka property",
    ),
    (
        "kafka.properties",
        "{ \"linger.ms\" = \"soon\" }",
        "librdkafka rejects the value",
    ),
    (
        "kafka.properties",
        "{ \"enable.idempotence\" = \"false\" }",
        "would break ordering",
    ),
    (
        "kafka.properties",
        "{ \"acks\" = \"1\" }",
        "would break the checkpoint promise",
    ),
    (
        "kafka.properties",
        "{ \"bootstrap.servers\" = \"x:1\" }",
        "has a dedicated key",
    ),
    (
        "kafka.properties",
        "{ \"linger.ms\" = 5 }",
        "value must be a string",
    ),
    // relay
    ("relay.checkpoint-interval", "\"0s\"", "zero"),
    ("relay.shutdown-timeout", "\"forever\"", "bad duration"),
    ("relay.backoff-initial", "\"0s\"", "zero"),
    ("relay.backoff-max", "\"0s\"", "zero"),
    (
        "relay.backoff-max",
        "\"100ms\"",
        "below relay.backoff-initial (200ms)",
    ),
    ("relay.status-interval", "\"0s\"", "zero"),
    ("relay.heartbeat-interval", "\"-1s\"", "bad duration"),
    ("relay.slot-check-interval", "\"0s\"", "zero"),
    ("relay.max-retry", "0", "zero"),
    ("relay.on-permanent-error", "\"retry\"", "bad enum"),
    ("relay.max-payload-bytes", "0", "zero"),
    ("relay.batch-size", "0", "zero"),
    ("relay.batch-size", "1.5", "wrong type"),
    // outbox.tables
    ("outbox.tables", "\"public.a\"", "wrong type"),
    (
        "outbox.tables",
        "[{ table = \"bad name\" }]",
        "bad table name",
    ),
    (
        "outbox.tables",
        "[{ table = \"a.b\", topic = \"x\" }]",
        "unknown field",
    ),
    (
        "outbox.tables",
        "[{ table = \"a.b\" }, { table = \"a.b\" }]",
        "the same table twice",
    ),
    (
        "outbox.tables",
        "[{ table = \"a.b\", topic-template = \"bad topic!\" }]",
        "illegal topic template",
    ),
    (
        "outbox.tables",
        "[{ table = \"a.b\", columns = { id = \"1d\" } }]",
        "bad column name",
    ),
    // metrics
    (
        "metrics.listen",
        "\"localhost:9187\"",
        "not a numeric address",
    ),
    ("metrics.listen", "\"127.0.0.1\"", "no port"),
    (
        "metrics.table-health-interval",
        "\"every minute\"",
        "bad duration",
    ),
    ("metrics.table-health-interval", "30", "wrong type"),
    // cleanup
    ("cleanup.enabled", "\"yes\"", "wrong type"),
    ("cleanup.cleanup-interval", "\"0s\"", "zero"),
    ("cleanup.retention-days", "-1", "negative"),
    (
        "cleanup.failed-retention-days",
        "3",
        "below cleanup.retention-days (7)",
    ),
    ("cleanup.delete-after-publish", "1", "wrong type"),
    (
        "cleanup.archive-table",
        "\"public.outbox.archive\"",
        "three parts",
    ),
    (
        "cleanup.archive-table",
        "\"public.outbox\"",
        "the outbox itself",
    ),
    (
        "cleanup.archive-table",
        "\"outbox_relay_checkpoint\"",
        "the checkpoint table",
    ),
    ("cleanup.archive-retention-days", "-1", "negative"),
    ("cleanup.archive-retention-days", "\"30d\"", "wrong type"),
    // kafka (instance header)
    ("kafka.instance-header", "1", "wrong type"),
    // kafka (exactly-once)
    ("kafka.delivery", "\"exactly-twice\"", "bad enum"),
    ("kafka.delivery", "1", "wrong type"),
    ("kafka.transactional-id", "\"relay one\"", "whitespace"),
    ("kafka.transactional-id", "[\"a\"]", "wrong type"),
    (
        "kafka.progress-topic",
        "\"progress topic\"",
        "illegal characters",
    ),
    ("kafka.progress-topic", "\"\"", "empty"),
    ("kafka.progress-topic", "\"outbox.dlq\"", "the DLQ topic"),
    ("kafka.transaction-interval", "\"0s\"", "zero"),
    ("kafka.transaction-interval", "\"1m\"", "over 30s"),
    ("kafka.transaction-max-messages", "0", "zero"),
    ("kafka.transaction-max-messages", "-1", "negative"),
    (
        "kafka.properties",
        "{ \"transactional.id\" = \"mine\" }",
        "set by the relay (kafka.transactional-id)",
    ),
    ("kafka.topic-check-interval", "60", "wrong type"),
    ("kafka.topic-check-interval", "\"often\"", "bad duration"),
    // ha
    ("ha.enabled", "\"yes\"", "wrong type"),
    ("ha.lease", "\"50ms\"", "below 100ms"),
    ("ha.poll-interval", "\"0s\"", "zero"),
    ("ha.poll-interval", "\"900ms\"", "above ha.lease / 2"),
];

/// Keys for which every value of the right type is legal, and why. Each
/// still has a wrong-type case above.
const ANY_WELL_TYPED_VALUE: &[(&str, &str)] = &[
    (
        "kafka.create-topics",
        "a switch: true and false are both meaningful",
    ),
    (
        "cleanup.enabled",
        "a switch: off means only `outbox-relay prune` cleans up",
    ),
    (
        "cleanup.delete-after-publish",
        "a switch: delete instead of marking PROCESSED",
    ),
    (
        "relay.shutdown-timeout",
        "0s is legal: stop without waiting for acks (replayed on restart, never lost)",
    ),
    (
        "relay.heartbeat-interval",
        "0s disables the heartbeat; any other duration is a period",
    ),
    (
        "cleanup.retention-days",
        "0 is legal: prune PROCESSED rows at the next pass",
    ),
    (
        "cleanup.archive-retention-days",
        "0 keeps archived rows forever; any other count of days is a retention",
    ),
    (
        "metrics.table-health-interval",
        "0s turns the table-health queries off; any other duration is a period",
    ),
    (
        "kafka.instance-header",
        "a switch: on adds the relay_instance header",
    ),
    (
        "kafka.topic-check-interval",
        "0s turns the topic drift check off; any other duration is a period",
    ),
    (
        "ha.enabled",
        "a switch: off runs without election (one relay per slot, by the operator's care)",
    ),
];

/// Dotted keys of the configuration, from the defaults (the librdkafka
/// property map counts as one key).
fn all_keys() -> BTreeSet<String> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) if path.last().map(String::as_str) != Some("properties") => {
                for (k, child) in map {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.join("."));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(
        &serde_json::to_value(Config::default()).expect("defaults serialize"),
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// The valid base as TOML.
fn base_toml() -> String {
    format!("[postgres]\nurl = \"{URL}\"\n[kafka]\nbrokers = \"{BROKERS}\"\n")
}

/// The TOML for `key = value` on top of the valid base.
fn toml_with(key: &str, value: &str) -> String {
    let mut root: toml::Table = toml::from_str(&base_toml()).unwrap();
    let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .unwrap_or_else(|e| panic!("case {key} = {value}: {e}"))
        .remove("v")
        .unwrap();
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = &mut root;
    for p in &parts[..parts.len() - 1] {
        table = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    toml::to_string(&root).unwrap()
}

/// Run `check-config` with `toml` and `env`; (exit code, non-empty stderr lines, stdout).
fn check_config(toml: &str, env: &[(String, String)]) -> (i32, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, toml).unwrap();
    let mut c = Command::new(relay_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOX_RELAY_") {
            c.env_remove(k);
        }
    }
    c.env("OUTBOX_RELAY_LOG", "off")
        .arg("--config")
        .arg(&path)
        .arg("check-config");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run outbox-relay");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn assert_rejected(what: &str, key: &str, (code, lines, stdout): (i32, Vec<String>, String)) {
    assert_eq!(
        code, 2,
        "{what}: exit code (stderr {lines:?}, stdout {stdout})"
    );
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {lines:#?}");
    let line = &lines[0];
    assert!(line.starts_with("outbox-relay: error:"), "{what}: {line}");
    assert!(line.contains(key), "{what}: {line:?} does not name {key}");
    assert!(
        !line.contains("base-pw-6f3a"),
        "{what}: password printed: {line}"
    );
}

#[test]
fn every_key_has_a_bad_value_case() {
    let keys = all_keys();
    let covered: BTreeSet<String> = CASES.iter().map(|(k, _, _)| k.to_string()).collect();
    let missing: Vec<_> = keys.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "keys without a bad-value case: {missing:?}"
    );
    let unknown: Vec<_> = covered.difference(&keys).collect();
    assert!(
        unknown.is_empty(),
        "cases for keys that do not exist: {unknown:?}"
    );
    for (k, _) in ANY_WELL_TYPED_VALUE {
        assert!(keys.contains(*k), "{k} is not a key");
    }
    // The base itself is valid.
    let (code, lines, _) = check_config(&base_toml(), &[]);
    assert_eq!(code, 0, "{lines:?}");
}

#[test]
fn bad_value_in_the_file_names_the_key_with_exit_2() {
    std::thread::scope(|s| {
        let chunks: Vec<_> = CASES.chunks(CASES.len().div_ceil(2)).collect();
        for chunk in chunks {
            s.spawn(move || {
                for (key, value, why) in chunk {
                    let toml = toml_with(key, value);
                    assert_rejected(
                        &format!("{key} = {value} ({why})"),
                        key,
                        check_config(&toml, &[]),
                    );
                }
            });
        }
    });
}

/// The same values through `OUTBOX_RELAY_*` variables (scalars only: an
/// environment value is a string, typed by the key's default).
#[test]
fn bad_value_in_the_environment_names_the_key_with_exit_2() {
    let base = base_toml();
    let mut n = 0;
    for (key, value, why) in CASES {
        if key.starts_with("kafka.properties") {
            continue;
        }
        let v = match toml::from_str::<toml::Table>(&format!("v = {value}")).unwrap()["v"].clone() {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => continue,
        };
        let var = format!(
            "OUTBOX_RELAY_{}",
            key.replace(['.', '-'], "_").to_ascii_uppercase()
        );
        assert_rejected(
            &format!("{var}={v} ({why})"),
            key,
            check_config(&base, &[(var.clone(), v)]),
        );
        n += 1;
    }
    assert!(n > 50, "only {n} environment cases ran");
    // librdkafka properties from the environment.
    assert_rejected(
        "OUTBOX_RELAY_KAFKA_PROPERTY_LINGER_MS=soon",
        "kafka.properties.linger.ms",
        check_config(
            &base,
            &[(
                "OUTBOX_RELAY_KAFKA_PROPERTY_LINGER_MS".into(),
                "soon".into(),
            )],
        ),
    );
}
