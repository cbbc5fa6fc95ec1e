//! TLS set-up: the files named by `ETCD_CA_FILE`, `ETCD_CERT_FILE` and `ETCD_KEY_FILE`, read
//! once at start-up (a wrong path stops the function naming the variable); key material is
//! never logged.

use super::*;

/// The TLS files named by `ETCD_CA_FILE`, `ETCD_CERT_FILE` and `ETCD_KEY_FILE` cannot be used.
/// Raised at start-up by [`EtcdMembership::new`].
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file is missing or cannot be read.
    #[error("cannot read {variable}={}: {source}; check that the file exists and that the function can read it", path.display())]
    Unreadable {
        variable: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file holds something other than the PEM it should.
    #[error("{variable}={} holds no PEM {expected}; check that the variable names the right file", path.display())]
    NotPem {
        variable: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    /// The files read but rustls cannot use them (a broken key, a key that is not the
    /// certificate's).
    #[error("the TLS files ({files}) do not form a usable client configuration: {detail}; check that the certificate and the key are PEM and belong together")]
    Unusable { files: String, detail: String },
}

/// The TLS configuration for `https` endpoints. The files are read once and checked to form a
/// usable client configuration; without `ETCD_CA_FILE` the system trust store is used, which
/// honours `SSL_CERT_FILE` and `SSL_CERT_DIR`: how a Lambda adds a private CA without a layer.
pub(super) fn load_tls(files: &TlsFiles) -> Result<TlsOptions, TlsSetupError> {
    let mut tls = match &files.ca {
        Some(ca_path) => {
            let ca = read_pem("ETCD_CA_FILE", ca_path, "CERTIFICATE")?;
            TlsOptions::new().ca_certificate(Certificate::from_pem(ca))
        }
        None => TlsOptions::new().with_native_roots(),
    };
    if !files.enabled() {
        // Nothing the operator gave can be wrong; the system store is read when first dialled.
        return Ok(tls);
    }
    match (&files.cert, &files.key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem("ETCD_CERT_FILE", cert_path, "CERTIFICATE")?;
            let key = read_pem("ETCD_KEY_FILE", key_path, "PRIVATE KEY")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(TlsSetupError::Unusable {
                files: tls_file_list(files),
                detail: "ETCD_CERT_FILE and ETCD_KEY_FILE must be set together".to_string(),
            })
        }
    }
    // Build a connector once (no connection is made) so that a certificate or key rustls cannot
    // use stops start-up instead of failing every call.
    tonic::transport::Endpoint::from_static("https://127.0.0.1:2379")
        .tls_config(tls.clone())
        .map_err(|e| TlsSetupError::Unusable {
            files: tls_file_list(files),
            detail: crate::error_text::with_causes(e.to_string(), std::error::Error::source(&e)),
        })?;
    Ok(tls)
}

pub(super) fn read_pem(
    variable: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<Vec<u8>, TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|source| TlsSetupError::Unreadable {
        variable,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !(text.contains("-----BEGIN ") && text.contains(&format!("{expected}-----"))) {
        return Err(TlsSetupError::NotPem {
            variable,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

pub(super) fn tls_file_list(files: &TlsFiles) -> String {
    [
        ("ETCD_CA_FILE", &files.ca),
        ("ETCD_CERT_FILE", &files.cert),
        ("ETCD_KEY_FILE", &files.key),
    ]
    .iter()
    .filter_map(|(name, path)| path.as_ref().map(|p| format!("{name}={}", p.display())))
    .collect::<Vec<_>>()
    .join(", ")
}
