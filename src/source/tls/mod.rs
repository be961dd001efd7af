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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use pgwire_replication::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;

use crate::error::ConfigError;

/// The config key every error here names.
const KEY: &str = "postgres.url";

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

/// The TLS parameters pulled out of the connection string.
#[derive(Default)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsParams {
    /// Take `key = value` if it is one of ours; false if it is not.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
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

fn load_certs(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError::new(KEY, format!("{param} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            KEY,
            format!("{param} {}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ConfigError::new(KEY, format!("sslkey {}: {e}", path.display())))
}

/// `require`/`prefer`: encryption without authentication of the server, as
/// libpq does for these modes. Signatures are still checked, so the
/// handshake is sound; only the certificate's origin is not.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// If a tokio-postgres connect error is a certificate problem (untrusted
/// CA, wrong host name, expired) or the server refusing TLS, a one-line
/// description: retrying cannot fix it. `None` for anything else (a reset
/// during the handshake is just a network fault).
pub fn certificate_problem(e: &tokio_postgres::Error) -> Option<String> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return rustls_problem(r);
            }
        }
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return rustls_problem(r);
        }
        src = s.source();
    }
    let text = e.to_string();
    text.contains("server does not support TLS")
        .then(|| "the server does not support TLS but sslmode requires it".to_string())
}

fn rustls_problem(e: &rustls::Error) -> Option<String> {
    match e {
        rustls::Error::InvalidCertificate(c) => Some(format!(
            "server certificate rejected: {}",
            certificate_error_text(c)
        )),
        rustls::Error::NoCertificatesPresented => {
            Some("the server presented no certificate".to_string())
        }
        rustls::Error::AlertReceived(a) => {
            Some(format!("the server refused the TLS handshake ({a:?})"))
        }
        _ => None,
    }
}

fn certificate_error_text(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match c {
        C::UnknownIssuer => "not signed by a CA in sslrootcert".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it does not name the host connected to (sslmode=verify-full)".into()
        }
        C::Expired | C::ExpiredContext { .. } => "expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
        other => format!("{other:?}"),
    }
}

/// A replication-stream TLS error (pgwire-replication reports them as text)
/// that no retry can fix: verification failures and local setup errors.
pub fn is_permanent_stream_tls_error(msg: &str) -> bool {
    msg.contains("invalid peer certificate")
        || msg.contains("TLS config error")
        || msg.contains("does not support TLS")
        || msg.contains("invalid SNI hostname")
}

// ---------------------------------------------------------------- parsing

