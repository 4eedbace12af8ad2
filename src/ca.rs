//! The software VMI CA: the `emulator` transport, the host simulator and the demo's TLS
//! endpoint all issue from it.
//!
//! Its state is `ca.key` (PEM PKCS#8, mode 0600) and `ca.crt` in a state directory, created
//! together on first start and never silently replaced: a new root would invalidate every
//! certificate already issued, so a corrupt or half-present CA stops the service instead.

use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use openssl::{
    asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time},
    bn::{BigNum, MsbOption},
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::{Id, PKey, PKeyRef, Private},
    x509::{
        extension::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
            SubjectAlternativeName, SubjectKeyIdentifier,
        },
        X509Builder, X509Extension, X509NameBuilder, X509NameRef, X509,
    },
};

use crate::{csr::ValidCsr, error::StartError, util::write_new_file};

pub const KEY_FILE: &str = "ca.key";
pub const CERT_FILE: &str = "ca.crt";
pub const LOCK_FILE: &str = "lock";
/// Common names of the two software roots, distinct so that a chain shows which one signed it.
pub const EMULATOR_CA_NAME: &str = "VMI Emulated Root CA";
pub const SIMULATOR_CA_NAME: &str = "VMI Simulated Hypervisor Root CA";
const TMP_PREFIX: &str = ".ca-new-";

/// Leaves are backdated so a host whose clock is a little behind still accepts them.
const BACKDATE_SECS: i64 = 300;
const ROOT_VALIDITY_DAYS: i64 = 3650;

type OsslResult<T> = Result<T, openssl::error::ErrorStack>;

/// An exclusive hold on a state directory for as long as it lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    pub dir: PathBuf,
}

impl StateLock {
    /// Creates `dir` (mode 0700) if needed and takes its lock, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, StartError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StartError::Io(format!(
                    "cannot create state directory {}: {e}",
                    dir.display()
                ))
            })?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StartError::Io(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock {
                _file: file,
                dir: dir.to_path_buf(),
            }),
            Err(fs::TryLockError::WouldBlock) => Err(StartError::StateLocked(format!(
                "state directory {} is in use by another vmi-cert-exchange process (lock {})",
                dir.display(),
                path.display()
            ))),
            Err(fs::TryLockError::Error(e)) => Err(StartError::Io(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }
}

/// A CA key and its self-signed root certificate.
pub struct SoftCa {
    key: PKey<Private>,
    cert: X509,
    root_pem: String,
}

impl std::fmt::Debug for SoftCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftCa")
            .field(
                "subject",
                &crate::csr::subject_for_log(self.cert.subject_name()),
            )
            .finish()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_serial() -> OsslResult<Asn1Integer> {
    let mut bn = BigNum::new()?;
    // 128 random bits. A set top bit makes the DER INTEGER 17 bytes long (a leading zero keeps
    // it positive), within RFC 5280's 20.
    bn.rand(128, MsbOption::MAYBE_ZERO, false)?;
    bn.to_asn1_integer()
}

fn digest_for(key: &PKeyRef<Private>) -> MessageDigest {
    match key.id() {
        Id::EC if key.bits() > 256 => MessageDigest::sha384(),
        _ => MessageDigest::sha256(),
    }
}

impl SoftCa {
    /// A fresh CA in memory: EC P-384 key, 10-year self-signed root.
    pub fn generate() -> OsslResult<Self> {
        Self::generate_named(EMULATOR_CA_NAME)
    }

    pub fn generate_named(common_name: &str) -> OsslResult<Self> {
        let key = PKey::from_ec_key(EcKey::generate(&*EcGroup::from_curve_name(
            Nid::SECP384R1,
        )?)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "vmi-cert-exchange")?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        b.set_serial_number(&*random_serial()?)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        let now = unix_now();
        b.set_not_before(&*Asn1Time::from_unix(now - BACKDATE_SECS)?)?;
        b.set_not_after(&*Asn1Time::from_unix(now + ROOT_VALIDITY_DAYS * 86400)?)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(ski)?;
        b.sign(&key, digest_for(&key))?;
        let cert = b.build();
        Ok(Self::from_parts(key, cert))
    }

