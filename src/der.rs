//! A minimal DER reader for the few X.509 fields the openssl crate does not expose: the
//! extension request of a CSR, and the basicConstraints, keyUsage, extendedKeyUsage and SAN
//! extensions of a certificate. The input has already been parsed by OpenSSL, so this only
//! walks structures; any surprise is reported, never guessed around.

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerError(pub &'static str);

pub type Result<T> = std::result::Result<T, DerError>;

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const OID: u8 = 0x06;
pub const BOOLEAN: u8 = 0x01;
pub const OCTET_STRING: u8 = 0x04;
pub const BIT_STRING: u8 = 0x03;
pub const INTEGER: u8 = 0x02;

/// Reads the elements of a constructed value one after another.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Reader { rest: input }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    pub fn next(&mut self) -> Result<Tlv<'a>> {
        let (&tag, rest) = self.rest.split_first().ok_or(DerError("unexpected end"))?;
        if tag & 0x1f == 0x1f {
            return Err(DerError("multi-byte tags are not used in X.509"));
        }
        let (&first, rest) = rest.split_first().ok_or(DerError("missing length"))?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return Err(DerError("bad length"));
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            // DER: the shortest form only, so one request has one encoding (and one dedupe key).
            if len < 0x80 || rest[0] == 0 {
                return Err(DerError("length not in its shortest form"));
            }
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err(DerError("length past the end"));
        }
        let (content, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(Tlv { tag, content })
    }

    /// The next element, which must carry `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<Tlv<'a>> {
        let tlv = self.next()?;
        if tlv.tag != tag {
            return Err(DerError("unexpected tag"));
        }
        Ok(tlv)
    }
}

/// One X.509 extension.
#[derive(Debug, Clone)]
pub struct Extension<'a> {
    pub oid: &'a [u8],
    pub critical: bool,
    pub value: &'a [u8],
}

/// DER contents (without tag and length) of the OIDs we look at.
pub mod oids {
    pub const EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
    /// Microsoft's extension request (1.3.6.1.4.1.311.2.1.14); OpenSSL honours it too.
    pub const MS_EXTENSION_REQUEST: &[u8] =
        &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x0e];
    pub const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    pub const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    pub const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    pub const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    pub const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
    pub const ANY_EXTENDED_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
    pub const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    pub const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    pub const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    pub const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    pub const MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
    pub const ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    pub const ECDSA_WITH_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    pub const ECDSA_WITH_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    pub const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    pub const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
}

/// Parses `Extensions ::= SEQUENCE OF Extension` (the content of the outer SEQUENCE).
pub fn extensions(seq_content: &[u8]) -> Result<Vec<Extension<'_>>> {
    let mut out = Vec::new();
    let mut reader = Reader::new(seq_content);
    while !reader.is_empty() {
        let ext = reader.expect(SEQUENCE)?;
        let mut fields = Reader::new(ext.content);
        let oid = fields.expect(OID)?.content;
        let mut critical = false;
        if fields.peek_tag() == Some(BOOLEAN) {
            critical = fields.next()?.content.first().is_some_and(|b| *b != 0);
        }
        let value = fields.expect(OCTET_STRING)?.content;
        out.push(Extension {
            oid,
            critical,
            value,
        });
    }
    Ok(out)
}

/// The parts of a PKCS#10 request that OpenSSL does not expose, or exposes lossily.
pub struct CsrParts<'a> {
    /// Content of the version INTEGER.
    pub version: &'a [u8],
    /// Content of the subject's `SEQUENCE OF RelativeDistinguishedName`.
    pub subject: &'a [u8],
    /// Tag of the subjectPublicKeyInfo algorithm parameters (OID for a named EC curve).
    pub key_parameters_tag: Option<u8>,
    pub extensions: Vec<Extension<'a>>,
    pub signature_algorithm: &'a [u8],
    /// What follows the signature algorithm's OID in its AlgorithmIdentifier.
    pub signature_parameters: Option<Tlv<'a>>,
}

