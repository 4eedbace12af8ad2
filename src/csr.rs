//! Intake and validation of a certificate signing request (DESIGN.md section 3, steps 1-2).
//!
//! Everything here runs before anything leaves the BMC. Messages never echo the input: they go
//! back to the console through bmcweb, and the input may be a private key pasted by mistake.

use openssl::{
    hash::{hash, MessageDigest},
    nid::Nid,
    pkey::{Id, PKey, Public},
    x509::{X509NameRef, X509Req},
};

use crate::{
    config::{KeyType, Policy},
    der,
    error::Error,
};

/// The PEM labels a CSR may carry (`NEW CERTIFICATE REQUEST` is what older tools write).
const LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// A CSR that passed intake and validation.
pub struct ValidCsr {
    /// The request as OpenSSL parsed it.
    pub req: X509Req,
    /// Its DER encoding.
    pub der: Vec<u8>,
    /// The request as PEM with the standard label and LF endings: what the transports forward.
    pub pem: String,
    /// SHA-256 of the DER: the dedupe key and the fingerprint in logs.
    pub fingerprint: [u8; 32],
    pub key_type: KeyType,
    pub public_key: PKey<Public>,
    /// The subject for logs, with values escaped.
    pub subject: String,
    /// The subjectAltName extension as requested (criticality, DER value), copied to the leaf.
    pub san: Option<(bool, Vec<u8>)>,
}

impl ValidCsr {
    pub fn fingerprint_hex(&self) -> String {
        hex(&self.fingerprint)
    }
}

impl std::fmt::Debug for ValidCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidCsr")
            .field("subject", &self.subject)
            .field("key_type", &self.key_type)
            .field("fingerprint", &self.fingerprint_hex())
            .finish()
    }
}

/// What the request log says of a CSR: subject (escaped), key type and SHA-256 fingerprint
/// of the DER. Empty where the input does not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFacts {
    pub subject: String,
    pub key_type: String,
    pub fingerprint: String,
}

impl LogFacts {
    pub fn of(csr: &ValidCsr) -> Self {
        LogFacts {
            subject: csr.subject.clone(),
            key_type: csr.key_type.to_string(),
            fingerprint: csr.fingerprint_hex(),
        }
    }

