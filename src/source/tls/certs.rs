//! Reading the PEM files `sslrootcert`, `sslcert` and `sslkey` name. The
//! errors name the parameter and the path (never the connection string), so
//! a missing or empty file is a config error that says which one.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::KEY;
use crate::error::ConfigError;
pub(super) fn load_certs(
    param: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
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

pub(super) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ConfigError::new(KEY, format!("sslkey {}: {e}", path.display())))
}
