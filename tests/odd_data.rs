//! Rows with odd data (issue 6, "Bad input"). Each test writes good rows
//! around one odd row for the same key and checks the documented outcome:
//!
//! | odd row | outcome |
//! |---|---|
//! | NULL `aggregate_id` (column made nullable) | DLQ, `dlq.error.message` = `outbox row id=N: column aggregate_id is NULL`; no key, no value (the row could not be decoded); FAILED, retry_count 1 |
//! | invalid UTF-8 in any column (only possible in a SQL_ASCII database) | the walsender would refuse the row (SQLSTATE 22021) and wedge the stream, so the relay refuses a non-UTF8 database at startup: one line naming the encoding, exit 1 |
//! | 10 MB `event_data` (default `relay.max-payload-bytes` = 1,000,000) | DLQ with an empty value, key and original headers kept, `… event_data is N bytes, over relay.max-payload-bytes = 1000000`; FAILED |
//! | 10,000 `headers` entries, ~150 kB | published with all 10,000 headers, in jsonb key order |
//! | `headers` a JSON array, string or number | DLQ, `… headers are not a JSON object: invalid type: …`; FAILED |
//! | message over librdkafka's `message.max.bytes` (headers ~1.1 MB, or payload just under max-payload-bytes plus key/headers) | refused by librdkafka before sending: counted as attempts, then DLQ without value and without the row's own headers; FAILED |
//! | `topic` with illegal characters | covered in `tests/dlq.rs` |
//!
//! In every case the relay keeps running, and the good rows after the odd
//! one are published in commit order.

use std::collections::HashSet;
use std::time::Duration;

use crate::fixture::{Env, DLQ_TOPIC};
use crate::support::kafka::{self, Received};
use crate::support::{self};

const TOPIC: &str = "outbox.order";

/// Insert one row through `sql`, a statement returning the id.
async fn insert_sql(env: &Env, sql: &str) -> i64 {
    env.client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A well-formed row for key `k`.
async fn good_row(env: &Env, n: i32) -> i64 {
    env.client()
        .await
        .query_one(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
             VALUES ('order', 'k', 'Created', jsonb_build_object('n', $1::int), '{\"traceparent\": \"00-aa-bb-01\"}') \
             RETURNING id",
            &[&n],
        )
        .await
        .unwrap()
        .get(0)
}

/// Three good rows, the odd row (inserted by `odd_sql`), three good rows.
async fn around(env: &Env, odd_sql: &str) -> (Vec<i64>, i64) {
    let mut good = Vec::new();
    for n in 0..3 {
        good.push(good_row(env, n).await);
    }
    let odd = insert_sql(env, odd_sql).await;
    for n in 3..6 {
        good.push(good_row(env, n).await);
    }
    (good, odd)
}

/// Wait for the good rows on the topic and check they are in order
/// (same key, one partition), without the odd row.
async fn good_rows_in_order(env: &Env, good: &[i64], odd: i64) {
    let want: HashSet<i64> = good.iter().copied().collect();
    let msgs = env.read_ids(TOPIC, &want, Duration::from_secs(60)).await;
    let ours = |m: &&Received| {
        m.header_str("id")
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|id| want.contains(&id) || id == odd)
    };
    let mut sorted: Vec<&Received> = msgs.iter().filter(ours).collect();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    let ids: Vec<i64> = sorted
        .iter()
        .map(|m| m.header_str("id").unwrap().parse().unwrap())
        .collect();
    let expected: Vec<i64> = good.to_vec();
    assert_eq!(
        ids, expected,
        "good rows in commit order, without the odd row {odd}"
    );
}

/// The DLQ message of row `id` (waits for it).
async fn dlq_message(env: &Env, id: i64) -> Received {
    let want = id.to_string();
    let msgs = kafka::read_until_async(
        &env.bootstrap(),
        &env.topic(DLQ_TOPIC),
        Duration::from_secs(60),
        {
            let want = want.clone();
            move |got| {
                got.iter()
                    .any(|m| m.header_str("id").as_deref() == Some(&want))
            }
        },
    )
    .await;
    let mut mine: Vec<Received> = msgs
        .into_iter()
        .filter(|m| m.header_str("id").as_deref() == Some(&want))
        .collect();
    assert_eq!(mine.len(), 1, "exactly one DLQ message for row {id}");
    mine.remove(0)
}

/// Row `id` is FAILED with `attempts` as its retry count.
async fn assert_failed(env: &Env, id: i64, attempts: i32) {
    support::wait_until_msg(
        &format!("row {id} FAILED"),
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async { env.row_status(id).await.0 == "FAILED" },
    )
    .await;
    assert_eq!(env.row_status(id).await, ("FAILED".to_string(), attempts));
}