    fn from_parts(key: PKey<Private>, cert: X509) -> Self {
        let root_pem = String::from_utf8_lossy(&cert.to_pem().unwrap_or_default()).into_owned();
        SoftCa {
            key,
            cert,
            root_pem,
        }
    }

    /// The root certificate as PEM with LF endings.
    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    pub fn root(&self) -> &X509 {
        &self.cert
    }

    /// The CA key, for tests that build certificates by hand.
    #[cfg(test)]
    pub(crate) fn key(&self) -> &PKey<Private> {
        &self.key
    }

    /// Opens the CA of a state directory, creating it with the given common name if the
    /// directory holds none. The caller holds the directory's [`StateLock`].
    pub fn open_or_create(lock: &StateLock, common_name: &str) -> Result<Self, StartError> {
        let dir = &lock.dir;
        finish_interrupted_creation(dir);
        remove_stale_temporaries(dir);
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        match (key_path.exists(), cert_path.exists()) {
            (true, true) => Self::load(dir),
            (false, false) => {
                let ca = Self::generate_named(common_name)
                    .map_err(|e| StartError::Failed(format!("cannot generate the CA key: {e}")))?;
                ca.write_atomically(dir)?;
                tracing::info!(
                    dir = %dir.display(),
                    subject = %crate::csr::subject_for_log(ca.cert.subject_name()),
                    fingerprint = %ca.root_fingerprint(),
                    "created a new software CA"
                );
                Ok(ca)
            }
            (k, _) => Err(StartError::CaCorrupt(format!(
                "the software CA in {} is half present: {} exists but {} does not; \
                 restore both files or remove both to create a new root (which invalidates \
                 every certificate already issued)",
                dir.display(),
                if k { KEY_FILE } else { CERT_FILE },
                if k { CERT_FILE } else { KEY_FILE },
            ))),
        }
    }

