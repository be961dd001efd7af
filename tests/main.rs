//! The integration suite: one binary, every test against a real PostgreSQL
//! 15 cluster and a real Apache Kafka broker (KRaft) started by the
//! harness in `support/`, with the relay run as the real `outbox-relay`
//! process. Every assertion is on data read back from where it landed: the
//! broker, the tables, the slot.

mod apache_kafka;
mod archive;
mod cli;
mod cloudevents;
mod config_keys;
mod core;
mod dlq;
mod docs;
mod exactly_once;
mod exactly_once_load;
mod exactly_once_status;
mod faults;
mod fixture;
mod ha;
mod janitor;
mod kafka_security;
mod multi_table;
mod observability;
mod odd_data;
mod refusals;
mod relay_toml;
mod replay;
mod security;
mod sql_files;
mod support;
mod table_health;
mod topic_drift;
mod verify;
mod versions;
