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
    // A CR left before a LF (CRLF converted twice gives CR CR LF) is trimmed with the line; a
    // CR anywhere else would hide a line break.
    if text
        .as_bytes()
        .windows(2)
        .any(|w| w[0] == b'\r' && w[1] != b'\n')
    {
        return Err(malformed(
            "the CSR's lines end in a carriage return alone; use LF or CRLF line endings",
        ));
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
    if begin_label.contains("-----") {
        return Err(malformed(
            "the CSR is not PEM: its BEGIN line runs on (the line breaks are missing)",
        ));
    }
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
    // OpenSSL's decoder reads a '=' inside the body as zero bits: two texts would give one
    // request. Padding belongs at the end only.
    let padding = body.len() - body.trim_end_matches('=').len();
    if !body.len().is_multiple_of(4) || padding > 2 || body[..body.len() - padding].contains('=') {
        return Err(malformed("the CSR body is not valid base64"));
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
    check_signature_algorithm(&parts)?;
    if key_type.is_rsa() {
        check_rsa_key(&public_key)?;
    }
    if !req.verify(&public_key).unwrap_or(false) {
        return Err(Error::PolicyViolation(
            "the CSR's signature does not verify with its own key (no proof of possession)".into(),
        ));
    }
    check_subject(req.subject_name())?;
    check_subject_encoding(parts.subject)?;
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
                let names = der::sequence_items(ext.value).map_err(|_| bad())?;
                if names.is_empty() {
                    return Err(malformed("the CSR's subjectAltName extension is empty"));
                }
                if names.len() > policy.max_sans {
                    return Err(Error::PolicyViolation(format!(
                        "the CSR asks for {} subject alternative names; the limit is {}",
                        names.len(),
                        policy.max_sans
                    )));
                }
                for name in &names {
                    check_general_name(name)?;
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

/// Only SHA-2 signatures are accepted: an allow list, because MD5 and SHA-1 have more OIDs
/// (OIW's, RSASSA-PSS with default parameters) than any deny list would name.
fn check_signature_algorithm(parts: &der::CsrParts<'_>) -> Result<(), Error> {
    use der::oids::*;
    let refused = || {
        Error::PolicyViolation(
            "the CSR's signature algorithm is not accepted; sign it with SHA-256, SHA-384 or \
             SHA-512 (RSA PKCS#1 v1.5, RSASSA-PSS or ECDSA)"
                .into(),
        )
    };
    let alg = parts.signature_algorithm;
    if [
        SHA256_WITH_RSA,
        SHA384_WITH_RSA,
        SHA512_WITH_RSA,
        ECDSA_WITH_SHA256,
        ECDSA_WITH_SHA384,
        ECDSA_WITH_SHA512,
    ]
    .contains(&alg)
    {
        return Ok(());
    }
    if alg != RSASSA_PSS {
        return Err(refused());
    }
    let params = parts.signature_parameters.ok_or_else(refused)?;
    let digests = der::pss_digests(params).map_err(|_| refused())?;
    let sha2 = |d: Option<&[u8]>| d.is_some_and(|d| [SHA256, SHA384, SHA512].contains(&d));
    if sha2(digests.message) && sha2(digests.mgf1) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// An RSA key whose exponent is 1 (or even) proves nothing: with e = 1 anyone can compute a
/// "signature" without a private key. Same bounds as the CA/Browser Forum's: odd e from
/// 65537 to 2^256 - 1, and an odd modulus.
fn check_rsa_key(key: &PKey<Public>) -> Result<(), Error> {
    let rsa = key
        .rsa()
        .map_err(|_| malformed("the CSR's RSA key cannot be read"))?;
    let (n, e) = (rsa.n(), rsa.e());
    let e_ok = e.is_bit_set(0) && e.num_bits() <= 256 && e.num_bits() >= 17;
    if !e_ok || !n.is_bit_set(0) {
        return Err(Error::PolicyViolation(
            "the CSR's RSA key is not acceptable (the public exponent must be odd, at least \
             65537 and at most 2^256 - 1; the modulus odd)"
                .into(),
        ));
    }
    Ok(())
}

/// One GeneralName of the requested subjectAltName. The CA copies the extension as it is,
/// so it must hold only well-formed names of the kinds a client certificate uses.
fn check_general_name(name: &der::Tlv<'_>) -> Result<(), Error> {
    let bad = |what: &str| {
        Err(Error::PolicyViolation(format!(
            "the CSR's subjectAltName holds {what}"
        )))
    };
    match name.tag {
        0x82 if dns_name_ok(name.content, true) => Ok(()),
        0x82 => bad("a malformed DNS name"),
        0x81 if email_ok(name.content) => Ok(()),
        0x81 => bad("a malformed email address"),
        0x86 if uri_ok(name.content) => Ok(()),
        0x86 => bad("a malformed URI"),
        0x87 if [4, 16].contains(&name.content.len()) => Ok(()),
        0x87 => bad("an IP address that is neither 4 nor 16 bytes long"),
        _ => bad("a name type other than DNS, IP address, email or URI"),
    }
}

/// A host name in the preferred syntax of RFC 1034 section 3.5 (letters, digits and inner
/// hyphens; labels of 1 to 63, 253 in all; the last label not all digits, RFC 1123 section
/// 2.1, so a dotted IP address is not a host name), with the leftmost label `*` where
/// `wildcard` allows it and more than one label follows (no `*` or `*.com`).
fn dns_name_ok(name: &[u8], wildcard: bool) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&[u8]> = name.split(|b| *b == b'.').collect();
    let rest = match labels.split_first() {
        Some((first, rest)) if wildcard && *first == b"*" => {
            if rest.len() < 2 {
                return false;
            }
            rest
        }
        _ => &labels[..],
    };
    let last_ok = rest
        .last()
        .is_some_and(|l| !l.iter().all(u8::is_ascii_digit));
    last_ok
        && rest.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && !label.starts_with(b"-")
                && !label.ends_with(b"-")
        })
}

/// An rfc822Name (RFC 5280 section 4.2.1.6: RFC 2821's Mailbox): a Dot-string local part of
/// at most 64 octets, `@`, and a host name or a bracketed IPv4 address. Quoted local parts
/// are not accepted.
fn email_ok(name: &[u8]) -> bool {
    const ATEXT: &[u8] = b"!#$%&'*+-/=?^_`{|}~";
    let Some(at) = name.iter().position(|b| *b == b'@') else {
        return false;
    };
    let (local, domain) = (&name[..at], &name[at + 1..]);
    let local_ok = (1..=64).contains(&local.len())
        && local.split(|b| *b == b'.').all(|atom| {
            !atom.is_empty()
                && atom
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || ATEXT.contains(b))
        });
    let domain_ok = match domain.strip_prefix(b"[").and_then(|d| d.strip_suffix(b"]")) {
        Some(literal) => {
            std::str::from_utf8(literal).is_ok_and(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        }
        None => dns_name_ok(domain, false),
    };
    local_ok && domain_ok
}

/// A uniformResourceIdentifier: absolute, with a scheme (RFC 3986 section 3.1) and something
/// after it, only the characters RFC 3986 allows (percent escapes complete, at most one `#`);
/// with an authority, its host is a host name, an IPv4 address or a bracketed IPv6 address,
/// and its port digits (RFC 5280 section 4.2.1.6).
fn uri_ok(uri: &[u8]) -> bool {
    const ALLOWED: &[u8] = b"-._~:/?#[]@!$&'()*+,;=%";
    if !uri
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || ALLOWED.contains(b))
    {
        return false;
    }
    // Every '%' starts an escape of two hex digits.
    let escapes_ok = uri.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || uri
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    // The checks above leave ASCII only.
    let uri = std::str::from_utf8(uri).unwrap_or_default();
    if !escapes_ok || uri.matches('#').count() > 1 {
        return false;
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok || rest.is_empty() {
        return false;
    }
    let Some(after) = rest.strip_prefix("//") else {
        // Brackets belong to an IPv6 host only.
        return !rest.contains(['[', ']']);
    };
    let (authority, path) = after.split_at(after.find(['/', '?', '#']).unwrap_or(after.len()));
    if path.contains(['[', ']']) {
        return false;
    }
    // userinfo holds no '@' (RFC 3986 section 3.2.1).
    let host_port = match authority.split_once('@') {
        Some((userinfo, host_port)) if !userinfo.contains(['[', ']']) => host_port,
        Some(_) => return false,
        None => authority,
    };
    let (host_ok, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, port)) => (addr.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => (false, ""),
        }
    } else {
        // The port keeps its ':' so that a stray character after the host is caught.
        let (host, port) = host_port.split_at(host_port.find(':').unwrap_or(host_port.len()));
        let ok = host.parse::<std::net::Ipv4Addr>().is_ok() || dns_name_ok(host.as_bytes(), false);
        (ok, port)
    };
    // port = *DIGIT: an empty port is allowed.
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// The string types of subject values, checked against their character sets: OpenSSL copies
/// them into the certificate as they are, whatever bytes they hold.
fn check_subject_encoding(subject: &[u8]) -> Result<(), Error> {
    let values =
        der::name_values(subject).map_err(|_| malformed("the CSR's subject cannot be parsed"))?;
    for value in values {
        let content = value.content;
        let ok = match value.tag {
            // PrintableString
            0x13 => content
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(b)),
            // IA5String, VisibleString
            0x16 | 0x1a => content.iter().all(|b| (0x20..=0x7e).contains(b)),
            // NumericString
            0x12 => content.iter().all(|b| b.is_ascii_digit() || *b == b' '),
            // UTF8String; BMPString, UniversalString and T61String are converted by OpenSSL.
            0x0c => std::str::from_utf8(content).is_ok(),
            0x1e | 0x1c | 0x14 => true,
            _ => false,
        };
        if !ok {
            return Err(Error::PolicyViolation(
                "a subject attribute holds characters its string type does not allow".into(),
            ));
        }
    }
    Ok(())
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
    let what = match name.as_str() {
        UNKNOWN_ALGORITHM => "keys of this algorithm".to_string(),
        EC_UNREADABLE => "EC keys whose public point cannot be read".to_string(),
        _ => format!("{name} keys"),
    };
    match found {
        Some(kt) if policy.key_types.contains(&kt) => Ok(kt),
        _ => Err(Error::PolicyViolation(format!(
            "{what} are not accepted (allowed: {})",
            allowed()
        ))),
    }
}

