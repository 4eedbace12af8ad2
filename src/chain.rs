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
    let blocks = crate::util::parse_pem(text).map_err(|why| match why {
        "text outside a PEM block" => "it is not a sequence of PEM certificates",
        other => other,
    })?;
    blocks
        .iter()
        .map(|b| {
            if b.label != "CERTIFICATE" {
                return Err("it holds a PEM block that is not a certificate");
            }
            X509::from_der(&b.der).map_err(|_| "a PEM certificate in it cannot be parsed")
        })
        .collect()
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
    // notBefore is a little ahead of a drifting BMC clock. No X509_STRICT: it also demands an
    // authorityKeyIdentifier, which a hypervisor CA need not put in.
    let outcome = (|| {
        let mut store = X509StoreBuilder::new()?;
        store.add_cert(root.clone())?;
        store.set_flags(X509VerifyFlags::NO_CHECK_TIME)?;
        let store = store.build();
        let mut ctx = X509StoreContext::new()?;
        let chain = Stack::new()?;
        ctx.init(&store, &leaf, &chain, |c| Ok((c.verify_cert()?, c.error())))
    })()
    .map_err(|e| Error::Internal(format!("certificate verification could not run: {e}")))?;
    match outcome {
        (true, _) => {}
        (false, result) if root_does_not_fit(result.as_raw()) => {
            return Err(Error::NoRootCertificate(
                "the root certificate does not verify the client certificate".into(),
            ))
        }
        (false, result) => {
            return Err(unusable(format!(
                "the client certificate does not verify: {}",
                result.error_string()
            )))
        }
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

/// Verification results that say the root is the wrong one (or not a CA), as opposed to a
/// leaf that is broken in itself: only these mean "wait for the hypervisor's root".
fn root_does_not_fit(code: i32) -> bool {
    use openssl_sys as ffi;
    [
        ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
        ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        ffi::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
        ffi::X509_V_ERR_CERT_SIGNATURE_FAILURE,
        ffi::X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE,
        ffi::X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY,
        ffi::X509_V_ERR_INVALID_CA,
        ffi::X509_V_ERR_KEYUSAGE_NO_CERTSIGN,
        ffi::X509_V_ERR_AKID_SKID_MISMATCH,
        ffi::X509_V_ERR_AKID_ISSUER_SERIAL_MISMATCH,
        ffi::X509_V_ERR_SUBJECT_ISSUER_MISMATCH,
    ]
    .contains(&code)
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
    fn an_encrypted_pem_header_is_refused_without_a_passphrase_prompt() {
        let (ca, csr) = setup();
        let leaf = pem(&ca.issue_client(&csr, 365).unwrap());
        let encrypted = leaf.replacen(
            "-----\n",
            "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\n",
            1,
        );
        let answer = Answer {
            certificate: encrypted,
            root: ca.root_pem(),
        };
        assert_eq!(
            verify(&csr, &answer, DAY).unwrap_err(),
            Error::UnusableAnswer(
                "the hypervisor's answer is unusable: a PEM block holds a line that is not base64"
                    .into()
            )
        );
    }

    #[test]
    fn a_leaf_without_key_identifiers_still_verifies() {
        use openssl::{asn1::Asn1Time, bn::BigNum, x509::X509Builder};
        let (ca, csr) = setup();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(csr.req.subject_name()).unwrap();
        b.set_issuer_name(ca.root().subject_name()).unwrap();
        b.set_pubkey(&csr.public_key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.sign(ca.key(), openssl::hash::MessageDigest::sha384())
            .unwrap();
        let answer = Answer {
            certificate: pem(&b.build()),
            root: ca.root_pem(),
        };
        assert!(verify(&csr, &answer, DAY).is_ok());
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

    /// A leaf for `csr` signed by `ca`, valid from `from` to `until` seconds relative to now,
    /// with the extensions `add` puts on it.
    fn leaf_with(
        ca: &SoftCa,
        csr: &ValidCsr,
        from: i64,
        until: i64,
        add: impl FnOnce(&mut openssl::x509::X509Builder),
    ) -> String {
        use openssl::{bn::BigNum, x509::X509Builder};
        let now = unix_now();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(9).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(csr.req.subject_name()).unwrap();
        b.set_issuer_name(ca.root().subject_name()).unwrap();
        b.set_pubkey(&csr.public_key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(now + from).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + until).unwrap())
            .unwrap();
        add(&mut b);
        b.sign(ca.key(), openssl::hash::MessageDigest::sha384())
            .unwrap();
        pem(&b.build())
    }

    #[test]
    fn validity_is_checked_with_the_allowed_clock_skew() {
        let (ca, csr) = setup();
        let answer = |certificate: String| Answer {
            certificate,
            root: ca.root_pem(),
        };
        let hour = 3600;
        let expired = leaf_with(&ca, &csr, -2 * 86400, -hour, |_| {});
        assert_eq!(
            verify(&csr, &answer(expired), DAY).unwrap_err(),
            Error::UnusableAnswer("the hypervisor returned an expired certificate".into())
        );
        // notBefore an hour ahead (a BMC clock behind the host's): within a day's skew.
        let ahead = leaf_with(&ca, &csr, hour, 30 * 86400, |_| {});
        assert!(verify(&csr, &answer(ahead.clone()), DAY).is_ok());
        // The same with a skew of a minute: too far ahead.
        assert_eq!(
            verify(&csr, &answer(ahead), Duration::from_secs(60)).unwrap_err(),
            Error::UnusableAnswer(
                "the hypervisor returned a certificate that is not valid until far in the future"
                    .into()
            )
        );
        let far = leaf_with(&ca, &csr, 2 * 86400, 30 * 86400, |_| {});
        assert_eq!(
            verify(&csr, &answer(far), DAY).unwrap_err().dbus_name(),
            "InternalFailure"
        );
    }

    #[test]
    fn signing_usages_and_a_missing_client_auth_are_refused() {
        use openssl::x509::extension::{ExtendedKeyUsage, KeyUsage};
        let (ca, csr) = setup();
        let answer = |certificate: String| Answer {
            certificate,
            root: ca.root_pem(),
        };
        let cert_sign = leaf_with(&ca, &csr, -60, 86400, |b| {
            b.append_extension(
                KeyUsage::new()
                    .digital_signature()
                    .key_cert_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        });
        let crl_sign = leaf_with(&ca, &csr, -60, 86400, |b| {
            b.append_extension(KeyUsage::new().crl_sign().build().unwrap())
                .unwrap();
        });
        for text in [cert_sign, crl_sign] {
            assert_eq!(
                verify(&csr, &answer(text), DAY).unwrap_err(),
                Error::UnusableAnswer(
                    "the hypervisor issued a certificate with keyCertSign or cRLSign".into()
                )
            );
        }
        let server_only = leaf_with(&ca, &csr, -60, 86400, |b| {
            b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
                .unwrap();
        });
        assert_eq!(
            verify(&csr, &answer(server_only), DAY).unwrap_err(),
            Error::UnusableAnswer(
                "the hypervisor issued a certificate without clientAuth usage".into()
            )
        );
        let both = leaf_with(&ca, &csr, -60, 86400, |b| {
            b.append_extension(
                ExtendedKeyUsage::new()
                    .server_auth()
                    .client_auth()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        });
        assert!(verify(&csr, &answer(both), DAY).is_ok());
    }

    #[test]
    fn an_expired_root_is_no_ca_certificate() {
        use openssl::{
            bn::BigNum,
            x509::{extension::BasicConstraints, X509Builder},
        };
        let (ca, csr) = setup();
        // The same CA key and name, in a root whose validity has ended.
        let now = unix_now();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(ca.root().subject_name()).unwrap();
        b.set_issuer_name(ca.root().subject_name()).unwrap();
        b.set_pubkey(ca.key()).unwrap();
        b.set_not_before(&Asn1Time::from_unix(now - 10 * 86400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now - 86400).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.sign(ca.key(), openssl::hash::MessageDigest::sha384())
            .unwrap();
        let answer = Answer {
            certificate: pem(&ca.issue_client(&csr, 365).unwrap()),
            root: pem(&b.build()),
        };
        assert_eq!(
            verify(&csr, &answer, DAY).unwrap_err(),
            Error::NoRootCertificate("the root certificate has expired".into())
        );
    }
}
