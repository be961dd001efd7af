//! Command line: `init`, `run`, `check-config`, `prune`, `replay`, `dlq replay`,
//! `status`, `verify`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use crate::config::{Config, Overrides};
use crate::error::{RelayError, Result};
use crate::schema;
use crate::source::control;

/// Publishes transactional-outbox rows from PostgreSQL to Kafka, in commit
/// order, checkpointing only after the broker acknowledged.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version)]
pub struct Cli {
    /// TOML configuration file (every key can also come from OUTBOX_RELAY_* variables).
    #[arg(long, short, global = true, env = "OUTBOX_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL connection URL (overrides postgres.url).
    #[arg(
        long,
        global = true,
        env = "OUTBOX_RELAY_POSTGRES_URL",
        hide_env_values = true
    )]
    pub postgres_url: Option<String>,
    /// Kafka bootstrap servers (overrides kafka.brokers).
    #[arg(long, global = true, env = "OUTBOX_RELAY_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "OUTBOX_RELAY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Re-publish a FAILED row (after fixing its cause) and mark it PROCESSED.
    Replay {
        /// The outbox row id.
        #[arg(long)]
        id: i64,
        /// Its outbox table (`schema.table`) with `outbox.tables`; default:
        /// the first entry.
        #[arg(long)]
        table: Option<String>,
    },
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the outbox table, publication, emit function, checkpoint table and slot (idempotent).
    Init {
        /// Print the SQL instead of executing it (for DBAs).
        #[arg(long)]
        print_sql: bool,
    },
    /// Tail the outbox and publish to Kafka until SIGTERM/SIGINT.
    Run,
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Run one janitor pass now (mark published rows, prune by retention) and print what it did.
    Prune {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish a range of outbox rows (by id, creation time, status), in id order, marked as a replay.
    Replay {
        /// Which rows, and how.
        #[command(flatten)]
        args: crate::replay::ReplayArgs,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dead-letter operations.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Show the slot, lag, checkpoint and outbox row counts (reads PostgreSQL only).
    Status {
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Compare the outbox table with what is on the broker: missing, duplicated,
    /// reordered and foreign messages. Exit 1 when a row is missing or out of order.
    Verify(crate::verify::VerifyArgs),
}

impl Cli {
    /// Load the configuration with this command line's overrides.
    pub fn load_config(&self) -> Result<Config> {
        let overrides = Overrides {
            postgres_url: self.postgres_url.clone(),
            kafka_brokers: self.kafka_brokers.clone(),
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

/// Execute the parsed command.
pub async fn execute(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init { print_sql: true } => {
            // Printing needs no connection, so no URL either.
            let cfg = cli.load_config().or_else(|e| match e {
                RelayError::Config(ref c)
                    if c.key == "postgres.url" || c.key == "kafka.brokers" =>
                {
                    lenient_config(&cli)
                }
                other => Err(other),
            })?;
            print!("{}", schema::render_init(&cfg));
            Ok(())
        }
        Command::Init { print_sql: false } => {
            let cfg = cli.load_config()?;
            let client = control::connect(&cfg, "init").await?;
            let report = control::init(&client, &cfg).await?;
            let tables: Vec<String> = cfg
                .per_table()
                .iter()
                .map(|v| v.outbox.table.clone())
                .collect();
            println!(
                "initialised: table {}, publication {}, checkpoint table {}, slot {} ({})",
                tables.join(", "),
                cfg.postgres.publication,
                cfg.outbox.checkpoint_table,
                cfg.postgres.slot,
                if report.slot_created {
                    "created"
                } else {
                    "already existed"
                }
            );
            crate::recovery::explain_init(&client, &cfg, &report).await;
            if cfg.kafka.delivery == crate::config::Delivery::ExactlyOnce {
                crate::sink::progress_topic::ensure(&cfg).await?;
                println!(
                    "exactly-once: progress topic {} (1 partition, compacted) ready",
                    cfg.kafka.progress_topic
                );
            }
            Ok(())
        }
        Command::CheckConfig => {
            let cfg = cli.load_config()?;
            // librdkafka checks property names and values; offline: no
            // client is created, nothing connects.
            crate::sink::kafka_config::validate(&cfg.kafka)?;
            println!(
                "# configuration is valid (secrets masked)\n{}",
                cfg.redacted()
            );
            Ok(())
        }
        Command::Prune { json } => {
            let cfg = cli.load_config()?;
            let client = control::connect(&cfg, "prune").await?;
            let r = crate::janitor::run_pass(&client, &cfg).await?;
            if *json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                let verb = if cfg.cleanup.delete_after_publish {
                    "deleted (published)"
                } else {
                    "marked PROCESSED"
                };
                println!("{verb}: {}", r.marked);
                println!(
                    "pruned PROCESSED (older than {} days): {}",
                    cfg.cleanup.retention_days, r.pruned_processed
                );
                println!(
                    "pruned FAILED (older than {} days): {}",
                    cfg.cleanup.failed_retention_days, r.pruned_failed
                );
                let archives: Vec<String> = cfg
                    .per_table()
                    .iter()
                    .filter_map(|v| v.archive_table().map(|a| a.to_string()))
                    .collect();
                if !archives.is_empty() {
                    println!("moved to archive {}: {}", archives.join(", "), r.archived);
                    println!(
                        "pruned from the archive (older than {} days): {}",
                        cfg.cleanup.archive_retention_days, r.pruned_archive
                    );
                }
                if let Some(n) = r.lost_range_rows {
                    println!(
                        "PENDING rows of a lost slot, left for `replay --status PENDING`: {n}"
                    );
                }
                println!(
                    "durable position: {}",
                    r.durable_lsn.as_deref().unwrap_or("none yet")
                );
                if let Some(w) = &r.waiting_for_lsn {
                    println!(
                        "rows committed since the last pass are marked once the relay passes {w}"
                    );
                }
            }
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::Replay { id, table },
        } => {
            let cfg = cli.load_config()?;
            let client = control::connect(&cfg, "dlq replay").await?;
            let topic = crate::replay::replay(&client, &cfg, *id, table.as_deref()).await?;
            println!("replayed outbox row id={id} to {topic}; marked PROCESSED");
            Ok(())
        }
        Command::Replay { args, json } => {
            let cfg = cli.load_config()?;
            crate::replay::execute(&cfg, args, *json).await
        }
        Command::Status { json } => crate::status::execute(&cli, *json).await,
        Command::Verify(args) => crate::verify::execute(&cli.load_config()?, args).await,
        Command::Run => {
            let cfg = cli.load_config()?;
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                let _ = tx.send(true);
            });
            crate::app::run(cfg, rx).await
        }
    }
}

/// Config for `--print-sql` when connection keys are missing.
fn lenient_config(cli: &Cli) -> Result<Config> {
    let overrides = Overrides {
        postgres_url: Some(
            cli.postgres_url
                .clone()
                .unwrap_or_else(|| "postgres://postgres@localhost/postgres".into()),
        ),
        kafka_brokers: Some(
            cli.kafka_brokers
                .clone()
                .unwrap_or_else(|| "localhost:9092".into()),
        ),
    };
    Ok(Config::load(cli.config.as_deref(), &overrides)?)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