    /// For a refused CSR: whatever of it parses.
    pub fn best_effort(input: &str, policy: &Policy) -> Self {
        let Ok(der) = intake(input, policy.max_csr_bytes) else {
            return LogFacts::default();
        };
        let fingerprint = hash(MessageDigest::sha256(), &der)
            .map(|d| hex(&d))
            .unwrap_or_default();
        let Ok(req) = X509Req::from_der(&der) else {
            return LogFacts {
                fingerprint,
                ..LogFacts::default()
            };
        };
        LogFacts {
            subject: subject_for_log(req.subject_name()),
            key_type: req.public_key().map(|k| key_name(&k).1).unwrap_or_default(),
            fingerprint,
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn malformed(msg: &str) -> Error {
    Error::MalformedCsr(msg.to_string())
}

/// Step 1: turns the text a caller sent into DER. Size is checked before anything else.
pub fn intake(input: &str, max_bytes: usize) -> Result<Vec<u8>, Error> {
    if input.len() > max_bytes {
        return Err(Error::MalformedCsr(format!(
            "the CSR is {} bytes long; the limit is {max_bytes}",
            input.len()
        )));
    }
    if input.contains('\0') {
        return Err(malformed("the CSR contains a NUL character"));
    }
    let text = input.replace("\r\n", "\n");
    let text = text.trim();
    if text.is_empty() {
        return Err(malformed("the CSR is empty"));
    }
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or_default().trim_end();
    if first.contains("\\n") {
        return Err(malformed(
            "the CSR is not PEM: it holds a literal backslash-n where a line break belongs",
        ));
    }
    let Some(begin_label) = first
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.strip_suffix("-----"))
    else {
        return Err(if text.contains("-----BEGIN ") {
            malformed("the CSR has text before its BEGIN line")
        } else {
            malformed("the CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- line")
        });
    };
    if !LABELS.contains(&begin_label) {
        return Err(malformed(
            "the PEM block is not a certificate request (expected BEGIN CERTIFICATE REQUEST)",
        ));
    }
    let mut body = String::with_capacity(text.len());
    let mut end_label = None;
    for line in lines.by_ref() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("-----END ") {
            end_label = Some(rest.strip_suffix("-----").unwrap_or("\u{0}"));
            break;
        }
        if line.starts_with("-----") {
            return Err(malformed(
                "the CSR holds a second BEGIN line before its END line",
            ));
        }
        if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        {
            return Err(if line.contains("\\n") {
                malformed("the CSR holds a literal backslash-n where a line break belongs")
            } else {
                malformed("the CSR body holds characters that are not base64")
            });
        }
        body.push_str(line);
    }
    match end_label {
        None => return Err(malformed("the CSR has no END line")),
        Some(end) if end != begin_label => {
            return Err(malformed("the CSR's BEGIN and END labels differ"))
        }
        Some(_) => {}
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(malformed(
            "the input holds more than one PEM block or text after the END line",
        ));
    }
    if body.is_empty() {
        return Err(malformed("the CSR body is empty"));
    }
    openssl::base64::decode_block(&body).map_err(|_| malformed("the CSR body is not valid base64"))
}

/// Steps 1 and 2: intake, then everything the request must satisfy.
pub fn validate(input: &str, policy: &Policy) -> Result<ValidCsr, Error> {
    let der = intake(input, policy.max_csr_bytes)?;
    let req = X509Req::from_der(&der)
        .map_err(|_| malformed("the CSR is not a valid PKCS#10 certificate request"))?;
    // d2i accepts trailing bytes and some BER; the key for dedupe must be the one DER encoding.
    if req.to_der().ok().as_deref() != Some(&der[..]) {
        return Err(malformed("the CSR is not DER-encoded"));
    }
    let public_key = req
        .public_key()
        .map_err(|_| malformed("the CSR's public key cannot be read"))?;
    let parts = der::csr_parts(&der).map_err(|_| malformed("the CSR's structure is not valid"))?;
    // Read from the DER: OpenSSL's version() truncates to an int.
    if parts.version != [0] {
        return Err(Error::PolicyViolation(
            "the CSR's version is not 1 (the only version PKCS#10 defines)".into(),
        ));
    }
    let key_type = key_type(&public_key, policy)?;
    if key_type.is_ec() && parts.key_parameters_tag != Some(der::OID) {
        return Err(Error::PolicyViolation(
            "EC keys with explicit curve parameters are not accepted; use a named curve".into(),
        ));
    }
    if [
        der::oids::MD5_WITH_RSA,
        der::oids::SHA1_WITH_RSA,
        der::oids::ECDSA_WITH_SHA1,
    ]
    .contains(&parts.signature_algorithm)
    {
        return Err(Error::PolicyViolation(
            "the CSR is signed with MD5 or SHA-1; use SHA-256 or stronger".into(),
        ));
    }
    if !req.verify(&public_key).unwrap_or(false) {
        return Err(Error::PolicyViolation(
            "the CSR's signature does not verify with its own key (no proof of possession)".into(),
        ));
    }
    check_subject(req.subject_name())?;
    let mut san = None;
    for (n, ext) in parts.extensions.iter().enumerate() {
        if parts.extensions[..n].iter().any(|e| e.oid == ext.oid) {
            return Err(malformed("the CSR requests the same extension twice"));
        }
        let bad = || malformed("the CSR requests an extension that cannot be parsed");
        match ext.oid {
            der::oids::BASIC_CONSTRAINTS
                if der::basic_constraints_ca(ext.value).map_err(|_| bad())? =>
            {
                return Err(Error::CaCapabilityRequested("basicConstraints CA:TRUE"));
            }
            der::oids::KEY_USAGE => {
                if der::key_usage_bit(ext.value, der::KU_KEY_CERT_SIGN).map_err(|_| bad())? {
                    return Err(Error::CaCapabilityRequested("keyUsage keyCertSign"));
                }
                if der::key_usage_bit(ext.value, der::KU_CRL_SIGN).map_err(|_| bad())? {
                    return Err(Error::CaCapabilityRequested("keyUsage cRLSign"));
                }
            }
            der::oids::SUBJECT_ALT_NAME => {
                let n = der::sequence_len(ext.value).map_err(|_| bad())?;
                if n == 0 {
                    return Err(malformed("the CSR's subjectAltName extension is empty"));
                }
                if n > policy.max_sans {
                    return Err(Error::PolicyViolation(format!(
                        "the CSR asks for {n} subject alternative names; the limit is {}",
                        policy.max_sans
                    )));
                }
                san = Some((ext.critical, ext.value.to_vec()));
            }
            _ => {}
        }
    }
    let digest = hash(MessageDigest::sha256(), &der)
        .map_err(|e| Error::Internal(format!("SHA-256 failed: {e}")))?;
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(&digest);
    let pem = String::from_utf8(
        req.to_pem()
            .map_err(|e| Error::Internal(format!("PEM encoding failed: {e}")))?,
    )
    .map_err(|_| Error::Internal("PEM encoding is not UTF-8".into()))?;
    Ok(ValidCsr {
        subject: subject_for_log(req.subject_name()),
        req,
        der,
        pem,
        fingerprint,
        key_type,
        public_key,
        san,
    })
}

/// Maps the key to an allowed [`KeyType`], or says which algorithm was refused.
fn key_type(key: &PKey<Public>, policy: &Policy) -> Result<KeyType, Error> {
    let allowed = || {
        policy
            .key_types
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (found, name) = key_name(key);
    match found {
        Some(kt) if policy.key_types.contains(&kt) => Ok(kt),
        _ => Err(Error::PolicyViolation(format!(
            "{name} keys are not accepted (allowed: {})",
            allowed()
        ))),
    }
}

/// The key's type if it is one we know, and its name for messages (`RSA-1024`, `EC secp521r1`).
fn key_name(key: &PKey<Public>) -> (Option<KeyType>, String) {
    match key.id() {
        Id::RSA => {
            let bits = key.bits();
            let kt = match bits {
                2048 => Some(KeyType::Rsa2048),
                3072 => Some(KeyType::Rsa3072),
                4096 => Some(KeyType::Rsa4096),
                _ => None,
            };
            (kt, format!("RSA-{bits}"))
        }
        Id::EC => {
            let nid = key.ec_key().ok().and_then(|ec| ec.group().curve_name());
            let kt = match nid {
                Some(Nid::X9_62_PRIME256V1) => Some(KeyType::P256),
                Some(Nid::SECP384R1) => Some(KeyType::P384),
                _ => None,
            };
            let curve = nid
                .and_then(|n| n.short_name().ok())
                .unwrap_or("with explicit parameters");
            (kt, format!("EC {curve}"))
        }
        Id::ED25519 => (None, "Ed25519".to_string()),
        Id::ED448 => (None, "Ed448".to_string()),
        Id::DSA => (None, "DSA".to_string()),
        _ => (None, "this key algorithm".to_string()),
    }
}

/// Upper bounds (in characters) of the subject attributes, from X.520 / RFC 5280 appendix A.
fn upper_bound(nid: Nid) -> Option<(&'static str, usize)> {
    Some(match nid {
        Nid::COMMONNAME => ("CN", 64),
        Nid::ORGANIZATIONNAME => ("O", 64),
        Nid::ORGANIZATIONALUNITNAME => ("OU", 64),
        Nid::LOCALITYNAME => ("L", 128),
        Nid::STATEORPROVINCENAME => ("ST", 128),
        Nid::COUNTRYNAME => ("C", 2),
        Nid::SERIALNUMBER => ("serialNumber", 64),
        Nid::TITLE => ("title", 64),
        Nid::PKCS9_EMAILADDRESS => ("emailAddress", 255),
        _ => return None,
    })
}

fn check_subject(name: &X509NameRef) -> Result<(), Error> {
    if name.entries().next().is_none() {
        return Err(Error::PolicyViolation("the CSR subject is empty".into()));
    }
    for entry in name.entries() {
        let nid = entry.object().nid();
        let value = entry
            .data()
            .to_string()
            .map_err(|_| Error::PolicyViolation("a subject attribute is not valid text".into()))?;
        if value.contains('\0') {
            return Err(Error::PolicyViolation(
                "a subject attribute holds a NUL character".into(),
            ));
        }
        let chars = value.chars().count();
        let (label, max) = upper_bound(nid).unwrap_or(("attribute", 256));
        if chars == 0 {
            return Err(Error::PolicyViolation(format!(
                "the subject {label} is empty"
            )));
        }
        if chars > max {
            return Err(Error::PolicyViolation(format!(
                "the subject {label} is {chars} characters long; the limit is {max}"
            )));
        }
    }
    Ok(())
}

/// `CN=...,O=...` with each value escaped for a log line.
pub fn subject_for_log(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "<not text>".into());
            format!("{key}={}", crate::error::Escaped(&value))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openssl::{
        ec::{EcGroup, EcKey},
        pkey::Private,
        rsa::Rsa,
        stack::Stack,
        x509::{extension::BasicConstraints, X509NameBuilder, X509ReqBuilder},
    };

    pub fn rsa(bits: u32) -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
    }

