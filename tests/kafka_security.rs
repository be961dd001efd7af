//! Kafka security against a real Apache Kafka broker of the test's own: ACLs enforced by
//! `StandardAuthorizer` (a topic the relay may not write is dead-lettered while the others
//! flow; a principal that may write nothing stops the relay with one line), and SASL_SSL
//! with SCRAM-SHA-512 against a listener whose CA the test made (events flow; a wrong
//! password stops the relay with one line that never contains it).
//!
//! The relay talks to the broker's SASL listener ([`Broker::bootstrap`]); topic creation
//! and reading back go through the internal PLAINTEXT listener, whose principal
//! (`User:ANONYMOUS`) is a super user.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::fixture::{Arrival, Env, RelayProc, DLQ_TOPIC};
use crate::security::Pki;
use crate::support::broker::{kafka_libs, Broker, BrokerOptions, ClientSecurity};
use crate::support::{self, kafka};

/// The topic the relay may write.
const ALLOWED: &str = "outbox.order";
/// A topic the relay may describe but not write (the broker refuses the produce).
const NO_WRITE: &str = "outbox.audit";
/// A topic the relay has no ACL for at all (metadata already says not authorized).
const NO_ACL: &str = "outbox.secret";

const AUTHORIZER: &str = "org.apache.kafka.metadata.authorizer.StandardAuthorizer";

/// Options for a single node with an authorizer and a SASL_PLAINTEXT (SCRAM-SHA-512) client
/// listener for `users`.
fn acl_broker(users: &[(&str, &str)]) -> BrokerOptions {
    BrokerOptions {
        nodes: 1,
        props: vec![
            ("authorizer.class.name".into(), AUTHORIZER.into()),
            // The internal listener and the KRaft controller connections are PLAINTEXT,
            // principal ANONYMOUS: the harness and the broker itself may do everything.
            ("super.users".into(), "User:ANONYMOUS".into()),
            ("allow.everyone.if.no.acl.found".into(), "false".into()),
        ],
        client: ClientSecurity::SaslPlaintext,
        scram_users: users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect(),
    }
}

/// Relay environment overrides for SCRAM-SHA-512 as `user` over `protocol`.
fn sasl_env<'a>(protocol: &'a str, user: &'a str, password: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("OUTBOX_RELAY_KAFKA_PROPERTY_SECURITY_PROTOCOL", protocol),
        (
            "OUTBOX_RELAY_KAFKA_PROPERTY_SASL_MECHANISM",
            "SCRAM-SHA-512",
        ),
        ("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_USERNAME", user),
        ("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", password),
    ]
}

/// Kafka's own ACL tool (`kafka-acls.sh`), run against the internal listener.
fn acl_command(broker: &Broker, args: &[&str]) -> String {
    let out = Command::new("java")
        .args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:CICompilerCount=1",
        ])
        .arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()))
        .arg("org.apache.kafka.tools.AclCommand")
        .arg("--bootstrap-server")
        .arg(broker.admin_bootstrap())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run java AclCommand");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "AclCommand {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Grants `principal` each `(resource args, operations)` and waits until the broker's
/// authorizer lists all of them (`--list` is answered from the broker's own ACL cache, so
/// the grants are in force once listed).
async fn grant(broker: &Arc<Broker>, principal: &str, grants: &[(&[&str], &[&str])]) {
    let mut want = 0;
    for (resource, ops) in grants {
        let mut args = vec!["--add", "--allow-principal", principal];
        args.extend_from_slice(resource);
        for op in *ops {
            args.extend(["--operation", op]);
        }
        let b = broker.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            acl_command(&b, &args)
        })
        .await
        .unwrap();
        let topics = resource.iter().filter(|a| **a == "--topic").count().max(1);
        want += topics * ops.len();
    }
    let principal = principal.to_string();
    support::wait_until_msg(
        "the broker's authorizer lists every grant",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let (b, p) = (broker.clone(), principal.clone());
            async move {
                let q = p.clone();
                let listed = tokio::task::spawn_blocking(move || {
                    acl_command(&b, &["--list", "--principal", &q])
                })
                .await
                .unwrap();
                let n = listed
                    .lines()
                    .filter(|l| l.contains(&format!("principal={p},")) && l.contains("ALLOW"))
                    .count();
                n >= want
            }
        },
    )
    .await;
}

