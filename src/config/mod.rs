//! Configuration: a TOML file, every key overridable by environment, then
//! validated once so the rest of the relay can trust it.
//!
//! Precedence (highest first): command-line flags, environment, file,
//! defaults. The environment name of a key is `OUTBOX_RELAY_` + its dotted
//! path in upper case with `.` and `-` turned into `_`:
//! `kafka.max-in-flight` → `OUTBOX_RELAY_KAFKA_MAX_IN_FLIGHT`,
//! `postgres.url` → `OUTBOX_RELAY_POSTGRES_URL`. librdkafka properties go
//! through `OUTBOX_RELAY_KAFKA_PROPERTY_<NAME>` (`_` → `.`, lower case), e.g.
//! `OUTBOX_RELAY_KAFKA_PROPERTY_SASL_PASSWORD` → `sasl.password`.
//!
//! Secrets (the password in `postgres.url`, librdkafka properties whose name
//! says password/secret/key) are never printed: `Debug` and [`Config::redacted`]
//! mask them, and no error message echoes a value.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{ColumnNames, TableName};
use crate::error::ConfigError;
use crate::sink::cloudevents::{CloudEventsConfig, MessageFormat};

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "OUTBOX_RELAY_";
/// Prefix of librdkafka pass-through properties in the environment.
pub const ENV_KAFKA_PROPERTY_PREFIX: &str = "OUTBOX_RELAY_KAFKA_PROPERTY_";
/// The variables under [`ENV_PREFIX`] that are not configuration keys: the
/// config file's path, the log filter and format (read by the CLI), and the
/// binary the repository's scripts run. Any other `OUTBOX_RELAY_*` variable
/// must map to a key, or loading fails naming it — a misspelt override is
/// never silently ignored.
pub const ENV_NOT_KEYS: &[&str] = &[
    "OUTBOX_RELAY_CONFIG",
    "OUTBOX_RELAY_LOG",
    "OUTBOX_RELAY_LOG_FORMAT",
    "OUTBOX_RELAY_BIN",
    crate::fault::ENV,
];

/// The whole configuration.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// Where the outbox lives and how to replicate from it.
    pub postgres: PostgresConfig,
    /// Outbox table layout (names are configurable for Debezium-style tables).
    pub outbox: OutboxConfig,
    /// Broker connection, routing and librdkafka pass-through.
    pub kafka: KafkaConfig,
    /// Relay loop tuning: checkpoints, backoff, shutdown.
    pub relay: RelayConfig,
    /// Prometheus endpoint and health checks.
    pub metrics: MetricsConfig,
    /// The janitor: marking published rows and pruning old ones.
    pub cleanup: CleanupConfig,
    /// High availability: leader election among relays sharing the slot.
    pub ha: HaConfig,
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

/// PostgreSQL connection and replication objects.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PostgresConfig {
    /// libpq-style URL or key=value string; used for SQL and replication.
    /// TLS as in libpq: `sslmode` (disable, prefer, require, verify-ca,
    /// verify-full), `sslrootcert` (a PEM file or `system`), `sslcert` +
    /// `sslkey` — see [`crate::source::tls`].
    pub url: Option<String>,
    /// Logical replication slot (pgoutput) the relay owns.
    pub slot: String,
    /// Publication carrying inserts of the outbox table only.
    pub publication: String,
    /// How long one connection attempt may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            slot: "outbox_relay".into(),
            publication: "outbox_relay_pub".into(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Outbox table and its columns.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct OutboxConfig {
    /// `schema.table` of the outbox.
    pub table: String,
    /// `schema.table` where the relay stores its durable LSN.
    pub checkpoint_table: String,
    /// SQL function created by `init` that applications may call to emit.
    pub emit_function: String,
    /// Column names.
    pub columns: ColumnsConfig,
    /// Several outbox tables in one relay (`[[outbox.tables]]`), all in one
    /// publication, one slot, one commit order. Empty: the single table
    /// above. When set it is the whole list, and `outbox.table` stays unset.
    pub tables: Vec<OutboxTableConfig>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            table: "public.outbox".into(),
            checkpoint_table: "public.outbox_relay_checkpoint".into(),
            emit_function: "public.outbox_emit".into(),
            columns: ColumnsConfig::default(),
            tables: Vec::new(),
        }
    }
}

/// One entry of `[[outbox.tables]]`: a table and what differs from the
/// shared settings. [`Config::per_table`] turns each into the single-table
/// view the janitor, archive, table health, replay and `init` work with.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutboxTableConfig {
    /// `schema.table` of this outbox.
    pub table: String,
    /// Its column names; absent: `[outbox.columns]`. A present table is a
    /// whole mapping: keys it leaves out take the built-in defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<ColumnsConfig>,
    /// Its topic template; absent: `kafka.topic-template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_template: Option<String>,
    /// The emit function `init` creates for it; absent:
    /// `<schema>.<table>_emit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_function: Option<String>,
    /// Its archive table (see `cleanup.archive-table`); absent: rows are
    /// deleted. Retention: `cleanup.archive-retention-days`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_table: Option<String>,
}

