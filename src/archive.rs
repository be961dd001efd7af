//! Archive before prune: with `cleanup.archive-table` set, every row the
//! janitor would delete (PROCESSED and FAILED rows past retention, and
//! published rows with `cleanup.delete-after-publish`) is moved into the
//! archive table instead.
//!
//! Exactly once, crash or not: a move is one statement,
//!
//! ```sql
//! WITH moved AS (DELETE FROM outbox WHERE id IN (<batch>) RETURNING *)
//! INSERT INTO archive (<outbox columns>) SELECT <outbox columns> FROM moved
//! ```
//!
//! so the DELETE and the INSERT commit together or not at all: every
//! snapshot sees a row in exactly one of the two tables, and a pass that
//! dies between (or inside) batches leaves whole batches moved and the rest
//! untouched; the next pass continues. The archive's unique index on the id
//! turns a second copy into an error instead of a duplicate.
//!
//! `init` creates the archive table `LIKE` the outbox (same columns and
//! types, no identity, no CHECK), plus `archived_at` (when the row was
//! moved; `cleanup.archive-retention-days` counts from it), the unique index
//! on the id and an index on `archived_at`. Columns added to the outbox
//! later are added to the archive by the next `init`; a pass refuses to run
//! while the archive lacks one (naming it), rather than drop its values.
//!
//! The archive is not in the publication: moving rows never re-enters the
//! stream (invariant 7).

use tokio_postgres::Client;

use crate::config::Config;
use crate::decode::TableName;
use crate::error::{RelayError, Result};
use crate::schema::Step;

/// Column set in the archive on top of the outbox's.
pub const ARCHIVED_AT: &str = "archived_at";

/// The archive DDL for `init`, when archiving is on.
pub fn ddl_step(cfg: &Config) -> Option<Step> {
    let archive = cfg.archive_table()?;
    let a = format!("{}.{}", archive.schema, archive.name);
    let t = &cfg.outbox.table;
    let id = &cfg.outbox.columns.id;
    let an = &archive.name;
    let outbox = cfg.outbox_table();
    Some(Step {
        file: "006_archive_table.sql",
        sql: format!(
            "-- The archive: the janitor moves rows it would delete here, in the same statement.\n\
             -- Same columns as the outbox (no identity, no checks), plus when the row moved.\n\
             CREATE TABLE IF NOT EXISTS {a} (LIKE {t});\n\
             ALTER TABLE {a} ADD COLUMN IF NOT EXISTS {ARCHIVED_AT} timestamptz NOT NULL DEFAULT now();\n\
             -- Columns added to the outbox since: added here too, so a move never drops a value.\n\
             DO $$\n\
             DECLARE c record;\n\
             BEGIN\n\
             \x20   FOR c IN SELECT o.attname, format_type(o.atttypid, o.atttypmod) AS typ\n\
             \x20            FROM pg_attribute o\n\
             \x20            WHERE o.attrelid = '{t}'::regclass AND o.attnum > 0 AND NOT o.attisdropped\n\
             \x20              AND NOT EXISTS (SELECT 1 FROM pg_attribute x WHERE x.attrelid = '{a}'::regclass\n\
             \x20                              AND x.attname = o.attname AND NOT x.attisdropped)\n\
             \x20   LOOP\n\
             \x20       EXECUTE format('ALTER TABLE {a} ADD COLUMN %I %s', c.attname, c.typ);\n\
             \x20   END LOOP;\n\
             END\n\
             $$;\n\
             -- Each outbox row is archived at most once: a second copy is an error, not a duplicate.\n\
             CREATE UNIQUE INDEX IF NOT EXISTS {an}_{id}_key ON {a} ({id});\n\
             -- Archive retention deletes by age.\n\
             CREATE INDEX IF NOT EXISTS {an}_{ARCHIVED_AT}_idx ON {a} ({ARCHIVED_AT});\n\
             COMMENT ON TABLE {a} IS 'outbox-relay archive of {schema}.{name}';\n",
            schema = outbox.schema,
            name = outbox.name,
        ),
    })
}