/// Remove our parameters from a URL's query string.
fn strip_url_params(url: &str, params: &mut TlsParams) -> String {
    // tokio-postgres takes credentials up to the first '@', then host and
    // path up to '?': the query begins at the first '?' after that.
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let after_creds = url[scheme_end..]
        .find('@')
        .map(|i| scheme_end + i + 1)
        .unwrap_or(scheme_end);
    let Some(q) = url[after_creds..].find('?').map(|i| after_creds + i) else {
        return url.to_string();
    };
    let kept: Vec<&str> = url[q + 1..]
        .split('&')
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            !params.take(&percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut out = url[..q].to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `key = value` of a libpq key/value string: the key, the unquoted
/// value, and the byte span of the whole pair in the input.
pub(crate) struct KvPair<'a> {
    pub key: &'a str,
    pub value: String,
    pub span: std::ops::Range<usize>,
    /// Span of the value as written (quotes included).
    pub value_span: std::ops::Range<usize>,
}

/// Tokenize a libpq key/value string the way tokio-postgres does (`'…'`
/// quoting, `\` escapes, spaces around `=`). The error never quotes input.
pub(crate) fn kv_pairs(s: &str) -> Result<Vec<KvPair<'_>>, &'static str> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let ws = |c: u8| c.is_ascii_whitespace();
    loop {
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && !ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        if key.is_empty() {
            return Err("a parameter has no name");
        }
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return Err("expected key=value pairs");
        }
        i += 1;
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        let vstart = i;
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                if i == b.len() {
                    return Err("unterminated quoted value");
                }
                match b[i] {
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !ws(b[i]) {
                if b[i] == b'\\' && i + 1 < b.len() {
                    value.push(b[i + 1]);
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
            if value.is_empty() {
                return Err("a parameter has no value");
            }
        }
        out.push(KvPair {
            key,
            value: String::from_utf8_lossy(&value).into_owned(),
            span: start..i,
            value_span: vstart..i,
        });
    }
}

/// Remove our parameters from a key/value string.
fn strip_kv_params(s: &str, params: &mut TlsParams) -> Result<String, ConfigError> {
    let pairs = kv_pairs(s)
        .map_err(|m| ConfigError::new(KEY, format!("not a valid connection string ({m})")))?;
    let mut kept = Vec::new();
    for p in pairs {
        if !params.take(p.key, p.value) {
            kept.push(&s[p.span]);
        }
    }
    Ok(kept.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_params_are_taken_out() {
        let t = PgTarget::parse(
            "postgres://relay:p%40ss?word@db.example.com:5433/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyFull);
        assert_eq!(t.root_certs, Some(RootCerts::File("/etc/ca.pem".into())));
        assert_eq!(t.config.get_password(), Some(&b"p@ss?word"[..]));
        assert_eq!(t.config.get_dbname(), Some("app"));
        assert_eq!(t.config.get_ports(), &[5433]);
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_ssl_mode(), PgSslMode::Require);
    }

    #[test]
    fn kv_tls_params_are_taken_out() {
        let t = PgTarget::parse(
            "host=db user=relay password='a b\\'c' sslmode = verify-ca sslrootcert='/tmp/my ca.pem' dbname=app",
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyCa);
        assert_eq!(t.root_certs, Some(RootCerts::File("/tmp/my ca.pem".into())));
        assert_eq!(t.config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(t.config.get_dbname(), Some("app"));
    }

    #[test]
    fn modes_and_defaults() {
        let p = |u: &str| PgTarget::parse(u).map(|t| t.ssl_mode);
        assert_eq!(p("postgres://u@h/db").unwrap(), SslMode::Prefer);
        assert_eq!(
            p("postgres://u@h/db?sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            p("postgres://u@h/db?sslmode=require").unwrap(),
            SslMode::Require
        );
        assert_eq!(
            p("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap(),
            SslMode::VerifyCa
        );
        assert_eq!(
            p("postgres://u@h/db?sslmode=verify-full&sslrootcert=system").unwrap(),
            SslMode::VerifyFull
        );
        let e = p("postgres://u:secretpw@h/db?sslmode=verify-full").unwrap_err();
        assert!(e.message.contains("sslrootcert"), "{e}");
        let e = p("postgres://u:secretpw@h/db?sslmode=bogus").unwrap_err();
        assert!(!e.to_string().contains("secretpw"));
        let e = p("host=h user=u password=secretpw sslcert=/c").unwrap_err();
        assert!(e.message.contains("sslkey"), "{e}");
        let e = p("host=h user=u password='secretpw").unwrap_err();
        assert!(!e.to_string().contains("secretpw"), "{e}");
    }

    #[test]
    fn stream_tls_follows_the_mode() {
        let t =
            PgTarget::parse("postgres://u@127.0.0.1/db?sslmode=verify-full&sslrootcert=/ca.pem")
                .unwrap();
        let tls = t.replication_tls("127.0.0.1");
        assert_eq!(tls.mode, pgwire_replication::SslMode::VerifyFull);
        assert_eq!(tls.ca_pem_path, Some("/ca.pem".into()));
        assert_eq!(tls.sni_hostname.as_deref(), Some("127.0.0.1"));
        let t = PgTarget::parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(
            t.replication_tls("h").mode,
            pgwire_replication::SslMode::Disable
        );
    }

    #[test]
    fn missing_ca_file_is_a_config_error_naming_the_path() {
        let t = PgTarget::parse(
            "postgres://u:secretpw@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap();
        let e = t.rustls_config().unwrap_err();
        assert_eq!(e.key, "postgres.url");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        assert!(!e.to_string().contains("secretpw"));
    }
}
