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
///
/// Besides the session supervisor this runs, until the end of `run`: the
/// `/metrics` `/healthz` `/readyz` endpoint and its broker probe
/// ([`crate::http`]), the heartbeat ([`crate::heartbeat`]), the janitor,
/// the table-health queries ([`crate::table_health`]), the topic drift
/// check ([`crate::topic_drift`]) and the slot monitor
/// ([`crate::slot`]). A lost or missing slot found by the
/// monitor stops the supervisor gracefully and ends `run` with that fatal
/// error. Every task stops on `shutdown` and is awaited (bounded) before
/// `run` returns.
pub async fn run_with_health(
    cfg: Config,
    mut shutdown: watch::Receiver<bool>,
    health: crate::health::SharedHealth,
) -> Result<()> {
    // One internal stop signal for every task: the caller's shutdown, a fatal
    // error of the slot monitor, or the end of `run` (also on early errors).
    let stop_tx = StopOnDrop(watch::channel(false).0);
    let stop = stop_tx.0.subscribe();
    let mut tasks = Vec::new();
    if let Some((_addr, task)) = crate::http::spawn(&cfg, health.clone(), stop.clone()).await? {
        tasks.push(task);
    }
    startup_checks(&cfg).await?;
    health.set_broker_ok(true);
    // A slot that is already lost is reported before any session starts.
    crate::slot::check_now(&cfg).await.map_err(fatal)?;
    tasks.push(tokio::spawn(crate::heartbeat::run(
        cfg.clone(),
        stop.clone(),
    )));
    tasks.push(tokio::spawn(crate::table_health::run_periodic(
        cfg.clone(),
        stop.clone(),
    )));
    tasks.push(tokio::spawn(crate::topic_drift::run_periodic(
        cfg.clone(),
        stop.clone(),
    )));
    if cfg.cleanup.enabled {
        tasks.push(tokio::spawn(crate::janitor::run_periodic(
            cfg.clone(),
            stop.clone(),
        )));
    }
    let mut monitor = Some(tokio::spawn(crate::slot::monitor(
        cfg.clone(),
        stop.clone(),
    )));
    let supervisor = async {
        if cfg.ha.enabled {
            supervise_ha(&cfg, &health, stop.clone()).await
        } else {
            health.set_leader(None);
            supervise(&cfg, &health, stop.clone(), None)
                .await
                .map(|_| ())
        }
    };
    tokio::pin!(supervisor);
    let mut fatal_error = None;
    let mut caller_gone = false;
    if *shutdown.borrow_and_update() {
        stop_tx.stop();
    }
    let result = loop {
        tokio::select! {
            r = &mut supervisor => break r,
            r = async { monitor.as_mut().expect("guarded").await }, if monitor.is_some() => {
                monitor = None;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        fatal_error = Some(e);
                        stop_tx.stop();
                    }
                    Err(e) => tracing::error!(error = %e, "slot monitor panicked; the slot is no longer checked"),
                }
            }
            changed = shutdown.changed(), if !caller_gone => {
                if changed.is_err() {
                    caller_gone = true;
                } else if *shutdown.borrow_and_update() {
                    stop_tx.stop();
                }
            }
        }
    };
    stop_tx.stop();
    // A session that died fatally because the slot is gone (the walsender's
    // "can no longer get changes…") is reported with the slot check's
    // clearer message.
    if matches!(&result, Err(e) if e.class() == ErrorClass::Fatal) && fatal_error.is_none() {
        let recheck = tokio::time::timeout(Duration::from_secs(5), crate::slot::check_now(&cfg));
        if let Ok(Err(e @ RelayError::Environment(_))) = recheck.await {
            fatal_error = Some(e);
        }
    }
    if let Some(m) = monitor {
        tasks.push(tokio::spawn(async move {
            let _ = m.await;
        }));
    }
    let all = futures::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop within 5s");
    }
    match fatal_error {
        Some(e) => Err(e),
        None => result,
    }
}

