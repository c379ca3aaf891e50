//! Test PKI made with rcgen: one CA and, per domain, a server certificate
//! (SANs: the domain and "localhost") signed by it. Files are PEM:
//! `<domain>.chain.pem` (leaf then CA), `<domain>.leaf.pem`, `<domain>.key.pem`
//! (PKCS#8, ECDSA P-256) and `ca.pem`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    ca_cert_pem: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    certs: BTreeMap<String, (PathBuf, PathBuf)>,
}

impl TestPki {
    /// A CA plus one server certificate per domain.
    pub fn new(domains: &[&str]) -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("xmpp-lb-pki-")
            .tempdir()
            .expect("pki temp dir");
        let (ca_params, ca_key, ca_cert_pem) = make_ca("xmpp-lb test CA");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, &ca_cert_pem).expect("write ca.pem");
        let mut pki = TestPki {
            dir,
            ca_pem,
            ca_cert_pem,
            ca_params,
            ca_key,
            certs: BTreeMap::new(),
        };
        for d in domains {
            pki.issue(d, &[d, "localhost"]);
        }
        pki
    }

    pub fn ca_path(&self) -> PathBuf {
        self.ca_pem.clone()
    }

    /// Chain PEM (leaf then CA) for `domain` (or for a name given to [`issue`](Self::issue)).
    pub fn cert_path(&self, domain: &str) -> PathBuf {
        self.certs
            .get(domain)
            .unwrap_or_else(|| panic!("no test certificate for {domain}"))
            .0
            .clone()
    }

    /// Leaf-only PEM for `domain`.
    pub fn leaf_path(&self, domain: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.leaf.pem", file_stem(domain)))
    }

    /// Private key PEM (PKCS#8) for `domain`.
    pub fn key_path(&self, domain: &str) -> PathBuf {
        self.certs
            .get(domain)
            .unwrap_or_else(|| panic!("no test certificate for {domain}"))
            .1
            .clone()
    }

    /// Issue (or re-issue) a certificate named `name` with these SANs
    /// (DNS names, or IP addresses such as "127.0.0.1"), signed by the CA.
    /// Returns (chain path, key path).
    pub fn issue(&mut self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let params = leaf_params(name, sans);
        self.write_leaf(name, params)
    }

    /// Like [`issue`](Self::issue) but already expired (valid 2000-01-01..2001-01-01).
    pub fn issue_expired(&mut self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let mut params = leaf_params(name, sans);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.write_leaf(name, params)
    }

    /// A certificate for `sans` signed by a different CA that nobody trusts.
    pub fn issue_untrusted(&mut self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let (other_params, other_key, other_pem) = make_ca("untrusted test CA");
        let issuer = Issuer::from_params(&other_params, &other_key);
        let key = KeyPair::generate().expect("leaf key");
        let cert = leaf_params(name, sans)
            .signed_by(&key, &issuer)
            .expect("sign leaf");
        self.store(name, &cert.pem(), &other_pem, &key.serialize_pem())
    }

    fn write_leaf(&mut self, name: &str, params: CertificateParams) -> (PathBuf, PathBuf) {
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        let ca = self.ca_cert_pem.clone();
        self.store(name, &cert.pem(), &ca, &key.serialize_pem())
    }

    fn store(&mut self, name: &str, leaf: &str, ca: &str, key: &str) -> (PathBuf, PathBuf) {
        let stem = file_stem(name);
        let chain = self.dir.path().join(format!("{stem}.chain.pem"));
        let leaf_p = self.dir.path().join(format!("{stem}.leaf.pem"));
        let key_p = self.dir.path().join(format!("{stem}.key.pem"));
        std::fs::write(&chain, format!("{leaf}{ca}")).expect("write chain");
        std::fs::write(&leaf_p, leaf).expect("write leaf");
        std::fs::write(&key_p, key).expect("write key");
        self.certs
            .insert(name.to_string(), (chain.clone(), key_p.clone()));
        (chain, key_p)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn make_ca(cn: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "xmpp-lb tests");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("self-sign ca");
    let pem = cert.pem();
    (params, key, pem)
}

fn leaf_params(name: &str, sans: &[&str]) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
