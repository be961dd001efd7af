//! Archive before prune (`cleanup.archive-table`): the janitor moves the rows
//! it would delete, in one statement per batch, so every row is in the
//! outbox or the archive exactly once — also when a pass dies part-way.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox_relay::config::{Config, Overrides};
use outbox_relay::janitor::{self, Faults};

use crate::fixture::Env;
use crate::support;

const TOPIC: &str = "outbox.order";
const ARCHIVE: &str = "public.outbox_archive";
const WITH_ARCHIVE: &str = "\n[cleanup]\narchive-table = \"public.outbox_archive\"\n";

fn config(env: &Env) -> Config {
    Config::load(Some(&env.config_path()), &Overrides::default()).expect("env config")
}

fn prune(env: &Env, extra_env: &[(&str, &str)]) -> String {
    let mut cmd = env.relay_command(&["prune"]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "prune failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids in (outbox, archive), and how often each appears across both.
async fn where_are(env: &Env) -> (HashSet<i64>, HashSet<i64>, HashMap<i64, i64>) {
    let c = env.client().await;
    // One statement: one snapshot of both tables.
    let rows = c
        .query(
            &format!("SELECT 'o', id FROM public.outbox UNION ALL SELECT 'a', id FROM {ARCHIVE}"),
            &[],
        )
        .await
        .unwrap();
    let (mut o, mut a, mut n) = (HashSet::new(), HashSet::new(), HashMap::new());
    for r in rows {
        let (t, id): (String, i64) = (r.get(0), r.get(1));
        if t == "o" {
            o.insert(id);
        } else {
            a.insert(id);
        }
        *n.entry(id).or_insert(0) += 1;
    }
    (o, a, n)
}

/// Rows a pass moves before the fault hook aborts it after `k` batches:
/// each phase (PROCESSED, then FAILED) runs batches until one is short.
fn moved_before_abort(phases: [usize; 2], k: u64, batch: usize) -> usize {
    let (mut done, mut moved) = (0, 0);
    for mut rows in phases {
        loop {
            if done == k {
                return moved;
            }
            let n = rows.min(batch);
            rows -= n;
            moved += n;
            done += 1;
            if n < batch {
                break;
            }
        }
    }
    moved
}

fn assert_each_once(all: &HashSet<i64>, n: &HashMap<i64, i64>) {
    let seen: HashSet<i64> = n.keys().copied().collect();
    assert_eq!(&seen, all, "every original id is in outbox ∪ archive");
    let twice: Vec<_> = n.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "ids in both tables or twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_moves_each_row_exactly_once_even_when_a_pass_aborts() {
    let env = Env::start_with(&[TOPIC], WITH_ARCHIVE, 1000).await;
    let c = env.client().await;
    let all: HashSet<i64> = c
        .query(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data, headers) \
             SELECT 'order', 'k' || (g % 3), 'Created', jsonb_build_object('g', g), '{\"h\":\"v\"}' \
             FROM generate_series(1, 60) g RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ids: Vec<i64> = all.iter().copied().collect();
    ids.sort();
    // 40 PROCESSED past the 7-day retention, 10 FAILED past the 30-day one, 10 PENDING.
    let (processed, failed) = (&ids[..40], &ids[40..50]);
    c.execute(
        "UPDATE public.outbox SET status = 'PROCESSED', processed_at = now() - interval '8 days' WHERE id = ANY($1)",
        &[&processed],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE public.outbox SET status = 'FAILED', retry_count = 3, created_at = now() - interval '31 days' WHERE id = ANY($1)",
        &[&failed],
    )
    .await
    .unwrap();
    let before: HashMap<i64, String> = c
        .query("SELECT id, to_jsonb(o)::text FROM public.outbox o", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    // A watcher checks, in single-statement snapshots, that no row is ever
    // in neither table or in both while passes run.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let (url, all, stop) = (env.url(), all.clone(), stop.clone());
        async move {
            let c = support::postgres::connect(&url).await.unwrap();
            let mut checks = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let r = c
                    .query_one(
                        &format!(
                            "SELECT count(*), count(DISTINCT id) FROM \
                             (SELECT id FROM public.outbox UNION ALL SELECT id FROM {ARCHIVE}) u \
                             WHERE id = ANY($1)"
                        ),
                        &[&all.iter().copied().collect::<Vec<i64>>()],
                    )
                    .await
                    .unwrap();
                let (n, distinct): (i64, i64) = (r.get(0), r.get(1));
                assert_eq!(
                    (n, distinct),
                    (60, 60),
                    "a row was in neither or both tables"
                );
                checks += 1;
            }
            checks
        }
    });

    let mut cfg = config(&env);
    cfg.relay.batch_size = 7;
    let client = env.client().await;
    let mut archived_so_far = 0;
    // Batches of 7: PROCESSED 7,7,7 | abort; nothing | abort; 7,7 | abort;
    // then PROCESSED 5, FAILED 7 | abort — the last one inside the second
    // statement of a pass.
    for k in [3u64, 0, 2, 2] {
        let remaining = c
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'PROCESSED'), count(*) FILTER (WHERE status = 'FAILED') FROM public.outbox",
                &[],
            )
            .await
            .unwrap();
        let phases = [
            remaining.get::<_, i64>(0) as usize,
            remaining.get::<_, i64>(1) as usize,
        ];
        let err = janitor::run_pass_with_faults(
            &client,
            &cfg,
            &Faults {
                abort_after_batches: Some(k),
            },
        )
        .await
        .expect_err("the fault hook aborts the pass");
        assert!(err.to_string().contains("fault hook"), "{err}");
        let (outbox, archive, n) = where_are(&env).await;
        assert_each_once(&all, &n);
        // Whole batches moved, the aborted one not at all.
        archived_so_far += moved_before_abort(phases, k, 7);
        assert_eq!(
            archive.len(),
            archived_so_far,
            "after aborting at batch {k}"
        );
        assert_eq!(outbox.len(), 60 - archived_so_far);
    }

    // The rerun finishes the job.
    let out = prune(&env, &[("OUTBOX_RELAY_RELAY_BATCH_SIZE", "7")]);
    assert!(
        out.contains(&format!(
            "moved to archive {ARCHIVE}: {}",
            50 - archived_so_far
        )),
        "{out}"
    );
    stop.store(true, Ordering::SeqCst);
    let checks = watcher.await.unwrap();
    assert!(checks > 0);
    let (outbox, archive, n) = where_are(&env).await;
    assert_each_once(&all, &n);
    assert_eq!(outbox, ids[50..].iter().copied().collect::<HashSet<_>>());
    assert_eq!(archive, ids[..50].iter().copied().collect::<HashSet<_>>());
    // The archived copies are the rows as they were, column for column.
    let archived: HashMap<i64, String> = c
        .query(
            &format!("SELECT id, (to_jsonb(a) - 'archived_at')::text FROM {ARCHIVE} a"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for id in &ids[..50] {
        assert_eq!(archived.get(id), before.get(id), "archived copy of id {id}");
    }

    // Archive retention counts from archived_at.
    c.execute(
        &format!("UPDATE {ARCHIVE} SET archived_at = now() - interval '3 days' WHERE id = ANY($1)"),
        &[&&ids[..5]],
    )
    .await
    .unwrap();
    let out = prune(
        &env,
        &[("OUTBOX_RELAY_CLEANUP_ARCHIVE_RETENTION_DAYS", "2")],
    );
    assert!(
        out.contains("pruned from the archive (older than 2 days): 5"),
        "{out}"
    );
    let (_, archive, _) = where_are(&env).await;
    assert_eq!(archive, ids[5..50].iter().copied().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_after_publish_archives_published_rows_as_processed() {
    let env = Env::start_with(&[TOPIC], WITH_ARCHIVE, 1000).await;
    let flags = [
        ("OUTBOX_RELAY_CLEANUP_DELETE_AFTER_PUBLISH", "true"),
        ("OUTBOX_RELAY_CLEANUP_CLEANUP_INTERVAL", "200ms"),
    ];
    let _relay = env.spawn_relay_with(&flags);
    let ids: HashSet<i64> = env
        .client()
        .await
        .query(
            "INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, event_data) \
             SELECT 'order', 'k' || g, 'Created', '{}' FROM generate_series(1, 40) g RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    env.read_ids(TOPIC, &ids, Duration::from_secs(60)).await;
    support::wait_until_msg(
        "every published row moved to the archive",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let (outbox, archive, _) = where_are(&env).await;
            outbox.is_empty() && archive == ids
        },
    )
    .await;
    let (_, _, n) = where_are(&env).await;
    assert_each_once(&ids, &n);
    let c = env.client().await;
    let r = c
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE status = 'PROCESSED' AND processed_at IS NOT NULL), count(*) FROM {ARCHIVE}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (40, 40),
        "archived as PROCESSED"
    );
}