    /// Reads an existing CA without taking the lock: the demo uses it to issue its TLS
    /// endpoint's certificate from the CA the service it started created.
    pub fn load(dir: &Path) -> Result<Self, StartError> {
        let corrupt = |what: String| {
            StartError::CaCorrupt(format!(
                "the software CA in {} is corrupt: {what}; it is not replaced automatically \
                 because a new root invalidates every certificate already issued",
                dir.display()
            ))
        };
        let read = |name: &str| {
            fs::read_to_string(dir.join(name)).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData => {
                    corrupt(format!("{name} cannot be read ({e})"))
                }
                // Not the CA's fault (permissions, I/O): restarting may help, so not exit 3.
                _ => StartError::Io(format!("cannot read {}: {e}", dir.join(name).display())),
            })
        };
        // Our own strict PEM reader: OpenSSL's would prompt for a passphrase on an encrypted
        // block, and a daemon must never wait on a terminal.
        let single = |name: &str, label: &str| match crate::util::parse_pem(&read(name)?).as_deref()
        {
            Ok([block]) if block.label == label => Ok(block.der.clone()),
            _ => Err(corrupt(format!("{name} is not a single PEM {label} block"))),
        };
        let key = PKey::private_key_from_pkcs8(&single(KEY_FILE, "PRIVATE KEY")?)
            .map_err(|_| corrupt(format!("{KEY_FILE} is not a PKCS#8 private key")))?;
        let cert = X509::from_der(&single(CERT_FILE, "CERTIFICATE")?)
            .map_err(|_| corrupt(format!("{CERT_FILE} is not a certificate")))?;
        let cert_key = cert
            .public_key()
            .map_err(|_| corrupt(format!("{CERT_FILE} has no readable public key")))?;
        if !cert_key.public_eq(&key) {
            return Err(corrupt(format!(
                "{KEY_FILE} and {CERT_FILE} do not belong together"
            )));
        }
        Ok(Self::from_parts(key, cert))
    }

    /// Writes `ca.key` and `ca.crt` into a fresh temporary directory inside `dir`, syncs them,
    /// then renames them into place, the key first. The certificate's rename is the commit
    /// point: a crash before it leaves either nothing or the key with its certificate still in
    /// the temporary directory, and the next start completes that (see
    /// [`finish_interrupted_creation`]). An error (rather than a crash) between the two renames
    /// takes the key back out: nothing was issued under it, and a key left alone would make
    /// every later start exit as half-present. Never a half-written key, never a key without
    /// its root.
    fn write_atomically(&self, dir: &Path) -> Result<(), StartError> {
        let io = |what: &str, e: std::io::Error| StartError::Io(format!("{what}: {e}"));
        let tmp = dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| io(&format!("cannot create {}", tmp.display()), e))?;
        let key_pem = self
            .key
            .private_key_to_pem_pkcs8()
            .map_err(|e| StartError::Failed(format!("cannot encode the CA key: {e}")))?;
        let mut key_alone = false;
        let result = (|| {
            write_new_file(&tmp.join(KEY_FILE), &key_pem, 0o600)?;
            write_new_file(&tmp.join(CERT_FILE), self.root_pem.as_bytes(), 0o644)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(tmp.join(KEY_FILE), dir.join(KEY_FILE))?;
            key_alone = true;
            File::open(dir)?.sync_all()?;
            fs::rename(tmp.join(CERT_FILE), dir.join(CERT_FILE))?;
            key_alone = false;
            File::open(dir)?.sync_all()
        })();
        let _ = fs::remove_dir_all(&tmp);
        let result =
            result.map_err(|e| io(&format!("cannot write the CA into {}", dir.display()), e));
        if result.is_err() && key_alone {
            let key = dir.join(KEY_FILE);
            // Synced, so that a power loss does not bring the key back without its root.
            let undone = fs::remove_file(&key).and_then(|()| File::open(dir)?.sync_all());
            if let Err(e) = undone {
                return Err(StartError::CaCorrupt(format!(
                    "cannot write the CA into {}, and {} could not be taken back out ({e}); \
                     remove it by hand, nothing was issued under it",
                    dir.display(),
                    key.display()
                )));
            }
        }
        result
    }

    pub fn root_fingerprint(&self) -> String {
        self.cert
            .digest(MessageDigest::sha256())
            .map(|d| crate::csr::hex(&d))
            .unwrap_or_default()
    }

    fn leaf_builder<T: openssl::pkey::HasPublic>(
        &self,
        subject: &X509NameRef,
        key: &PKeyRef<T>,
        validity_days: u32,
    ) -> OsslResult<X509Builder> {
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        b.set_serial_number(&*random_serial()?)?;
        b.set_subject_name(subject)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_pubkey(key)?;
        let now = unix_now();
        b.set_not_before(&*Asn1Time::from_unix(now - BACKDATE_SECS)?)?;
        b.set_not_after(&*Asn1Time::from_unix(
            now + i64::from(validity_days) * 86400,
        )?)?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(ski)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(aki)?;
        Ok(b)
    }

    /// The leaf profile of DESIGN.md section 4: subject and SANs from the CSR, CA:FALSE,
    /// digitalSignature (+ keyEncipherment for RSA), clientAuth, random 128-bit serial,
    /// backdated 5 minutes.
    pub fn issue_client(&self, csr: &ValidCsr, validity_days: u32) -> OsslResult<X509> {
        let mut b = self.leaf_builder(csr.req.subject_name(), &csr.public_key, validity_days)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        let mut ku = KeyUsage::new();
        ku.critical().digital_signature();
        if csr.public_key.id() == Id::RSA {
            ku.key_encipherment();
        }
        b.append_extension(ku.build()?)?;
        b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        if let Some((critical, value)) = &csr.san {
            let oid = Asn1Object::from_str("2.5.29.17")?;
            let value = Asn1OctetString::new_from_bytes(value)?;
            b.append_extension(X509Extension::new_from_der(&oid, *critical, &value)?)?;
        }
        b.sign(&self.key, digest_for(&self.key))?;
        Ok(b.build())
    }

    /// A TLS server certificate for 127.0.0.1/localhost, as the VMI endpoint has.
    pub fn issue_server<T: openssl::pkey::HasPublic>(
        &self,
        key: &PKeyRef<T>,
        common_name: &str,
    ) -> OsslResult<X509> {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
        let name = name.build();
        let mut b = self.leaf_builder(&name, key, 30)?;
        b.append_extension(BasicConstraints::new().critical().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()?,
        )?;
        b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(san)?;
        b.sign(&self.key, digest_for(&self.key))?;
        Ok(b.build())
    }

    /// A certificate that wrongly claims CA:TRUE: what a broken hypervisor might return. Used
    /// by the host simulator's fault mode and by tests of answer verification.
    pub fn issue_ca_true(&self, csr: &ValidCsr) -> OsslResult<X509> {
        let mut b = self.leaf_builder(csr.req.subject_name(), &csr.public_key, 365)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.sign(&self.key, digest_for(&self.key))?;
        Ok(b.build())
    }
}

