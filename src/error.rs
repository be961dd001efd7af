//! Typed errors, each with a recoverability class.
//!
//! The relay's behaviour on failure is decided by the class, never by string
//! matching at the call site:
//!
//! * [`ErrorClass::Transient`] — the world is temporarily unavailable (broker
//!   down, Postgres restarting, a timeout). The stream stalls, the session is
//!   torn down and restarted from the durable checkpoint with exponential
//!   backoff. Nothing is skipped (invariant 4, see `crate::relay`).
//! * [`ErrorClass::Permanent`] — one row cannot ever be published as it is
//!   (malformed, oversized, bad topic). It names the row id.
//! * [`ErrorClass::Fatal`] — configuration or environment is wrong (bad key,
//!   wrong password, missing slot). Retrying cannot help; the process exits
//!   non-zero with one line naming the problem.

use std::fmt;

use pgwire_replication::PgWireError;
use rdkafka::error::KafkaError;

use crate::decode::{DecodeError, RowError};

/// How the relay reacts to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff; the stream stalls meanwhile.
    Transient,
    /// A row-level problem that no retry fixes.
    Permanent,
    /// Configuration or environment problem: stop the process.
    Fatal,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        })
    }
}

/// A configuration problem; always names the key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("config error: {key}: {message}")]
pub struct ConfigError {
    /// Dotted key, e.g. `postgres.url` or `kafka.properties.acks`.
    pub key: String,
    /// What is wrong, in one line. Never contains a secret value.
    pub message: String,
}

impl ConfigError {
    /// Build an error for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every error the library returns.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Bad configuration value or missing key.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// Control-plane SQL (init, checkpoint store, lag queries).
    #[error("postgres: {context}: {}", postgres_text(source))]
    Postgres {
        /// What we were doing.
        context: String,
        /// Driver error; its SQLSTATE decides the class.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The logical replication stream.
    #[error("replication stream: {0}")]
    Replication(#[from] PgWireError),

    /// A pgoutput message we could not parse: the stream itself is corrupt or
    /// speaks a protocol we do not know, so this is not a row-level problem.
    #[error("pgoutput decode: {0}")]
    Decode(#[from] DecodeError),

    /// One outbox row cannot be turned into a Kafka message.
    #[error(transparent)]
    Row(#[from] RowError),

    /// A decoded row that cannot be published as it is (e.g. its topic
    /// name is illegal).
    #[error("outbox row id={row_id}: {reason}")]
    RowRejected {
        /// The row's primary key.
        row_id: i64,
        /// Why, in one line.
        reason: String,
    },

    /// The Kafka producer or a delivery report.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What we were doing (topic, row id).
        context: String,
        /// librdkafka error; its code decides the class.
        #[source]
        source: KafkaError,
    },

    /// A producer or broker error, classified at the sink port.
    #[error("kafka: {context}: {source}")]
    Sink {
        /// What we were doing (topic, row id).
        context: String,
        /// The classified error.
        #[source]
        source: crate::sink::classify::SinkError,
    },

    /// A precondition about the environment failed (slot missing, table
    /// missing, publication wrong). Names the object and the fix.
    #[error("{0}")]
    Environment(String),

    /// A deadline passed (connect, checkpoint write).
    #[error("timed out: {0}")]
    Timeout(String),

    /// This relay can no longer prove it leads the slot: it stopped
    /// producing and stands by again ([`crate::leader`]).
    #[error("fenced: {0}")]
    Fenced(String),

    /// Exactly-once mode: a newer relay started with the same
    /// `kafka.transactional-id` and fenced this one's producer at the broker.
    /// Fatal: this process must stop producing for good (exit code 3).
    #[error("fenced by a newer producer with transactional id {0}: another relay took over; this one stops")]
    ProducerFenced(String),
}

impl RelayError {
    /// Wrap a tokio-postgres error with what we were doing.
    pub fn postgres(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        RelayError::Postgres {
            context: context.into(),
            source,
        }
    }

    /// Wrap a librdkafka error with what we were doing.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        RelayError::Kafka {
            context: context.into(),
            source,
        }
    }

    /// Wrap a classified sink error with what we were doing.
    pub fn sink(context: impl Into<String>, source: crate::sink::classify::SinkError) -> Self {
        RelayError::Sink {
            context: context.into(),
            source,
        }
    }

    /// The recoverability class; see the module docs.
    pub fn class(&self) -> ErrorClass {
        match self {
            RelayError::Config(_) | RelayError::Environment(_) | RelayError::ProducerFenced(_) => {
                ErrorClass::Fatal
            }
            RelayError::Postgres { source, .. } => postgres_class(source),
            RelayError::Replication(e) => replication_class(e),
            RelayError::Decode(_) => ErrorClass::Fatal,
            RelayError::Row(_) | RelayError::RowRejected { .. } => ErrorClass::Permanent,
            RelayError::Kafka { source, .. } => crate::sink::classify::kafka_class(source),
            RelayError::Sink { source, .. } => source.class,
            RelayError::Timeout(_) | RelayError::Fenced(_) => ErrorClass::Transient,
        }
    }
}

/// tokio-postgres prints server errors as just "db error"; spell out the
/// server's message and SQLSTATE, or the I/O cause, on one line.
pub fn postgres_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

/// SQLSTATE classes that retrying cannot fix: authentication (28), invalid
/// catalog/schema names (3D, 3F), insufficient privilege and undefined objects
/// (42), configuration file errors (F0). Everything else, including connection
/// failures without a SQLSTATE, is transient.
pub fn postgres_class(e: &tokio_postgres::Error) -> ErrorClass {
    match e.code() {
        Some(code) => {
            let c = code.code();
            if c.starts_with("28")
                || c.starts_with("3D")
                || c.starts_with("3F")
                || c.starts_with("42")
                || c.starts_with("F0")
            {
                ErrorClass::Fatal
            } else {
                ErrorClass::Transient
            }
        }
        None => ErrorClass::Transient,
    }
}

fn replication_class(e: &PgWireError) -> ErrorClass {
    match e {
        PgWireError::Auth(_) => ErrorClass::Fatal,
        // A certificate that fails verification is fatal; a reset during the
        // handshake is a network fault like any other.
        PgWireError::Tls(msg) if crate::source::tls::is_permanent_stream_tls_error(msg) => {
            ErrorClass::Fatal
        }
        PgWireError::Tls(_) => ErrorClass::Transient,
        PgWireError::Server(msg) => {
            // The walsender reports a missing slot/publication or a wrong
            // password as an ErrorResponse; nothing else there is fatal.
            let m = msg.to_ascii_lowercase();
            if m.contains("does not exist")
                || m.contains("password authentication failed")
                || m.contains("permission denied")
                || m.contains("must be superuser or replication")
                || m.contains("can no longer get changes")
                || m.contains("has been invalidated")
            {
                ErrorClass::Fatal
            } else {
                ErrorClass::Transient
            }
        }
        _ => ErrorClass::Transient,
    }
}

/// Library result type.
pub type Result<T, E = RelayError> = std::result::Result<T, E>;
