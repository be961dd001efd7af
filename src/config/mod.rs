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
//!
//! This file holds [`Config`] itself, its loading ([`Config::load`],
//! [`Config::from_sources`]) and the accessors the rest of the relay reads
//! it through (including the per-table views of `outbox.tables`). The
//! section structs with their defaults are in `database` (`[postgres]`,
//! `[outbox]`), `kafka` and `runtime` (`[relay]`, `[cleanup]`, `[metrics]`,
//! `[ha]`); environment overrides in `env`; the checks in `validate`;
//! secret masking in `redact`. Every public item is re-exported here, so
//! paths stay `crate::config::X`.

mod database;
mod env;
mod kafka;
mod redact;
mod runtime;
mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{ColumnNames, TableName};
use crate::error::ConfigError;
use crate::sink::cloudevents::MessageFormat;

pub use database::{ColumnsConfig, OutboxConfig, OutboxTableConfig, PostgresConfig};
use env::{apply_env, set_path};
pub use env::{ENV_KAFKA_PROPERTY_PREFIX, ENV_NOT_KEYS, ENV_PREFIX};
pub use kafka::{Delivery, KafkaConfig};
pub use redact::{is_secret_property, redact_url};
pub use runtime::{CleanupConfig, HaConfig, MetricsConfig, OnPermanentError, RelayConfig};
pub use validate::{parse_table, validate_ident};

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
}

/// Inputs shared by the unit tests of this module's files.
#[cfg(test)]
mod fixtures {
    /// Environment pairs as [`super::Config::from_sources`] takes them.
    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The smallest valid file: the two keys without a default.
    pub(super) const MIN: &str = r#"
        [postgres]
        url = "postgres://relay:s3cret@127.0.0.1:5432/app"
        [kafka]
        brokers = "127.0.0.1:9092"
    "#;
}

#[cfg(test)]
mod tests {
    use super::fixtures::MIN;
    use super::*;

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
}
