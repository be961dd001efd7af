//! Bad configuration: one clear line naming the problem, non-zero exit.

use std::process::Command;

use crate::fixture::relay_bin;
use crate::support::free_port;
use crate::support::postgres::PgCluster;

/// Run the relay with only `env` (no config file from the environment) and
/// return (exit code, stderr lines).
fn run(args: &[&str], env: &[(&str, &str)], config: Option<&str>) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(relay_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOX_RELAY_") {
            c.env_remove(k);
        }
    }
    c.env("OUTBOX_RELAY_LOG", "off");
    if let Some(text) = config {
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        c.arg("--config").arg(p);
    }
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

fn assert_one_line(lines: &[String], needle: &str) {
    assert_eq!(lines.len(), 1, "expected one line, got {lines:#?}");
    assert!(
        lines[0].contains(needle),
        "{:?} should mention {needle:?}",
        lines[0]
    );
    assert!(lines[0].starts_with("outbox-relay: error:"), "{}", lines[0]);
}

#[test]
fn missing_url_names_the_key() {
    let (code, lines) = run(
        &["run"],
        &[("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1")],
        None,
    );
    assert_eq!(code, 2);
    assert_one_line(&lines, "postgres.url");
}

#[test]
fn unknown_key_is_named() {
    let (code, lines) = run(
        &["check-config"],
        &[],
        Some("[postgres]\nurl = \"postgres://u@127.0.0.1/db\"\nslott = \"x\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n"),
    );
    assert_eq!(code, 2);
    assert_one_line(&lines, "slott");
}

#[test]
fn bad_librdkafka_property_is_named() {
    let (code, lines) = run(
        &["check-config"],
        &[
            ("OUTBOX_RELAY_POSTGRES_URL", "postgres://u:pw@127.0.0.1/db"),
            ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
        ],
        Some("[kafka.properties]\n\"no.such.property\" = \"1\"\n"),
    );
    assert_eq!(code, 2);
    assert_one_line(&lines, "no.such.property");
}

#[test]
fn check_config_masks_secrets() {
    let out = Command::new(relay_bin())
        .args([
            "check-config",
            "--postgres-url",
            "postgres://relay:TopSecret1@127.0.0.1:5432/app",
            "--kafka-brokers",
            "127.0.0.1:1",
        ])
        .env("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", "TopSecret2")
        .env("OUTBOX_RELAY_LOG", "off")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("TopSecret"), "secret printed: {all}");
    assert!(all.contains("relay:***@127.0.0.1"));
}

/// `check-config` validates offline: with a broker address where nothing listens, it says
/// the configuration is valid and nothing else (no connection attempt, no librdkafka line).
#[test]
fn check_config_stays_offline() {
    let port = free_port();
    let out = Command::new(relay_bin())
        .args([
            "check-config",
            "--postgres-url",
            "postgres://relay@127.0.0.1:5432/app",
        ])
        .args(["--kafka-brokers", &format!("127.0.0.1:{port}")])
        .env("OUTBOX_RELAY_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("# configuration is valid"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("librdkafka") && !stderr.contains(&port.to_string()),
        "check-config connected somewhere: {stderr}"
    );
}

/// An `OUTBOX_RELAY_*` variable that maps to no key is an error naming it (exit 2).
#[test]
fn misspelt_environment_override_is_named() {
    let out = Command::new(relay_bin())
        .args([
            "check-config",
            "--postgres-url",
            "postgres://relay@127.0.0.1:5432/app",
        ])
        .args(["--kafka-brokers", "127.0.0.1:1"])
        .env("OUTBOX_RELAY_RELAY_ON_PERMANENT_EROR", "block")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("OUTBOX_RELAY_RELAY_ON_PERMANENT_EROR")
            && stderr.contains("did you mean OUTBOX_RELAY_RELAY_ON_PERMANENT_ERROR"),
        "{stderr}"
    );
}

#[test]
fn unreachable_host_fails_with_one_line() {
    let port = free_port();
    let (code, lines) = run(
        &["run"],
        &[
            (
                "OUTBOX_RELAY_POSTGRES_URL",
                &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            ),
            ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
            ("OUTBOX_RELAY_POSTGRES_CONNECT_TIMEOUT", "2s"),
        ],
        None,
    );
    assert_ne!(code, 0);
    assert_one_line(&lines, "connecting to PostgreSQL");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_fails_with_one_line() {
    let pg = PgCluster::start().await;
    pg.create_role("relay", "right-pw", "REPLICATION").await;
    let url = pg.url_for("postgres", "relay", "wrong-pw");
    let (code, lines) = tokio::task::spawn_blocking(move || {
        run(
            &["run"],
            &[
                ("OUTBOX_RELAY_POSTGRES_URL", &url),
                ("OUTBOX_RELAY_KAFKA_BROKERS", "127.0.0.1:1"),
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert_one_line(&lines, "password authentication failed");
    assert!(!lines[0].contains("wrong-pw"));
}

#[test]
fn print_sql_needs_no_connection() {
    let out = Command::new(relay_bin())
        .args(["init", "--print-sql"])
        .env("OUTBOX_RELAY_LOG", "off")
        .env("OUTBOX_RELAY_OUTBOX_COLUMNS_PAYLOAD", "payload")
        .env(
            "OUTBOX_RELAY_OUTBOX_COLUMNS_AGGREGATE_TYPE",
            "aggregatetype",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(sql.contains(
        "CREATE PUBLICATION outbox_relay_pub FOR TABLE public.outbox WITH (publish = 'insert')"
    ));
    assert!(sql.contains("    payload jsonb NOT NULL"), "{sql}");
    assert!(sql.contains("aggregatetype text NOT NULL"));
}
