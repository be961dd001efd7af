//! What each connection is given: the rustls [`ClientConfig`] for the
//! control plane and the equivalent [`TlsConfig`] for the replication
//! stream, both built from one [`PgTarget`] so they cannot disagree.

use std::sync::Arc;

use pgwire_replication::TlsConfig;
use rustls::client::danger::ServerCertVerifier;
use rustls::{ClientConfig, RootCertStore};

use super::certs::{load_certs, load_key};
use super::target::{PgTarget, RootCerts, SslMode};
use super::verify::{ChainOnly, NoVerification};
use super::KEY;
use crate::error::ConfigError;

impl PgTarget {
    /// The rustls configuration for the control plane, or `None` for
    /// `sslmode=disable`. Fails (as a config error) when a certificate file
    /// cannot be read.
    pub fn rustls_config(&self) -> Result<Option<ClientConfig>, ConfigError> {
        if self.ssl_mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new(KEY, format!("TLS setup failed: {e}")))?;
        let roots = self.root_store()?;
        let verifier: Option<Arc<dyn ServerCertVerifier>> = match self.ssl_mode {
            SslMode::VerifyFull => None,
            SslMode::VerifyCa => {
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots.clone()),
                    provider.clone(),
                )
                .build()
                .map_err(|e| ConfigError::new(KEY, format!("TLS setup failed: {e}")))?;
                Some(Arc::new(ChainOnly { inner }))
            }
            _ => Some(Arc::new(NoVerification(provider))),
        };
        let builder = builder.with_root_certificates(roots);
        let mut cfg = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs("sslcert", cert)?, load_key(key)?)
                .map_err(|e| {
                    ConfigError::new(KEY, format!("sslcert/sslkey do not form a pair: {e}"))
                })?,
        };
        if let Some(v) = verifier {
            cfg.dangerous().set_certificate_verifier(v);
        }
        Ok(Some(cfg))
    }

    fn root_store(&self) -> Result<RootCertStore, ConfigError> {
        let mut roots = RootCertStore::empty();
        match &self.root_certs {
            None => {}
            Some(RootCerts::System) => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Some(RootCerts::File(path)) => {
                let (added, _) = roots.add_parsable_certificates(load_certs("sslrootcert", path)?);
                if added == 0 {
                    return Err(ConfigError::new(
                        KEY,
                        format!("sslrootcert {}: no usable CA certificate", path.display()),
                    ));
                }
            }
        }
        Ok(roots)
    }

    /// The equivalent settings for the replication stream to `host`.
    pub fn replication_tls(&self, host: &str) -> TlsConfig {
        let ca = match &self.root_certs {
            Some(RootCerts::File(p)) => Some(p.clone()),
            // pgwire-replication uses webpki-roots when given no file.
            Some(RootCerts::System) | None => None,
        };
        let mut tls = match self.ssl_mode {
            SslMode::Disable => return TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::default()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig::verify_ca(ca),
            SslMode::VerifyFull => TlsConfig::verify_full(ca),
        };
        // pgwire-replication refuses verify-full for an IP literal unless a
        // name is given; rustls then checks the certificate's IP SANs, as
        // libpq does.
        if host.parse::<std::net::IpAddr>().is_ok() {
            tls = tls.with_sni_hostname(host);
        }
        if let Some((c, k)) = &self.client_cert {
            tls = tls.with_client_cert(c.clone(), k.clone());
        }
        tls
    }
}
