//! Metric names, described once. Every metric the relay exports is a
//! constant here; code elsewhere records through these names only, and the
//! README's metrics reference, the Grafana dashboard and the Prometheus
//! rules are checked against a live scrape by the test suite.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Bytes of WAL between the server's current position and the durable
/// checkpoint.
pub const LAG_BYTES: &str = "outbox_relay_lag_bytes";
/// Age of the oldest committed transaction not yet acknowledged (0 when
/// caught up).
pub const LAG_SECONDS: &str = "outbox_relay_lag_seconds";
/// Events acknowledged by the broker, by topic.
pub const EVENTS_PUBLISHED: &str = "outbox_relay_events_published_total";
/// Rows sent to the dead-letter topic.
pub const DLQ_TOTAL: &str = "outbox_relay_dlq_total";
/// Session restarts and per-row retries after transient errors, by reason.
pub const RETRIES: &str = "outbox_relay_retries_total";
/// Messages handed to the producer and not yet acknowledged.
pub const IN_FLIGHT: &str = "outbox_relay_in_flight_messages";
/// The durable checkpoint LSN (as a number).
pub const CHECKPOINT_LSN: &str = "outbox_relay_checkpoint_lsn";
/// Unix time of the last checkpoint write.
pub const CHECKPOINT_TIMESTAMP: &str = "outbox_relay_checkpoint_timestamp_seconds";
/// Enqueue → broker ack.
pub const PRODUCE_LATENCY: &str = "outbox_relay_produce_latency_seconds";
/// Commit timestamp → broker ack.
pub const END_TO_END_LATENCY: &str = "outbox_relay_end_to_end_latency_seconds";
/// Outbox rows per transaction.
pub const TRANSACTION_SIZE: &str = "outbox_relay_transaction_rows";
/// Exactly-once mode: time `commit_transaction` took (flush + EndTxn).
pub const KAFKA_COMMIT_SECONDS: &str = "outbox_relay_kafka_commit_seconds";
/// Replication slot `wal_status`, one series per status, 1 for the current.
pub const SLOT_WAL_STATUS: &str = "outbox_relay_slot_wal_status";
/// Seconds since the last heartbeat or outbox transaction was seen.
pub const HEARTBEAT_AGE: &str = "outbox_relay_heartbeat_age_seconds";
/// 1 while a replication session is streaming.
pub const STREAM_UP: &str = "outbox_relay_stream_up";
/// 1 while this relay leads (holds the slot's lock, or runs without
/// election), 0 while it stands by.
pub const LEADER: &str = "outbox_relay_leader";
/// Rows blocked by a permanent error (with `on-permanent-error = "block"`).
pub const BLOCKED_ROW: &str = "outbox_relay_blocked_row_id";

/// Outbox rows by status (table health; exact up to a cap, then estimated).
pub const ROWS: &str = "outbox_relay_rows";
/// `pg_table_size` of the outbox (`table="outbox"`) and the archive.
pub const TABLE_BYTES: &str = "outbox_relay_table_bytes";
/// `pg_indexes_size` of the outbox and the archive.
pub const INDEX_BYTES: &str = "outbox_relay_index_bytes";
/// Age of the oldest row not yet covered by the durable checkpoint.
pub const OLDEST_UNPUBLISHED_AGE: &str = "outbox_relay_oldest_unpublished_age_seconds";
/// FAILED rows created in the last hour.
pub const FAILED_LAST_HOUR: &str = "outbox_relay_failed_rows_last_hour";
/// How long ago the oldest row past its retention should have been pruned.
pub const PRUNE_OVERDUE: &str = "outbox_relay_prune_overdue_seconds";
/// Wall time of the last round of table-health queries.
pub const TABLE_HEALTH_SECONDS: &str = "outbox_relay_table_health_query_seconds";

/// 1 while a topic the relay writes has drifted (`kind`: `dlq_missing`,
/// `partitions`), 0 once checked and fine ([`crate::topic_drift`]).
pub const TOPIC_DRIFT: &str = "outbox_relay_topic_drift";
/// Partitions of each topic the relay writes, at the last drift check.
pub const TOPIC_PARTITIONS: &str = "outbox_relay_topic_partitions";

