//! Verification of the hypervisor's answer (DESIGN.md section 3, step 6), the same for every
//! transport. Nothing reaches the caller unless it is a client certificate for the caller's own
//! key that verifies under the root; the answer is rebuilt as leaf-then-root PEM with LF endings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::{
    asn1::Asn1Time,
    stack::Stack,
    x509::{store::X509StoreBuilder, verify::X509VerifyFlags, X509StoreContext, X509},
};

use crate::{csr::ValidCsr, der, error::Error};

/// What a transport brings back: the hypervisor's certificate text as received, and the root
/// certificate as the BMC knows it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub certificate: String,
    pub root: String,
}

/// A verified answer.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Leaf PEM then root PEM, LF endings, ending in one newline.
    pub pem: String,
    /// SHA-256 of the leaf's DER, for the log.
    pub leaf_fingerprint: String,
}

fn unusable(msg: impl Into<String>) -> Error {
    Error::UnusableAnswer(msg.into())
}

/// Splits PEM text into certificates. Any other block or stray text is an error.
pub fn split_certificates(text: &str) -> Result<Vec<X509>, &'static str> {
    let text = text.replace("\r\n", "\n");
    let mut certs = Vec::new();
    let mut rest = text.trim();
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    while !rest.is_empty() {
        let Some(body) = rest.strip_prefix(BEGIN) else {
            return Err("it is not a sequence of PEM certificates");
        };
        let Some(end) = body.find(END) else {
            return Err("a PEM certificate has no END line");
        };
        let block = &rest[..BEGIN.len() + end + END.len()];
        let cert = X509::from_pem(block.as_bytes())
            .map_err(|_| "a PEM certificate in it cannot be parsed")?;
        certs.push(cert);
        rest = rest[block.len()..].trim_start();
    }
    Ok(certs)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks `answer` for the request `csr` and returns the chain to hand back.
