//! The SQL objects the relay needs, rendered from the configuration so table
//! and column names can match an existing (e.g. Debezium-style) outbox.
//!
//! `outbox-relay init` executes [`init_statements`]; `init --print-sql`
//! prints [`render_init`] for DBAs. The files in `sql/` are this rendering
//! for the default configuration, kept identical by a test.
//!
//! Invariant 7 starts here: the publication carries `insert` only, so the
//! janitor's UPDATE/DELETE of outbox rows never re-enter the stream.

use crate::config::Config;

/// One named DDL step.
pub struct Step {
    /// File name under `sql/` for the default rendering.
    pub file: &'static str,
    /// Idempotent SQL.
    pub sql: String,
}

/// Everything `init` creates (except the slot), in order.
///
/// With several outbox tables (`outbox.tables`): each table, its emit
/// function and archive as for one table (its schema created if missing),
/// except that the tables `init` creates draw their ids from one shared
/// sequence ([`id_sequence`]); one
/// publication covering all of them (an existing one is extended with the
/// tables it lacks); one checkpoint table.
pub fn init_statements(cfg: &Config) -> Vec<Step> {
    if !cfg.multi_table() {
        return single_table_statements(cfg);
    }
    let seq = id_sequence(cfg);
    let mut steps = vec![Step {
        file: "000_id_sequence.sql",
        sql: format!(
            "-- One id sequence for every outbox table of this relay: a row id names one row\n\
             -- across the tables (the dead-letter bookkeeping marks rows FAILED by id).\n\
             CREATE SEQUENCE IF NOT EXISTS {seq} AS bigint;\n"
        ),
    }];
    let mut checkpoint = None;
    let mut archives = Vec::new();
    for view in cfg.per_table() {
        for step in single_table_statements(&view) {
            match step.file {
                "001_outbox_table.sql" => steps.push(Step {
                    file: step.file,
                    sql: format!(
                        "CREATE SCHEMA IF NOT EXISTS {};\n{}",
                        view.outbox_table().schema,
                        step.sql.replace(
                            "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                            &format!("bigint PRIMARY KEY DEFAULT nextval('{seq}')"),
                        )
                    ),
                }),
                "003_emit_function.sql" => steps.push(step),
                "004_checkpoint_table.sql" => checkpoint = Some(step),
                "002_publication.sql" => {}
                _ => archives.push(step),
            }
        }
    }
    steps.push(publication_step(cfg));
    steps.extend(checkpoint);
    steps.extend(archives);
    steps
}

/// The shared id sequence of a multi-table relay's outbox tables:
/// `<checkpoint schema>.<publication>_id_seq`.
pub fn id_sequence(cfg: &Config) -> String {
    format!(
        "{}.{}_id_seq",
        cfg.checkpoint_table().schema,
        cfg.postgres.publication
    )
}

/// The publication of every outbox table: created with all of them, or an
/// existing one extended with those it lacks (inserts only either way).
fn publication_step(cfg: &Config) -> Step {
    let pubname = &cfg.postgres.publication;
    let views = cfg.per_table();
    let all: Vec<&str> = views.iter().map(|v| v.outbox.table.as_str()).collect();
    let mut add = String::new();
    for v in &views {
        let t = v.outbox_table();
        add.push_str(&format!(
            "\x20   IF NOT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = '{pubname}' \
             AND schemaname = '{s}' AND tablename = '{n}') THEN\n\
             \x20       ALTER PUBLICATION {pubname} ADD TABLE {s}.{n};\n\
             \x20   END IF;\n",
            s = t.schema,
            n = t.name
        ));
    }
    Step {
        file: "002_publication.sql",
        sql: format!(
            "-- Inserts only: the janitor's UPDATE and DELETE never enter the stream.\n\
             -- One publication for every outbox table: one slot, one commit order.\n\
             DO $$\n\
             BEGIN\n\
             \x20   IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '{pubname}') THEN\n\
             \x20       CREATE PUBLICATION {pubname} FOR TABLE {tables} WITH (publish = 'insert');\n\
             \x20   END IF;\n\
             {add}\
             END\n\
             $$;\n",
            tables = all.join(", ")
        ),
    }
}