/// The outbox's columns (in table order), checked to exist in the archive.
pub async fn columns(
    client: &Client,
    outbox: &TableName,
    archive: &TableName,
) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT o.attname::text, EXISTS (SELECT 1 FROM pg_attribute x \
                 WHERE x.attrelid = format('%I.%I', $3::text, $4::text)::regclass \
                   AND x.attname = o.attname AND NOT x.attisdropped) \
             FROM pg_attribute o \
             WHERE o.attrelid = format('%I.%I', $1::text, $2::text)::regclass \
               AND o.attnum > 0 AND NOT o.attisdropped \
             ORDER BY o.attnum",
            &[&outbox.schema, &outbox.name, &archive.schema, &archive.name],
        )
        .await
        .map_err(|e| {
            RelayError::postgres(
                "reading the columns of the outbox and the archive (cleanup.archive-table; does it exist? `outbox-relay init` creates it)",
                e,
            )
        })?;
    let missing: Vec<String> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    if !missing.is_empty() {
        return Err(RelayError::Environment(format!(
            "archive table {}.{} lacks outbox column(s) {}: run `outbox-relay init` to add them (cleanup.archive-table)",
            archive.schema,
            archive.name,
            missing.join(", ")
        )));
    }
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A statement that removes the rows `select_ids` returns: moved into the
/// archive when `archive_cols` is given, else deleted. `overrides` replace
/// column values in the archived copy (e.g. a published row archived by
/// delete-after-publish is PROCESSED there).
pub fn remove_sql(
    cfg: &Config,
    select_ids: &str,
    archive_cols: Option<&[String]>,
    overrides: &[(&str, &str)],
) -> String {
    let t = &cfg.outbox.table;
    let id = &cfg.outbox.columns.id;
    let delete = format!("DELETE FROM {t} WHERE {id} IN ({select_ids})");
    let (Some(cols), Some(archive)) = (archive_cols, cfg.archive_table()) else {
        return delete;
    };
    let target: Vec<&str> = cols.iter().map(String::as_str).collect();
    let values: Vec<String> = cols
        .iter()
        .map(|c| {
            overrides
                .iter()
                .find(|(name, _)| name == c)
                .map_or_else(|| format!("m.{c}"), |(_, expr)| (*expr).to_string())
        })
        .collect();
    format!(
        "WITH moved AS ({delete} RETURNING *) INSERT INTO {}.{} ({}) SELECT {} FROM moved m",
        archive.schema,
        archive.name,
        target.join(", "),
        values.join(", ")
    )
}

/// Batch statement of archive retention ($1 = days, $2 = batch size).
pub fn retention_sql(cfg: &Config) -> Option<String> {
    let archive = cfg.archive_table()?;
    let a = format!("{}.{}", archive.schema, archive.name);
    let id = &cfg.outbox.columns.id;
    Some(format!(
        "DELETE FROM {a} WHERE {id} IN (SELECT {id} FROM {a} \
         WHERE {ARCHIVED_AT} < now() - make_interval(days => $1::int) \
         ORDER BY {ARCHIVED_AT} LIMIT $2 FOR UPDATE SKIP LOCKED)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(archive: &str) -> Config {
        let mut c = Config::default();
        c.postgres.url = Some("postgres://u@h/db".into());
        c.kafka.brokers = Some("h:1".into());
        c.cleanup.archive_table = archive.into();
        c.validate().unwrap();
        c
    }

    #[test]
    fn delete_without_archive_move_with_it() {
        let sel = "SELECT id FROM public.outbox LIMIT 1";
        let plain = remove_sql(&cfg(""), sel, None, &[]);
        assert_eq!(
            plain,
            format!("DELETE FROM public.outbox WHERE id IN ({sel})")
        );
        let cols = vec!["id".to_string(), "status".to_string()];
        let moved = remove_sql(
            &cfg("arch.outbox_archive"),
            sel,
            Some(&cols),
            &[("status", "'PROCESSED'")],
        );
        assert_eq!(
            moved,
            format!(
                "WITH moved AS (DELETE FROM public.outbox WHERE id IN ({sel}) RETURNING *) \
                 INSERT INTO arch.outbox_archive (id, status) SELECT m.id, 'PROCESSED' FROM moved m"
            )
        );
        assert!(ddl_step(&cfg("")).is_none());
        let ddl = ddl_step(&cfg("arch.outbox_archive")).unwrap().sql;
        assert!(
            ddl.contains("CREATE TABLE IF NOT EXISTS arch.outbox_archive (LIKE public.outbox);")
        );
        assert!(ddl.contains("CREATE UNIQUE INDEX IF NOT EXISTS outbox_archive_id_key"));
        assert!(retention_sql(&cfg("")).is_none());
    }
}
