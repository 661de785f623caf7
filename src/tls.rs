//! TLS configurations (rustls with the ring provider only). Outbound:
//! `opportunistic` encrypts without verifying (a passive attacker is
//! defeated, an active one is not — as in Postfix's `may` level);
//! `required` verifies the peer against the web PKI roots and its name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The server TLS configuration the listeners use now: `None` when no
/// listener needs TLS. A reload puts a new one in (a renewed certificate);
/// a session takes the current one when it starts a handshake.
#[derive(Clone, Default)]
pub struct ServerTls(Arc<arc_swap::ArcSwapOption<ServerConfig>>);

impl ServerTls {
    /// A holder with `config` in it.
    pub fn new(config: Option<Arc<ServerConfig>>) -> ServerTls {
        ServerTls(Arc::new(arc_swap::ArcSwapOption::new(config)))
    }

    /// The configuration for a handshake starting now.
    pub fn get(&self) -> Option<Arc<ServerConfig>> {
        self.0.load_full()
    }

    /// Whether TLS can be offered.
    pub fn is_some(&self) -> bool {
        self.0.load().is_some()
    }

    /// Whether TLS cannot be offered.
    pub fn is_none(&self) -> bool {
        !self.is_some()
    }

    /// Puts in a new configuration (reload).
    pub fn set(&self, config: Option<Arc<ServerConfig>>) {
        self.0.store(config);
    }
}

/// The one crypto provider of the process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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

/// Client configuration for opportunistic STARTTLS: no verification.
pub fn opportunistic_client() -> Arc<ClientConfig> {
    let p = provider();
    let cfg = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
        .with_no_client_auth();
    Arc::new(cfg)
}

/// Client configuration for required TLS: web PKI roots, name checked.
pub fn verifying_client() -> Arc<ClientConfig> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// The server configuration for STARTTLS, STLS and implicit TLS: the
/// certificate chain and key from `[tls]`, or — when they are not set — a
/// self-signed pair issued to `hostname` (subject CN and subjectAltName),
/// made in `<spool>/tls` on first start and again when `server.hostname`
/// changes (the name it was made for is kept in `<spool>/tls/hostname`). A
/// warning says so; clients that verify refuse it unless told to trust it.
pub fn server_config(
    tls: &crate::config::Tls,
    spool: &std::path::Path,
    hostname: &str,
) -> Result<Arc<ServerConfig>, String> {
    let (cert_path, key_path) = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let dir = spool.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let made_for = std::fs::read_to_string(dir.join("hostname")).ok();
            if !c.exists() || !k.exists() || made_for.as_deref().map(str::trim) != Some(hostname) {
                make_self_signed(&dir, &c, &k, hostname)?;
                tracing::warn!(cert = %c.display(), "no [tls] cert and key configured: made a self-signed certificate; set tls.cert and tls.key for clients that verify");
            }
            (c, k)
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert: {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert: {} holds no certificate",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("tls.key: cannot read {}: {e}", key_path.display()))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert/tls.key: {e}"))?;
    Ok(Arc::new(cfg))
}

fn make_self_signed(
    dir: &std::path::Path,
    cert_path: &std::path::Path,
    key: &std::path::Path,
    hostname: &str,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let failed = |e: rcgen::Error| format!("cannot make a certificate for {hostname}: {e}");
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()]).map_err(failed)?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = name;
    let signing_key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&signing_key).map_err(failed)?;
    let mut k = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key)
        .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    k.write_all(signing_key.serialize_pem().as_bytes())
        .map_err(|e| e.to_string())?;
    std::fs::write(cert_path, cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
        .map_err(|e| format!("cannot write {}: {e}", dir.join("hostname").display()))?;
    Ok(())
}