/// Walks `CertificationRequest` to its `extensionRequest` attribute.
pub fn csr_parts(der: &[u8]) -> Result<CsrParts<'_>> {
    let outer = Reader::new(der).expect(SEQUENCE)?;
    let mut top = Reader::new(outer.content);
    let info = top.expect(SEQUENCE)?;
    let (signature_algorithm, signature_parameters) = {
        let alg = top.expect(SEQUENCE)?;
        let mut parts = Reader::new(alg.content);
        let oid = parts.expect(OID)?.content;
        let parameters = if parts.is_empty() {
            None
        } else {
            Some(parts.next()?)
        };
        if !parts.is_empty() {
            return Err(DerError("trailing data in the signature algorithm"));
        }
        (oid, parameters)
    };
    let mut fields = Reader::new(info.content);
    let version = fields.expect(INTEGER)?.content;
    let subject = fields.expect(SEQUENCE)?.content;
    let spki = fields.expect(SEQUENCE)?;
    let key_parameters_tag = {
        let algorithm = Reader::new(spki.content).expect(SEQUENCE)?;
        let mut parts = Reader::new(algorithm.content);
        parts.expect(OID)?;
        parts.peek_tag()
    };
    let mut extensions = Vec::new();
    if !fields.is_empty() {
        let attributes = fields.expect(0xa0)?; // [0] IMPLICIT SET OF Attribute
        let mut attrs = Reader::new(attributes.content);
        while !attrs.is_empty() {
            let attr = attrs.expect(SEQUENCE)?;
            let mut parts = Reader::new(attr.content);
            let oid = parts.expect(OID)?.content;
            let values = parts.expect(SET)?;
            if oid == oids::EXTENSION_REQUEST || oid == oids::MS_EXTENSION_REQUEST {
                let mut vals = Reader::new(values.content);
                while !vals.is_empty() {
                    let seq = vals.expect(SEQUENCE)?;
                    extensions.extend(self::extensions(seq.content)?);
                }
            }
        }
    }
    Ok(CsrParts {
        version,
        subject,
        key_parameters_tag,
        extensions,
        signature_algorithm,
        signature_parameters,
    })
}

/// The extensions of an X.509 certificate (`tbsCertificate.extensions`).
pub fn certificate_extensions(der: &[u8]) -> Result<Vec<Extension<'_>>> {
    let outer = Reader::new(der).expect(SEQUENCE)?;
    let tbs = Reader::new(outer.content).expect(SEQUENCE)?;
    let mut fields = Reader::new(tbs.content);
    while !fields.is_empty() {
        let field = fields.next()?;
        if field.tag == 0xa3 {
            let seq = Reader::new(field.content).expect(SEQUENCE)?;
            return extensions(seq.content);
        }
    }
    Ok(Vec::new())
}

/// Exactly one element carrying `tag`, and nothing after it.
pub fn only(value: &[u8], tag: u8) -> Result<Tlv<'_>> {
    let mut reader = Reader::new(value);
    let tlv = reader.expect(tag)?;
    if !reader.is_empty() {
        return Err(DerError("trailing data"));
    }
    Ok(tlv)
}

/// The elements of `SEQUENCE OF` (e.g. SAN GeneralNames), which must fill `value` exactly.
pub fn sequence_items(value: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let seq = only(value, SEQUENCE)?;
    let mut items = Reader::new(seq.content);
    let mut out = Vec::new();
    while !items.is_empty() {
        out.push(items.next()?);
    }
    Ok(out)
}

/// The attribute values of a Name (the content of its SEQUENCE), without their types.
pub fn name_values(subject: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let mut rdns = Reader::new(subject);
    let mut out = Vec::new();
    while !rdns.is_empty() {
        let rdn = rdns.expect(SET)?;
        let mut atvs = Reader::new(rdn.content);
        while !atvs.is_empty() {
            let atv = atvs.expect(SEQUENCE)?;
            let mut parts = Reader::new(atv.content);
            parts.expect(OID)?;
            let value = parts.next()?;
            if !parts.is_empty() {
                return Err(DerError("trailing data in an attribute"));
            }
            out.push(value);
        }
    }
    Ok(out)
}

/// The digests `RSASSA-PSS-params` name, by OID. An absent field is `None`: its DEFAULT is SHA-1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PssDigests<'a> {
    pub message: Option<&'a [u8]>,
    pub mgf1: Option<&'a [u8]>,
}

