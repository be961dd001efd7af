//! Validation: every value is checked once, after loading, so the rest of
//! the relay can trust the configuration. An error names the key (for an
//! entry of `outbox.tables`, the entry: `outbox.tables[i].…`) and never
//! echoes a value, which could be a secret. The identifier and table-name
//! checks are public because other sections (CloudEvents) use them too.

use std::time::Duration;

use super::{Config, OutboxConfig};
use crate::decode::TableName;
use crate::error::ConfigError;
use crate::sink::cloudevents::MessageFormat;

impl Config {
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

#[cfg(test)]
mod tests {
    use crate::config::fixtures::{env, MIN};
    use crate::config::{Config, Overrides};

    #[test]
    fn missing_url_is_named() {
        let e = Config::from_sources(Some("[kafka]\nbrokers='x:1'\n"), &[], &Default::default())
            .unwrap_err();
        assert_eq!(e.key, "postgres.url");
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
