//! How the relay runs, as opposed to what it connects to: the loop's
//! tuning (`[relay]`), the janitor (`[cleanup]`), the HTTP endpoint
//! (`[metrics]`) and leader election (`[ha]`), each with its defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Relay loop tuning.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RelayConfig {
    /// How often an advanced durable position is written to the checkpoint
    /// table (each write is a small WAL record, so not per transaction).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How long a graceful stop waits for in-flight acknowledgements.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// First retry delay after a transient failure.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Retry delay cap.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How often the slot is told the confirmed position.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// How often, while the outbox is idle, a heartbeat message is written
    /// to WAL (`pg_logical_emit_message`) so lag stays true and the slot's
    /// retained WAL bounded. `0s` disables.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How often the slot's health (`wal_status`) is checked.
    #[serde(with = "humantime_serde")]
    pub slot_check_interval: Duration,
    /// Delivery attempts for a row the broker refuses permanently before it
    /// is dead-lettered (or blocks).
    pub max_retry: u32,
    /// `dlq` or `block`.
    pub on_permanent_error: OnPermanentError,
    /// Largest `event_data` (bytes) the relay publishes; larger rows are
    /// permanent errors.
    pub max_payload_bytes: usize,
    /// Rows per janitor statement, so no statement holds locks for long.
    pub batch_size: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            status_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(10),
            slot_check_interval: Duration::from_secs(10),
            max_retry: 3,
            on_permanent_error: OnPermanentError::Dlq,
            max_payload_bytes: 1_000_000,
            batch_size: 1000,
        }
    }
}

/// What to do with a row that can never be published as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnPermanentError {
    /// Send it to the dead-letter topic, mark it FAILED, go on. The row
    /// leaves the ordered stream.
    Dlq,
    /// Stall the stream at the row until an operator deletes it (or fixes
    /// the cause); reported in logs, metrics and `status`.
    Block,
}

/// The janitor's schedule and retention.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct CleanupConfig {
    /// Run the janitor inside `run` (off: only `outbox-relay prune`).
    pub enabled: bool,
    /// Time between janitor passes.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// PROCESSED rows older than this many days are deleted.
    pub retention_days: u32,
    /// FAILED rows older than this many days are deleted (kept longer, for
    /// investigation and `dlq replay`).
    pub failed_retention_days: u32,
    /// Delete rows once published instead of marking them PROCESSED.
    pub delete_after_publish: bool,
    /// `schema.table` the janitor moves rows into instead of deleting them,
    /// in the same statement (a row is always in exactly one of the two);
    /// `init` creates it. Empty: rows are deleted. See [`crate::archive`].
    pub archive_table: String,
    /// Archived rows older than this many days (by `archived_at`) are
    /// deleted; 0 keeps them.
    pub archive_retention_days: u32,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cleanup_interval: Duration::from_secs(300),
            retention_days: 7,
            failed_retention_days: 30,
            delete_after_publish: false,
            archive_table: String::new(),
            archive_retention_days: 0,
        }
    }
}

/// The HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MetricsConfig {
    /// `host:port` to listen on; empty disables the endpoint.
    pub listen: String,
    /// How often the table-health queries run (rows by status, sizes,
    /// oldest unpublished row; see [`crate::table_health`]); `0s` disables.
    #[serde(with = "humantime_serde")]
    pub table_health_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9187".into(),
            table_health_interval: Duration::from_secs(30),
        }
    }
}

/// Standby relays and leader election through PostgreSQL ([`crate::leader`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HaConfig {
    /// Elect one leader per slot with a PostgreSQL advisory lock; the other
    /// `run` processes stand by. On by default: with one relay it costs one
    /// idle connection and a grace period at startup, and without it two
    /// relays on one slot are kept apart only by the slot's one-walsender
    /// rule, which does not stop a zombie's producer.
    pub enabled: bool,
    /// How long a leadership proof (a renewal query on the lock connection)
    /// lasts. A leader that cannot renew within it stops producing; a standby
    /// that wins the lock waits `lease` + `lease`/4 (of the longest lease a
    /// leader advertised, see [`crate::leader`]) before it opens the stream,
    /// and the server ends a lock session idle for longer
    /// (`idle_session_timeout`). Takeover after a crash is about 1.25× this.
    /// 500 ms: a p50 takeover under a second, while a `SELECT 1` may stall
    /// 375 ms before the leader fences itself.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often a standby tries the lock (and so how soon after the leader
    /// released it a standby notices). At most `lease`/2. Each try is one
    /// trivial query.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease: Duration::from_millis(500),
            poll_interval: Duration::from_millis(50),
        }
    }
}