/// Completes a creation that stopped between its two renames: `ca.key` is in place, and a
/// temporary directory still holds the `ca.crt` written with it. The root never issued a
/// certificate (the process that made it had not started serving), so finishing the rename
/// is safe; a `ca.crt` for another key is left alone, and the start-up check reports the
/// half-present CA.
fn finish_interrupted_creation(dir: &Path) {
    let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
    if !key_path.exists() || cert_path.exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let key = fs::read_to_string(&key_path)
        .ok()
        .and_then(|pem| crate::util::parse_pem(&pem).ok())
        .and_then(|blocks| match blocks.as_slice() {
            [block] if block.label == "PRIVATE KEY" => {
                PKey::private_key_from_pkcs8(&block.der).ok()
            }
            _ => None,
        });
    let Some(key) = key else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let candidate = entry.path().join(CERT_FILE);
        let matches = fs::read(&candidate)
            .ok()
            .and_then(|pem| X509::from_pem(&pem).ok())
            .and_then(|cert| cert.public_key().ok())
            .is_some_and(|public| public.public_eq(&key));
        if matches && fs::rename(&candidate, &cert_path).is_ok() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
            tracing::warn!(
                dir = %dir.display(),
                "completed the software CA that an interrupted start left half written"
            );
            return;
        }
    }
}