const UNKNOWN_ALGORITHM: &str = "unknown algorithm";
const EC_UNREADABLE: &str = "EC (unreadable point)";

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
            // A point OpenSSL cannot load (the point at infinity, say) leaves no EC key.
            let Ok(ec) = key.ec_key() else {
                return (None, EC_UNREADABLE.to_string());
            };
            let nid = ec.group().curve_name();
            let kt = match nid {
                Some(Nid::X9_62_PRIME256V1) => Some(KeyType::P256),
                Some(Nid::SECP384R1) => Some(KeyType::P384),
                _ => None,
            };
            // The policy's names for the curves it knows, so a message and its "allowed" list
            // speak alike.
            let name = match (kt, nid.and_then(|n| n.short_name().ok())) {
                (Some(kt), _) => kt.to_string(),
                (None, Some(curve)) => format!("EC {curve}"),
                (None, None) => "EC (explicit parameters)".to_string(),
            };
            (kt, name)
        }
        Id::RSA_PSS => (None, "RSA-PSS".to_string()),
        Id::ED25519 => (None, "Ed25519".to_string()),
        Id::ED448 => (None, "Ed448".to_string()),
        Id::DSA => (None, "DSA".to_string()),
        _ => (None, UNKNOWN_ALGORITHM.to_string()),
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
        // Line breaks and escape sequences have no place in a name, and would reach every log
        // and user interface that shows the certificate.
        if value.chars().any(char::is_control) {
            return Err(Error::PolicyViolation(
                "a subject attribute holds a control character".into(),
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

/// `CN=...,O=...` for logs and terminals: each value escaped, and a `,` or `+` inside a value
/// written `\,` / `\+` (as RFC 4514 does) so that a value cannot pass for another attribute.
pub fn subject_for_log(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "<not text>".into());
            let value = crate::error::Escaped(&value)
                .to_string()
                .replace(',', "\\,")
                .replace('+', "\\+");
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openssl::{
        bn::BigNum,
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
        // CRLF converted to CRLF once more on its way.
        let cr_crlf = pem.replace('\n', "\r\r\n");
        for variant in [crlf, padded, no_final, old, cr_crlf] {
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
                pem.replace('\n', "\r"),
                "the CSR's lines end in a carriage return alone; use LF or CRLF line endings",
            ),
            (
                pem.replace('\n', ""),
                "the CSR is not PEM: its BEGIN line runs on (the line breaks are missing)",
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
        // A curve the policy knows is named as the policy names it.
        assert_eq!(
            validate(&ec_csr(), &only_p384).unwrap_err().to_string(),
            "EC P-256 keys are not accepted (allowed: EC P-384)"
        );
        assert_eq!(
            name_of(validate(
                &csr_with(&ec(Nid::SECP384R1), "x", false),
                &only_p384
            )),
            "ok"
        );
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new_id(Id::RSA_PSS).unwrap();
        ctx.keygen_init().unwrap();
        ctx.set_rsa_keygen_bits(2048).unwrap();
        let pss = ctx.keygen().unwrap();
        assert_eq!(
            validate(&csr_with(&pss, "x", false), &p).unwrap_err().to_string(),
            "RSA-PSS keys are not accepted (allowed: RSA-2048, RSA-3072, RSA-4096, EC P-256, EC P-384)"
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
        let info = request_info(
            &key.public_key_to_der().unwrap(),
            version,
            subject,
            attributes,
        );
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), key).unwrap();
        signer.update(&info).unwrap();
        let ecdsa_sha256 = tlv(0x30, &tlv(0x06, der::oids::ECDSA_WITH_SHA256));
        signed_pem(&info, &ecdsa_sha256, &signer.sign_to_vec().unwrap())
    }

    fn request_info(spki: &[u8], version: &[u8], subject: &[u8], attributes: &[u8]) -> Vec<u8> {
        tlv(
            0x30,
            &[version, subject, spki, &tlv(0xa0, attributes)].concat(),
        )
    }

    fn signed_pem(info: &[u8], algorithm: &[u8], signature: &[u8]) -> String {
        let bits = [&[0u8][..], signature].concat();
        let der = tlv(0x30, &[info, algorithm, &tlv(0x03, &bits)].concat());
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            openssl::base64::encode_block(&der)
        )
    }

    /// An RSA-2048 CSR for `/CN=x` whose signature algorithm field says `algorithm` and whose
    /// signature is made with `md` (PKCS#1 v1.5).
    fn rsa_signed_as(key: &PKey<Private>, md: MessageDigest, algorithm: &[u8]) -> String {
        let info = request_info(&key.public_key_to_der().unwrap(), &[2, 1, 0], &cn_x(), &[]);
        let mut signer = openssl::sign::Signer::new(md, key).unwrap();
        signer.update(&info).unwrap();
        signed_pem(&info, algorithm, &signer.sign_to_vec().unwrap())
    }

    fn algorithm(oid: &[u8], parameters: &[u8]) -> Vec<u8> {
        tlv(0x30, &[&tlv(0x06, oid)[..], parameters].concat())
    }

    /// A CSR carrying one requested extension.
    fn with_extension(oid: &[u8], value: &[u8]) -> String {
        let key = ec(Nid::X9_62_PRIME256V1);
        let attrs = extension_request(der::oids::EXTENSION_REQUEST, &[extension(oid, value)]);
        assembled(&key, &[0x02, 0x01, 0x00], &cn_x(), &attrs)
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

    #[test]
    fn rsa_keys_that_prove_nothing_are_refused() {
        let refused = Error::PolicyViolation(
            "the CSR's RSA key is not acceptable (the public exponent must be odd, at least \
             65537 and at most 2^256 - 1; the modulus odd)"
                .into(),
        );
        // e = 1: the "signature" is the padded digest itself, made without any private key.
        let real = rsa(2048);
        let n = real.rsa().unwrap().n().to_owned().unwrap();
        let e_one =
            openssl::rsa::Rsa::from_public_components(n, BigNum::from_u32(1).unwrap()).unwrap();
        let spki = PKey::from_rsa(e_one).unwrap().public_key_to_der().unwrap();
        let info = request_info(&spki, &[2, 1, 0], &cn_x(), &[]);
        let digest_info = [
            &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ][..],
            &openssl::sha::sha256(&info),
        ]
        .concat();
        let mut em = vec![0x00, 0x01];
        em.resize(256 - digest_info.len() - 1, 0xff);
        em.push(0x00);
        em.extend(&digest_info);
        let sha256_rsa = algorithm(der::oids::SHA256_WITH_RSA, &[0x05, 0x00]);
        let forged = signed_pem(&info, &sha256_rsa, &em);
        assert_eq!(validate(&forged, &Policy::default()).unwrap_err(), refused);

        // e = 3, a real key pair: still refused.
        let small_e =
            openssl::rsa::Rsa::generate_with_e(2048, &BigNum::from_u32(3).unwrap()).unwrap();
        let csr = csr_with(&PKey::from_rsa(small_e).unwrap(), "x", false);
        assert_eq!(validate(&csr, &Policy::default()).unwrap_err(), refused);
        assert_eq!(
            name_of(validate(&csr_with(&real, "x", false), &Policy::default())),
            "ok"
        );
    }

    #[test]
    fn only_sha2_signatures_are_accepted() {
        let refused = Error::PolicyViolation(
            "the CSR's signature algorithm is not accepted; sign it with SHA-256, SHA-384 or \
             SHA-512 (RSA PKCS#1 v1.5, RSASSA-PSS or ECDSA)"
                .into(),
        );
        let key = rsa(2048);
        let rsa_oid = |last: u8| [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last];
        let null = [0x05, 0x00];
        let cases = [
            // md5WithRSAEncryption, sha1WithRSAEncryption, sha224WithRSAEncryption
            (MessageDigest::md5(), algorithm(&rsa_oid(4), &null)),
            (MessageDigest::sha1(), algorithm(&rsa_oid(5), &null)),
            (MessageDigest::sha224(), algorithm(&rsa_oid(14), &null)),
            // OIW's sha1WithRSA (1.3.14.3.2.29) and md5WithRSA (1.3.14.3.2.3)
            (
                MessageDigest::sha1(),
                algorithm(&[0x2b, 0x0e, 0x03, 0x02, 0x1d], &null),
            ),
            (
                MessageDigest::md5(),
                algorithm(&[0x2b, 0x0e, 0x03, 0x02, 0x03], &null),
            ),
            // RSASSA-PSS with its DEFAULT parameters: SHA-1.
            (
                MessageDigest::sha1(),
                algorithm(der::oids::RSASSA_PSS, &[0x30, 0x00]),
            ),
        ];
        for (md, alg) in cases {
            let csr = rsa_signed_as(&key, md, &alg);
            assert_eq!(
                validate(&csr, &Policy::default()).unwrap_err(),
                refused,
                "{alg:02x?}"
            );
        }
        let sha256_rsa = algorithm(der::oids::SHA256_WITH_RSA, &null);
        let csr = rsa_signed_as(&key, MessageDigest::sha256(), &sha256_rsa);
        assert_eq!(name_of(validate(&csr, &Policy::default())), "ok");
        let sha512_rsa = algorithm(der::oids::SHA512_WITH_RSA, &null);
        let csr = rsa_signed_as(&key, MessageDigest::sha512(), &sha512_rsa);
        assert_eq!(name_of(validate(&csr, &Policy::default())), "ok");
    }

    #[test]
    fn pss_parameters_must_name_sha2_for_the_digest_and_mgf1() {
        let hash = |oid: &[u8]| tlv(0x30, &[tlv(0x06, oid), vec![0x05, 0x00]].concat());
        let mgf1 = |oid: &[u8]| tlv(0x30, &[tlv(0x06, der::oids::MGF1), hash(oid)].concat());
        let sha1 = [0x2b, 0x0e, 0x03, 0x02, 0x1a];
        let params = |digest: Option<&[u8]>, mgf: Option<&[u8]>| {
            let mut content = Vec::new();
            if let Some(d) = digest {
                content.extend(tlv(0xa0, &hash(d)));
            }
            if let Some(m) = mgf {
                content.extend(tlv(0xa1, &mgf1(m)));
            }
            content.extend(tlv(0xa2, &[0x02, 0x01, 0x20]));
            let content = tlv(0x30, &content);
            der::pss_digests(der::Reader::new(&content).next().unwrap())
                .map(|d| (d.message.map(<[u8]>::to_vec), d.mgf1.map(<[u8]>::to_vec)))
        };
        let sha256 = der::oids::SHA256.to_vec();
        assert_eq!(
            params(Some(&sha256), Some(&sha256)),
            Ok((Some(sha256.clone()), Some(sha256.clone())))
        );
        assert_eq!(
            params(Some(&sha256), None),
            Ok((Some(sha256.clone()), None))
        );
        assert_eq!(params(Some(&sha1), Some(&sha256)).unwrap().0.unwrap(), sha1);
    }

    #[test]
    fn subject_alt_names_are_checked_name_by_name() {
        let san = der::oids::SUBJECT_ALT_NAME;
        let refused =
            |what: &str| Error::PolicyViolation(format!("the CSR's subjectAltName holds {what}"));
        let seq = |names: &[Vec<u8>]| tlv(0x30, &names.concat());
        let cases = [
            (
                seq(&[tlv(0x89, b"abc")]),
                Err(refused(
                    "a name type other than DNS, IP address, email or URI",
                )),
            ),
            (
                seq(&[tlv(0xa0, &[0x02, 0x01, 0x02])]),
                Err(refused(
                    "a name type other than DNS, IP address, email or URI",
                )),
            ),
            (
                seq(&[tlv(0xa2, &tlv(0x16, b"a"))]),
                Err(refused(
                    "a name type other than DNS, IP address, email or URI",
                )),
            ),
            (
                seq(&[tlv(0x82, b"evil.com\0.good.com")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, &[0xff, 0xfe])]),
                Err(refused("a malformed DNS name")),
            ),
            (seq(&[tlv(0x82, b"")]), Err(refused("a malformed DNS name"))),
            (
                seq(&[tlv(0x87, &[192, 0, 2])]),
                Err(refused("an IP address that is neither 4 nor 16 bytes long")),
            ),
            (
                seq(&[tlv(0x81, b"no-at-sign")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(0x86, b"https://a b")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x82, b"a..com")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, b"*")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, b"*.com")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, b"-a.com")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, b"a-.com")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, b"a.*.com")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, b"f*o.com")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, b"a.com.")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, format!("{}.com", "y".repeat(64)).as_bytes())]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x82, ["a"; 128].join(".").as_bytes())]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x81, b"@b.com")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(0x81, b"a@")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(0x81, b"a@b..c")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(0x81, b"a@*.b.c")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(0x86, b"http://[::1")]),
                Err(refused("a malformed URI")),
            ),
            (seq(&[tlv(0x86, b"a:")]), Err(refused("a malformed URI"))),
            (
                seq(&[tlv(0x86, b"http://")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x86, b"//host/path")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x86, b"https://host:x/")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x82, b"192.0.2.7")]),
                Err(refused("a malformed DNS name")),
            ),
            (
                seq(&[tlv(0x86, b"https://999.999.999.999/")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x86, b"https://h.example/a<b>")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x86, b"https://h.example/%zz")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x86, b"https://h.example/[x]")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x86, b"a:b#c#d")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x86, b"https://a@b@h.example/")]),
                Err(refused("a malformed URI")),
            ),
            (
                seq(&[tlv(0x81, b"a..b@x.example")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(0x81, b".a@x.example")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(0x81, b"a<b>@x.example")]),
                Err(refused("a malformed email address")),
            ),
            (
                seq(&[tlv(
                    0x81,
                    format!("{}@x.example", "a".repeat(65)).as_bytes(),
                )]),
                Err(refused("a malformed email address")),
            ),
            (
                [seq(&[tlv(0x82, b"a.example")]), vec![0x05, 0x00]].concat(),
                Err(malformed(
                    "the CSR requests an extension that cannot be parsed",
                )),
            ),
            (
                seq(&[
                    tlv(0x82, b"hmc01.example.com"),
                    tlv(0x82, b"*.example.com"),
                    tlv(0x87, &[192, 0, 2, 7]),
                    tlv(
                        0x87,
                        &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    ),
                    tlv(0x81, b"admin@example.com"),
                    tlv(0x86, b"https://hmc01.example.com/"),
                    tlv(0x86, b"https://user@[2001:db8::1]:8443/vmi?x=1"),
                    tlv(0x86, b"https://192.0.2.7:443"),
                    tlv(0x86, b"urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
                    tlv(0x86, b"http://h.example:/a%20b?q=1#top"),
                    tlv(0x81, b"first.last+vmi@[192.0.2.1]"),
                    tlv(0x81, format!("{}@x.example", "a".repeat(64)).as_bytes()),
                    tlv(0x82, format!("{}.example", "y".repeat(63)).as_bytes()),
                    // 253 characters: the longest name.
                    tlv(0x82, ["a"; 127].join(".").as_bytes()),
                ]),
                Ok(()),
            ),
        ];
        for (value, expected) in cases {
            let got = validate(&with_extension(san, &value), &Policy::default()).map(|_| ());
            assert_eq!(got, expected, "{value:02x?}");
        }
    }

    #[test]
    fn the_san_limit_counts_names() {
        let names = |n: usize| {
            let one = tlv(0x82, b"a.example");
            tlv(0x30, &one.repeat(n))
        };
        let san = der::oids::SUBJECT_ALT_NAME;
        assert_eq!(
            name_of(validate(
                &with_extension(san, &names(32)),
                &Policy::default()
            )),
            "ok"
        );
        assert_eq!(
            validate(&with_extension(san, &names(33)), &Policy::default()).unwrap_err(),
            Error::PolicyViolation(
                "the CSR asks for 33 subject alternative names; the limit is 32".into()
            )
        );
        let two = Policy {
            max_sans: 2,
            ..Policy::default()
        };
        assert_eq!(
            name_of(validate(&with_extension(san, &names(3)), &two)),
            "InvalidArgument"
        );
    }

    #[test]
    fn key_cert_sign_and_crl_sign_are_not_allowed() {
        let ku = der::oids::KEY_USAGE;
        // BIT STRING: keyCertSign (bit 5), cRLSign (bit 6), digitalSignature (bit 0).
        assert_eq!(
            validate(
                &with_extension(ku, &[0x03, 0x02, 0x02, 0x04]),
                &Policy::default()
            )
            .unwrap_err(),
            Error::CaCapabilityRequested("keyUsage keyCertSign")
        );
        assert_eq!(
            validate(
                &with_extension(ku, &[0x03, 0x02, 0x01, 0x02]),
                &Policy::default()
            )
            .unwrap_err(),
            Error::CaCapabilityRequested("keyUsage cRLSign")
        );
        assert_eq!(
            name_of(validate(
                &with_extension(ku, &[0x03, 0x02, 0x07, 0x80]),
                &Policy::default()
            )),
            "ok"
        );
        // Non-critical CA:TRUE is still a request for CA capability.
        assert_eq!(
            validate(
                &with_extension(
                    der::oids::BASIC_CONSTRAINTS,
                    &[0x30, 0x03, 0x01, 0x01, 0xff]
                ),
                &Policy::default()
            )
            .unwrap_err()
            .dbus_name(),
            "NotAllowed"
        );
    }

    #[test]
    fn subject_strings_must_fit_their_type() {
        let key = ec(Nid::X9_62_PRIME256V1);
        let cn = |tag: u8, value: &[u8]| {
            let atv = tlv(
                0x30,
                &[tlv(0x06, &[0x55, 0x04, 0x03]), tlv(tag, value)].concat(),
            );
            tlv(0x30, &tlv(0x31, &atv))
        };
        let refused = Error::PolicyViolation(
            "a subject attribute holds characters its string type does not allow".into(),
        );
        for (tag, value) in [
            (0x16, &[b'a', 0xff, 0xfe][..]),
            (0x13, b"a@b"),
            (0x13, b"a*b"),
            (0x12, b"12a"),
        ] {
            let csr = assembled(&key, &[0x02, 0x01, 0x00], &cn(tag, value), &[]);
            assert_eq!(
                validate(&csr, &Policy::default()).unwrap_err(),
                refused,
                "{tag:02x} {value:02x?}"
            );
        }
        for (tag, value) in [
            (0x13, &b"HMC 01 (lab)"[..]),
            (0x16, b"hmc@lab"),
            (0x0c, "Zürich".as_bytes()),
        ] {
            let csr = assembled(&key, &[0x02, 0x01, 0x00], &cn(tag, value), &[]);
            assert_eq!(
                name_of(validate(&csr, &Policy::default())),
                "ok",
                "{tag:02x}"
            );
        }
        let csr = assembled(&key, &[0x02, 0x01, 0x00], &cn(0x0c, b"a\x1b[31mb"), &[]);
        assert_eq!(
            validate(&csr, &Policy::default()).unwrap_err(),
            Error::PolicyViolation("a subject attribute holds a control character".into())
        );
    }

    #[test]
    fn padding_belongs_at_the_end_of_the_base64() {
        let pem = ec_csr();
        let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
        let body_line = &mut lines[1];
        let at = body_line.find('A').expect("an A in the first body line");
        body_line.replace_range(at..at + 1, "=");
        let tampered = lines.join("\n");
        assert_eq!(
            intake(&tampered, 16384).unwrap_err(),
            Error::MalformedCsr("the CSR body is not valid base64".into())
        );
        let short = pem.replacen(&lines[2][..4], &lines[2][..3], 1);
        assert_eq!(
            intake(&short, 16384).unwrap_err(),
            Error::MalformedCsr("the CSR body is not valid base64".into())
        );
    }
}
