//! TLS for the login processes: a rustls server configuration from `ssl_cert`/`ssl_key`, and the
//! self-signed certificate the embedded default creates on first start.
//!
//! Dovecot writes certificate settings as `<path` values (read the file); roost accepts that
//! and a plain path alike. Every failure names the file it concerns, so an operator sees
//! which of the two settings is wrong. The key is written with mode 0600 from the first byte
//! (created under a temporary name with that mode, then renamed over the target).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{setting}: can't read {file}: {source}")]
    Read {
        /// `ssl_cert` or `ssl_key`.
        setting: &'static str,
        /// The file.
        file: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM item of the needed kind (or bad PEM).
    #[error("{setting}: {file}: {reason}")]
    Pem {
        /// `ssl_cert` or `ssl_key`.
        setting: &'static str,
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("ssl_cert {cert} / ssl_key {key}: {reason}")]
    Rejected {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("self-signed certificate: {0}")]
    Generate(String),
    /// A generated file could not be written.
    #[error("can't write {file}: {source}")]
    Write {
        /// The file.
        file: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The path of a certificate setting: `<path` (Dovecot's "read this file") or a plain path.
pub fn setting_path(value: &str) -> &Path {
    Path::new(value.trim().strip_prefix('<').unwrap_or(value.trim()))
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        setting,
        file: path.display().to_string(),
        source,
    })
}

/// Builds the server configuration from the `ssl_cert` and `ssl_key` setting values.
pub fn server_config(ssl_cert: &str, ssl_key: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_path = setting_path(ssl_cert);
    let key_path = setting_path(ssl_key);
    let cert_pem = read("ssl_cert", cert_path)?;
    let key_pem = read("ssl_key", key_path)?;
    let pem_error = |setting, path: &Path, reason: String| TlsError::Pem {
        setting,
        file: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error("ssl_cert", cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            "ssl_cert",
            cert_path,
            "no certificate found".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error("ssl_key", key_path, format!("no private key found ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rejected = |e: rustls::Error| TlsError::Rejected {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
        reason: e.to_string(),
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rejected)?;
    Ok(Arc::new(config))
}

/// Where [`generate_self_signed`] put its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCert {
    /// The certificate PEM.
    pub cert: PathBuf,
    /// The private key PEM (mode 0600).
    pub key: PathBuf,
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        file: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A stale temporary file from a crash may have any mode: start from scratch.
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// Creates a self-signed certificate for `names` (DNS names or IP addresses) and writes the
/// certificate (0644) and key (0600) as PEM.
pub fn generate_self_signed(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<GeneratedCert, TlsError> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_file(
        key_path,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    Ok(GeneratedCert {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
    })
}

/// The embedded default's certificate: the existing pair when both files exist, else a new
/// self-signed one for `names`.
pub fn ensure_self_signed(
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<GeneratedCert, TlsError> {
    if cert_path.is_file() && key_path.is_file() {
        return Ok(GeneratedCert {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    generate_self_signed(cert_path, key_path, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn generated(dir: &Path) -> GeneratedCert {
        generate_self_signed(
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
        )
        .expect("generation works")
    }

    /// Moves TLS records from one side to the other until neither has anything to send.
    fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        for _ in 0..20 {
            let mut moved = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).expect("memory write");
            }
            if !buf.is_empty() {
                moved = true;
                server.read_tls(&mut &buf[..]).expect("memory read");
                server
                    .process_new_packets()
                    .expect("server accepts client records");
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).expect("memory write");
            }
            if !buf.is_empty() {
                moved = true;
                client.read_tls(&mut &buf[..]).expect("memory read");
                client
                    .process_new_packets()
                    .expect("client accepts server records");
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn in_memory_handshake_with_a_generated_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = generated(dir.path());
        let server_config = server_config(
            &format!("<{}", files.cert.display()),
            &files.key.display().to_string(),
        )
        .expect("valid pair");

        let mut roots = rustls::RootCertStore::empty();
        let pem = fs::read(&files.cert).expect("cert written");
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("valid pem")).expect("valid cert");
        }
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the defaults")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("valid name");
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), name).expect("client");
        let mut server = rustls::ServerConnection::new(server_config).expect("server");
        pump(&mut client, &mut server);
        assert!(!client.is_handshaking() && !server.is_handshaking());

        client
            .writer()
            .write_all(b"CAPA\r\n")
            .expect("plaintext in");
        pump(&mut client, &mut server);
        let mut got = [0u8; 6];
        server.reader().read_exact(&mut got).expect("plaintext out");
        assert_eq!(&got, b"CAPA\r\n");
    }

    #[test]
    fn the_key_is_written_with_mode_0600() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = generated(dir.path());
        let mode = fs::metadata(&files.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Regenerating over an existing pair works and keeps the mode.
        let files = generated(dir.path());
        let mode = fs::metadata(&files.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn errors_name_the_file_and_setting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = generated(dir.path());
        let missing = dir.path().join("nope.pem");
        let err = server_config(&format!("<{}", missing.display()), "<x").expect_err("missing");
        assert!(err
            .to_string()
            .starts_with(&format!("ssl_cert: can't read {}", missing.display())));

        let err = server_config(
            &files.key.display().to_string(),
            &files.key.display().to_string(),
        )
        .expect_err("a key is not a certificate");
        assert!(err.to_string().contains("ssl_cert"), "{err}");

        let err = server_config(
            &files.cert.display().to_string(),
            &files.cert.display().to_string(),
        )
        .expect_err("a certificate is not a key");
        assert!(err.to_string().starts_with("ssl_key: "), "{err}");

        // A key that does not match the certificate.
        let other = tempfile::tempdir().expect("temp dir");
        let other = generated(other.path());
        let err = server_config(
            &files.cert.display().to_string(),
            &other.key.display().to_string(),
        )
        .expect_err("mismatched pair");
        assert!(matches!(err, TlsError::Rejected { .. }), "{err}");
    }

    #[test]
    fn ensure_keeps_an_existing_pair_and_creates_a_missing_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = ["localhost".to_owned()];
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        ensure_self_signed(&cert, &key, &names).expect("created");
        let first = fs::read(&cert).expect("written");
        ensure_self_signed(&cert, &key, &names).expect("kept");
        assert_eq!(fs::read(&cert).expect("still there"), first);
        fs::remove_file(&key).expect("remove");
        ensure_self_signed(&cert, &key, &names).expect("recreated");
        assert_ne!(fs::read(&cert).expect("rewritten"), first);
        server_config(&cert.display().to_string(), &key.display().to_string())
            .expect("the new pair matches");
    }

    #[test]
    fn setting_path_accepts_both_forms() {
        assert_eq!(setting_path("</etc/ssl/a.pem"), Path::new("/etc/ssl/a.pem"));
        assert_eq!(setting_path("/etc/ssl/a.pem"), Path::new("/etc/ssl/a.pem"));
        assert_eq!(setting_path(" </x "), Path::new("/x"));
    }
}
