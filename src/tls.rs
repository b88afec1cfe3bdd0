//! TLS for the listening port (`tls_cert` + `tls_key`): rustls with the
//! `ring` provider, driven by futures-rustls over glommio's streams. With
//! TLS on, the port speaks only TLS: wss:// for WebSocket and https:// for
//! every HTTP endpoint, never plain text by accident.

use std::path::Path;
use std::sync::Arc;

use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::{self, ServerConfig};
use futures_rustls::TlsAcceptor;

/// Why the TLS files could not be used; each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read the TLS key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the TLS certificate {cert} and key {key} do not work together: {reason}")]
    Config {
        cert: String,
        key: String,
        reason: String,
    },
}

/// Loads the PEM certificate chain and private key into an acceptor.
pub fn acceptor(cert_path: &str, key_path: &str) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certificates(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(Path::new(key_path)).map_err(|e| TlsError::Key {
        path: key_path.to_string(),
        reason: pem_reason(&e, "PRIVATE KEY"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| TlsError::Config {
            cert: cert_path.to_string(),
            key: key_path.to_string(),
            reason: e.to_string(),
        })?;
    // WebSocket upgrades are HTTP/1.1; offering h2 would break them.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Certificate {
        path: path.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| error(pem_reason(&e, "CERTIFICATE")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(pem_reason(&e, "CERTIFICATE")))?;
    if certs.is_empty() {
        return Err(error("no PEM CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

fn pem_reason(error: &rustls::pki_types::pem::Error, expected: &str) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(e) => e.to_string(),
        Error::NoItemsFound => format!("no PEM {expected} block in the file"),
        other => format!("not valid PEM: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn loads_a_generated_pair_and_names_bad_files() {
        let dir = tempfile::Builder::new()
            .prefix("wsu-tls-")
            .tempdir()
            .unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert_pem = write(&dir, "cert.pem", &cert.cert.pem());
        let key_pem = write(&dir, "key.pem", &cert.key_pair.serialize_pem());
        assert!(acceptor(&cert_pem, &key_pem).is_ok());

        let missing = acceptor("/nonexistent/cert.pem", &key_pem).err().unwrap();
        assert!(
            missing.to_string().contains("/nonexistent/cert.pem"),
            "{missing}"
        );
        let swapped = acceptor(&key_pem, &cert_pem).err().unwrap().to_string();
        assert!(swapped.contains("no PEM CERTIFICATE"), "{swapped}");

        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        let other_key = write(&dir, "other-key.pem", &other.key_pair.serialize_pem());
        let mismatch = acceptor(&cert_pem, &other_key).err().unwrap().to_string();
        assert!(mismatch.contains("do not work together"), "{mismatch}");
    }
}
