//! A throwaway certificate authority for tests: it issues server certificates for
//! `127.0.0.1` and `localhost`, and its PEM file is what gancho trusts through
//! `GANCHO_EXTRA_CA_FILE`. Real TLS, nothing disabled.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
}

/// A certificate and its key, as rustls wants them.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gancho test CA");
        let key = KeyPair::generate().expect("generate the CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate in DER, for a rustls root store.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns the path.
    pub fn write_ca_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write the CA file");
        path
    }

    /// A certificate for `names` (IP addresses or DNS names) signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("valid subject alt names");
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the leaf certificate");
        Issued {
            chain: vec![cert.der().clone(), self.ca_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate (extended key usage: client auth) for `name`, signed by this CA.
    pub fn issue_client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("generate a client key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the client certificate");
        Issued {
            chain: vec![cert.der().clone(), self.ca_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls server config for `127.0.0.1` and `localhost`, offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config_with(false)
    }

    /// [`TestCa::server_config`] that requires a client certificate signed by this CA.
    pub fn server_config_mtls(&self) -> Arc<rustls::ServerConfig> {
        self.server_config_with(true)
    }

    fn server_config_with(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let issued = self.issue(&["127.0.0.1", "localhost"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der()).expect("the CA is a valid root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder
            .with_single_cert(issued.chain, issued.key)
            .expect("a valid certificate and key");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