/// Reads `RSASSA-PSS-params`.
pub fn pss_digests(params: Tlv<'_>) -> Result<PssDigests<'_>> {
    if params.tag != SEQUENCE {
        return Err(DerError("RSASSA-PSS parameters are not a SEQUENCE"));
    }
    fn algorithm_oid(tlv: Tlv<'_>) -> Result<&[u8]> {
        let alg = only(tlv.content, SEQUENCE)?;
        Ok(Reader::new(alg.content).expect(OID)?.content)
    }
    let mut fields = Reader::new(params.content);
    let mut digests = PssDigests {
        message: None,
        mgf1: None,
    };
    while !fields.is_empty() {
        let field = fields.next()?;
        match field.tag {
            0xa0 => digests.message = Some(algorithm_oid(field)?),
            0xa1 => {
                let mgf = only(field.content, SEQUENCE)?;
                let mut parts = Reader::new(mgf.content);
                if parts.expect(OID)?.content != oids::MGF1 {
                    return Err(DerError(
                        "RSASSA-PSS with a mask generation other than MGF1",
                    ));
                }
                let hash = parts.expect(SEQUENCE)?;
                digests.mgf1 = Some(Reader::new(hash.content).expect(OID)?.content);
            }
            0xa2 | 0xa3 => {}
            _ => return Err(DerError("unexpected field in RSASSA-PSS parameters")),
        }
    }
    Ok(digests)
}

/// `BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, ... }`: the cA flag.
pub fn basic_constraints_ca(value: &[u8]) -> Result<bool> {
    let seq = only(value, SEQUENCE)?;
    let mut fields = Reader::new(seq.content);
    if fields.peek_tag() == Some(BOOLEAN) {
        return Ok(fields.next()?.content.first().is_some_and(|b| *b != 0));
    }
    Ok(false)
}

/// `KeyUsage ::= BIT STRING`: whether bit `n` (0 = digitalSignature) is set.
pub fn key_usage_bit(value: &[u8], n: usize) -> Result<bool> {
    let bits = only(value, BIT_STRING)?;
    let bytes = bits.content.get(1..).ok_or(DerError("empty bit string"))?;
    Ok(bytes.get(n / 8).is_some_and(|b| b & (0x80 >> (n % 8)) != 0))
}

/// keyUsage bits.
pub const KU_KEY_CERT_SIGN: usize = 5;
pub const KU_CRL_SIGN: usize = 6;

/// `ExtKeyUsageSyntax ::= SEQUENCE OF KeyPurposeId`: whether it contains `purpose`.
pub fn eku_contains(value: &[u8], purpose: &[u8]) -> Result<bool> {
    let seq = Reader::new(value).expect(SEQUENCE)?;
    let mut items = Reader::new(seq.content);
    while !items.is_empty() {
        if items.expect(OID)?.content == purpose {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_and_long_lengths() {
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        let tlv = Reader::new(&long).next().unwrap();
        assert_eq!((tlv.tag, tlv.content.len()), (0x04, 0x80));
        assert_eq!(
            Reader::new(&[0x04, 0x02, 1]).next().unwrap_err(),
            DerError("length past the end")
        );
        assert_eq!(
            Reader::new(&[0x04, 0x80]).next().unwrap_err(),
            DerError("bad length")
        );
        assert_eq!(
            Reader::new(&[0x04, 0x81, 0x01, 0x00]).next().unwrap_err(),
            DerError("length not in its shortest form")
        );
        assert_eq!(
            Reader::new(&[0x04, 0x82, 0x00, 0x80]).next().unwrap_err(),
            DerError("length not in its shortest form")
        );
    }

    #[test]
    fn key_usage_bits() {
        // keyCertSign + cRLSign: 0x06 with 1 unused bit
        let ku = [0x03, 0x02, 0x01, 0x06];
        assert!(key_usage_bit(&ku, KU_KEY_CERT_SIGN).unwrap());
        assert!(key_usage_bit(&ku, KU_CRL_SIGN).unwrap());
        assert!(!key_usage_bit(&ku, 0).unwrap());
        // digitalSignature only
        let ku = [0x03, 0x02, 0x07, 0x80];
        assert!(key_usage_bit(&ku, 0).unwrap());
        assert!(!key_usage_bit(&ku, KU_KEY_CERT_SIGN).unwrap());
    }

    #[test]
    fn basic_constraints() {
        assert!(basic_constraints_ca(&[0x30, 0x03, 0x01, 0x01, 0xff]).unwrap());
        assert!(!basic_constraints_ca(&[0x30, 0x00]).unwrap());
    }
}