pub fn verify(csr: &ValidCsr, answer: &Answer, clock_skew: Duration) -> Result<Chain, Error> {
    let certs = split_certificates(&answer.certificate)
        .map_err(|why| unusable(format!("the hypervisor's answer is unusable: {why}")))?;
    if certs.is_empty() {
        return Err(unusable("the hypervisor returned no certificate"));
    }
    let root = match split_certificates(&answer.root) {
        Ok(mut roots) if roots.len() == 1 => roots.remove(0),
        Ok(_) => {
            return Err(Error::NoRootCertificate(
                "the root certificate file does not hold exactly one certificate".into(),
            ))
        }
        Err(_) => {
            return Err(Error::NoRootCertificate(
                "the root certificate file cannot be parsed".into(),
            ))
        }
    };
    let root_der = root.to_der().map_err(|e| Error::Internal(e.to_string()))?;

    let mut leaf: Option<X509> = None;
    for cert in certs {
        let der = cert.to_der().map_err(|e| Error::Internal(e.to_string()))?;
        if der == root_der {
            continue;
        }
        let same_key = cert
            .public_key()
            .map(|k| k.public_eq(&csr.public_key))
            .unwrap_or(false);
        match &leaf {
            Some(l) if l.to_der().ok().as_deref() == Some(&der[..]) => {}
            Some(_) => {
                return Err(unusable(
                    "the hypervisor's answer holds more than one certificate besides the root",
                ))
            }
            None if same_key => leaf = Some(cert),
            None => {
                return Err(unusable(
                    "the hypervisor returned a certificate for a different key than the CSR's",
                ))
            }
        }
    }
    let leaf = leaf.ok_or_else(|| unusable("the hypervisor returned only the root certificate"))?;

    let leaf_der = leaf.to_der().map_err(|e| Error::Internal(e.to_string()))?;
    let exts = der::certificate_extensions(&leaf_der)
        .map_err(|_| unusable("the client certificate's extensions cannot be parsed"))?;
    for ext in &exts {
        let broken = || unusable("the client certificate's extensions cannot be parsed");
        match ext.oid {
            der::oids::BASIC_CONSTRAINTS
                if der::basic_constraints_ca(ext.value).map_err(|_| broken())? =>
            {
                return Err(unusable("the hypervisor issued a CA certificate (CA:TRUE)"));
            }
            der::oids::KEY_USAGE
                if der::key_usage_bit(ext.value, der::KU_KEY_CERT_SIGN)
                    .map_err(|_| broken())?
                    || der::key_usage_bit(ext.value, der::KU_CRL_SIGN).map_err(|_| broken())? =>
            {
                return Err(unusable(
                    "the hypervisor issued a certificate with keyCertSign or cRLSign",
                ));
            }
            der::oids::EXT_KEY_USAGE
                if !der::eku_contains(ext.value, der::oids::CLIENT_AUTH)
                    .map_err(|_| broken())?
                    && !der::eku_contains(ext.value, der::oids::ANY_EXTENDED_KEY_USAGE)
                        .map_err(|_| broken())? =>
            {
                return Err(unusable(
                    "the hypervisor issued a certificate without clientAuth usage",
                ));
            }
            _ => {}
        }
    }

    let now = unix_now();
    let time = |secs: i64| Asn1Time::from_unix(secs).map_err(|e| Error::Internal(e.to_string()));
    if leaf.not_after() < time(now)? {
        return Err(unusable("the hypervisor returned an expired certificate"));
    }
    let skew = i64::try_from(clock_skew.as_secs()).unwrap_or(i64::MAX / 2);
    if leaf.not_before() > time(now.saturating_add(skew))? {
        return Err(unusable(
            "the hypervisor returned a certificate that is not valid until far in the future",
        ));
    }
    if root.not_after() < time(now)? {
        return Err(Error::NoRootCertificate(
            "the root certificate has expired".into(),
        ));
    }

    // Times were checked above with the allowed skew; OpenSSL would refuse a leaf whose
    // notBefore is a little ahead of a drifting BMC clock.
    let verified = (|| {
        let mut store = X509StoreBuilder::new()?;
        store.add_cert(root.clone())?;
        store.set_flags(X509VerifyFlags::NO_CHECK_TIME | X509VerifyFlags::X509_STRICT)?;
        let store = store.build();
        let mut ctx = X509StoreContext::new()?;
        let chain = Stack::new()?;
        ctx.init(&store, &leaf, &chain, |c| c.verify_cert())
    })()
    .map_err(|e| Error::Internal(format!("certificate verification could not run: {e}")))?;
    if !verified {
        return Err(Error::NoRootCertificate(
            "the root certificate does not verify the client certificate".into(),
        ));
    }

    let mut pem = String::new();
    for cert in [&leaf, &root] {
        let text = cert.to_pem().map_err(|e| Error::Internal(e.to_string()))?;
        pem.push_str(&String::from_utf8_lossy(&text));
    }
    let digest = openssl::hash::hash(openssl::hash::MessageDigest::sha256(), &leaf_der)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Chain {
        pem,
        leaf_fingerprint: crate::csr::hex(&digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ca::SoftCa,
        config::Policy,
        csr::{tests as t, validate},
    };
    use openssl::nid::Nid;

    fn setup() -> (SoftCa, ValidCsr) {
        let ca = SoftCa::generate().unwrap();
        let key = t::ec(Nid::X9_62_PRIME256V1);
        let csr = validate(&t::csr_with(&key, "hmc01", false), &Policy::default()).unwrap();
        (ca, csr)
    }

    fn pem(c: &X509) -> String {
        String::from_utf8(c.to_pem().unwrap()).unwrap()
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn normalises_order_duplicates_and_line_endings() {
        let (ca, csr) = setup();
        let leaf = ca.issue_client(&csr, 365).unwrap();
        let root = ca.root_pem();
        let expected = format!("{}{}", pem(&leaf), root);
        for text in [
            pem(&leaf),
            format!("{root}{}", pem(&leaf)),
            format!("{}{}", pem(&leaf), pem(&leaf)),
            pem(&leaf).replace('\n', "\r\n"),
        ] {
            let answer = Answer {
                certificate: text,
                root: root.clone(),
            };
            assert_eq!(verify(&csr, &answer, DAY).unwrap().pem, expected);
        }
        assert!(expected.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!expected.ends_with("\n\n"));
    }

    #[test]
    fn refuses_what_is_not_a_client_certificate_for_this_key() {
        let (ca, csr) = setup();
        let root = ca.root_pem();
        let other = validate(
            &t::csr_with(&t::ec(Nid::X9_62_PRIME256V1), "other", false),
            &Policy::default(),
        )
        .unwrap();
        let wrong_key = pem(&ca.issue_client(&other, 365).unwrap());
        let cases = [
            (
                wrong_key,
                "the hypervisor returned a certificate for a different key than the CSR's",
            ),
            (
                "garbage".to_string(),
                "the hypervisor's answer is unusable: it is not a sequence of PEM certificates",
            ),
            (String::new(), "the hypervisor returned no certificate"),
            (
                pem(&ca.issue_ca_true(&csr).unwrap()),
                "the hypervisor issued a CA certificate (CA:TRUE)",
            ),
            (
                root.clone(),
                "the hypervisor returned only the root certificate",
            ),
        ];
        for (text, msg) in cases {
            let answer = Answer {
                certificate: text,
                root: root.clone(),
            };
            assert_eq!(
                verify(&csr, &answer, DAY).unwrap_err(),
                Error::UnusableAnswer(msg.into())
            );
        }
    }

    #[test]
    fn a_foreign_root_is_no_ca_certificate() {
        let (ca, csr) = setup();
        let other = SoftCa::generate().unwrap();
        let answer = Answer {
            certificate: pem(&ca.issue_client(&csr, 365).unwrap()),
            root: other.root_pem(),
        };
        assert_eq!(
            verify(&csr, &answer, DAY).unwrap_err(),
            Error::NoRootCertificate(
                "the root certificate does not verify the client certificate".into()
            )
        );
        let answer = Answer {
            root: "nonsense".into(),
            ..answer
        };
        assert_eq!(
            verify(&csr, &answer, DAY).unwrap_err().dbus_name(),
            "NoCACertificate"
        );
    }
}
