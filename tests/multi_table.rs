//! Several outbox tables in one relay (`[[outbox.tables]]`): two tables in
//! different schemas, writers interleaving rows of both inside the same
//! transactions. Every row arrives exactly once on its own table's topic
//! (each table has its own template), in commit order across both (rows of
//! one transaction carry one commit LSN, whichever table they came from),
//! and the janitor marks the rows of both tables.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::fixture::{Arrival, Env, DLQ_TOPIC};
use crate::support::{self, kafka};

const ORDERS: &str = "outbox.order";
const INVOICES: &str = "billing.invoice";

/// Replace the env's single-table setup with two tables: `public.outbox`
/// (the shared template) and `billing.outbox` (a template of its own).
async fn two_tables(env: &mut Env) {
    let c = env.client().await;
    c.batch_execute(
        "SELECT pg_drop_replication_slot('outbox_relay'); \
         DROP PUBLICATION outbox_relay_pub; DROP TABLE public.outbox;",
    )
    .await
    .unwrap();
    env.extra_toml = format!(
        "\n[cleanup]\ncleanup-interval = \"300ms\"\n\
         [[outbox.tables]]\ntable = \"public.outbox\"\n\
         [[outbox.tables]]\ntable = \"billing.outbox\"\ntopic-template = \"{p}billing.{{aggregate_type}}\"\n",
        p = env.prefix
    );
    env.write_config();
    let out = env.relay_command(&["init"]).output().unwrap();
    assert!(out.status.success(), "init: {out:?}");
    kafka::create_topic(&env.bootstrap(), &env.topic(INVOICES), 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tables_interleaved_in_transactions_keep_one_commit_order() {
    let mut env = Env::start(&[ORDERS]).await;
    two_tables(&mut env).await;
    let _relay = env.spawn_relay();

    // 4 writers x 20 transactions, each inserting 1-3 rows into each table,
    // alternating between them.
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = env.client().await;
        writers.push(tokio::spawn(async move {
            let mut rows: Vec<(i64, &'static str, i64)> = Vec::new();
            for t in 0..20 {
                let tx = c.transaction().await.unwrap();
                let txid: i64 = tx
                    .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
                    .await
                    .unwrap()
                    .get(0);
                for i in 0..(1 + (w + t) % 3) {
                    for (table, agg) in [("public", "order"), ("billing", "invoice")] {
                        let id: i64 = tx
                            .query_one(
                                &format!(
                                    "SELECT {table}.outbox_emit($1, $2, 'Created', '{{}}'::jsonb)"
                                ),
                                &[&agg, &format!("k{}", (w + i) % 5)],
                            )
                            .await
                            .unwrap()
                            .get(0);
                        rows.push((id, table, txid));
                    }
                }
                tx.commit().await.unwrap();
            }
            rows
        }));
    }
    let mut rows = Vec::new();
    for w in writers {
        rows.extend(w.await.unwrap());
    }
    let ids_of = |table: &str| -> HashSet<i64> {
        rows.iter().filter(|r| r.1 == table).map(|r| r.0).collect()
    };
    let (orders, invoices) = (ids_of("public"), ids_of("billing"));
    assert!(
        orders.is_disjoint(&invoices),
        "one id sequence for both tables"
    );

    let got_orders = env.read_ids(ORDERS, &orders, Duration::from_secs(90)).await;
    let got_invoices = env
        .read_ids(INVOICES, &invoices, Duration::from_secs(90))
        .await;
    // Exactly once, each on its own table's topic.
    for (got, want) in [(&got_orders, &orders), (&got_invoices, &invoices)] {
        let a = Arrival::of(got);
        a.assert_complete(want);
        assert_eq!(a.duplicates(), 0, "no duplicates without a fault");
        a.assert_commit_order();
    }
    // One commit order across both: every row of a transaction, from either
    // table, carries that transaction's commit LSN, and different
    // transactions have different ones.
    let lsn_of: HashMap<i64, String> = got_orders
        .iter()
        .chain(&got_invoices)
        .map(|m| {
            (
                m.header_str("id").unwrap().parse().unwrap(),
                m.header_str("lsn").unwrap(),
            )
        })
        .collect();
    let mut by_txn: HashMap<i64, HashSet<&String>> = HashMap::new();
    for (id, _, txid) in &rows {
        by_txn.entry(*txid).or_default().insert(&lsn_of[id]);
    }
    let mut seen_lsns = HashSet::new();
    for (txid, lsns) in &by_txn {
        assert_eq!(lsns.len(), 1, "transaction {txid} has rows at {lsns:?}");
        assert!(
            seen_lsns.insert(*lsns.iter().next().unwrap()),
            "two transactions share a commit LSN"
        );
    }

    // The janitor marks the rows of both tables.
    let c = env.client().await;
    support::wait_until_msg(
        "every row of both tables PROCESSED",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let n: i64 = c
                .query_one(
                    "SELECT (SELECT count(*) FROM public.outbox WHERE status <> 'PROCESSED') \
                          + (SELECT count(*) FROM billing.outbox WHERE status <> 'PROCESSED')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n == 0
        },
    )
    .await;

    // A bad row of the second table (an illegal topic name) is dead-lettered,
    // named by table and id, and marked FAILED in its own table only.
    let bad: i64 = c
        .query_one(
            "SELECT billing.outbox_emit('invoice', 'k0', 'Created', '{}'::jsonb, NULL, 'bad topic!')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let dlq = env.read(DLQ_TOPIC, 1, Duration::from_secs(60)).await;
    let msg = dlq
        .iter()
        .find(|m| m.header_str("id") == Some(bad.to_string()))
        .expect("the bad row on the DLQ");
    let why = msg.header_str("dlq.error.message").unwrap();
    assert!(why.contains(&format!("billing.outbox id={bad}")), "{why}");
    support::wait_until_msg(
        "the bad row FAILED in billing.outbox",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let s: String = c
                .query_one("SELECT status FROM billing.outbox WHERE id = $1", &[&bad])
                .await
                .unwrap()
                .get(0);
            s == "FAILED"
        },
    )
    .await;
    let failed: i64 = c
        .query_one(
            "SELECT count(*) FROM public.outbox WHERE status = 'FAILED'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0, "no row of the other table marked FAILED");

    // status counts per table.
    let out = env.relay_command(&["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tables = v["tables"].as_array().expect("tables in status");
    assert_eq!(tables.len(), 2, "{v}");
    assert_eq!(tables[1]["table"], "billing.outbox");
    assert_eq!(
        tables[1]["rows"]["processed"].as_i64(),
        Some(invoices.len() as i64)
    );
    assert_eq!(v["rows"]["processed"].as_i64(), Some(rows.len() as i64));
    assert_eq!(v["rows"]["failed"].as_i64(), Some(1));

    // replay --table picks the table: a billing id replayed (dry run) is found there.
    let id = *invoices.iter().min().unwrap();
    let out = env
        .relay_command(&[
            "replay",
            "--table",
            "billing.outbox",
            "--ids",
            &id.to_string(),
            "--dry-run",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["selected"], 1, "{s}");
}