/// The headers every DLQ message carries, and the message text.
fn assert_dlq_headers(d: &Received, id: i64, message: &str, original_topic: &str) {
    assert_eq!(d.header_str("id"), Some(id.to_string()));
    assert!(d.header_str("lsn").is_some(), "{d:?}");
    assert_eq!(
        d.header_str("dlq.error.class").as_deref(),
        Some("permanent")
    );
    let got = d.header_str("dlq.error.message").unwrap_or_default();
    assert!(
        got.contains(message),
        "dlq.error.message {got:?} should contain {message:?}"
    );
    assert!(got.contains(&format!("id={id}")), "names the row: {got:?}");
    assert_eq!(
        d.header_str("dlq.original.topic").as_deref(),
        Some(original_topic)
    );
    assert_eq!(
        d.header_str("dlq.attempts").as_deref(),
        Some("1"),
        "local checks are not retried"
    );
    assert!(d.header_str("dlq.first.failure").is_some());
}

/// A row that could not be decoded into a record: the DLQ copy has no key
/// and no value, only `id`, `lsn` and the `dlq.*` headers.
fn assert_undecodable_copy(d: &Received) {
    assert_eq!(d.key, None, "{d:?}");
    assert!(d.payload.as_deref().unwrap_or_default().is_empty(), "{d:?}");
    let names: Vec<&str> = d.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names
            .iter()
            .all(|k| *k == "id" || *k == "lsn" || k.starts_with("dlq.")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn null_aggregate_id_is_dead_lettered_naming_the_column() {
    let env = Env::start(&[TOPIC]).await;
    env.client()
        .await
        .batch_execute("ALTER TABLE public.outbox ALTER COLUMN aggregate_id DROP NOT NULL")
        .await
        .unwrap();
    let mut relay = env.spawn_relay();
    let (good, odd) = around(
        &env,
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
         VALUES ('order', NULL, 'Created', '{\"v\": 1}') RETURNING id",
    )
    .await;
    good_rows_in_order(&env, &good, odd).await;
    let d = dlq_message(&env, odd).await;
    assert_dlq_headers(&d, odd, "column aggregate_id is NULL", "");
    assert_undecodable_copy(&d);
    assert_failed(&env, odd, 1).await;
    assert!(relay.is_running());
}

const SQL_ASCII_APP: &str =
    "CREATE DATABASE app TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'";

/// Invalid UTF-8 can only be stored in a SQL_ASCII database. The walsender
/// converts the stream to UTF-8 and refuses such a row (SQLSTATE 22021)
/// before the relay sees it, which would wedge the stream at that row
/// forever; so the relay refuses a non-UTF8 database at startup, with one
/// line naming the problem, instead of starting a stream it cannot finish.
#[tokio::test(flavor = "multi_thread")]
async fn a_sql_ascii_database_is_refused_at_startup_with_one_line() {
    let env = Env::start_with_app_db(&[TOPIC], "", 1000, SQL_ASCII_APP).await;
    let out = env
        .relay_command(&["run"])
        .env("OUTBOX_RELAY_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("database encoding is SQL_ASCII") && lines[0].contains("UTF8"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_megabyte_event_data_is_dead_lettered_without_its_value() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let (good, odd) = around(
        &env,
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
         VALUES ('order', 'k', 'Created', jsonb_build_object('blob', repeat('x', 10485760)), \
                 '{\"traceparent\": \"00-big-01\"}') RETURNING id",
    )
    .await;
    good_rows_in_order(&env, &good, odd).await;
    let d = dlq_message(&env, odd).await;
    assert_dlq_headers(
        &d,
        odd,
        "event_data is 10485772 bytes, over relay.max-payload-bytes = 1000000",
        &env.topic(TOPIC),
    );
    assert!(
        d.payload.as_deref().unwrap_or_default().is_empty(),
        "value dropped"
    );
    assert_eq!(d.key_str().as_deref(), Some("k"), "key kept");
    assert_eq!(
        d.header_str("traceparent").as_deref(),
        Some("00-big-01"),
        "original headers kept"
    );
    assert_eq!(d.header_str("event_type").as_deref(), Some("Created"));
    assert_failed(&env, odd, 1).await;
    assert!(relay.is_running());
}

/// 10,000 header entries (~150 kB of headers) are under every limit: the
/// row is published with all of them, in jsonb's key order.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_headers_are_published() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let (mut good, big) = around(
        &env,
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
         SELECT 'order', 'k', 'Created', '{\"big\": true}', jsonb_object_agg('h' || g, 'v' || g) \
         FROM generate_series(1, 10000) g RETURNING id",
    )
    .await;
    good.insert(3, big);
    good_rows_in_order(&env, &good, -1).await;
    let msgs = env
        .read_ids(TOPIC, &HashSet::from([big]), Duration::from_secs(30))
        .await;
    let m = msgs
        .iter()
        .find(|m| m.header_str("id") == Some(big.to_string()))
        .unwrap();
    let user: Vec<&(String, Vec<u8>)> = m
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with('h'))
        .collect();
    assert_eq!(user.len(), 10_000);
    for (k, v) in &user {
        assert_eq!(
            format!("v{}", &k[1..]).as_bytes(),
            v.as_slice(),
            "header {k}"
        );
    }
    assert_eq!(m.header_str("h10000").as_deref(), Some("v10000"));
    let dlq = kafka::read_until_quiet_async(
        &env.bootstrap(),
        &env.topic(DLQ_TOPIC),
        Duration::from_secs(1),
        Duration::from_secs(4),
    )
    .await;
    assert!(dlq.is_empty());
    assert_eq!(env.row_status(big).await.0, "PENDING");
    assert!(relay.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_that_are_not_an_object_are_dead_lettered() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    for (value, kind) in [
        ("'[\"a\", \"b\"]'", "invalid type: sequence"),
        ("'\"just a string\"'", "invalid type: string"),
        ("'42'", "invalid type: integer"),
    ] {
        let (good, odd) = around(
            &env,
            &format!(
                "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
                 VALUES ('order', 'k', 'Created', '{{}}', {value}::jsonb) RETURNING id"
            ),
        )
        .await;
        good_rows_in_order(&env, &good, odd).await;
        let d = dlq_message(&env, odd).await;
        assert_dlq_headers(&d, odd, "headers are not a JSON object", "");
        let msg = d.header_str("dlq.error.message").unwrap();
        assert!(msg.contains(kind), "{msg}");
        assert_undecodable_copy(&d);
        assert_failed(&env, odd, 1).await;
    }
    assert!(relay.is_running());
}

