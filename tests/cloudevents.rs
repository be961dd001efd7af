//! CloudEvents on the wire (`kafka.format`), checked by a consumer no one here wrote: the
//! official CloudEvents SDK for Python (PyPI `cloudevents`, its Kafka binding) parses every
//! message of both content modes, and the attributes it reads match the row.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fixture::Env;
use crate::support::kafka::Received;

const TOPIC: &str = "outbox.order";

/// The SDK's Kafka binding, installed with pip when missing (idempotent).
fn ensure_sdk() {
    let present = || {
        Command::new("python3")
            .args(["-c", "import cloudevents.core.bindings.kafka"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if present() {
        return;
    }
    for extra in [&[][..], &["--break-system-packages"][..]] {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "cloudevents>=2"])
            .args(extra)
            .status();
        if present() {
            return;
        }
    }
    panic!("the CloudEvents SDK for Python is not importable and pip could not install it (python3 -m pip install 'cloudevents>=2')");
}

/// Parse `msgs` with the SDK; one JSON object per message (see tests/cloudevents_sdk.py).
fn parse_with_sdk(mode: &str, msgs: &[&Received]) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cloudevents_sdk.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut input = String::new();
    for m in msgs {
        let headers: Vec<(String, String)> = m
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    String::from_utf8(v.clone()).expect("utf-8 header"),
                )
            })
            .collect();
        input.push_str(
            &json!({
                "mode": mode,
                "key": m.key_str().expect("key"),
                "value": m.payload_str().expect("value"),
                "headers": headers,
            })
            .to_string(),
        );
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the SDK refused a message: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), msgs.len());
    parsed
}