/// [`init_statements`] for one table (or one view of `outbox.tables`).
fn single_table_statements(cfg: &Config) -> Vec<Step> {
    let t = &cfg.outbox.table;
    let c = &cfg.outbox.columns;
    let ckpt = &cfg.outbox.checkpoint_table;
    let pubname = &cfg.postgres.publication;
    let func = &cfg.outbox.emit_function;
    let tname = cfg.outbox_table();
    let idx = format!("{}_{}_{}_idx", tname.name, c.status, c.created_at);
    let headers_col = if c.headers.is_empty() {
        String::new()
    } else {
        format!("    {} jsonb,\n", c.headers)
    };
    let txid_col = if c.txid.is_empty() {
        String::new()
    } else {
        format!(
            "    -- inserting transaction: lets the janitor mark exactly the rows the checkpoint covers\n    {} xid8 NOT NULL DEFAULT pg_current_xact_id(),\n",
            c.txid
        )
    };
    let topic_col = if c.topic.is_empty() {
        String::new()
    } else {
        format!("    {} text,\n", c.topic)
    };
    let table = format!(
        "-- The outbox: applications insert one row per event in the same transaction\n\
         -- as their business change. The relay only ever reads inserts of it.\n\
         CREATE TABLE IF NOT EXISTS {t} (\n\
         \x20   {id} bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n\
         \x20   {at} text NOT NULL,\n\
         \x20   {aid} text NOT NULL,\n\
         \x20   {et} text NOT NULL,\n\
         \x20   {pl} jsonb NOT NULL,\n\
         {headers_col}{topic_col}\
         \x20   {ca} timestamptz NOT NULL DEFAULT now(),\n\
         \x20   {pa} timestamptz,\n\
         \x20   {st} text NOT NULL DEFAULT 'PENDING' CHECK ({st} IN ('PENDING', 'PROCESSED', 'FAILED')),\n\
         \x20   {rc} integer NOT NULL DEFAULT 0,\n\
         {txid_col}\
         \x20   {ver} integer NOT NULL DEFAULT 1\n\
         );\n\
         -- The janitor finds rows by status and age.\n\
         CREATE INDEX IF NOT EXISTS {idx} ON {t} ({st}, {ca});\n",
        id = c.id,
        at = c.aggregate_type,
        aid = c.aggregate_id,
        et = c.event_type,
        pl = c.payload,
        ca = c.created_at,
        pa = c.processed_at,
        st = c.status,
        rc = c.retry_count,
        ver = c.version,
    );
    let publication = format!(
        "-- Inserts only: the janitor's UPDATE and DELETE never enter the stream.\n\
         DO $$\n\
         BEGIN\n\
         \x20   IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = '{pubname}') THEN\n\
         \x20       CREATE PUBLICATION {pubname} FOR TABLE {t} WITH (publish = 'insert');\n\
         \x20   END IF;\n\
         END\n\
         $$;\n"
    );
    let (hp, tp, hv, tv) = (
        if c.headers.is_empty() {
            ""
        } else {
            ",\n    p_headers jsonb DEFAULT NULL"
        },
        if c.topic.is_empty() {
            ""
        } else {
            ",\n    p_topic text DEFAULT NULL"
        },
        if c.headers.is_empty() {
            String::new()
        } else {
            format!(", {}", c.headers)
        },
        if c.topic.is_empty() {
            String::new()
        } else {
            format!(", {}", c.topic)
        },
    );
    let (hvv, tvv) = (
        if c.headers.is_empty() {
            ""
        } else {
            ", p_headers"
        },
        if c.topic.is_empty() { "" } else { ", p_topic" },
    );
    let function = format!(
        "-- Emit one event from SQL, inside the caller's transaction; returns the row id.\n\
         CREATE OR REPLACE FUNCTION {func}(\n\
         \x20   p_aggregate_type text,\n\
         \x20   p_aggregate_id text,\n\
         \x20   p_event_type text,\n\
         \x20   p_event_data jsonb{hp}{tp}\n\
         ) RETURNS bigint\n\
         LANGUAGE sql\n\
         AS $$\n\
         \x20   INSERT INTO {t} ({at}, {aid}, {et}, {pl}{hv}{tv})\n\
         \x20   VALUES (p_aggregate_type, p_aggregate_id, p_event_type, p_event_data{hvv}{tvv})\n\
         \x20   RETURNING {id};\n\
         $$;\n",
        id = c.id,
        at = c.aggregate_type,
        aid = c.aggregate_id,
        et = c.event_type,
        pl = c.payload,
    );
    let checkpoint = format!(
        "-- The relay's durable position per slot: written only after broker acks,\n\
         -- never moved backwards (the relay's upsert guards on lsn). The janitor keeps\n\
         -- the snapshot it will mark rows by next; a blocked row is recorded for `status`.\n\
         CREATE TABLE IF NOT EXISTS {ckpt} (\n\
         \x20   slot_name text PRIMARY KEY,\n\
         \x20   lsn pg_lsn NOT NULL,\n\
         \x20   updated_at timestamptz NOT NULL DEFAULT now()\n\
         );\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS janitor_snapshot pg_snapshot;\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS janitor_lsn pg_lsn;\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS blocked_row_id bigint;\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS blocked_reason text;\n\
         -- After a lost slot, `init` records the range of rows the stream will never deliver\n\
         -- (see `outbox-relay replay --status PENDING`).\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS recovery_started_at timestamptz;\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS recovery_snapshot pg_snapshot;\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS recovery_base pg_snapshot;\n\
         -- What the row means, versioned (README \"Compatibility\"): a relay reads every format up to\n\
         -- its own and refuses a newer one by name. Rows of releases before the column are format 1.\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS format smallint NOT NULL DEFAULT 1;\n\
         -- Partition counts of the topics the relay writes, as first seen, and the drift\n\
         -- found since (see `kafka.topic-check-interval`).\n\
         ALTER TABLE {ckpt} ADD COLUMN IF NOT EXISTS topic_check jsonb;\n"
    );
    let mut steps = vec![
        Step {
            file: "001_outbox_table.sql",
            sql: table,
        },
        Step {
            file: "002_publication.sql",
            sql: publication,
        },
        Step {
            file: "003_emit_function.sql",
            sql: function,
        },
        Step {
            file: "004_checkpoint_table.sql",
            sql: checkpoint,
        },
    ];
    steps.extend(crate::archive::ddl_step(cfg));
    steps
}

