//! Certificates: load a PEM chain and key, or generate a self-signed pair (rcgen).
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::session::TlsError;

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertifiedKey {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_pem(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| TlsError::Pem(format!("{}: {e}", cert_path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("{}: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificates(cert_path.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| TlsError::Pem(format!("{}: {e}", key_path.display())))?;
    Ok(CertifiedKey { chain, key })
}

/// A fresh self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses);
/// empty `names` means `["localhost", "127.0.0.1"]`.
pub fn generate_self_signed(names: &[String]) -> Result<CertifiedKey, TlsError> {
    let names = if names.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        names.to_vec()
    };
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::CertGen(e.to_string()))?;
    Ok(CertifiedKey {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der())),
    })
}

/// Writes the chain and key as PEM, so clients and tests can pin the certificate as a CA.
/// The key file is created with mode 0600.
pub fn write_pem(cert: &CertifiedKey, cert_path: &Path, key_path: &Path) -> std::io::Result<()> {
    let mut certs = String::new();
    for c in &cert.chain {
        push_pem(&mut certs, "CERTIFICATE", c.as_ref());
    }
    std::fs::write(cert_path, certs)?;
    let label = match &cert.key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    let mut key = String::new();
    push_pem(&mut key, label, cert.key.secret_der());
    write_private(key_path, key.as_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// RFC 7468 textual encoding: base64 in 64-column lines between BEGIN/END markers.
fn push_pem(out: &mut String, label: &str, der: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    let mut line = 0;
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            let c = if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            };
            out.push(c);
        }
        line += 4;
        if line == 64 {
            out.push('\n');
            line = 0;
        }
    }
    if line != 0 {
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_base64_matches_rfc4648_vectors() {
        for (input, b64) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            let mut s = String::new();
            push_pem(&mut s, "X", input);
            let body: String = s.lines().filter(|l| !l.starts_with("-----")).collect();
            assert_eq!(body, b64);
        }
    }

    #[test]
    fn generate_write_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("quench-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let generated = generate_self_signed(&[]).unwrap();
        write_pem(&generated, &cert_path, &key_path).unwrap();
        let loaded = load_pem(&cert_path, &key_path).unwrap();
        assert_eq!(loaded.chain, generated.chain);
        assert_eq!(loaded.key.secret_der(), generated.key.secret_der());
        assert!(matches!(
            load_pem(&key_path, &key_path),
            Err(TlsError::NoCertificates(_))
        ));
        assert!(load_pem(&dir.join("missing.pem"), &key_path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
