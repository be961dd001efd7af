//! Write a seed corpus for the `pgoutput` target from the decode fixtures:
//! `cargo run --example seed_corpus` (in `fuzz/`), then
//! `cargo fuzz run pgoutput`. The corpus is not committed.

use std::path::PathBuf;

use outbox_relay::decode::fixtures;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/pgoutput");
    std::fs::create_dir_all(&dir)?;
    let outbox = fixtures::outbox_relation(16400);
    let mut other = fixtures::outbox_relation(16401);
    other.name = "orders".into();
    let mut catalog = other.clone();
    catalog.namespace = String::new();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("relation-outbox", fixtures::relation_message(&outbox)),
        ("relation-other", fixtures::relation_message(&other)),
        ("relation-pg-catalog", fixtures::relation_message(&catalog)),
        (
            "insert-minimal",
            fixtures::outbox_insert_message(16400, 1, None, None),
        ),
        (
            "insert-headers-topic",
            fixtures::outbox_insert_message(
                16400,
                42,
                Some(r#"{"a": "b", "n": 1, "o": {"x": [true, null]}, "z": null}"#),
                Some("orders.v1"),
            ),
        ),
        (
            "insert-bad-headers",
            fixtures::outbox_insert_message(16400, 2, Some("[1]"), Some("")),
        ),
        (
            "insert-nulls",
            fixtures::insert_message(16400, &[None, Some(b"x"), None]),
        ),
        ("type", fixtures::type_message(16500, "public", "mood")),
        ("origin", fixtures::origin_message(1 << 32, "node_a")),
        ("begin", vec![b'B', 0, 0, 0, 0, 0, 0, 0, 1]),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    println!("wrote seeds to {}", dir.display());
    Ok(())
}