/// Every exported name, for documentation checks.
pub const ALL: &[&str] = &[
    LAG_BYTES,
    LAG_SECONDS,
    EVENTS_PUBLISHED,
    DLQ_TOTAL,
    RETRIES,
    IN_FLIGHT,
    CHECKPOINT_LSN,
    CHECKPOINT_TIMESTAMP,
    PRODUCE_LATENCY,
    END_TO_END_LATENCY,
    TRANSACTION_SIZE,
    KAFKA_COMMIT_SECONDS,
    SLOT_WAL_STATUS,
    HEARTBEAT_AGE,
    STREAM_UP,
    BLOCKED_ROW,
    ROWS,
    TABLE_BYTES,
    INDEX_BYTES,
    OLDEST_UNPUBLISHED_AGE,
    FAILED_LAST_HOUR,
    PRUNE_OVERDUE,
    TABLE_HEALTH_SECONDS,
    LEADER,
    TOPIC_DRIFT,
    TOPIC_PARTITIONS,
];

/// Register descriptions with the installed recorder.
pub fn describe() {
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "WAL bytes between the server's current position and the durable checkpoint"
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest committed outbox transaction not yet acknowledged; 0 when caught up"
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        "Outbox events acknowledged by the broker, by topic"
    );
    describe_counter!(DLQ_TOTAL, "Outbox rows sent to the dead-letter topic");
    describe_counter!(
        RETRIES,
        "Retries after transient errors (session restarts), by reason"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Messages handed to the producer and not yet acknowledged"
    );
    describe_gauge!(CHECKPOINT_LSN, "Durable checkpoint LSN as a number");
    describe_gauge!(
        CHECKPOINT_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the last checkpoint write"
    );
    describe_histogram!(
        PRODUCE_LATENCY,
        Unit::Seconds,
        "Time from handing a message to the producer until the broker acknowledged it"
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "Time from the transaction's commit until the broker acknowledged the message"
    );
    describe_histogram!(TRANSACTION_SIZE, "Outbox rows per relayed transaction");
    describe_histogram!(
        KAFKA_COMMIT_SECONDS,
        Unit::Seconds,
        "Exactly-once mode: time a Kafka transaction's commit took (flushing its messages, then the coordinator's EndTxn)"
    );
    describe_gauge!(
        SLOT_WAL_STATUS,
        "Replication slot wal_status: 1 for the current status label"
    );
    describe_gauge!(
        HEARTBEAT_AGE,
        Unit::Seconds,
        "Seconds since the relay last saw a heartbeat or an outbox transaction"
    );
    describe_gauge!(STREAM_UP, "1 while the replication stream is running");
    describe_table_health();
    describe_gauge!(
        TOPIC_DRIFT,
        "1 while a topic the relay writes has drifted (kind=dlq_missing: the DLQ topic is gone; kind=partitions: the partition count differs from the first count seen), 0 when checked and fine"
    );
    describe_gauge!(
        TOPIC_PARTITIONS,
        "Partitions of each topic the relay writes, at the last drift check"
    );
    describe_gauge!(
        LEADER,
        "1 while this relay is the leader for its slot (or runs without election), 0 while it stands by"
    );
    describe_gauge!(
        BLOCKED_ROW,
        "Id of the outbox row blocking the stream (on-permanent-error = block), 0 when none"
    );
}

/// Descriptions of the table-health gauges ([`crate::table_health`]).
fn describe_table_health() {
    describe_gauge!(
        ROWS,
        "Outbox rows by status; exact up to 10000 per status, estimated from planner statistics above"
    );
    describe_gauge!(
        TABLE_BYTES,
        Unit::Bytes,
        "pg_table_size of the outbox (table=outbox) and the archive (table=archive)"
    );
    describe_gauge!(
        INDEX_BYTES,
        Unit::Bytes,
        "pg_indexes_size of the outbox (table=outbox) and the archive (table=archive)"
    );
    describe_gauge!(
        OLDEST_UNPUBLISHED_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row not yet covered by the durable checkpoint (or lost with a slot); 0 when none"
    );
    describe_gauge!(
        FAILED_LAST_HOUR,
        "FAILED outbox rows created in the last hour"
    );
    describe_gauge!(
        PRUNE_OVERDUE,
        Unit::Seconds,
        "How long ago the oldest processed, failed or archived row should have been pruned; 0 while retention keeps up"
    );
    describe_gauge!(
        TABLE_HEALTH_SECONDS,
        Unit::Seconds,
        "Wall time of the last round of table-health queries"
    );
}
