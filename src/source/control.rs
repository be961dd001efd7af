//! SQL control plane: connecting, `init`, and startup checks that turn a
//! missing slot or publication into one clear fatal error.

use std::time::Duration;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::schema;
use crate::source::tls::{self, PgTarget};

/// Open a control-plane connection with a deadline; the connection task is
/// spawned and logs when it ends.
///
/// TLS follows `sslmode`/`sslrootcert` in `postgres.url` ([`tls`]). A
/// certificate that fails verification (untrusted CA, wrong host name) or a
/// server refusing required TLS is an environment error — fatal, one line,
/// no retry — while a connection reset during the handshake stays transient.
pub async fn connect(cfg: &Config, purpose: &'static str) -> Result<Client> {
    connect_tuned(cfg, purpose, &format!("outbox-relay {purpose}"), |_| {}).await
}

/// [`connect`] with an application name of the caller's and a last say on
/// the driver's settings (the leader election's lock connection sets TCP
/// keepalives here).
pub async fn connect_tuned(
    cfg: &Config,
    purpose: &'static str,
    application_name: &str,
    tune: impl FnOnce(&mut tokio_postgres::Config),
) -> Result<Client> {
    let target = PgTarget::parse(cfg.postgres_url())?;
    let mut pg = target.config.clone();
    pg.application_name(application_name);
    pg.connect_timeout(cfg.postgres.connect_timeout);
    tune(&mut pg);
    let deadline = cfg.postgres.connect_timeout + Duration::from_secs(1);
    let connected = match target.rustls_config()? {
        None => connect_with(&pg, NoTls, deadline).await,
        Some(rc) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rc);
            connect_with(&pg, tls, deadline).await
        }
    };
    match connected {
        Ok(Some(client)) => Ok(client),
        Ok(None) => Err(RelayError::Timeout(format!(
            "connecting to PostgreSQL ({purpose})"
        ))),
        Err(e) => Err(match tls::certificate_problem(&e) {
            Some(problem) => RelayError::Environment(format!(
                "TLS to PostgreSQL failed ({purpose}): {problem} (postgres.url: sslmode, sslrootcert)"
            )),
            None => RelayError::postgres(format!("connecting to PostgreSQL ({purpose})"), e),
        }),
    }
}

/// Connect with one TLS implementation; `Ok(None)` when the deadline passed.
async fn connect_with<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    deadline: Duration,
) -> std::result::Result<Option<Client>, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<Socket>>::Future: Send,
{
    let Ok(res) = tokio::time::timeout(deadline, pg.connect(tls)).await else {
        return Ok(None);
    };
    let (client, conn) = res?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "control connection closed");
        }
    });
    Ok(Some(client))
}

/// What `init` did, for the operator.
#[derive(Debug, Default)]
pub struct InitReport {
    /// Whether the slot was created now (false: it already existed).
    pub slot_created: bool,
    /// The slot replaced one that is gone (or came after PENDING rows):
    /// what the stream will never deliver (see [`crate::recovery`]).
    pub lost_range: Option<crate::recovery::LostRange>,
}

/// Idempotently create table, publication, emit function, checkpoint table
/// and the slot.
pub async fn init(client: &Client, cfg: &Config) -> Result<InitReport> {
    for step in schema::init_statements(cfg) {
        client
            .batch_execute(&step.sql)
            .await
            .map_err(|e| RelayError::postgres(format!("init step {}", step.file), e))?;
    }
    let exists = slot_exists(client, &cfg.postgres.slot).await?;
    if !exists {
        crate::recovery::before_new_slot(client, cfg).await?;
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&cfg.postgres.slot],
            )
            .await
            .map_err(|e| {
                RelayError::postgres(
                    format!("creating replication slot {}", cfg.postgres.slot),
                    e,
                )
            })?;
    }
    let lost_range = crate::recovery::after_slot(client, cfg).await?;
    Ok(InitReport {
        slot_created: !exists,
        lost_range,
    })
}