/// The slot step, shown by `--print-sql` (init runs it only if the slot is
/// missing, outside any transaction).
pub fn slot_statement(cfg: &Config) -> Step {
    let slot = &cfg.postgres.slot;
    Step {
        file: "005_replication_slot.sql",
        sql: format!(
            "-- Logical slot with the pgoutput plugin; creating it marks where the relay starts.\n\
             SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')\n\
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{slot}');\n"
        ),
    }
}

/// A least-privilege role for running the relay (not executed by `init`:
/// a DBA runs it with psql, `-v relay_password=...`).
pub fn role_statement(cfg: &Config) -> Step {
    let ckpt = &cfg.outbox.checkpoint_table;
    let cname = cfg.checkpoint_table();
    let views = cfg.per_table();
    let mut schemas: Vec<String> = Vec::new();
    let mut add_schema = |s: &str| {
        if !schemas.iter().any(|x| x == s) {
            schemas.push(s.to_string());
        }
    };
    for v in &views {
        add_schema(&v.outbox_table().schema);
    }
    add_schema(&cname.schema);
    let archives: Vec<_> = views.iter().filter_map(Config::archive_table).collect();
    for a in &archives {
        add_schema(&a.schema);
    }
    let tables: String = views
        .iter()
        .map(|v| {
            format!(
                "GRANT SELECT, UPDATE, DELETE ON {} TO outbox_relay;\n",
                v.outbox.table
            )
        })
        .collect();
    // The janitor moves rows into the archive and prunes it.
    let archive: String = archives
        .iter()
        .map(|a| {
            format!(
                "GRANT SELECT, INSERT, DELETE ON {}.{} TO outbox_relay;\n",
                a.schema, a.name
            )
        })
        .collect();
    let usage: String = schemas
        .iter()
        .map(|s| format!("GRANT USAGE ON SCHEMA {s} TO outbox_relay;\n"))
        .collect();
    Step {
        file: "900_relay_role.sql",
        sql: format!(
            "-- Least privilege for the relay: REPLICATION to stream, the outbox for the\n\
             -- janitor (read, mark, prune), its own checkpoint table, nothing else.\n\
             -- Run as a superuser: psql -v relay_password='...' -f 900_relay_role.sql\n\
             SELECT format('CREATE ROLE outbox_relay WITH LOGIN REPLICATION PASSWORD %L', :'relay_password')\n\
             WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outbox_relay')\\gexec\n\
             {usage}\
             {tables}\
             GRANT SELECT, INSERT, UPDATE ON {ckpt} TO outbox_relay;\n{archive}"
        ),
    }
}

/// Everything, as one script.
pub fn render_init(cfg: &Config) -> String {
    let mut out = String::new();
    for s in init_statements(cfg)
        .into_iter()
        .chain([slot_statement(cfg)])
    {
        out.push_str(&format!("-- {}\n{}\n", s.file, s.sql));
    }
    out
}
