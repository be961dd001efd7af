//! # outbox-relay
//!
//! Makes the transactional outbox pattern real for PostgreSQL and Kafka.
//! Applications insert an outbox row in the same transaction as their
//! business change; the relay tails logical replication (pgoutput, no
//! polling) and publishes every inserted row to Kafka in commit order,
//! persisting its position only after the broker acknowledged.
//!
//! ```text
//!  app tx: INSERT business row + INSERT outbox row ──commit──▶ WAL
//!       │ pgoutput; publication = inserts of the outbox table only
//!       ▼
//!  source (pgwire-replication) ─▶ decode (Relation/Insert → OutboxRecord)
//!       │ commit order
//!       ▼
//!  sink (rdkafka, idempotent, acks=all, pipelined) ─▶ topic, key = aggregate_id
//!       │ delivery reports
//!       ▼
//!  tracker: newest commit with everything before it acked
//!       ─▶ checkpoint table ─▶ slot feedback (confirmed_flush_lsn)
//! ```
//!
//! ## Invariants and where they are kept
//!
//! 1. Checkpoint after ack — [`tracker`].
//! 2. Persist, then confirm; skip commits strictly below the checkpoint's
//!    end LSN — [`relay`] (its `progress` part), [`checkpoint`].
//! 3. Commit order, idempotent producer — [`sink`].
//! 4. Stall, never skip — [`error`] (classes), [`app`] (retry), [`relay`].
//! 5. Idle slots advance — [`relay`] (`progress`).
//! 6. Bounded memory — [`relay`] (in-flight bound in messages and bytes),
//!    [`tracker`].
//! 7. The stream never sees its own housekeeping — [`schema`] (inserts-only
//!    publication).
//! 8. Bad input is named — [`config`], [`decode`], [`error`].
//! 9. Exactly-once: position and data commit together (`kafka.delivery =
//!    "exactly-once"`) — [`relay`] (its `txn` part), [`sink::transactional`],
//!    [`sink::progress_topic`]; [`fault`] crashes it at each dangerous point
//!    in the tests.
//! 10. One producer per slot — [`leader`] (advisory lock, lease, fencing),
//!     [`relay`] (the session is dropped when fenced), [`app`].
//!
//! ## Modules
//! [`config`] · [`cli`] · [`error`] · [`app`] · [`source`] · [`decode`] ·
//! [`sink`] · [`checkpoint`] · [`tracker`] · [`schema`] ·
//! [`emit`] (the Rust helper for applications) · [`backoff`] ·
//! [`dead_letter`] · [`replay`] (`dlq replay`) · [`janitor`].
//!
//! The loop: [`ports`] (stream, sink with its delivery reports, bookkeeping:
//! the contracts, no library types) and [`relay`], a thin driver over
//! `relay::router` (row → topic, pure), `relay::progress` (every LSN
//! position and the confirm rule) and `relay::policy` (refusals: isolation,
//! retry, DLQ or block, as effects), with fakes and fault queues in its
//! tests.
//! Operations: [`http`] (`/metrics`, `/healthz`, `/readyz`) · [`heartbeat`] ·
//! [`slot`] (slot health, fatal when lost) · [`status`] (`outbox-relay status`) ·
//! [`table_health`] (row counts, sizes, oldest unpublished row as metrics) ·
//! [`topic_drift`] (a missing DLQ topic, changed partition counts).
//! Housekeeping and repair: [`janitor`] · [`archive`] (move before prune) ·
//! [`replay`] (`outbox-relay replay`, `dlq replay`) · [`recovery`] (after a
//! lost slot) · [`verify`] (`outbox-relay verify`: the broker compared with the
//! outbox table — missing, duplicated, reordered, foreign messages).
//! Message shapes: [`sink::message`] (raw) and [`sink::cloudevents`]
//! (`kafka.format`).

// The module docs are for the people who work on the relay: they link to the private
// parts that keep each invariant, read with `cargo doc --document-private-items` (CI builds
// them so, warnings denied, so every such link resolves).
#![allow(rustdoc::private_intra_doc_links)]

pub mod app;
pub mod archive;
pub mod backoff;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod emit;
pub mod error;
pub mod fault;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod janitor;
pub mod leader;
pub mod metrics;
pub mod ports;
pub mod recovery;
pub mod relay;
pub mod replay;
pub mod schema;
pub mod sink;
pub mod slot;
pub mod source;
pub mod status;
pub mod table_health;
pub mod topic_drift;
pub mod tracker;
pub mod verify;
