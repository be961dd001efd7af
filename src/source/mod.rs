//! PostgreSQL: the SQL control plane ([`control`]) and the logical
//! replication stream ([`stream`]), and the TLS settings both share
//! ([`tls`]).

pub mod control;
pub mod stream;
pub mod tls;
