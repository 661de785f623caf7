//! DKIM keys: loading `[[dkim.keys]]` files (PEM; RSA in PKCS#1 or
//! PKCS#8, Ed25519 in PKCS#8) once and keeping them while the file is
//! unchanged, and making new ones for `petrel dkim keygen` with the DNS
//! TXT record (RFC 6376 §3.6.1, RFC 8463 §4) to publish.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::DkimKey;

/// A loaded private key: `rsa-sha256` or `ed25519-sha256` (RFC 8463).
pub use mail_auth::common::crypto::DkimKey as SigningKey;

/// A key with the domain and selector it signs for.
pub struct LoadedKey {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// The private key.
    pub key: SigningKey,
}

/// Why a key could not be used. Signing then fails: the message is
/// refused with a `451 4.7.0` unless `dkim.allow_unsigned` is set.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read DKIM key {0}: {1}")]
    Read(PathBuf, String),
    /// The file holds no usable private key.
    #[error("DKIM key {0} is not an RSA or Ed25519 private key in PEM: {1}")]
    Parse(PathBuf, String),
}

type Cache = Mutex<HashMap<PathBuf, (Option<SystemTime>, Arc<LoadedKey>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The key of one `[[dkim.keys]]` entry, from the cache while the file's
/// modification time is unchanged (a rotated key file is read again).
pub fn load(entry: &DkimKey) -> Result<Arc<LoadedKey>, KeyError> {
    let mtime = std::fs::metadata(&entry.key)
        .and_then(|m| m.modified())
        .ok();
    {
        let c = cache().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, k)) = c.get(&entry.key)
            && *t == mtime
            && mtime.is_some()
            && k.domain == entry.domain
            && k.selector == entry.selector
        {
            return Ok(k.clone());
        }
    }
    let pem =
        std::fs::read(&entry.key).map_err(|e| KeyError::Read(entry.key.clone(), e.to_string()))?;
    let key = Arc::new(LoadedKey {
        domain: entry.domain.clone(),
        selector: entry.selector.clone(),
        key: parse(&entry.key, &pem)?,
    });
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(entry.key.clone(), (mtime, key.clone()));
    Ok(key)
}

/// Parses a PEM private key: Ed25519 (PKCS#8 v1 or v2) or RSA.
pub fn parse(path: &Path, pem: &[u8]) -> Result<SigningKey, KeyError> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| KeyError::Parse(path.to_path_buf(), e.to_string()))?;
    if let PrivateKeyDer::Pkcs8(p8) = &der
        && let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der())
    {
        return Ok(SigningKey::Ed25519(k));
    }
    RsaKey::<Sha256>::from_key_der(der)
        .map(SigningKey::Rsa)
        .map_err(|e| KeyError::Parse(path.to_path_buf(), e.to_string()))
}

/// `--algorithm` of `petrel dkim keygen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// Ed25519 (RFC 8463): small and fast; not every verifier knows it.
    Ed25519,
    /// RSA with a 2048-bit modulus: understood everywhere.
    Rsa2048,
}

/// A new private key in PEM and the `p=`/`k=` of its TXT record.
pub struct NewKey {
    /// The private key, PEM (PKCS#8 for Ed25519, PKCS#1 for RSA).
    pub pem: String,
    /// The TXT record's text, e.g. `v=DKIM1; k=ed25519; p=...`.
    pub txt: String,
}

/// Makes a key pair.
pub fn generate(algorithm: Algorithm) -> Result<NewKey, String> {
    match algorithm {
        Algorithm::Ed25519 => {
            let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| e.to_string())?;
            let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|e| e.to_string())?;
            let pem = pem_block("PRIVATE KEY", &pkcs8);
            Ok(NewKey {
                pem,
                // RFC 8463 §4: p= is the raw 32-octet public key.
                txt: format!("v=DKIM1; k=ed25519; p={}", BASE64.encode(key.public_key())),
            })
        }
        Algorithm::Rsa2048 => {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            use rsa::pkcs8::EncodePublicKey as _;
            let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| e.to_string())?;
            let der = private.to_pkcs1_der().map_err(|e| e.to_string())?;
            // RFC 6376 §3.6.1: p= is a SubjectPublicKeyInfo.
            let public = private
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| e.to_string())?;
            Ok(NewKey {
                pem: pem_block("RSA PRIVATE KEY", der.as_bytes()),
                txt: format!("v=DKIM1; k=rsa; p={}", BASE64.encode(public.as_bytes())),
            })
        }
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The zone-file line for `txt`, split into strings of at most 255
/// octets (RFC 1035 §3.3.14; RFC 6376 §3.6.2.2 joins them).
pub fn zone_line(domain: &str, selector: &str, txt: &str) -> String {
    let parts: Vec<String> = txt
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        parts.join(" ")
    )
}

/// Writes a new key to `path` with mode 0600 (refusing to overwrite a
/// file), and returns the TXT record text.
pub fn write_new(path: &Path, algorithm: Algorithm) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let new = generate(algorithm)?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(new.pem.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(new.txt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        for alg in [Algorithm::Ed25519, Algorithm::Rsa2048] {
            let k = generate(alg).expect("generate");
            assert!(matches!(
                (alg, parse(Path::new("k"), k.pem.as_bytes()).expect("parse")),
                (Algorithm::Ed25519, SigningKey::Ed25519(_))
                    | (Algorithm::Rsa2048, SigningKey::Rsa(_))
            ));
            assert!(k.txt.starts_with("v=DKIM1; k="));
        }
    }

    #[test]
    fn long_records_are_split_into_strings() {
        let line = zone_line("example.test", "s1", &"a".repeat(400));
        assert!(line.starts_with("s1._domainkey.example.test. IN TXT ( \""));
        assert_eq!(line.matches('"').count(), 4);
    }
}
