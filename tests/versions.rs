//! Two relay releases side by side (issue 12): the previous release and this
//! one, with the same config file, on one slot. The lead passes between them
//! in both directions — by `kill -9` and by SIGTERM — with writers running:
//! nothing lost, commit order per partition, and no partition shows a message
//! of an earlier leader after the first of a later one.
//!
//! The previous release's binary comes from `scripts/build-previous.sh`
//! (a fixed commit of this repository, built once into a cache), passed in
//! `OUTBOX_PREV_RELAY`; `scripts/test.sh` does both. Without it the test
//! fails and says what to run — it never passes silently.
//!
//! The config leaves `[ha]` at the defaults, which differ between the
//! releases (the previous one: lease 1 s, advertised nowhere; this one:
//! 500 ms, advertised in the lock connection's name): the new relay must
//! wait out the old one's longer lease when it takes over from it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fixture::{Env, RelayProc};
use crate::ha::{
    instance_pid, paced_writer, stop_and_check, tail, wait_leader, Seen, HA_DEFAULTS, INSTANCE,
    OWN_PORT, TOPIC,
};

/// The previous release's relay binary, or a failure that says how to build it.
fn previous_release() -> PathBuf {
    let Some(p) = std::env::var_os("OUTBOX_PREV_RELAY").filter(|p| !p.is_empty()) else {
        panic!(
            "OUTBOX_PREV_RELAY is not set: this test runs the previous release beside this one. \
             Build it and pass its path:\n  \
             OUTBOX_PREV_RELAY=$(scripts/build-previous.sh) cargo test --test main versions::\n\
             (scripts/test.sh does this)"
        );
    };
    let p = PathBuf::from(p);
    assert!(
        p.is_file(),
        "OUTBOX_PREV_RELAY={} is not a file: run scripts/build-previous.sh",
        p.display()
    );
    p
}

/// Which release a relay process runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Release {
    Previous,
    Current,
}

struct Relays<'a> {
    env: &'a Env,
    prev: PathBuf,
    procs: Vec<(Release, RelayProc)>,
}

impl Relays<'_> {
    fn spawn(&mut self, r: Release) -> u32 {
        let env = [INSTANCE, OWN_PORT];
        let p = match r {
            Release::Previous => self.env.spawn_relay_of(&self.prev, &env),
            Release::Current => self.env.spawn_relay_with(&env),
        };
        let pid = p.pid().expect("spawned");
        self.procs.push((r, p));
        pid
    }

    fn by_pid(&mut self, pid: u32) -> &mut (Release, RelayProc) {
        self.procs
            .iter_mut()
            .find(|(_, p)| p.pid() == Some(pid))
            .expect("one of ours")
    }
}

/// Wait until a message of the relay `pid` was read; how long since `from`.
async fn first_message_of(seen: &Mutex<Seen>, pid: u32, from: Instant) -> Duration {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let t = seen
            .lock()
            .unwrap()
            .first
            .iter()
            .find(|(i, _)| instance_pid(i) == Some(pid))
            .map(|(_, t)| *t);
        if let Some(t) = t {
            return t.saturating_duration_since(from);
        }
        assert!(
            Instant::now() < end,
            "relay {pid} published nothing within 30s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Old → new and new → old, each by `kill -9` and by SIGTERM, writers running.
#[tokio::test(flavor = "multi_thread")]
async fn previous_and_current_release_hand_over_both_ways() {
    let prev = previous_release();
    let env = Env::start_with(&[TOPIC], HA_DEFAULTS, 1000).await;
    let mut relays = Relays {
        env: &env,
        prev,
        procs: Vec::new(),
    };
    let old = relays.spawn(Release::Previous);
    assert_eq!(wait_leader(&env, None, Duration::from_secs(30)).await, old);
    let new = relays.spawn(Release::Current);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = tail(&env, seen.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(paced_writer(env.url(), w, 500, stop.clone())))
        .collect();
    first_message_of(&seen, old, Instant::now()).await;

    // (leader, successor, how): the successor is the one standby at that moment.
    let mut leader = old;
    let mut standby = new;
    let steps = [
        (Release::Previous, "kill -9"),
        (Release::Current, "kill -9"),
        (Release::Previous, "SIGTERM"),
        (Release::Current, "SIGTERM"),
    ];
    for (from, how) in steps {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (release, proc) = relays.by_pid(leader);
        assert_eq!(*release, from, "leader {leader} runs the expected release");
        let t0 = Instant::now();
        if how == "kill -9" {
            proc.kill9();
        } else {
            let status = proc.terminate(Duration::from_secs(20));
            assert!(
                status.success(),
                "{from:?} relay stops gracefully: {status:?}"
            );
        }
        let took = first_message_of(&seen, standby, t0).await;
        let to = relays.by_pid(standby).0;
        eprintln!(
            "[versions] {how} of the {from:?} leader: the {to:?} standby published after {took:?}"
        );
        assert_ne!(from, to);
        if from == Release::Previous && how == "kill -9" {
            // The new release could not see the old one's lease: it assumed
            // the old default (1 s), longer than its own.
            let log = relays.by_pid(standby).1.log_text();
            assert!(
                log.contains("the previous holder may have had a longer lease"),
                "{log}"
            );
        }
        // The stopped release comes back as the next standby.
        leader = standby;
        standby = relays.spawn(from);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ids, arrival) = stop_and_check(&stop, writers, &seen, reader).await;
    eprintln!(
        "[versions] {} events, {} duplicates over 4 handovers",
        ids.len(),
        arrival.duplicates()
    );
    // Both releases read the one checkpoint row: it moved past every event.
    assert!(env.checkpoint().await.is_some(), "a checkpoint was written");
}

/// A checkpoint row in a format newer than this release reads is refused
/// with an error that names the format and the column, not misread.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_checkpoint_format_is_refused_by_name() {
    let env = Env::start(&[TOPIC]).await;
    let c = env.client().await;
    c.execute(
        "INSERT INTO public.outbox_relay_checkpoint (slot_name, lsn, format) VALUES ('outbox_relay', '0/1', 2) \
         ON CONFLICT (slot_name) DO UPDATE SET format = 2",
        &[],
    )
    .await
    .expect("a format-2 row");
    let mut relay = env.spawn_relay();
    let end = Instant::now() + Duration::from_secs(30);
    while relay.is_running() {
        assert!(
            Instant::now() < end,
            "the relay kept running:\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = relay.log_text();
    assert!(
        log.contains("has format 2") && log.contains("outbox_relay_checkpoint.format"),
        "{log}"
    );
    // Nothing moved: the row is as it was.
    let format: i16 = c
        .query_one("SELECT format FROM public.outbox_relay_checkpoint", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(format, 2);
}