    pub fn ec(nid: Nid) -> PKey<Private> {
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap())
            .unwrap()
    }

    pub fn csr_with(key: &PKey<Private>, cn: &str, ca: bool) -> String {
        let mut b = X509ReqBuilder::new().unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        if !cn.is_empty() {
            // A raw UTF8String: OpenSSL's own upper bounds would refuse the over-long CNs
            // that the validation must be shown to refuse.
            name.append_entry_by_text_with_type("CN", cn, openssl::asn1::Asn1Type::UTF8STRING)
                .unwrap();
        }
        b.set_subject_name(&name.build()).unwrap();
        b.set_pubkey(key).unwrap();
        if ca {
            let mut exts = Stack::new().unwrap();
            exts.push(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.add_extensions(&exts).unwrap();
        }
        let md = if key.id() == Id::ED25519 {
            MessageDigest::null()
        } else {
            MessageDigest::sha256()
        };
        b.sign(key, md).unwrap();
        String::from_utf8(b.build().to_pem().unwrap()).unwrap()
    }

    fn ec_csr() -> String {
        csr_with(&ec(Nid::X9_62_PRIME256V1), "hmc01", false)
    }

    fn name_of(r: Result<ValidCsr, Error>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|e| e.dbus_name())
    }

    #[test]
    fn accepts_a_plain_csr_and_reports_its_facts() {
        let pem = ec_csr();
        let v = validate(&pem, &Policy::default()).unwrap();
        assert_eq!(v.key_type, KeyType::P256);
        assert_eq!(v.subject, "CN=hmc01");
        assert_eq!(v.pem, pem);
        assert_eq!(v.fingerprint_hex().len(), 64);
    }

    #[test]
    fn line_endings_whitespace_and_old_label_give_the_same_der() {
        let pem = ec_csr();
        let der = intake(&pem, 16384).unwrap();
        let crlf = pem.replace('\n', "\r\n");
        let padded = format!("\n\n   {pem}  \n\n");
        let no_final = pem.trim_end().to_string();
        let old = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        for variant in [crlf, padded, no_final, old] {
            assert_eq!(intake(&variant, 16384).unwrap(), der);
        }
    }

    #[test]
    fn nul_is_refused_by_intake() {
        let pem = ec_csr().replacen('\n', "\n\0", 1);
        assert_eq!(
            intake(&pem, 16384).unwrap_err(),
            Error::MalformedCsr("the CSR contains a NUL character".into())
        );
    }

    #[test]
    fn size_cap_comes_first() {
        let big = "A".repeat(17 * 1024);
        assert_eq!(
            intake(&big, 16384).unwrap_err(),
            Error::MalformedCsr("the CSR is 17408 bytes long; the limit is 16384".into())
        );
        // Even a NUL is not looked at past the cap.
        let big_nul = format!("{big}\0");
        assert!(intake(&big_nul, 16384)
            .unwrap_err()
            .to_string()
            .contains("limit is 16384"));
    }

    #[test]
    fn malformed_shapes() {
        let pem = ec_csr();
        let body_only: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let cases = [
            (String::new(), "the CSR is empty"),
            (
                pem.replace(
                    "-----END CERTIFICATE REQUEST",
                    "-----END NEW CERTIFICATE REQUEST",
                ),
                "the CSR's BEGIN and END labels differ",
            ),
            (
                pem.trim_end().replace('\n', "\\n"),
                "the CSR is not PEM: it holds a literal backslash-n where a line break belongs",
            ),
            (
                body_only,
                "the CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- line",
            ),
            (
                format!("{pem}{pem}"),
                "the input holds more than one PEM block or text after the END line",
            ),
            (
                format!("hello\n{pem}"),
                "the CSR has text before its BEGIN line",
            ),
            (
                pem.replace("CERTIFICATE REQUEST", "CERTIFICATE"),
                "the PEM block is not a certificate request (expected BEGIN CERTIFICATE REQUEST)",
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(
                intake(&input, 16384).unwrap_err(),
                Error::MalformedCsr(msg.into())
            );
        }
    }

    #[test]
    fn flipped_signature_fails_proof_of_possession() {
        let key = rsa(2048);
        let pem = csr_with(&key, "hmc01", false);
        let mut der = intake(&pem, 16384).unwrap();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            openssl::base64::encode_block(&der)
        );
        assert_eq!(
            validate(&tampered, &Policy::default()).unwrap_err(),
            Error::PolicyViolation(
                "the CSR's signature does not verify with its own key (no proof of possession)"
                    .into()
            )
        );
    }

    #[test]
    fn key_policy_names_the_algorithm() {
        let p = Policy::default();
        let e = validate(&csr_with(&rsa(1024), "x", false), &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "RSA-1024 keys are not accepted (allowed: RSA-2048, RSA-3072, RSA-4096, EC P-256, EC P-384)"
        );
        let ed = PKey::generate_ed25519().unwrap();
        let e = validate(&csr_with(&ed, "x", false), &p).unwrap_err();
        assert!(
            e.to_string().starts_with("Ed25519 keys are not accepted"),
            "{e}"
        );
        let e = validate(&csr_with(&ec(Nid::BRAINPOOL_P256R1), "x", false), &p).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("EC brainpoolP256r1 keys are not accepted"),
            "{e}"
        );
        assert_eq!(e.dbus_name(), "InvalidArgument");
        let only_p384 = Policy {
            key_types: vec![KeyType::P384],
            ..Policy::default()
        };
        assert_eq!(name_of(validate(&ec_csr(), &only_p384)), "InvalidArgument");
        assert_eq!(
            name_of(validate(
                &csr_with(&ec(Nid::SECP384R1), "x", false),
                &only_p384
            )),
            "ok"
        );
    }

    #[test]
    fn subject_rules() {
        let key = ec(Nid::X9_62_PRIME256V1);
        let p = Policy::default();
        assert_eq!(
            validate(&csr_with(&key, "", false), &p).unwrap_err(),
            Error::PolicyViolation("the CSR subject is empty".into())
        );
        assert_eq!(
            validate(&csr_with(&key, &"x".repeat(65), false), &p).unwrap_err(),
            Error::PolicyViolation("the subject CN is 65 characters long; the limit is 64".into())
        );
        // 64 characters, counted as characters not bytes
        assert_eq!(
            name_of(validate(&csr_with(&key, &"ü".repeat(64), false), &p)),
            "ok"
        );
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// A CSR assembled by hand from `version`, `subject` and `attributes` (the content of
    /// `[0]`), signed by `key` with ECDSA-SHA256: for encodings no builder will produce.
    fn assembled(key: &PKey<Private>, version: &[u8], subject: &[u8], attributes: &[u8]) -> String {
        let spki = key.public_key_to_der().unwrap();
        let info = tlv(
            0x30,
            &[version, subject, &spki, &tlv(0xa0, attributes)].concat(),
        );
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), key).unwrap();
        signer.update(&info).unwrap();
        let signature = [&[0u8][..], &signer.sign_to_vec().unwrap()].concat();
        let ecdsa_sha256 = tlv(
            0x30,
            &tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
        );
        let der = tlv(0x30, &[info, ecdsa_sha256, tlv(0x03, &signature)].concat());
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            openssl::base64::encode_block(&der)
        )
    }

    fn cn_x() -> Vec<u8> {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "x").unwrap();
        name.build().to_der().unwrap()
    }

    fn extension_request(oid: &[u8], extensions: &[Vec<u8>]) -> Vec<u8> {
        let exts = tlv(0x30, &extensions.concat());
        tlv(0x30, &[tlv(0x06, oid), tlv(0x31, &exts)].concat())
    }

    fn extension(oid: &[u8], value: &[u8]) -> Vec<u8> {
        tlv(0x30, &[tlv(0x06, oid), tlv(0x04, value)].concat())
    }

    #[test]
    fn hand_assembled_csr_is_accepted_as_the_baseline() {
        let key = ec(Nid::X9_62_PRIME256V1);
        let csr = assembled(&key, &[0x02, 0x01, 0x00], &cn_x(), &[]);
        assert_eq!(name_of(validate(&csr, &Policy::default())), "ok");
    }

    #[test]
    fn version_is_read_from_the_der() {
        let key = ec(Nid::X9_62_PRIME256V1);
        for version in [
            &[0x02, 0x01, 0x01][..],
            &[0x02, 0x05, 0x01, 0, 0, 0, 0],
            &[0x02, 0x01, 0xff],
        ] {
            let csr = assembled(&key, version, &cn_x(), &[]);
            assert_eq!(
                validate(&csr, &Policy::default()).unwrap_err(),
                Error::PolicyViolation(
                    "the CSR's version is not 1 (the only version PKCS#10 defines)".into()
                ),
                "{version:02x?}"
            );
        }
    }

    #[test]
    fn microsoft_extension_request_is_checked_too() {
        let key = ec(Nid::X9_62_PRIME256V1);
        let ca_true = extension(
            der::oids::BASIC_CONSTRAINTS,
            &[0x30, 0x03, 0x01, 0x01, 0xff],
        );
        let attrs = extension_request(der::oids::MS_EXTENSION_REQUEST, &[ca_true]);
        let csr = assembled(&key, &[0x02, 0x01, 0x00], &cn_x(), &attrs);
        assert_eq!(
            validate(&csr, &Policy::default()).unwrap_err(),
            Error::CaCapabilityRequested("basicConstraints CA:TRUE")
        );
    }

    #[test]
    fn empty_or_repeated_subject_alt_names_are_refused() {
        let key = ec(Nid::X9_62_PRIME256V1);
        let empty = extension(der::oids::SUBJECT_ALT_NAME, &[0x30, 0x00]);
        let attrs = extension_request(der::oids::EXTENSION_REQUEST, &[empty]);
        let csr = assembled(&key, &[0x02, 0x01, 0x00], &cn_x(), &attrs);
        assert_eq!(
            validate(&csr, &Policy::default()).unwrap_err(),
            Error::MalformedCsr("the CSR's subjectAltName extension is empty".into())
        );
        // dNSName "a", twice in two extensions: each within the limit, together past it.
        let san = extension(der::oids::SUBJECT_ALT_NAME, &[0x30, 0x03, 0x82, 0x01, b'a']);
        let attrs = extension_request(der::oids::EXTENSION_REQUEST, &[san.clone(), san]);
        let csr = assembled(&key, &[0x02, 0x01, 0x00], &cn_x(), &attrs);
        assert_eq!(
            validate(&csr, &Policy::default()).unwrap_err(),
            Error::MalformedCsr("the CSR requests the same extension twice".into())
        );
    }

    #[test]
    fn non_minimal_lengths_are_not_der() {
        let key = ec(Nid::X9_62_PRIME256V1);
        // The subject with a long-form length where the short form fits.
        let subject = cn_x();
        let long_form = [&[0x30, 0x81][..], &subject[1..]].concat();
        let csr = assembled(&key, &[0x02, 0x01, 0x00], &long_form, &[]);
        assert_eq!(
            validate(&csr, &Policy::default()).unwrap_err(),
            Error::MalformedCsr("the CSR's structure is not valid".into())
        );
    }

    #[test]
    fn explicit_curve_parameters_are_refused() {
        let mut group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        group.set_asn1_flag(openssl::ec::Asn1Flag::EXPLICIT_CURVE);
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let e = validate(&csr_with(&key, "x", false), &Policy::default()).unwrap_err();
        assert_eq!(
            e,
            Error::PolicyViolation(
                "EC keys with explicit curve parameters are not accepted; use a named curve".into()
            )
        );
    }

    #[test]
    fn ca_capability_is_not_allowed() {
        let e = validate(
            &csr_with(&ec(Nid::X9_62_PRIME256V1), "x", true),
            &Policy::default(),
        )
        .unwrap_err();
        assert_eq!(e, Error::CaCapabilityRequested("basicConstraints CA:TRUE"));
        assert_eq!(e.dbus_name(), "NotAllowed");
    }
}