/// Rows for one phase: varied payloads and headers, one row trying to forge `ce_id` and
/// `content-type`, one without headers. Returns their ids.
async fn insert_rows(env: &Env, tag: &str) -> Vec<i64> {
    let mut c = env.client().await;
    let tx = c.transaction().await.unwrap();
    let mut ids = Vec::new();
    let rows = [
        (
            "o-1",
            "OrderCreated",
            json!({"total": 42, "note": "héllo \"quoted\"", "items": [1, {"sku": "a"}]}),
            json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE", "tenant": "acme"}),
        ),
        (
            "o-2",
            "OrderShipped",
            json!([1, 2, 3]),
            json!({"ce_id": "forged", "content-type": "text/xml", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
        ),
        ("o 3/ü", "Order Paid", json!("just a string"), Value::Null),
    ];
    for (agg, et, data, headers) in rows {
        let headers = (!headers.is_null()).then_some(headers);
        let id: i64 = tx
            .query_one(
                "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
                 VALUES ('order', $1, $2, $3, $4) RETURNING id",
                &[&format!("{agg}-{tag}"), &et, &data, &headers],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    tx.commit().await.unwrap();
    ids
}

struct Row {
    aggregate_id: String,
    event_type: String,
    data: Value,
    headers: Option<Value>,
    event_uuid: String,
}

async fn rows(env: &Env) -> HashMap<i64, Row> {
    env.client()
        .await
        .query(
            "SELECT id, aggregate_id, event_type, event_data, headers, event_uuid::text FROM public.outbox",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                Row {
                    aggregate_id: r.get(1),
                    event_type: r.get(2),
                    data: r.get(3),
                    headers: r.get(4),
                    event_uuid: r.get(5),
                },
            )
        })
        .collect()
}

fn commit_micros(m: &Received) -> i64 {
    let t = humantime::parse_rfc3339(&m.header_str("commit_timestamp").unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Check the SDK's view of each message against its row.
fn check(mode: &str, msgs: &[&Received], table: &HashMap<i64, Row>, id_from_uuid: bool) {
    let parsed = parse_with_sdk(mode, msgs);
    for (m, p) in msgs.iter().zip(&parsed) {
        let id: i64 = m.header_str("id").expect("id header kept").parse().unwrap();
        assert!(
            m.header_str("lsn").is_some(),
            "lsn header kept in {mode} mode"
        );
        let row = &table[&id];
        let a = &p["attributes"];
        let expected_id = if id_from_uuid {
            row.event_uuid.clone()
        } else {
            id.to_string()
        };
        assert_eq!(a["specversion"], "1.0", "{mode} {a}");
        assert_eq!(a["id"], expected_id.as_str(), "{mode} {a}");
        assert_eq!(a["type"], row.event_type.as_str());
        assert_eq!(a["subject"], row.aggregate_id.as_str());
        assert_eq!(a["source"], "/shop/outbox/order", "{a}");
        assert_eq!(a["time"], commit_micros(m), "time is the commit time");
        assert_eq!(a["datacontenttype"], "application/json");
        assert_eq!(
            a["partitionkey"],
            row.aggregate_id.as_str(),
            "key stays aggregate_id"
        );
        assert_eq!(p["data"], row.data, "{mode}: data is event_data");
        assert_eq!(p["detected_same"], true, "{mode}: from_kafka_event agrees");
        let header = |k: &str| row.headers.as_ref().and_then(|h| h.get(k)).cloned();
        for attr in ["traceparent", "tracestate"] {
            match header(attr) {
                Some(v) => {
                    assert_eq!(a[attr], v, "{mode}: {attr} attribute");
                    assert_eq!(
                        Some(v),
                        m.header_str(attr).map(Value::from),
                        "{attr} header kept"
                    );
                }
                None => assert!(a.get(attr).is_none(), "{mode}: no {attr}: {a}"),
            }
        }
        if header("tenant").is_some() {
            assert_eq!(
                m.header_str("tenant").as_deref(),
                Some("acme"),
                "row headers pass through"
            );
        }
        assert!(m
            .headers
            .iter()
            .all(|(_, v)| v != b"forged" && v != b"text/xml"));
        let content_type = m.header_str("content-type").unwrap();
        match mode {
            "binary" => {
                assert_eq!(content_type, "application/json");
                assert_eq!(
                    m.payload_str()
                        .map(|v| serde_json::from_str::<Value>(&v).unwrap()),
                    Some(row.data.clone())
                );
            }
            _ => {
                assert_eq!(content_type, "application/cloudevents+json");
                assert!(m.headers.iter().all(|(k, _)| !k.starts_with("ce_")));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_and_structured_messages_parse_with_the_official_sdk() {
    ensure_sdk();
    let env = Env::start_with(
        &[TOPIC],
        "[kafka.cloudevents]\nsource = \"/shop/{table}/{aggregate_type}\"\n",
        1000,
    )
    .await;
    env.client()
        .await
        .batch_execute(
            "ALTER TABLE public.outbox ADD COLUMN event_uuid uuid NOT NULL DEFAULT gen_random_uuid()",
        )
        .await
        .unwrap();

    // Binary mode, id = row id.
    let mut relay = env.spawn_relay_with(&[("OUTBOX_RELAY_KAFKA_FORMAT", "cloudevents-binary")]);
    let binary: HashSet<i64> = insert_rows(&env, "b").await.into_iter().collect();
    let got = env.read_ids(TOPIC, &binary, Duration::from_secs(60)).await;
    assert_eq!(got.len(), binary.len(), "{got:?}");
    assert!(relay.terminate(Duration::from_secs(20)).success());

    // Structured mode, id from a uuid column.
    let mut relay = env.spawn_relay_with(&[
        ("OUTBOX_RELAY_KAFKA_FORMAT", "cloudevents-structured"),
        ("OUTBOX_RELAY_KAFKA_CLOUDEVENTS_ID_COLUMN", "event_uuid"),
    ]);
    let structured: HashSet<i64> = insert_rows(&env, "s").await.into_iter().collect();
    let all: HashSet<i64> = binary.union(&structured).copied().collect();
    let msgs = env.read_ids(TOPIC, &all, Duration::from_secs(60)).await;
    assert_eq!(msgs.len(), all.len(), "one message per row: {msgs:?}");
    assert!(relay.is_running());

    let table = rows(&env).await;
    let of = |set: &HashSet<i64>| -> Vec<&Received> {
        msgs.iter()
            .filter(|m| set.contains(&m.header_str("id").unwrap().parse().unwrap()))
            .collect()
    };
    check("binary", &of(&binary), &table, false);
    check("structured", &of(&structured), &table, true);
}
