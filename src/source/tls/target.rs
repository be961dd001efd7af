//! `postgres.url` → [`PgTarget`]: what tokio-postgres understands plus the
//! TLS settings it does not, with the effective [`SslMode`] decided once
//! (libpq's rules: `prefer` by default, `require` + `sslrootcert` is
//! `verify-ca`) so both connections agree.

use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::SslMode as PgSslMode;

use super::conninfo::{strip_kv_params, strip_url_params, TlsParams};
use super::KEY;
use crate::error::ConfigError;
/// libpq's `sslmode`, the values the relay supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, unverified; else plain.
    Prefer,
    /// TLS, certificate not verified (unless `sslrootcert` is given).
    Require,
    /// TLS, certificate chain verified against `sslrootcert`.
    VerifyCa,
    /// TLS, chain verified and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, ConfigError> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // `allow` is libpq's "plain first": not worth a mode of its own.
            _ => {
                return Err(ConfigError::new(
                    KEY,
                    "sslmode must be disable, prefer, require, verify-ca or verify-full",
                ))
            }
        })
    }

    /// Whether the certificate chain is checked.
    pub fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file (`sslrootcert=/path`).
    File(PathBuf),
    /// The Mozilla root set (`sslrootcert=system`).
    System,
}

/// `postgres.url` split into what tokio-postgres understands and the TLS
/// settings it does not.
#[derive(Clone)]
pub struct PgTarget {
    /// Everything but the TLS parameters, parsed by tokio-postgres; its
    /// `ssl_mode` is the transport-level equivalent of [`PgTarget::ssl_mode`].
    pub config: tokio_postgres::Config,
    /// The effective mode (`require` with `sslrootcert` is `verify-ca`).
    pub ssl_mode: SslMode,
    /// Trusted CAs for the verifying modes.
    pub root_certs: Option<RootCerts>,
    /// Client certificate chain and key (PEM), for certificate auth.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl PgTarget {
    /// Parse a libpq URL (`postgres://…?sslmode=verify-full&sslrootcert=…`)
    /// or `key=value` string. Errors name `postgres.url` and never contain
    /// the string itself.
    pub fn parse(url: &str) -> Result<PgTarget, ConfigError> {
        let mut params = TlsParams::default();
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            strip_url_params(url, &mut params)
        } else {
            strip_kv_params(url, &mut params)?
        };
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            // tokio-postgres names the offending option (in the error's
            // source), never its value.
            let why = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            ConfigError::new(KEY, format!("not a valid connection string ({why})"))
        })?;
        let mut ssl_mode = match params.sslmode.as_deref() {
            // libpq's default.
            None => SslMode::Prefer,
            Some(v) => SslMode::parse(v)?,
        };
        let root_certs = match params.sslrootcert.as_deref() {
            None | Some("") => None,
            Some("system") => Some(RootCerts::System),
            Some(p) => Some(RootCerts::File(PathBuf::from(p))),
        };
        if ssl_mode == SslMode::Require && root_certs.is_some() {
            // As libpq: a root certificate given means it is used.
            ssl_mode = SslMode::VerifyCa;
        }
        if ssl_mode.verifies_chain() && root_certs.is_none() {
            return Err(ConfigError::new(
                KEY,
                "sslmode=verify-ca/verify-full needs sslrootcert=<CA PEM file> (or sslrootcert=system)",
            ));
        }
        let client_cert = match (params.sslcert, params.sslkey) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            _ => {
                return Err(ConfigError::new(
                    KEY,
                    "sslcert and sslkey must be given together",
                ))
            }
        };
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        Ok(PgTarget {
            config,
            ssl_mode,
            root_certs,
            client_cert,
        })
    }
}
