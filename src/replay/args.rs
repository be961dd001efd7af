//! What the operator asks for: the selectors of `outbox-relay replay`
//! (`--ids`, `--since`/`--until`, `--status`, `--table`, …) as clap parses
//! them, and the one-row selection `dlq replay` makes. Parsing only: no
//! I/O, so the range syntax is tested here without a database.

use std::str::FromStr;

use crate::config::Config;
use crate::error::{ConfigError, RelayError, Result};

/// `--ids`: an inclusive id range, `A..B`, `A..`, `..B` or `N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// Smallest id, if bounded.
    pub from: Option<i64>,
    /// Largest id, if bounded.
    pub to: Option<i64>,
}

impl FromStr for IdRange {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let num = |p: &str| -> std::result::Result<Option<i64>, String> {
            let p = p.trim();
            if p.is_empty() {
                return Ok(None);
            }
            p.parse()
                .map(Some)
                .map_err(|_| format!("{p:?} is not an id (expected A..B, A.., ..B or N)"))
        };
        let r = match s.split_once("..") {
            Some((a, b)) => IdRange {
                from: num(a)?,
                to: num(b.strip_prefix('=').unwrap_or(b))?,
            },
            None => {
                let n = num(s)?.ok_or("empty id range")?;
                IdRange {
                    from: Some(n),
                    to: Some(n),
                }
            }
        };
        if let (Some(a), Some(b)) = (r.from, r.to) {
            if a > b {
                return Err(format!("empty id range {a}..{b}"));
            }
        }
        Ok(r)
    }
}

/// `--status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum StatusFilter {
    /// Not yet marked published; only rows past the durable checkpoint.
    Pending,
    /// Published and marked.
    Processed,
    /// Dead-lettered.
    Failed,
}

impl StatusFilter {
    pub(super) fn as_sql(self) -> &'static str {
        match self {
            StatusFilter::Pending => "PENDING",
            StatusFilter::Processed => "PROCESSED",
            StatusFilter::Failed => "FAILED",
        }
    }
}

/// `outbox-relay replay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Ids to replay, inclusive: A..B, A.., ..B or N.
    #[arg(long)]
    pub ids: Option<IdRange>,
    /// Rows created at or after this time (any timestamp PostgreSQL accepts, e.g. 2025-01-31T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Rows created before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only rows with this status (PENDING: only rows past the durable checkpoint).
    #[arg(long, value_enum, ignore_case = true)]
    pub status: Option<StatusFilter>,
    /// Send every row to this topic instead of its routed one.
    #[arg(long)]
    pub topic: Option<String>,
    /// Read, decode and route, but send and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Messages per second at most; 0: as fast as acknowledgements allow.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Which outbox table (`schema.table`) with `outbox.tables`; default:
    /// the first entry (the only table otherwise). One table per run: ids
    /// repeat across tables.
    #[arg(long)]
    pub table: Option<String>,
}

impl ReplayArgs {
    /// Arguments selecting exactly one FAILED row (what `dlq replay` does).
    pub fn failed_row(id: i64) -> Self {
        ReplayArgs {
            ids: Some(IdRange {
                from: Some(id),
                to: Some(id),
            }),
            since: None,
            until: None,
            status: Some(StatusFilter::Failed),
            topic: None,
            dry_run: false,
            rate: 0,
            table: None,
        }
    }
}

/// The single-table view `--table` selects (default: the first table).
pub fn select_table(cfg: &Config, table: Option<&str>) -> Result<Config> {
    match table {
        None => Ok(cfg.per_table().swap_remove(0)),
        Some(name) => cfg.table_view(name).ok_or_else(|| {
            RelayError::Config(ConfigError::new(
                "--table",
                format!(
                    "{name} is not an outbox table of this configuration (outbox.table, outbox.tables)"
                ),
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::IdRange;

    #[test]
    fn id_ranges() {
        let r = |s: &str| s.parse::<IdRange>();
        assert_eq!(
            r("5..9"),
            Ok(IdRange {
                from: Some(5),
                to: Some(9)
            })
        );
        assert_eq!(
            r("5..=9"),
            Ok(IdRange {
                from: Some(5),
                to: Some(9)
            })
        );
        assert_eq!(
            r("5.."),
            Ok(IdRange {
                from: Some(5),
                to: None
            })
        );
        assert_eq!(
            r("..9"),
            Ok(IdRange {
                from: None,
                to: Some(9)
            })
        );
        assert_eq!(
            r("7"),
            Ok(IdRange {
                from: Some(7),
                to: Some(7)
            })
        );
        assert!(r("9..5").is_err());
        assert!(r("a..b").is_err());
        assert!(r("").is_err());
    }
}
