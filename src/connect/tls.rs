//! TLS (feature `tls`): `rediss://` connections through rustls, checking the server against the
//! CA file of [`Config::tls_ca_file`] or else Mozilla's roots built in, with the client
//! certificate of [`Config::tls_client_cert`] when one is given.

use crate::config::invalid;
use crate::{Config, Error};

/// A client for a `rediss://` URL whose settings are `info`.
pub(super) fn client(
    config: &Config,
    info: redis::ConnectionInfo,
) -> redis::RedisResult<redis::Client> {
    // redis-rs asks rustls for the process's default crypto provider, which rustls picks by
    // itself only when exactly one is compiled in; a host may bring another. Install ours
    // unless the host installed one first (then this does nothing).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certificates = certificates(config).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "tls", e.to_string()))
    })?;
    redis::Client::build_with_tls(info, certificates)
}

/// The CA and client certificate to connect with, read from their files and checked (the
/// error names the field). Certificates the files hold are public, but the key is not: no
/// error quotes file contents.
pub(crate) fn certificates(config: &Config) -> Result<redis::TlsCertificates, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = |field: &str, path: &std::path::Path| -> Result<Vec<u8>, Error> {
        let pem = read_pem(field, path)?;
        let n = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                invalid(
                    field,
                    format!("{}: not PEM certificates: {e}", path.display()),
                )
            })?
            .len();
        if n == 0 {
            return Err(invalid(
                field,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        Ok(pem)
    };
    let root_cert = match &config.tls_ca_file {
        Some(path) => Some(certs("tls_ca_file", path)?),
        None => None,
    };
    let client_tls = match &config.tls_client_cert {
        Some((cert_path, key_path)) => {
            let client_cert = certs("tls_client_cert", cert_path)?;
            let client_key = read_pem("tls_client_cert", key_path)?;
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|_| {
                invalid(
                    "tls_client_cert",
                    format!("{} holds no PEM private key", key_path.display()),
                )
            })?;
            Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        None => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The contents of a PEM file named by `field`.
fn read_pem(field: &str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())).with_source(e))
}
