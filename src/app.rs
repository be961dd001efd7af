//! Wiring: startup checks, the session supervisor, shutdown.
//!
//! Startup is strict: if PostgreSQL or the broker cannot be reached, or the
//! slot/publication is missing, the process stops with one line naming the
//! problem (a relay that starts against a wrong config and retries forever
//! hides the mistake). Once running, every transient failure is retried with
//! backoff by restarting the session from the durable checkpoint.

use std::time::Duration;

use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{ErrorClass, RelayError, Result};
use crate::relay::{self, SessionStats};
use crate::sink::Publisher;
use crate::source::control;

/// Run the relay until `shutdown` becomes true (Ok) or a fatal error.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<()> {
    let health = crate::health::Health::shared();
    run_with_health(cfg, shutdown, health).await
}

/// [`run`] with a health handle the caller shares (the HTTP endpoint).
pub async fn run_with_health(
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    health: crate::health::SharedHealth,
) -> Result<()> {
    startup_checks(&cfg).await?;
    health.set_broker_ok(true);
    let mut backoff = Backoff::new(cfg.relay.backoff_initial, cfg.relay.backoff_max);
    loop {
        let mut stats = SessionStats::default();
        let outcome = relay::run_session(&cfg, &health, &mut shutdown, &mut stats).await;
        match outcome {
            Ok(relay::SessionEnd::Stopped) => return Ok(()),
            Err(e) => {
                let class = e.class();
                if class == ErrorClass::Fatal {
                    return Err(e);
                }
                if stats.acked > 0 {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                metrics::counter!(crate::metrics::RETRIES, "reason" => class.to_string())
                    .increment(1);
                tracing::warn!(error = %e, %class, retry_in = ?delay, "relay session failed; retrying from the durable checkpoint");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    return Ok(());
                }
            }
        }
    }
}

/// Fail fast on configuration mistakes: connect to PostgreSQL, check the
/// slot and publication, create the producer and ask a broker for metadata.
pub async fn startup_checks(cfg: &Config) -> Result<()> {
    let client = control::connect(cfg, "startup").await.map_err(fatal)?;
    control::preflight(&client, cfg).await?;
    let (publisher, _rx) = Publisher::new(cfg)?;
    let timeout = cfg.postgres.connect_timeout.max(Duration::from_secs(1));
    tokio::task::spawn_blocking(move || publisher.check_reachable(timeout))
        .await
        .map_err(|e| RelayError::Environment(format!("broker check panicked: {e}")))?
        .map_err(|e| RelayError::Environment(format!("{e} (kafka.brokers)")))?;
    Ok(())
}

/// At startup every failure is a configuration problem to report, not a
/// condition to wait out.
fn fatal(e: RelayError) -> RelayError {
    match e.class() {
        ErrorClass::Fatal => e,
        _ => RelayError::Environment(format!("{e} (postgres.url)")),
    }
}