/// Column names of the outbox table. An empty `headers` or `topic` means the
/// table has no such column.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ColumnsConfig {
    /// Primary key, bigint.
    pub id: String,
    /// Routes to the topic through the template.
    pub aggregate_type: String,
    /// Kafka message key: keeps one aggregate's events in one partition.
    pub aggregate_id: String,
    /// Copied into the `event_type` header.
    pub event_type: String,
    /// jsonb payload, sent unchanged as the message value.
    pub payload: String,
    /// Optional jsonb object whose entries become Kafka headers.
    pub headers: String,
    /// Optional per-row topic override.
    pub topic: String,
    /// PENDING | PROCESSED | FAILED, maintained by the janitor.
    pub status: String,
    /// Insert time.
    pub created_at: String,
    /// When the janitor marked the row processed.
    pub processed_at: String,
    /// Publish attempts for rows that failed.
    pub retry_count: String,
    /// Schema version of the event, for consumers.
    pub version: String,
    /// `xid8` of the inserting transaction (`DEFAULT pg_current_xact_id()`):
    /// lets the janitor tell which rows the checkpoint covers. Empty: the
    /// janitor does not mark rows.
    pub txid: String,
}

impl Default for ColumnsConfig {
    fn default() -> Self {
        Self {
            id: "id".into(),
            aggregate_type: "aggregate_type".into(),
            aggregate_id: "aggregate_id".into(),
            event_type: "event_type".into(),
            payload: "event_data".into(),
            headers: "headers".into(),
            topic: "topic".into(),
            status: "status".into(),
            created_at: "created_at".into(),
            processed_at: "processed_at".into(),
            retry_count: "retry_count".into(),
            version: "version".into(),
            txid: "txid".into(),
        }
    }
}

/// Broker connection and routing.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: Option<String>,
    /// Topic when the row's `topic` column is empty. Placeholders:
    /// `{aggregate_type}`, `{event_type}`, `{table}`.
    pub topic_template: String,
    /// Messages handed to librdkafka but not yet acknowledged; reading the
    /// stream pauses at this bound (invariant 6).
    pub max_in_flight: usize,
    /// Bytes (key, value, headers) handed to librdkafka but not yet
    /// acknowledged: the memory bound, since `max-in-flight` messages of up
    /// to 1 MB each would be 10 GB.
    pub max_in_flight_bytes: usize,
    /// Create a missing topic before the first message to it (for brokers
    /// without auto-creation). Off by default: topics are usually managed.
    pub create_topics: bool,
    /// Partitions of topics created by `create-topics`.
    pub topic_partitions: i32,
    /// Replication factor of topics created by `create-topics`; `0` means
    /// min(3, brokers in the cluster). Their `min.insync.replicas` is
    /// min(2, replication factor): never a silent 1 on a multi-broker
    /// cluster, which would quietly undo `acks=all`.
    pub topic_replication_factor: i32,
    /// Dead-letter topic for rows that cannot be published.
    pub dlq_topic: String,
    /// How often the topics the relay writes are checked for drift (a
    /// missing DLQ topic, a changed partition count; see
    /// [`crate::topic_drift`]); also once at startup. `0s` disables.
    #[serde(with = "humantime_serde")]
    pub topic_check_interval: Duration,
    /// Add a `relay_instance` header (`host:pid:start-ms`) to every message,
    /// so consumers and tests can tell which relay produced it (after a
    /// takeover, for example). Off by default: it costs bytes per message.
    pub instance_header: bool,
    /// Any librdkafka producer property, passed through.
    pub properties: BTreeMap<String, String>,
    /// `raw`, `cloudevents-binary` or `cloudevents-structured`
    /// ([`crate::sink::cloudevents`]).
    pub format: MessageFormat,
    /// How CloudEvents attributes are derived (used by the CloudEvents
    /// formats only).
    pub cloudevents: CloudEventsConfig,
    /// `at-least-once` (idempotent producer, checkpoint after acks) or
    /// `exactly-once` (Kafka transactions carrying the resume position; see
    /// [`crate::relay`]'s `txn` part and README "Exactly-once mode").
    pub delivery: Delivery,
    /// The transactional producer's `transactional.id` (exactly-once only).
    /// Empty: `outbox-relay.<database>.<slot>`, stable across restarts. A
    /// relay starting with the same id fences the one before it.
    pub transactional_id: String,
    /// Single-partition compacted topic holding the resume position, written
    /// in the same Kafka transaction as the messages it covers (exactly-once
    /// only). One topic serves many relays: records are keyed by the
    /// transactional id.
    pub progress_topic: String,
    /// How long a Kafka transaction collects messages before it commits
    /// (exactly-once only): the floor of commit → visible-to-`read_committed`.
    #[serde(with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// Messages per Kafka transaction; a PostgreSQL transaction with more is
    /// split, and the progress record's index resumes it exactly.
    pub transaction_max_messages: usize,
}

