//! PostgreSQL: the SQL control plane ([`control`]) and the logical
//! replication stream ([`stream`]).

pub mod control;
pub mod stream;
