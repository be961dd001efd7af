//! `sql/` holds the default rendering of the schema the relay's `init`
//! executes; this keeps the two identical. Regenerate with
//! `UPDATE_SQL=1 cargo test sql_files`.

use std::path::Path;

use outbox_relay::config::Config;
use outbox_relay::schema;

#[test]
fn sql_dir_matches_the_rendered_schema() {
    let mut cfg = Config::default();
    cfg.postgres.url = Some("postgres://postgres@localhost/postgres".into());
    cfg.kafka.brokers = Some("localhost:9092".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let steps = schema::init_statements(&cfg)
        .into_iter()
        .chain([schema::slot_statement(&cfg), schema::role_statement(&cfg)]);
    for step in steps {
        let path = dir.join(step.file);
        if std::env::var_os("UPDATE_SQL").is_some() {
            std::fs::write(&path, &step.sql).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            on_disk,
            step.sql,
            "{} is stale: run UPDATE_SQL=1 cargo test sql_files",
            path.display()
        );
    }
}
