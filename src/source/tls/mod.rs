//! TLS for both PostgreSQL connections, configured the libpq way: through
//! `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in `postgres.url`.
//!
//! tokio-postgres understands only `sslmode=disable|prefer|require` and
//! rejects `sslrootcert`, so [`PgTarget::parse`] takes the TLS parameters
//! out of the URL (or `key=value` string) first and hands the rest to
//! tokio-postgres. Both connections then use the same decision:
//!
//! | `sslmode`     | TLS            | chain checked against `sslrootcert` | host name checked |
//! |---------------|----------------|-------------------------------------|-------------------|
//! | `disable`     | never          | –                                   | –                 |
//! | `prefer`      | if offered     | no                                  | no                |
//! | `require`     | always         | only if `sslrootcert` is given (as libpq) | no          |
//! | `verify-ca`   | always         | yes                                 | no                |
//! | `verify-full` | always         | yes                                 | yes (DNS name or IP SAN) |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the
//! Mozilla root set (webpki-roots). `verify-ca`/`verify-full` need it: there
//! is no implicit `~/.postgresql/root.crt`. `sslcert` + `sslkey` (PEM) give
//! a client certificate.
//!
//! The control plane (tokio-postgres) uses a rustls connector built here
//! (with `tls-server-end-point` channel binding, so SCRAM-SHA-256-PLUS is
//! used when the server offers it); the replication stream
//! (pgwire-replication) gets the equivalent [`TlsConfig`].
//!
//! Nothing here ever formats the connection string: errors name the
//! parameter and, at most, a file path — never the password.
//!
//! Files: `target` (the URL → [`PgTarget`] and the effective
//! [`SslMode`]), `conninfo` (taking the TLS parameters out of a URL or
//! `key=value` string), `connector` (the rustls and pgwire-replication
//! settings each connection uses), `certs` (reading PEM files),
//! `verify` (the certificate checks of `require`/`prefer` and
//! `verify-ca`) and `problem` (which connect errors are certificate
//! problems no retry fixes).
//!
//! [`TlsConfig`]: pgwire_replication::TlsConfig

mod certs;
mod connector;
mod conninfo;
mod problem;
mod target;
mod verify;

#[cfg(test)]
mod tests;

pub(crate) use conninfo::kv_pairs;
pub use problem::{certificate_problem, is_permanent_stream_tls_error};
pub use target::{PgTarget, RootCerts, SslMode};
/// The config key every error here names.
const KEY: &str = "postgres.url";