/// `kafka.delivery`: the promise made to consumers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Every row at least once; a crash re-sends what was in flight.
    #[default]
    AtLeastOnce,
    /// Every row exactly once to a `read_committed` consumer.
    ExactlyOnce,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            topic_template: "outbox.{aggregate_type}".into(),
            max_in_flight: 10_000,
            max_in_flight_bytes: 64 * 1024 * 1024,
            create_topics: false,
            topic_partitions: 3,
            topic_replication_factor: 0,
            dlq_topic: "outbox.dlq".into(),
            topic_check_interval: Duration::from_secs(60),
            instance_header: false,
            properties: BTreeMap::new(),
            format: MessageFormat::Raw,
            cloudevents: CloudEventsConfig::default(),
            delivery: Delivery::AtLeastOnce,
            transactional_id: String::new(),
            progress_topic: "outbox-relay.progress".into(),
            transaction_interval: Duration::from_millis(100),
            transaction_max_messages: 10_000,
        }
    }
}

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

/// Command-line values that override file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--postgres-url`.
    pub postgres_url: Option<String>,
    /// `--kafka-brokers`.
    pub kafka_brokers: Option<String>,
}

impl Config {
    /// Load from an optional file, the process environment and overrides,
    /// then validate.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", p.display()))
            })?),
            None => None,
        };
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::from_sources(text.as_deref(), &env, overrides)
    }

    /// Pure core of [`Config::load`], testable without touching the process.
    pub fn from_sources(
        toml_text: Option<&str>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut raw = match toml_text {
            Some(t) => {
                let table: toml::Table = toml::from_str(t).map_err(|e| {
                    // toml's message carries line/column and the key, not values.
                    let msg = e.message().to_string();
                    ConfigError::new("config file", msg)
                })?;
                serde_json::to_value(table)
                    .map_err(|e| ConfigError::new("config file", e.to_string()))?
            }
            None => Value::Object(Default::default()),
        };
        let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
        apply_env(&mut raw, &defaults, env)?;
        if let Some(url) = &overrides.postgres_url {
            set_path(&mut raw, &["postgres", "url"], Value::String(url.clone()));
        }
        if let Some(b) = &overrides.kafka_brokers {
            set_path(&mut raw, &["kafka", "brokers"], Value::String(b.clone()));
        }
        let config: Config = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let key = if path == "." {
                "config".to_string()
            } else {
                path
            };
            // serde quotes the offending value ("invalid type: integer `123`"):
            // not for a key that holds a secret.
            let inner = if key == "postgres.url" || is_secret_property(&key) {
                "wrong type: expected a string (value not shown: it may hold a secret)".to_string()
            } else {
                inner
            };
            ConfigError::new(key, inner)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every value; the error names the key and never echoes a secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.postgres.url.as_deref().unwrap_or("");
        if url.trim().is_empty() {
            return Err(ConfigError::new(
                "postgres.url",
                "missing: set it in the config file, with --postgres-url or OUTBOX_RELAY_POSTGRES_URL",
            ));
        }
        // sslmode/sslrootcert/sslcert/sslkey are taken out first: tokio-postgres
        // knows no verify-ca/verify-full (see crate::source::tls).
        let pg = crate::source::tls::PgTarget::parse(url)?.config;
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::new("postgres.url", "no host given"));
        }
        if pg.get_user().is_none() {
            return Err(ConfigError::new("postgres.url", "no user given"));
        }
        validate_ident("postgres.slot", &self.postgres.slot)?;
        validate_ident("postgres.publication", &self.postgres.publication)?;
        if self.postgres.connect_timeout.is_zero() {
            return Err(ConfigError::new("postgres.connect-timeout", "must be > 0"));
        }
        parse_table("outbox.checkpoint-table", &self.outbox.checkpoint_table)?;
        let brokers = self.kafka.brokers.as_deref().unwrap_or("");
        if brokers.trim().is_empty() {
            return Err(ConfigError::new(
                "kafka.brokers",
                "missing: set it in the config file, with --kafka-brokers or OUTBOX_RELAY_KAFKA_BROKERS",
            ));
        }
        validate_brokers(brokers)?;
        self.validate_tables()?;
        crate::sink::route::validate_topic(&self.kafka.dlq_topic)
            .map_err(|m| ConfigError::new("kafka.dlq-topic", m))?;
        self.validate_rest()
    }

    /// The checks of one outbox table's view (the single table, or one
    /// entry of `outbox.tables` through [`Config::per_table`]).
    fn validate_table_view(&self) -> Result<(), ConfigError> {
        parse_table("outbox.table", &self.outbox.table)?;
        parse_table("outbox.emit-function", &self.outbox.emit_function)?;
        let c = &self.outbox.columns;
        for (key, v, required) in [
            ("outbox.columns.id", &c.id, true),
            ("outbox.columns.aggregate-type", &c.aggregate_type, true),
            ("outbox.columns.aggregate-id", &c.aggregate_id, true),
            ("outbox.columns.event-type", &c.event_type, true),
            ("outbox.columns.payload", &c.payload, true),
            ("outbox.columns.headers", &c.headers, false),
            ("outbox.columns.topic", &c.topic, false),
            ("outbox.columns.status", &c.status, true),
            ("outbox.columns.created-at", &c.created_at, true),
            ("outbox.columns.processed-at", &c.processed_at, true),
            ("outbox.columns.retry-count", &c.retry_count, true),
            ("outbox.columns.version", &c.version, true),
            ("outbox.columns.txid", &c.txid, false),
        ] {
            if v.is_empty() && !required {
                continue;
            }
            validate_ident(key, v)?;
        }
        let template = crate::sink::route::TopicTemplate::parse(&self.kafka.topic_template)
            .map_err(|m| ConfigError::new("kafka.topic-template", m))?;
        // The literal parts must be legal in a topic name, or every row would
        // be dead-lettered: render with a harmless stand-in and check.
        let sample = template.render(&crate::sink::route::RouteFields {
            aggregate_type: "a",
            event_type: "a",
            table: "a",
        });
        crate::sink::route::validate_topic(&sample).map_err(|_| {
            ConfigError::new(
                "kafka.topic-template",
                "its fixed text must be legal in a topic name: letters, digits, '.', '_', '-', at most 249 chars",
            )
        })?;
        if let Some(archive) = self.archive_table_opt()? {
            if archive == self.outbox_table() || archive == self.checkpoint_table() {
                return Err(ConfigError::new(
                    "cleanup.archive-table",
                    "must be a table of its own, not outbox.table or outbox.checkpoint-table",
                ));
            }
        }
        Ok(())
    }

    /// The single table, or every entry of `outbox.tables` (each checked as
    /// its view, errors naming `outbox.tables[i].…`) and the entries
    /// together: distinct tables, emit functions and archives.
    fn validate_tables(&self) -> Result<(), ConfigError> {
        let tables = &self.outbox.tables;
        if tables.is_empty() {
            return self.validate_table_view();
        }
        if self.outbox.table != OutboxConfig::default().table {
            return Err(ConfigError::new(
                "outbox.table",
                "set either outbox.table (one table) or outbox.tables (several), not both",
            ));
        }
        if !self.cleanup.archive_table.is_empty() {
            return Err(ConfigError::new(
                "cleanup.archive-table",
                "with outbox.tables, set archive-table per table (outbox.tables[i].archive-table)",
            ));
        }
        if self.kafka.format != MessageFormat::Raw
            && self.kafka.cloudevents.source.contains("{table}")
        {
            return Err(ConfigError::new(
                "kafka.cloudevents.source",
                "{table} names one table; with outbox.tables use a source without it",
            ));
        }
        let views = self.per_table();
        let mut seen: Vec<(TableName, TableName, Option<TableName>)> = Vec::new();
        for (i, (entry, view)) in tables.iter().zip(&views).enumerate() {
            let rekey = |e: ConfigError| -> ConfigError {
                let field = |k: &str| format!("outbox.tables[{i}].{k}");
                let key = match e.key.as_str() {
                    "outbox.table" => field("table"),
                    "outbox.emit-function" => field("emit-function"),
                    "cleanup.archive-table" => field("archive-table"),
                    "kafka.topic-template" if entry.topic_template.is_some() => {
                        field("topic-template")
                    }
                    k if entry.columns.is_some() => match k.strip_prefix("outbox.columns.") {
                        Some(col) => field(&format!("columns.{col}")),
                        None => k.to_string(),
                    },
                    k => k.to_string(),
                };
                ConfigError::new(key, e.message)
            };
            view.validate_table_view().map_err(rekey)?;
            let t = view.outbox_table();
            let f =
                parse_table("outbox.emit-function", &view.outbox.emit_function).map_err(rekey)?;
            let a = view.archive_table_opt().map_err(rekey)?;
            for (ot, of, oa) in &seen {
                let clash = |what: &str| {
                    ConfigError::new(
                        format!("outbox.tables[{i}].{what}"),
                        "already used by an earlier entry of outbox.tables",
                    )
                };
                if *ot == t || oa.as_ref() == Some(&t) {
                    return Err(clash("table"));
                }
                if *of == f {
                    return Err(clash("emit-function"));
                }
                if a.is_some() && (a == *oa || a.as_ref() == Some(ot)) {
                    return Err(clash("archive-table"));
                }
            }
            seen.push((t, f, a));
        }
        Ok(())
    }

    /// The checks that do not depend on the outbox table.
    fn validate_rest(&self) -> Result<(), ConfigError> {
        crate::sink::transactional::validate(self)?;
        crate::sink::route::validate_topic(&self.kafka.dlq_topic)
            .map_err(|m| ConfigError::new("kafka.dlq-topic", m))?;
        if self.relay.max_retry == 0 {
            return Err(ConfigError::new(
                "relay.max-retry",
                "must be >= 1 (attempts, including the first)",
            ));
        }
        if self.relay.max_payload_bytes == 0 {
            return Err(ConfigError::new("relay.max-payload-bytes", "must be > 0"));
        }
        if self.relay.batch_size == 0 {
            return Err(ConfigError::new("relay.batch-size", "must be > 0"));
        }
        if self.cleanup.cleanup_interval.is_zero() {
            return Err(ConfigError::new("cleanup.cleanup-interval", "must be > 0"));
        }
        if self.cleanup.failed_retention_days < self.cleanup.retention_days {
            return Err(ConfigError::new(
                "cleanup.failed-retention-days",
                "must be >= cleanup.retention-days",
            ));
        }
        if self.kafka.max_in_flight == 0 {
            return Err(ConfigError::new("kafka.max-in-flight", "must be > 0"));
        }
        if self.kafka.max_in_flight_bytes == 0 {
            return Err(ConfigError::new("kafka.max-in-flight-bytes", "must be > 0"));
        }
        if self.kafka.topic_partitions < 1 {
            return Err(ConfigError::new("kafka.topic-partitions", "must be >= 1"));
        }
        if !(0..=32).contains(&self.kafka.topic_replication_factor) {
            return Err(ConfigError::new(
                "kafka.topic-replication-factor",
                "must be 0 (min(3, brokers)) or 1-32",
            ));
        }
        crate::sink::kafka_config::check_properties(&self.kafka.properties)?;
        self.kafka.cloudevents.validate()?;
        for (key, d) in [
            ("relay.checkpoint-interval", self.relay.checkpoint_interval),
            ("relay.backoff-initial", self.relay.backoff_initial),
            ("relay.backoff-max", self.relay.backoff_max),
            ("relay.status-interval", self.relay.status_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be > 0"));
            }
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::new(
                "metrics.listen",
                "must be host:port with a numeric IP, e.g. 0.0.0.0:9187, or empty to disable",
            ));
        }
        if self.relay.slot_check_interval.is_zero() {
            return Err(ConfigError::new("relay.slot-check-interval", "must be > 0"));
        }
        if self.ha.lease < Duration::from_millis(100) {
            return Err(ConfigError::new("ha.lease", "must be >= 100ms"));
        }
        if self.ha.poll_interval.is_zero() || self.ha.poll_interval > self.ha.lease / 2 {
            return Err(ConfigError::new(
                "ha.poll-interval",
                "must be > 0 and <= ha.lease / 2",
            ));
        }
        if self.relay.backoff_max < self.relay.backoff_initial {
            return Err(ConfigError::new(
                "relay.backoff-max",
                "must be >= relay.backoff-initial",
            ));
        }
        Ok(())
    }

    /// One single-table view per outbox table: the configuration itself
    /// when `outbox.tables` is empty, else per entry a copy whose
    /// `outbox.table`, `outbox.columns`, `outbox.emit-function`,
    /// `kafka.topic-template` and `cleanup.archive-table` are the entry's
    /// (and `outbox.tables` empty). Everything that works on one table — the
    /// janitor, archive, table health, replay, `init`'s table and function —
    /// runs once per view, unchanged.
    pub fn per_table(&self) -> Vec<Config> {
        if self.outbox.tables.is_empty() {
            return vec![self.clone()];
        }
        let mut base = self.clone();
        base.outbox.tables = Vec::new();
        self.outbox
            .tables
            .iter()
            .map(|e| {
                let mut v = base.clone();
                v.outbox.table = e.table.clone();
                if let Some(c) = &e.columns {
                    v.outbox.columns = c.clone();
                }
                if let Some(t) = &e.topic_template {
                    v.kafka.topic_template = t.clone();
                }
                v.outbox.emit_function = match &e.emit_function {
                    Some(f) => f.clone(),
                    None => {
                        let (schema, name) =
                            e.table.split_once('.').unwrap_or(("public", &e.table));
                        format!("{schema}.{name}_emit")
                    }
                };
                v.cleanup.archive_table = e.archive_table.clone().unwrap_or_default();
                v
            })
            .collect()
    }

    /// Whether several outbox tables are configured (`outbox.tables`).
    pub fn multi_table(&self) -> bool {
        !self.outbox.tables.is_empty()
    }

    /// The view of the table named `name` (`schema.table`, or `table` in
    /// `public`), for selectors such as `replay --table`.
    pub fn table_view(&self, name: &str) -> Option<Config> {
        let want = parse_table("--table", name).ok()?;
        self.per_table()
            .into_iter()
            .find(|v| v.outbox_table() == want)
    }

    /// The archive table, `None` when archiving is off (empty key).
    pub fn archive_table(&self) -> Option<TableName> {
        self.archive_table_opt().expect("validated")
    }

    fn archive_table_opt(&self) -> Result<Option<TableName>, ConfigError> {
        let a = &self.cleanup.archive_table;
        if a.is_empty() {
            return Ok(None);
        }
        parse_table("cleanup.archive-table", a).map(Some)
    }

    /// The PostgreSQL URL; present after [`Config::validate`].
    pub fn postgres_url(&self) -> &str {
        self.postgres.url.as_deref().unwrap_or_default()
    }

    /// The bootstrap servers; present after [`Config::validate`].
    pub fn kafka_brokers(&self) -> &str {
        self.kafka.brokers.as_deref().unwrap_or_default()
    }

    /// Outbox table as schema + name.
    pub fn outbox_table(&self) -> TableName {
        parse_table("outbox.table", &self.outbox.table).expect("validated")
    }

    /// Checkpoint table as schema + name.
    pub fn checkpoint_table(&self) -> TableName {
        parse_table("outbox.checkpoint-table", &self.outbox.checkpoint_table).expect("validated")
    }

    /// Column names the decoder maps.
    pub fn column_names(&self) -> ColumnNames {
        let c = &self.outbox.columns;
        let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
        ColumnNames {
            id: c.id.clone(),
            aggregate_type: c.aggregate_type.clone(),
            aggregate_id: c.aggregate_id.clone(),
            event_type: c.event_type.clone(),
            payload: c.payload.clone(),
            headers: opt(&c.headers),
            topic: opt(&c.topic),
            // Read only when it becomes the CloudEvents id.
            event_id: (self.kafka.format != MessageFormat::Raw)
                .then(|| opt(&self.kafka.cloudevents.id_column))
                .flatten(),
        }
    }

    /// The effective configuration with every secret masked, as TOML.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        c.postgres.url = c.postgres.url.as_deref().map(redact_url);
        for (k, v) in c.kafka.properties.iter_mut() {
            if is_secret_property(k) {
                *v = "***".into();
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// True for librdkafka properties that hold credentials.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password") || n.contains("secret") || n.ends_with(".key") || n.contains("key.pem")
}

/// Mask the password of a URL or key=value connection string.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
        // password=... may also sit in the query string
        return redact_kv_password(url);
    }
    redact_kv_password(url)
}