async fn slot_exists(client: &Client, slot: &str) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| RelayError::postgres("reading pg_replication_slots", e))?;
    match row {
        None => Ok(false),
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            if plugin.as_deref() != Some("pgoutput") {
                return Err(RelayError::Environment(format!(
                    "replication slot {slot} exists but uses plugin {plugin:?}, not pgoutput (postgres.slot)"
                )));
            }
            Ok(true)
        }
    }
}

/// Startup checks for `run`: the slot and publication exist and the
/// publication covers the outbox table with inserts.
pub async fn preflight(client: &Client, cfg: &Config) -> Result<()> {
    // The replication stream is decoded as UTF-8 (the walsender converts to
    // it and refuses rows it cannot convert, which would wedge the stream at
    // that row forever): refuse other server encodings up front.
    let enc: String = client
        .query_one("SELECT current_setting('server_encoding')", &[])
        .await
        .map_err(|e| RelayError::postgres("reading server_encoding", e))?
        .get(0);
    if enc != "UTF8" {
        return Err(RelayError::Environment(format!(
            "database encoding is {enc}; outbox-relay needs a UTF8 database (postgres.url)"
        )));
    }
    let slot = &cfg.postgres.slot;
    if !slot_exists(client, slot).await? {
        return Err(RelayError::Environment(format!(
            "replication slot {slot} does not exist (postgres.slot): run `outbox-relay init` first"
        )));
    }
    let pubname = &cfg.postgres.publication;
    for view in cfg.per_table() {
        let table = view.outbox_table();
        let row = client
            .query_opt(
                "SELECT p.pubinsert, EXISTS (SELECT 1 FROM pg_publication_tables t \
                   WHERE t.pubname = p.pubname AND t.schemaname = $2 AND t.tablename = $3) \
                 FROM pg_publication p WHERE p.pubname = $1",
                &[pubname, &table.schema, &table.name],
            )
            .await
            .map_err(|e| RelayError::postgres("reading pg_publication", e))?;
        let Some(r) = row else {
            return Err(RelayError::Environment(format!(
                "publication {pubname} does not exist (postgres.publication): run `outbox-relay init` first"
            )));
        };
        let (inserts, has_table): (bool, bool) = (r.get(0), r.get(1));
        if !inserts || !has_table {
            return Err(RelayError::Environment(format!(
                "publication {pubname} must publish inserts of {}.{} (postgres.publication, outbox.table{})",
                table.schema,
                table.name,
                if cfg.multi_table() { "s" } else { "" }
            )));
        }
    }
    if cfg.multi_table() {
        warn_unless_shared_ids(client, cfg).await?;
    }
    Ok(())
}

/// With several outbox tables, a dead-lettered row is marked FAILED by its
/// id in every table (the stream's failure bookkeeping carries no table),
/// so ids must not repeat across the tables: `init` creates them on one
/// sequence. Tables it did not create are checked here: the id columns'
/// defaults must be the same `nextval(...)`. Otherwise a warning, not a
/// refusal (disjoint id ranges are fine too, and cannot be checked cheaply).
async fn warn_unless_shared_ids(client: &Client, cfg: &Config) -> Result<()> {
    let mut defaults = Vec::new();
    for view in cfg.per_table() {
        let d: Option<String> = client
            .query_opt(
                "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
                &[&view.outbox.table, &view.outbox.columns.id],
            )
            .await
            .map_err(|e| RelayError::postgres("reading the outbox tables' id defaults", e))?
            .and_then(|r| r.get(0));
        defaults.push((view.outbox.table.clone(), d));
    }
    let first = &defaults[0].1;
    let shared = first.as_deref().is_some_and(|d| d.starts_with("nextval("))
        && defaults.iter().all(|(_, d)| d == first);
    if !shared {
        tracing::warn!(
            defaults = ?defaults,
            "the outbox tables do not draw ids from one sequence: a dead-lettered row is marked \
             FAILED by id in every table, so a row of the same id in another table would be \
             marked too (README: 'Several outbox tables')"
        );
    }
    Ok(())
}
