//! What is wrong with an endpoint's client certificate, said so its owner can fix it. rustls
//! reports a version 1 certificate (one made without extensions, as a bare `openssl x509
//! -req` does) as "invalid peer certificate: UnsupportedCertVersion" while pairing it with
//! its key, which reads as if the key did not match.

use pki_types::CertificateDer;

/// Why `der`, the first certificate of an endpoint's `client_cert`, cannot be presented, or
/// None when it can. The key is not looked at here.
pub fn client_cert_problem(der: &[u8]) -> Option<String> {
    let cert = CertificateDer::from(der);
    match webpki::EndEntityCert::try_from(&cert) {
        Ok(_) => None,
        Err(webpki::Error::UnsupportedCertVersion) => Some(
            "client_cert is an X.509 version 1 certificate (made without extensions, as a bare `openssl x509 -req` does); only version 3 is accepted: reissue it with extensions, e.g. `openssl x509 -req ... -extfile <(printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth')`".into(),
        ),
        Err(e) => Some(format!(
            "client_cert is not a certificate that can be presented: {e:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_certificate() {
        let problem = client_cert_problem(b"not der").unwrap();
        assert!(problem.contains("not a certificate"), "{problem}");
    }
}