fn redact_kv_password(s: &str) -> String {
    // A key/value string: mask exactly each password value, quoted or not,
    // also with spaces around `=` (`password = 'a b'`).
    if !s.contains("://") {
        if let Ok(pairs) = crate::source::tls::kv_pairs(s) {
            let mut out = s.to_string();
            for p in pairs.iter().rev() {
                if p.key.contains("password") {
                    out.replace_range(p.value_span.clone(), "***");
                }
            }
            return out;
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("password=") {
        let (head, tail) = rest.split_at(pos + "password=".len());
        out.push_str(head);
        out.push_str("***");
        let end = tail.find([' ', '&']).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `kafka.brokers`: comma-separated `host[:port]` (optionally `proto://`),
/// checked for shape only (librdkafka resolves names later).
fn validate_brokers(brokers: &str) -> Result<(), ConfigError> {
    for entry in brokers.split(',') {
        let e = entry.trim();
        let e = e.split_once("://").map_or(e, |(_, rest)| rest);
        let port = if let Some(rest) = e.strip_prefix('[') {
            // [IPv6]:port
            match rest.split_once(']') {
                Some((_, after)) => after.strip_prefix(':').map(Some).unwrap_or(None),
                None => {
                    return Err(ConfigError::new(
                        "kafka.brokers",
                        "unclosed '[' in an address",
                    ))
                }
            }
        } else if e.matches(':').count() == 1 {
            e.split_once(':').map(|(_, p)| p)
        } else {
            None
        };
        let host_ok = !e.is_empty() && !e.contains(char::is_whitespace) && !e.starts_with(':');
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
        if !host_ok || !port_ok {
            return Err(ConfigError::new(
                "kafka.brokers",
                "must be a comma-separated list of host:port (port 1-65535)",
            ));
        }
    }
    Ok(())
}

/// Validate a PostgreSQL identifier we interpolate into SQL. We accept only
/// plain lower-case-able identifiers so no quoting games are needed.
pub fn validate_ident(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            "must be an identifier: letters, digits and _, starting with a letter or _, at most 63 chars",
        ))
    }
}

/// Parse `schema.name` (or `name`, meaning `public.name`).
pub fn parse_table(key: &str, v: &str) -> Result<TableName, ConfigError> {
    let (schema, name) = match v.split_once('.') {
        Some((s, n)) => (s, n),
        None => ("public", v),
    };
    validate_ident(key, schema)?;
    validate_ident(key, name)?;
    Ok(TableName {
        schema: schema.to_string(),
        name: name.to_string(),
    })
}

fn env_name(path: &[&str]) -> String {
    let mut s = String::from(ENV_PREFIX);
    s.push_str(&path.join("_").replace(['-', '.'], "_").to_ascii_uppercase());
    s
}

fn apply_env(
    raw: &mut Value,
    defaults: &Value,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut leaves = Vec::new();
    collect_leaves(defaults, &mut Vec::new(), &mut leaves);
    let names: Vec<String> = leaves
        .iter()
        .map(|(path, _)| env_name(&path.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    for (var, _) in env {
        let known = !var.starts_with(ENV_PREFIX)
            || var.starts_with(ENV_KAFKA_PROPERTY_PREFIX)
            || ENV_NOT_KEYS.contains(&var.as_str())
            || names.contains(var);
        if !known {
            let hint = names
                .iter()
                .map(|n| (edit_distance(n, var), n))
                .filter(|(d, _)| *d <= 3)
                .min()
                .map(|(_, n)| format!(" (did you mean {n}?)"))
                .unwrap_or_default();
            return Err(ConfigError::new(
                var.as_str(),
                format!("unknown variable: it maps to no configuration key{hint}"),
            ));
        }
    }
    for (path, default) in leaves {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        if refs == ["kafka", "properties"] {
            continue;
        }
        let name = env_name(&refs);
        if let Some(v) = lookup(&name) {
            let key = path.join(".");
            let typed = match default {
                Value::Bool(_) => Value::Bool(v.parse().map_err(|_| {
                    ConfigError::new(&key, format!("{name} must be true or false"))
                })?),
                Value::Number(_) => {
                    Value::Number(v.parse::<i64>().map(Into::into).map_err(|_| {
                        ConfigError::new(&key, format!("{name} must be an integer"))
                    })?)
                }
                _ => Value::String(v),
            };
            set_path(raw, &refs, typed);
        }
    }
    for (k, v) in env {
        if let Some(prop) = k.strip_prefix(ENV_KAFKA_PROPERTY_PREFIX) {
            let prop = prop.to_ascii_lowercase().replace('_', ".");
            set_path(
                raw,
                &["kafka", "properties", &prop],
                Value::String(v.clone()),
            );
        }
    }
    Ok(())
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn collect_leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match v {
        Value::Object(map) if !(path.len() == 2 && path[1] == "properties") => {
            for (k, child) in map {
                path.push(k.clone());
                collect_leaves(child, path, out);
                path.pop();
            }
        }
        other => out.push((path.clone(), other.clone())),
    }
}

fn set_path(raw: &mut Value, path: &[&str], value: Value) {
    let mut cur = raw;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let map = cur.as_object_mut().expect("object");
        if i + 1 == path.len() {
            map.insert((*seg).to_string(), value);
            return;
        }
        cur = map
            .entry((*seg).to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    const MIN: &str = r#"
        [postgres]
        url = "postgres://relay:s3cret@127.0.0.1:5432/app"
        [kafka]
        brokers = "127.0.0.1:9092"
    "#;

    #[test]
    fn an_environment_variable_that_maps_to_no_key_is_named() {
        for (var, hint) in [
            ("OUTBOX_RELAY_KAFKA_FORMATX", ""),
            (
                "OUTBOX_RELAY_RELAY_ON_PERMANENT_ERORR",
                "did you mean OUTBOX_RELAY_RELAY_ON_PERMANENT_ERROR?",
            ),
        ] {
            let e = Config::from_sources(Some(MIN), &env(&[(var, "x")]), &Overrides::default())
                .unwrap_err();
            assert_eq!(e.key, var);
            assert!(e.message.contains("maps to no configuration key"), "{e}");
            assert!(e.message.contains(hint), "{e}");
            assert!(!e.message.contains("\"x\""), "no value echoed: {e}");
        }
        // The variables that are not keys are fine.
        for var in ENV_NOT_KEYS {
            Config::from_sources(Some(MIN), &env(&[(var, "x")]), &Overrides::default()).unwrap();
        }
    }

    #[test]
    fn file_then_env_then_flags() {
        let c = Config::from_sources(
            Some(MIN),
            &env(&[
                ("OUTBOX_RELAY_KAFKA_MAX_IN_FLIGHT", "77"),
                ("OUTBOX_RELAY_RELAY_CHECKPOINT_INTERVAL", "2s"),
                ("OUTBOX_RELAY_OUTBOX_COLUMNS_PAYLOAD", "payload"),
                ("OUTBOX_RELAY_KAFKA_PROPERTY_LINGER_MS", "3"),
            ]),
            &Overrides {
                kafka_brokers: Some("10.0.0.1:1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.kafka.max_in_flight, 77);
        assert_eq!(c.relay.checkpoint_interval, Duration::from_secs(2));
        assert_eq!(c.outbox.columns.payload, "payload");
        assert_eq!(c.kafka.properties["linger.ms"], "3");
        assert_eq!(c.kafka_brokers(), "10.0.0.1:1");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_sources(
            Some(&format!("{MIN}\n[relay]\nbogus = 1\n")),
            &[],
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "relay.bogus");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn missing_url_is_named() {
        let e = Config::from_sources(Some("[kafka]\nbrokers='x:1'\n"), &[], &Default::default())
            .unwrap_err();
        assert_eq!(e.key, "postgres.url");
    }

    #[test]
    fn bad_env_number_names_key() {
        let e = Config::from_sources(
            Some(MIN),
            &env(&[("OUTBOX_RELAY_KAFKA_MAX_IN_FLIGHT", "lots")]),
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.max-in-flight");
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config::from_sources(
            Some(MIN),
            &env(&[("OUTBOX_RELAY_KAFKA_PROPERTY_SASL_PASSWORD", "hunter2")]),
            &Default::default(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("relay:***@127.0.0.1"));
        assert_eq!(
            redact_url("host=x password=abc user=y"),
            "host=x password=*** user=y"
        );
        assert_eq!(
            redact_url("host=x password = 'a b\\'c' user=y"),
            "host=x password = *** user=y"
        );
    }

    #[test]
    fn several_tables_become_single_table_views() {
        let c = Config::from_sources(
            Some(&format!(
                "{MIN}\n[kafka.cloudevents]\nsource = \"/x\"\n\
                 [[outbox.tables]]\ntable = \"a.outbox\"\n\
                 [[outbox.tables]]\ntable = \"b.events\"\ntopic-template = \"b.{{aggregate_type}}\"\n\
                 archive-table = \"b.events_archive\"\n[outbox.tables.columns]\npayload = \"payload\"\n"
            )),
            &[],
            &Overrides::default(),
        )
        .unwrap();
        assert!(c.multi_table());
        let v = c.per_table();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].outbox.table, "a.outbox");
        assert_eq!(v[0].outbox.emit_function, "a.outbox_emit");
        assert_eq!(v[0].kafka.topic_template, "outbox.{aggregate_type}");
        assert_eq!(v[0].outbox.columns.payload, "event_data");
        assert!(v[0].archive_table().is_none());
        assert_eq!(v[1].outbox.emit_function, "b.events_emit");
        assert_eq!(v[1].kafka.topic_template, "b.{aggregate_type}");
        assert_eq!(v[1].outbox.columns.payload, "payload");
        assert_eq!(
            v[1].archive_table().unwrap().to_string(),
            "b.events_archive"
        );
        assert!(v.iter().all(|v| !v.multi_table()));
        assert_eq!(c.table_view("b.events").unwrap().outbox.table, "b.events");
        assert!(c.table_view("public.outbox").is_none());
        // One table: the view is the config itself.
        let one = Config::from_sources(Some(MIN), &[], &Overrides::default()).unwrap();
        assert_eq!(one.per_table()[0].outbox.table, "public.outbox");
    }

    #[test]
    fn several_tables_errors_name_the_entry() {
        let load = |extra: &str| {
            Config::from_sources(Some(&format!("{MIN}\n{extra}")), &[], &Overrides::default())
                .unwrap_err()
        };
        let e = load("[outbox]\ntable = \"x.y\"\n[[outbox.tables]]\ntable = \"a.b\"\n");
        assert_eq!(e.key, "outbox.table");
        let e = load("[[outbox.tables]]\ntable = \"a.b\"\n[[outbox.tables]]\ntable = \"a.b c\"\n");
        assert_eq!(e.key, "outbox.tables[1].table");
        let e = load(
            "[[outbox.tables]]\ntable = \"a.b\"\narchive-table = \"a.c\"\n[[outbox.tables]]\ntable = \"a.c\"\n",
        );
        assert_eq!(e.key, "outbox.tables[1].table");
        let e = load("[[outbox.tables]]\ntable = \"a.b\"\n[outbox.tables.columns]\nid = \"9\"\n");
        assert_eq!(e.key, "outbox.tables[0].columns.id");
        let e = load("[cleanup]\narchive-table = \"a.z\"\n[[outbox.tables]]\ntable = \"a.b\"\n");
        assert_eq!(e.key, "cleanup.archive-table");
        let e = Config::from_sources(
            Some(&format!("{MIN}\n[[outbox.tables]]\ntable = \"a.b\"\n")),
            &env(&[("OUTBOX_RELAY_KAFKA_FORMAT", "cloudevents-binary")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.cloudevents.source");
    }

    #[test]
    fn weakening_idempotence_is_refused() {
        let e = Config::from_sources(
            Some(&format!(
                "{MIN}\n[kafka.properties]\n\"enable.idempotence\" = \"false\"\n"
            )),
            &[],
            &Default::default(),
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.properties.enable.idempotence");
    }
}
