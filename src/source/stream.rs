//! Opening the logical replication stream (pgwire-replication, pgoutput
//! protocol 1, text values, no `streaming`: PostgreSQL sends each
//! transaction whole, after it committed, in commit order — the order the
//! relay publishes in).

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig};
use tokio_postgres::config::Host;

use crate::config::Config;
use crate::error::{RelayError, Result};
use crate::source::tls::PgTarget;

/// Build the stream configuration from `postgres.url`.
///
/// `start` is where we ask PostgreSQL to resume (our durable checkpoint, or
/// the slot's own position when we have none); `ack` is what the worker
/// reports as flushed until the relay confirms more, so the slot never moves
/// past what the checkpoint table holds (invariant 2).
///
/// TLS: the same `sslmode`/`sslrootcert` decision as the control plane
/// ([`crate::source::tls`]), so both connections verify the same server
/// certificate the same way.
pub fn replication_config(cfg: &Config, start: Option<u64>) -> Result<ReplicationConfig> {
    let target = PgTarget::parse(cfg.postgres_url())?;
    let pg = &target.config;
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let dbname = pg.get_dbname().unwrap_or(&user).to_string();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.to_string_lossy().into_owned(),
        None => "localhost".into(),
    };
    let tls = target.replication_tls(&host);
    let start_lsn = Lsn::from_u64(start.unwrap_or(0));
    let rc = ReplicationConfig::new(
        host,
        user,
        password,
        dbname,
        cfg.postgres.slot.clone(),
        cfg.postgres.publication.clone(),
    )
    .with_port(port)
    .with_tls(tls)
    .with_start_lsn(start_lsn)
    .with_ack_lsn(start_lsn)
    .with_status_interval(cfg.relay.status_interval)
    .with_wakeup_interval(
        cfg.relay
            .status_interval
            .max(std::time::Duration::from_secs(1)),
    )
    .with_buffer_size(4096)
    .with_application_name("outbox-relay")
    .with_options("-c datestyle=ISO,MDY -c intervalstyle=iso_8601 -c extra_float_digits=3");
    Ok(rc)
}

/// Connect and wait until the server accepted `START_REPLICATION`, with the
/// connect timeout as deadline.
pub async fn open(cfg: &Config, start: Option<u64>) -> Result<ReplicationClient> {
    let rc = replication_config(cfg, start)?;
    let fut = async {
        let mut client = ReplicationClient::connect(rc).await?;
        client.wait_started().await?;
        Ok::<_, pgwire_replication::PgWireError>(client)
    };
    tokio::time::timeout(cfg.postgres.connect_timeout, fut)
        .await
        .map_err(|_| RelayError::Timeout("starting the replication stream".into()))?
        .map_err(RelayError::from)
}