/// Sends the stop signal when dropped, so no task outlives `run`.
struct StopOnDrop(watch::Sender<bool>);

impl StopOnDrop {
    fn stop(&self) {
        self.0.send_replace(true);
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How [`supervise`] ended without a fatal error.
#[derive(Debug, PartialEq, Eq)]
enum SupervisorEnd {
    /// Shutdown: drained and persisted.
    Stopped,
    /// The leader lease ran out: the session was dropped; stand by again.
    Fenced,
}

/// With `ha.enabled`: stand by until this relay holds the slot's lock, lead
/// (streaming once the grace period passed) until shutdown or the lease runs
/// out, and after a fence stand by again. On shutdown the lock is released right
/// after the drain and the checkpoint, so a standby takes over at once.
async fn supervise_ha(
    cfg: &Config,
    health: &crate::health::SharedHealth,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    crate::leader::start_election();
    loop {
        let Some(lease) = crate::leader::acquire(cfg, health, &mut stop).await? else {
            return Ok(());
        };
        let ended = supervise(cfg, health, stop.clone(), Some(lease.leadership())).await;
        match ended {
            Ok(SupervisorEnd::Fenced) => {
                crate::leader::step_down(health);
                lease.release().await;
            }
            other => {
                lease.release().await;
                health.set_leader(Some(false));
                tracing::info!("released the slot's lock");
                return other.map(|_| ());
            }
        }
    }
}

/// Run sessions, retrying transient failures with backoff, until `shutdown`
/// (Ok) or a fatal error — or, with a leader lease, until it runs out.
async fn supervise(
    cfg: &Config,
    health: &crate::health::SharedHealth,
    mut shutdown: watch::Receiver<bool>,
    leader: Option<crate::leader::Leadership>,
) -> Result<SupervisorEnd> {
    let fence = leader.as_ref().map(|l| l.fence.clone());
    let mut backoff = Backoff::new(cfg.relay.backoff_initial, cfg.relay.backoff_max);
    // Kept across sessions: the permanent-refusal ledger lives here.
    let mut stats = SessionStats::default();
    let fenced = |f: &Option<watch::Receiver<bool>>| f.as_ref().is_some_and(|f| *f.borrow());
    loop {
        let acked_before = stats.acked;
        let outcome =
            relay::run_session(cfg, health, &mut shutdown, &mut stats, leader.clone()).await;
        match outcome {
            Ok(relay::SessionEnd::Stopped) => return Ok(SupervisorEnd::Stopped),
            // Exactly-once: the broker says a newer relay took over our
            // transactional id. Stop for good, even when the lease lapsed too.
            Err(e @ RelayError::ProducerFenced(_)) => return Err(e),
            Err(_) if fenced(&fence) => return Ok(SupervisorEnd::Fenced),
            Err(e) => {
                let class = e.class();
                if class == ErrorClass::Fatal {
                    return Err(e);
                }
                if stats.acked > acked_before {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                metrics::counter!(crate::metrics::RETRIES, "reason" => class.to_string())
                    .increment(1);
                tracing::warn!(error = %e, %class, retry_in = ?delay, "relay session failed; retrying from the durable checkpoint");
                let mut f = fence.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                    _ = async { f.as_mut().expect("guarded").wait_for(|v| *v).await.map(|_| ()) }, if f.is_some() => {}
                }
                if *shutdown.borrow() {
                    return Ok(SupervisorEnd::Stopped);
                }
                if fenced(&fence) {
                    return Ok(SupervisorEnd::Fenced);
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
        .map_err(|e| {
            // Refused credentials or authorization are the properties' fault,
            // anything else (unreachable, TLS) first the address's.
            let key = match e.class() {
                ErrorClass::Fatal => "kafka.properties",
                _ => "kafka.brokers",
            };
            RelayError::Environment(format!("{e} ({key})"))
        })?;
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