fn remove_stale_temporaries(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn created_once_then_reopened_with_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = {
            let lock = StateLock::acquire(&state).unwrap();
            SoftCa::open_or_create(&lock, EMULATOR_CA_NAME)
                .unwrap()
                .root_pem()
        };
        let meta = fs::metadata(state.join(KEY_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let key = fs::read_to_string(state.join(KEY_FILE)).unwrap();
        assert!(
            key.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "PKCS#8 PEM expected"
        );
        let lock = StateLock::acquire(&state).unwrap();
        assert_eq!(
            SoftCa::open_or_create(&lock, EMULATOR_CA_NAME)
                .unwrap()
                .root_pem(),
            first
        );
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "temporaries left behind: {names:?}");
    }

    #[test]
    fn a_creation_interrupted_between_its_renames_is_completed_with_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SoftCa::generate().unwrap();
        // What a crash after the key's rename leaves: ca.key in place, ca.crt still in the
        // temporary directory.
        let tmp = dir.path().join(format!("{TMP_PREFIX}4242"));
        fs::create_dir(&tmp).unwrap();
        write_new_file(
            &dir.path().join(KEY_FILE),
            &ca.key.private_key_to_pem_pkcs8().unwrap(),
            0o600,
        )
        .unwrap();
        write_new_file(&tmp.join(CERT_FILE), ca.root_pem().as_bytes(), 0o644).unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        let opened = SoftCa::open_or_create(&lock, EMULATOR_CA_NAME).unwrap();
        assert_eq!(opened.root_pem(), ca.root_pem());
        assert!(!tmp.exists(), "the temporary directory is gone");

        // A stray certificate for another key does not complete anything.
        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        fs::create_dir(&tmp).unwrap();
        let other = SoftCa::generate().unwrap();
        write_new_file(&tmp.join(CERT_FILE), other.root_pem().as_bytes(), 0o644).unwrap();
        let err = SoftCa::open_or_create(&lock, EMULATOR_CA_NAME).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_CA_CORRUPT);
        assert!(!dir.path().join(CERT_FILE).exists());
    }

    #[test]
    fn a_failed_certificate_rename_takes_the_key_back_out() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where ca.crt goes: the key's rename succeeds, the
        // certificate's fails.
        fs::create_dir_all(dir.path().join(CERT_FILE).join("x")).unwrap();
        let ca = SoftCa::generate().unwrap();
        let err = ca.write_atomically(dir.path()).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "cannot write the CA into {}: ",
                dir.path().display()
            )),
            "{err}"
        );
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![CERT_FILE.to_string()],
            "no key and no temporaries"
        );
    }

    #[test]
    fn leaves_follow_the_profile() {
        use crate::{config::Policy, csr};
        let ca = SoftCa::generate().unwrap();
        let key = csr::tests::rsa(2048);
        let req = csr::validate(
            &csr::tests::csr_with(&key, "hmc01", false),
            &Policy::default(),
        )
        .unwrap();
        let before = unix_now();
        let leaf = ca.issue_client(&req, 365).unwrap();
        let after = unix_now();
        let not_before = Asn1Time::from_unix(before - BACKDATE_SECS).unwrap();
        // notBefore is 5 minutes before issuance; notAfter 365 days after it (to the second,
        // give or take the time the test took).
        let diff = not_before.diff(leaf.not_before()).unwrap();
        assert!(diff.days == 0 && (0..=after - before).contains(&i64::from(diff.secs)));
        let span = leaf.not_before().diff(leaf.not_after()).unwrap();
        assert_eq!((span.days, span.secs), (365, BACKDATE_SECS as i32));
        let serial = leaf.serial_number().to_bn().unwrap();
        assert!(serial.num_bits() <= 128 && !serial.is_negative());
        // Two leaves never share a serial.
        let again = ca.issue_client(&req, 365).unwrap();
        assert_ne!(
            again.serial_number().to_bn().unwrap(),
            leaf.serial_number().to_bn().unwrap()
        );
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, StartError::StateLocked(_)), "{err:?}");
        assert!(err
            .to_string()
            .contains("is in use by another vmi-cert-exchange process"));
    }

    #[test]
    fn half_present_and_corrupt_are_errors_not_new_roots() {
        let dir = tempfile::tempdir().unwrap();
        {
            let lock = StateLock::acquire(dir.path()).unwrap();
            SoftCa::open_or_create(&lock, EMULATOR_CA_NAME).unwrap();
        }
        let cert = fs::read(dir.path().join(CERT_FILE)).unwrap();
        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let lock = StateLock::acquire(dir.path()).unwrap();
        let err = SoftCa::open_or_create(&lock, EMULATOR_CA_NAME).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_CA_CORRUPT);
        assert!(
            err.to_string()
                .contains("half present: ca.key exists but ca.crt does not"),
            "{err}"
        );
        assert!(!dir.path().join(CERT_FILE).exists());

        fs::write(dir.path().join(CERT_FILE), b"not a certificate").unwrap();
        let err = SoftCa::open_or_create(&lock, EMULATOR_CA_NAME).unwrap_err();
        assert!(
            err.to_string()
                .contains("ca.crt is not a single PEM CERTIFICATE block"),
            "{err}"
        );

        // An encrypted key is refused without ever asking for a passphrase.
        let real_key = fs::read(dir.path().join(KEY_FILE)).unwrap();
        fs::write(dir.path().join(CERT_FILE), &cert).unwrap();
        let encrypted = PKey::generate_ed25519()
            .unwrap()
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_128_cbc(), b"pw")
            .unwrap();
        fs::write(dir.path().join(KEY_FILE), encrypted).unwrap();
        let err = SoftCa::open_or_create(&lock, EMULATOR_CA_NAME).unwrap_err();
        assert!(
            err.to_string()
                .contains("ca.key is not a single PEM PRIVATE KEY block"),
            "{err}"
        );
        fs::write(dir.path().join(KEY_FILE), real_key).unwrap();

        let other = SoftCa::generate().unwrap();
        fs::write(dir.path().join(CERT_FILE), other.root_pem()).unwrap();
        let err = SoftCa::open_or_create(&lock, EMULATOR_CA_NAME).unwrap_err();
        assert!(err.to_string().contains("do not belong together"), "{err}");
        assert_ne!(other.root_pem().as_bytes(), &cert[..]);
    }
}