/// Inserts one row per `(aggregate_type, aggregate_id)` in one transaction; returns the ids
/// in commit order.
async fn insert_txn(env: &Env, rows: &[(&str, String)]) -> Vec<i64> {
    let mut c = env.client().await;
    let tx = c.transaction().await.unwrap();
    let mut ids = Vec::new();
    for (agg_type, agg_id) in rows {
        let id: i64 = tx
            .query_one(
                "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
                 VALUES ($1, $2, 'Created', '{\"v\":1}') RETURNING id",
                &[agg_type, agg_id],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    tx.commit().await.unwrap();
    ids
}

/// Sum of `topic`'s high watermarks: how many records ever landed (read on the internal
/// listener).
fn records_in(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka::client_config(bootstrap).create().expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = md.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "{topic} has no partitions");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .sum()
}

/// Waits for the relay to exit; returns its exit code and its whole stderr.
async fn wait_exit(relay: &mut RelayProc, deadline: Duration) -> (Option<i32>, String) {
    let code = support::wait_for_msg(
        "the relay to exit",
        deadline,
        Duration::from_millis(100),
        || {
            let st = relay.try_exit();
            async move { st }
        },
    )
    .await;
    (code.code(), relay.log_text())
}

/// The relay's stderr: exactly one line at error level, the final `outbox-relay: error:`
/// line, which contains every one of `needles`; returns it.
fn assert_one_error_line(log: &str, needles: &[&str]) -> String {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.starts_with("outbox-relay: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error line, got {}:\n{}",
        errors.len(),
        errors.join("\n")
    );
    let line = errors[0];
    assert!(line.starts_with("outbox-relay: error:"), "{line}");
    assert_eq!(
        log.lines().last(),
        Some(line),
        "the error line ends the output"
    );
    for n in needles {
        assert!(
            line.to_ascii_lowercase().contains(&n.to_ascii_lowercase()),
            "{line:?} should name {n:?}"
        );
    }
    line.to_string()
}

// ----------------------------------------------------------------------------- ACLs

/// The relay's principal may write `outbox.order` and the DLQ, may only describe
/// `outbox.audit` and has no ACL on `outbox.secret`: rows for the two forbidden topics are
/// refused with TOPIC_AUTHORIZATION_FAILED, dead-lettered after `relay.max-retry` attempts
/// and marked FAILED, while every `outbox.order` row arrives in commit order and nothing
/// lands on the forbidden topics.
#[tokio::test(flavor = "multi_thread")]
async fn topic_without_write_acl_is_dead_lettered_while_others_flow() {
    const PW: &str = "Acl-pw-6f1c2d";
    let started = Instant::now();
    let broker = Arc::new(Broker::start_with(acl_broker(&[("relay", PW)])).await);
    let env = Env::start_on(broker.clone(), &[ALLOWED, NO_WRITE, NO_ACL], "", 1000).await;
    let relay_user = "User:relay";
    grant(
        &broker,
        relay_user,
        &[
            (
                &["--topic", ALLOWED, "--topic", DLQ_TOPIC],
                &["Write", "Describe"],
            ),
            (&["--topic", NO_WRITE], &["Describe"]),
            (&["--cluster"], &["IdempotentWrite"]),
        ],
    )
    .await;
    eprintln!("broker, env and ACLs ready after {:?}", started.elapsed());

    let mut relay = env.spawn_relay_with(
        &[
            sasl_env("SASL_PLAINTEXT", "relay", PW),
            vec![("OUTBOX_RELAY_RELAY_MAX_RETRY", "2")],
        ]
        .concat(),
    );
    // Forbidden rows between allowed ones, all on one key so order is one partition's.
    let mut allowed = Vec::new();
    let mut forbidden = Vec::new();
    for i in 0..6 {
        let mut rows: Vec<(&str, String)> = (0..5).map(|_| ("order", "k1".to_string())).collect();
        let denied = match i % 3 {
            0 => Some("audit"),
            1 => Some("secret"),
            _ => None,
        };
        if let Some(t) = denied {
            rows.insert(2, (t, "k1".to_string()));
        }
        let ids = insert_txn(&env, &rows).await;
        for (id, (t, _)) in ids.iter().zip(&rows) {
            if *t == "order" {
                allowed.push(*id);
            } else {
                forbidden.push((*id, format!("outbox.{t}")));
            }
        }
    }
    let want: HashSet<i64> = allowed.iter().copied().collect();
    let msgs = env.read_ids(ALLOWED, &want, Duration::from_secs(120)).await;
    let arrival = Arrival::of(&msgs);
    arrival.assert_complete(&want);
    arrival.assert_commit_order();
    let mut first_seen = Vec::new();
    let mut sorted: Vec<_> = msgs.iter().collect();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    for m in sorted {
        let id: i64 = m.header_str("id").unwrap().parse().unwrap();
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(
        first_seen, allowed,
        "one key: the allowed rows in commit order"
    );

    // Every forbidden row reaches the DLQ. A row may be dead-lettered more than once: a
    // later refusal replays from the durable checkpoint, which may not have passed it yet
    // (at least once, like every message).
    let forbidden_ids: HashSet<i64> = forbidden.iter().map(|(id, _)| *id).collect();
    let dlq = env
        .read_ids(DLQ_TOPIC, &forbidden_ids, Duration::from_secs(60))
        .await;
    let mut dead = HashSet::new();
    for d in &dlq {
        let id: i64 = d.header_str("id").unwrap().parse().unwrap();
        let topic = &forbidden
            .iter()
            .find(|(f, _)| *f == id)
            .unwrap_or_else(|| panic!("row {id} in the DLQ was not forbidden"))
            .1;
        let msg = d.header_str("dlq.error.message").unwrap_or_default();
        assert!(
            msg.contains("TopicAuthorizationFailed"),
            "row {id}: dlq.error.message {msg:?}"
        );
        assert_eq!(
            d.header_str("dlq.error.class").as_deref(),
            Some("permanent")
        );
        assert_eq!(
            d.header_str("dlq.original.topic").as_deref(),
            Some(topic.as_str())
        );
        assert_eq!(d.header_str("dlq.attempts").as_deref(), Some("2"));
        assert!(d.header_str("dlq.first.failure").is_some());
        assert_eq!(d.key_str().as_deref(), Some("k1"));
        assert_eq!(d.payload_str().as_deref(), Some("{\"v\": 1}"), "value kept");
        dead.insert(id);
    }
    assert_eq!(dead, forbidden_ids, "every forbidden row dead-lettered");
    eprintln!(
        "{} forbidden rows, {} DLQ messages",
        forbidden.len(),
        dlq.len()
    );

    let env_ref = &env;
    for (id, _) in &forbidden {
        let id = *id;
        support::wait_until_msg(
            &format!("row {id} marked FAILED"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async move { env_ref.row_status(id).await.0 == "FAILED" },
        )
        .await;
        assert_eq!(env.row_status(id).await.1, 2, "row {id}: retry count");
    }
    let bootstrap = env.bootstrap();
    let landed = tokio::task::spawn_blocking(move || {
        (
            records_in(&bootstrap, NO_WRITE),
            records_in(&bootstrap, NO_ACL),
        )
    })
    .await
    .unwrap();
    assert_eq!(landed, (0, 0), "nothing landed on the forbidden topics");
    assert!(
        relay.is_running(),
        "a forbidden topic is not a reason to stop"
    );
    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "relay exit: {status}");
    let log = relay.log_text();
    assert!(!log.contains(PW), "password printed:\n{log}");
    eprintln!("ACL dead-letter test took {:?}", started.elapsed());
}

/// A principal with Describe but no Write on any topic and no IdempotentWrite on the
/// cluster: the broker refuses the idempotent producer its producer id
/// (CLUSTER_AUTHORIZATION_FAILED), librdkafka stops the producer for good. Retrying cannot
/// help: the relay exits non-zero with one line naming the authorization problem — when
/// idle (nothing to send yet) and when rows wait — and nothing was written.
#[tokio::test(flavor = "multi_thread")]
async fn principal_without_write_or_idempotent_write_stops_the_relay_with_one_line() {
    const PW: &str = "Reader-pw-93ab07";
    let started = Instant::now();
    let broker = Arc::new(Broker::start_with(acl_broker(&[("reader", PW)])).await);
    let env = Env::start_on(broker.clone(), &[ALLOWED], "", 1000).await;
    grant(
        &broker,
        "User:reader",
        &[(&["--topic", ALLOWED, "--topic", DLQ_TOPIC], &["Describe"])],
    )
    .await;
    let reader = sasl_env("SASL_PLAINTEXT", "reader", PW);

    // Idle: no row to send, the refused producer id alone stops it.
    let mut relay = env.spawn_relay_with(&reader);
    let (code, log) = wait_exit(&mut relay, Duration::from_secs(60)).await;
    eprintln!("relay stderr (idle):\n{log}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?}: {log}"
    );
    let idle_line = assert_one_error_line(&log, &["authorization failed", "IdempotentWrite"]);
    assert!(!log.contains(PW), "password printed:\n{log}");

    // Rows waiting: their deliveries fail as purged; the producer's own error is reported.
    let ids = insert_txn(&env, &[("order", "k1".into()), ("order", "k2".into())]).await;
    let mut relay = env.spawn_relay_with(&reader);
    let (code, log) = wait_exit(&mut relay, Duration::from_secs(60)).await;
    eprintln!("relay stderr (rows waiting):\n{log}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?}: {log}"
    );
    let line = assert_one_error_line(&log, &["authorization failed", "IdempotentWrite"]);
    assert!(!log.contains(PW), "password printed:\n{log}");
    eprintln!("one line: {line}");
    assert_eq!(
        idle_line.split("broker ").next(),
        line.split("broker ").next(),
        "the same problem named either way"
    );

    let bootstrap = env.bootstrap();
    let landed = tokio::task::spawn_blocking(move || records_in(&bootstrap, ALLOWED))
        .await
        .unwrap();
    assert_eq!(landed, 0, "nothing was written");
    for id in ids {
        assert_eq!(env.row_status(id).await.0, "PENDING", "row {id}");
    }
    eprintln!("ACL fatal test took {:?}", started.elapsed());
}

// ------------------------------------------------------------------------- SASL_SSL

/// SASL_SSL with SCRAM-SHA-512 against a listener whose certificate the test's own CA
/// signed (SAN IP:127.0.0.1): the relay verifies the broker with `ssl.ca.location`,
/// authenticates, and events flow in commit order. With a wrong password it exits non-zero
/// with one line naming the authentication failure, and no output ever holds a password.
#[tokio::test(flavor = "multi_thread")]
async fn sasl_ssl_scram_flows_and_a_wrong_password_stops_with_one_line() {
    const PW: &str = "Scram-pw-2b7e44";
    const WRONG: &str = "Wrong-scram-pw-d0c3f9";
    let started = Instant::now();
    let pki = Pki::new();
    let ca = pki.ca("kafka-ca");
    let server = pki.server("kafka", &ca, "DNS:localhost,IP:127.0.0.1");
    let broker = Arc::new(
        Broker::start_with(BrokerOptions {
            nodes: 1,
            props: vec![],
            client: ClientSecurity::SaslSsl {
                cert_chain_pem: server.crt.clone(),
                key_pem: server.key.clone(),
            },
            scram_users: vec![("relay".into(), PW.into())],
        })
        .await,
    );
    assert_ne!(
        broker.bootstrap(),
        broker.admin_bootstrap(),
        "the relay uses the SASL_SSL listener"
    );
    let env = Env::start_on(broker.clone(), &[ALLOWED], "", 1000).await;
    let ca_path = ca.crt.display().to_string();
    let with_pw = |pw: &'static str| {
        let mut v = sasl_env("SASL_SSL", "relay", pw);
        v.push(("OUTBOX_RELAY_KAFKA_PROPERTY_SSL_CA_LOCATION", &ca_path));
        v
    };

    let mut relay = env.spawn_relay_with(&with_pw(PW));
    let c = env.client().await;
    let ids: HashSet<i64> = c
        .query(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
             SELECT 'order', 'k' || (g % 7), 'Created', jsonb_build_object('g', g) \
             FROM generate_series(1, 200) g RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let got = env.read_ids(ALLOWED, &ids, Duration::from_secs(60)).await;
    let arrival = Arrival::of(&got);
    arrival.assert_complete(&ids);
    arrival.assert_commit_order();
    let status = relay.terminate(Duration::from_secs(20));
    assert!(status.success(), "relay exit: {status}");
    let good_log = relay.log_text();

    let mut relay = env.spawn_relay_with(&with_pw(WRONG));
    let (code, log) = wait_exit(&mut relay, Duration::from_secs(60)).await;
    eprintln!("relay stderr (wrong password):\n{log}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?}: {log}"
    );
    let line = assert_one_error_line(&log, &["authentication failed"]);
    eprintln!("one line: {line}");
    for (name, text) in [("good run", &good_log), ("wrong password run", &log)] {
        for secret in [PW, WRONG] {
            assert!(!text.contains(secret), "{name} printed a password:\n{text}");
        }
    }
    eprintln!("SASL_SSL test took {:?}", started.elapsed());
}
