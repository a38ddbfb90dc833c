//! Test certificate authorities and the certificates they issue, written as PEM files for the
//! TLS tests (the broker's ports, workers' client certificates, clients' `--ca-file`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    ///
    /// # Panics
    /// If rcgen cannot make a key or sign (never with its defaults).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate a key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-sign the CA"),
        }
    }

    /// The CA's certificate, as PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA's certificate to `path`.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_cert(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert_pem()).expect("write the CA certificate");
        path.to_owned()
    }

    /// A certificate for `names` (DNS names or IP addresses, in its subjectAltName; the first
    /// is also its common name), signed by this CA.
    ///
    /// # Panics
    /// If a name is not a DNS name or an IP address.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("valid names");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// [`TestCa::issue`], written to `<dir>/<stem>.crt` and `<dir>/<stem>.key`; returns both
    /// paths.
    ///
    /// # Panics
    /// If the files cannot be written.
    pub fn write_issued(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let issued = self.issue(names);
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, issued.cert_pem).expect("write the certificate");
        std::fs::write(&key, issued.key_pem).expect("write the key");
        (cert, key)
    }
}