/// Headers of ~1.1 MB (10,000 entries of ~100 bytes): the message is over
/// librdkafka's `message.max.bytes` (1,000,000), which refuses it in
/// `produce()` itself. Expected: DLQ (without the oversized headers, or the
/// DLQ copy is refused too) and FAILED; later rows published.
///
/// Fails today: the synchronous MSG_SIZE_TOO_LARGE from `produce()` becomes
/// a session error (relay.rs `enqueue_record` → `RelayError::Kafka`, class
/// Permanent), which the supervisor retries forever: the stream stalls at
/// this row for good.
#[tokio::test(flavor = "multi_thread")]
async fn headers_over_message_max_bytes_are_dead_lettered() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    let (good, odd) = around(
        &env,
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
         SELECT 'order', 'k', 'Created', '{}', jsonb_object_agg('h' || g, repeat('v', 100)) \
         FROM generate_series(1, 10000) g RETURNING id",
    )
    .await;
    good_rows_in_order(&env, &good, odd).await;
    let d = dlq_message(&env, odd).await;
    assert_eq!(
        d.header_str("dlq.error.class").as_deref(),
        Some("permanent")
    );
    assert!(d.header_str("dlq.error.message").is_some());
    // librdkafka refuses it before sending; counted like a broker refusal:
    // relay.max-retry (3) attempts, each a replay in order, then the DLQ.
    assert_failed(&env, odd, 3).await;
    assert!(relay.is_running(), "{}", relay.log_text());
}

/// A payload just under the default `relay.max-payload-bytes` (1,000,000)
/// passes the relay's check, but key + headers + record overhead put the
/// message over librdkafka's default `message.max.bytes` (also 1,000,000).
/// Expected: DLQ + FAILED like any oversized row. Fails today for the same
/// reason as the test above.
#[tokio::test(flavor = "multi_thread")]
async fn payload_just_under_max_payload_bytes_but_message_over_the_limit() {
    let env = Env::start(&[TOPIC]).await;
    let mut relay = env.spawn_relay();
    // jsonb text `{"b": "xxx…"}` = 999,950 + 9 bytes.
    let (good, odd) = around(
        &env,
        "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
         VALUES ('order', 'k', 'Created', jsonb_build_object('b', repeat('x', 999950))) RETURNING id",
    )
    .await;
    good_rows_in_order(&env, &good, odd).await;
    let d = dlq_message(&env, odd).await;
    assert_eq!(
        d.header_str("dlq.error.class").as_deref(),
        Some("permanent")
    );
    // librdkafka refuses it before sending; counted like a broker refusal:
    // relay.max-retry (3) attempts, each a replay in order, then the DLQ.
    assert_failed(&env, odd, 3).await;
    assert!(relay.is_running(), "{}", relay.log_text());
}
