//! Which TLS failures are permanent. A certificate the server presents
//! does not change between retries, so the callers (`source::control`,
//! `crate::error`) report these as an environment problem with a one-line
//! reason instead of retrying them forever.
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
