//! The request pipeline over a real bus with transports the test controls: requests are held
//! until the test releases them, so limits, deadlines and dedupe are shown without sleeps.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use openssl::{
    asn1::Asn1Type,
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    x509::{X509NameBuilder, X509ReqBuilder},
};
use tokio::sync::{mpsc, oneshot};
use vmi_cert_exchange::{
    bus::PrivateBus,
    ca::SoftCa,
    chain::Answer,
    config::Settings,
    csr::ValidCsr,
    signer::Counts,
    transport::{emulator::Emulator, BoxFuture, HypervisorTransport},
    Error, Signer,
};

/// A request the transport holds until the test answers it.
struct Held {
    csr: Arc<ValidCsr>,
    reply: oneshot::Sender<Result<Answer, Error>>,
}

struct HeldTransport {
    requests: mpsc::UnboundedSender<Held>,
}

impl HypervisorTransport for HeldTransport {
    fn name(&self) -> &'static str {
        "held"
    }
    fn sign(&self, csr: Arc<ValidCsr>) -> BoxFuture<'static, Result<Answer, Error>> {
        let requests = self.requests.clone();
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            requests.send(Held { csr, reply }).unwrap();
            answer
                .await
                .unwrap_or(Err(Error::Internal("test dropped the request".into())))
        })
    }
}

/// Counts what reaches the real emulator.
struct Counting {
    inner: Emulator,
    calls: Arc<AtomicUsize>,
}

impl HypervisorTransport for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn sign(&self, csr: Arc<ValidCsr>) -> BoxFuture<'static, Result<Answer, Error>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.sign(csr)
    }
}

/// The service in this process on a private bus, started through the same `serve()` as main.
struct InProcess {
    _bus: PrivateBus,
    _server: zbus::Connection,
    client: zbus::Connection,
    signer: Arc<Signer>,
}

async fn start(transport: Arc<dyn HypervisorTransport>, settings: Settings) -> InProcess {
    let bus = private_bus();
    let server = connect(&bus).await;
    let signer = Signer::new(transport, settings);
    vmi_cert_exchange::serve(&server, signer.clone())
        .await
        .unwrap();
    let client = connect(&bus).await;
    InProcess {
        _bus: bus,
        _server: server,
        client,
        signer,
    }
}

fn held(settings: Settings) -> (Arc<HeldTransport>, mpsc::UnboundedReceiver<Held>, Settings) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(HeldTransport { requests: tx }), rx, settings)
}

fn ec_key() -> PKey<Private> {
    let group = openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap()).unwrap()
}

fn csr_for(key: &PKey<Private>, cn: &str) -> String {
    let mut name = X509NameBuilder::new().unwrap();
    // A raw UTF8String, so OpenSSL's own length table does not stop an over-long CN here.
    name.append_entry_by_text_with_type("CN", cn, Asn1Type::UTF8STRING)
        .unwrap();
    let mut b = X509ReqBuilder::new().unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_pubkey(key).unwrap();
    b.sign(key, MessageDigest::sha256()).unwrap();
    String::from_utf8(b.build().to_pem().unwrap()).unwrap()
}

fn answer_for(ca: &SoftCa, csr: &ValidCsr) -> Result<Answer, Error> {
    let leaf = ca.issue_client(csr, 30).unwrap();
    Ok(Answer {
        certificate: String::from_utf8(leaf.to_pem().unwrap()).unwrap(),
        root: ca.root_pem(),
    })
}

fn settings(f: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = Settings::new();
    f(&mut s);
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_limit_answers_too_many_resources_and_identical_csrs_share_a_slot() {
    let (transport, mut requests, s) = held(settings(|s| s.limits.max_in_flight = 2));
    let svc = start(transport, s).await;
    let ca = SoftCa::generate().unwrap();
    let (k1, k2, k3) = (ec_key(), ec_key(), ec_key());
    let (c1, c2, c3) = (
        csr_for(&k1, "one"),
        csr_for(&k2, "two"),
        csr_for(&k3, "three"),
    );

    let first = tokio::spawn({
        let conn = svc.client.clone();
        let c1 = c1.clone();
        async move { sign(&conn, &c1).await }
    });
    let held1 = requests.recv().await.unwrap();
    let second = tokio::spawn({
        let conn = svc.client.clone();
        async move { sign(&conn, &c2).await }
    });
    let held2 = requests.recv().await.unwrap();
    assert_eq!(svc.signer.counts().in_flight, 2);

    // A third distinct CSR finds the table full.
    let (name, message) = sign(&svc.client, &c3).await.unwrap_err();
    assert_eq!(name, common("TooManyResources"));
    assert_eq!(
        message,
        "too many signing requests in flight (2); retry later"
    );

    // The same CSR as the first attaches to it instead of taking a slot.
    let mut attached = svc.signer.watch_attached();
    assert_eq!(*attached.borrow(), 0);
    let same = tokio::spawn({
        let conn = svc.client.clone();
        let c1 = c1.clone();
        async move { sign(&conn, &c1).await }
    });
    attached.wait_for(|n| *n == 1).await.unwrap();
    assert_eq!(svc.signer.counts().in_flight, 2, "no slot taken");
    let mut in_flight = svc.signer.watch_in_flight();
    held1.reply.send(answer_for(&ca, &held1.csr)).unwrap();
    held2.reply.send(answer_for(&ca, &held2.csr)).unwrap();
    let a1 = first.await.unwrap().unwrap();
    let a2 = second.await.unwrap().unwrap();
    let a1_again = same.await.unwrap().unwrap();
    assert_eq!(a1, a1_again, "attached caller gets the same chain");
    assert_ne!(a1, a2);
    assert!(a1.ends_with(&ca.root_pem()));
    in_flight.wait_for(|n| *n == 0).await.unwrap();
    assert!(
        requests.try_recv().is_err(),
        "the transport saw exactly two requests"
    );

    // With room again, the third goes through.
    let third = tokio::spawn({
        let conn = svc.client.clone();
        async move { sign(&conn, &c3).await }
    });
    let held3 = requests.recv().await.unwrap();
    held3.reply.send(answer_for(&ca, &held3.csr)).unwrap();
    assert!(third.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_transport_answers_unavailable_then_the_retry_gets_the_certificate() {
    let (transport, mut requests, s) = held(settings(|s| {
        s.limits.sign_timeout = Duration::from_millis(300);
    }));
    let svc = start(transport, s).await;
    let ca = SoftCa::generate().unwrap();
    let csr = csr_for(&ec_key(), "slow");

    // The transport holds the request: the caller's deadline answers.
    let (name, message) = sign(&svc.client, &csr).await.unwrap_err();
    assert_eq!(name, common("Unavailable"));
    assert_eq!(message, "signing in progress, retry with the same CSR");
    let held = requests.recv().await.unwrap();
    assert_eq!(svc.signer.counts().in_flight, 1, "the request keeps going");

    let mut in_flight = svc.signer.watch_in_flight();
    held.reply.send(answer_for(&ca, &held.csr)).unwrap();
    in_flight.wait_for(|n| *n == 0).await.unwrap();

    let chain = sign(&svc.client, &csr).await.unwrap();
    assert!(chain.ends_with(&ca.root_pem()));
    assert!(
        requests.try_recv().is_err(),
        "the retry was answered from the cache"
    );
    assert_eq!(svc.signer.counts().cached, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_lifetime_drops_the_request_and_a_retry_starts_a_new_one() {
    let (transport, mut requests, s) = held(settings(|s| {
        s.limits.sign_timeout = Duration::from_millis(100);
        s.limits.request_lifetime = Duration::from_millis(400);
    }));
    let svc = start(transport, s).await;
    let csr = csr_for(&ec_key(), "lost");

    let (name, _) = sign(&svc.client, &csr).await.unwrap_err();
    assert_eq!(name, common("Unavailable"));
    let mut held = requests.recv().await.unwrap();
    // The service gives up at the lifetime and drops the transport's future.
    held.reply.closed().await;
    svc.signer
        .watch_in_flight()
        .wait_for(|n| *n == 0)
        .await
        .unwrap();
    assert_eq!(
        svc.signer.counts().cached,
        0,
        "transient failures are not cached"
    );

    let retry = tokio::spawn({
        let conn = svc.client.clone();
        async move { sign(&conn, &csr).await }
    });
    let again = requests.recv().await.unwrap();
    again
        .reply
        .send(answer_for(&SoftCa::generate().unwrap(), &again.csr))
        .unwrap();
    assert!(retry.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn hypervisor_rejection_is_cached_and_other_failures_are_not() {
    let (transport, mut requests, s) = held(Settings::new());
    let svc = start(transport, s).await;
    let rejected = csr_for(&ec_key(), "rejected");
    let broken = csr_for(&ec_key(), "broken");

    let call = tokio::spawn({
        let conn = svc.client.clone();
        let c = rejected.clone();
        async move { sign(&conn, &c).await }
    });
    requests
        .recv()
        .await
        .unwrap()
        .reply
        .send(Err(Error::HypervisorRejected))
        .unwrap();
    let expected = (
        common("InvalidArgument"),
        "the hypervisor rejected the CSR".to_string(),
    );
    assert_eq!(call.await.unwrap().unwrap_err(), expected);
    assert_eq!(sign(&svc.client, &rejected).await.unwrap_err(), expected);

    let call = tokio::spawn({
        let conn = svc.client.clone();
        let c = broken.clone();
        async move { sign(&conn, &c).await }
    });
    let h = requests.recv().await.unwrap();
    h.reply
        .send(Ok(Answer {
            certificate: "garbage".into(),
            root: SoftCa::generate().unwrap().root_pem(),
        }))
        .unwrap();
    let (name, message) = call.await.unwrap().unwrap_err();
    assert_eq!(name, common("InternalFailure"));
    assert_eq!(
        message,
        "the hypervisor's answer is unusable: it is not a sequence of PEM certificates"
    );
    assert!(
        requests.try_recv().is_err(),
        "the rejection came from the cache"
    );
    assert_eq!(svc.signer.counts().cached, 1);
}

/// A finished result is answered from the cache for --result-ttl, and after that the same CSR
/// is a new request. The wait is the TTL itself, twice over: what is measured is expiry, not
/// readiness.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_result_expires_after_the_result_ttl() {
    let calls = Arc::new(AtomicUsize::new(0));
    let transport = Arc::new(Counting {
        inner: Emulator::new(SoftCa::generate().unwrap(), 365),
        calls: calls.clone(),
    });
    // Long enough that the second call lands well inside it on a busy machine.
    let ttl = Duration::from_secs(2);
    let svc = start(transport, settings(|s| s.limits.result_ttl = ttl)).await;
    let csr = csr_for(&ec_key(), "cached");
    let first = sign(&svc.client, &csr).await.unwrap();
    assert_eq!(sign(&svc.client, &csr).await.unwrap(), first);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );
    assert_eq!(svc.signer.counts().cached, 1);

    tokio::time::sleep(ttl * 2).await;
    let again = sign(&svc.client, &csr).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "after the TTL the CSR is signed anew"
    );
    assert_ne!(again, first, "a new certificate (new serial)");
    assert_eq!(
        svc.signer.counts(),
        Counts {
            in_flight: 0,
            cached: 1
        }
    );
}

/// Every row of the bad-input table: the exact error name, nothing forwarded, nothing left.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_table() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let transport = Arc::new(Counting {
        inner: Emulator::new(SoftCa::generate().unwrap(), 365),
        calls: calls.clone(),
    });
    let svc = start(transport, Settings::new()).await;
    let d = dir.path();

    let key = genpkey(d, "hmc", "p256");
    let csr = req(&key, "/CN=hmc01/O=Example", &[]);
    let der_b64: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
    let cert = openssl(&[
        "req",
        "-x509",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/CN=x",
        "-days",
        "1",
    ]);
    let private_key = std::fs::read_to_string(&key).unwrap();
    let mut tampered = openssl::base64::decode_block(&der_b64).unwrap();
    *tampered.last_mut().unwrap() ^= 1;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        openssl::base64::encode_block(&tampered)
    );
    let k = |kind: &str| genpkey(d, kind, kind);
    let rsa1024 = req(&k("rsa1024"), "/CN=x", &[]);
    let ed25519 = req(&k("ed25519"), "/CN=x", &[]);
    let brainpool = req(&k("brainpool"), "/CN=x", &[]);
    let ca_true = req(
        &key,
        "/CN=x",
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    let cert_sign = req(&key, "/CN=x", &["-addext", "keyUsage=keyCertSign"]);
    let crl_sign = req(
        &key,
        "/CN=x",
        &["-addext", "keyUsage=digitalSignature,cRLSign"],
    );
    let rsa_key = k("rsa2048");
    let sha1 = req(&rsa_key, "/CN=x", &["-sha1"]);
    let pss_sha1 = req(
        &rsa_key,
        "/CN=x",
        &["-sha1", "-sigopt", "rsa_padding_mode:pss"],
    );
    let sans: Vec<String> = (0..33).map(|i| format!("DNS:h{i}.example")).collect();
    let too_many_sans = req(
        &key,
        "/CN=x",
        &["-addext", &format!("subjectAltName={}", sans.join(","))],
    );
    let empty_subject = req(&key, "/", &[]);
    let long_cn = csr_for(&ec_key(), &"c".repeat(65));

    let rows: Vec<(&str, String, &str, Option<&str>)> = vec![
        ("empty", String::new(), "InvalidArgument", Some("the CSR is empty")),
        ("17 KiB of A", "A".repeat(17 * 1024), "InvalidArgument", Some("the CSR is 17408 bytes long; the limit is 16384")),
        ("labels differ", csr.replace("-----END CERTIFICATE REQUEST", "-----END NEW CERTIFICATE REQUEST"), "InvalidArgument", Some("the CSR's BEGIN and END labels differ")),
        ("literal backslash-n", csr.trim_end().replace('\n', "\\n"), "InvalidArgument", Some("the CSR is not PEM: it holds a literal backslash-n where a line break belongs")),
        ("bare base64 DER", der_b64.clone(), "InvalidArgument", Some("the CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- line")),
        ("CERTIFICATE block", cert.clone(), "InvalidArgument", Some("the PEM block is not a certificate request (expected BEGIN CERTIFICATE REQUEST)")),
        ("PRIVATE KEY block", private_key.clone(), "InvalidArgument", Some("the PEM block is not a certificate request (expected BEGIN CERTIFICATE REQUEST)")),
        ("two CSRs", format!("{csr}{csr}"), "InvalidArgument", Some("the input holds more than one PEM block or text after the END line")),
        ("text before BEGIN", format!("CSR follows:\n{csr}"), "InvalidArgument", Some("the CSR has text before its BEGIN line")),
        ("flipped signature", tampered, "InvalidArgument", Some("the CSR's signature does not verify with its own key (no proof of possession)")),
        ("RSA-1024", rsa1024, "InvalidArgument", Some("RSA-1024 keys are not accepted (allowed: RSA-2048, RSA-3072, RSA-4096, EC P-256, EC P-384)")),
        ("Ed25519", ed25519, "InvalidArgument", Some("Ed25519 keys are not accepted (allowed: RSA-2048, RSA-3072, RSA-4096, EC P-256, EC P-384)")),
        ("brainpoolP256r1", brainpool, "InvalidArgument", Some("EC brainpoolP256r1 keys are not accepted (allowed: RSA-2048, RSA-3072, RSA-4096, EC P-256, EC P-384)")),
        ("CA:TRUE", ca_true, "NotAllowed", Some("the CSR asks for CA capability (basicConstraints CA:TRUE); only client certificates are issued")),
        ("keyCertSign", cert_sign, "NotAllowed", Some("the CSR asks for CA capability (keyUsage keyCertSign); only client certificates are issued")),
        ("cRLSign", crl_sign, "NotAllowed", Some("the CSR asks for CA capability (keyUsage cRLSign); only client certificates are issued")),
        ("SHA-1 signature", sha1, "InvalidArgument", Some("the CSR's signature algorithm is not accepted; sign it with SHA-256, SHA-384 or SHA-512 (RSA PKCS#1 v1.5, RSASSA-PSS or ECDSA)")),
        ("RSASSA-PSS with SHA-1", pss_sha1, "InvalidArgument", Some("the CSR's signature algorithm is not accepted; sign it with SHA-256, SHA-384 or SHA-512 (RSA PKCS#1 v1.5, RSASSA-PSS or ECDSA)")),
        ("33 SANs", too_many_sans, "InvalidArgument", Some("the CSR asks for 33 subject alternative names; the limit is 32")),
        ("empty subject", empty_subject, "InvalidArgument", Some("the CSR subject is empty")),
        ("CN of 65 characters", long_cn, "InvalidArgument", Some("the subject CN is 65 characters long; the limit is 64")),
    ];
    for (row, input, name, message) in &rows {
        let (got_name, got_message) = sign(&svc.client, input)
            .await
            .expect_err(&format!("row {row:?} must fail"));
        assert_eq!(got_name, common(name), "row {row:?}");
        if let Some(m) = message {
            assert_eq!(&got_message, m, "row {row:?}");
        }
        // No message echoes the input.
        for line in input.lines().filter(|l| l.len() > 16) {
            assert!(!got_message.contains(line), "row {row:?} echoes its input");
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing was forwarded to the transport"
    );
    assert_eq!(svc.signer.counts().in_flight, 0);
    assert_eq!(svc.signer.counts().cached, 0);

    // Accepted variants of the same CSR: one request, one certificate for all of them.
    let reference = sign(&svc.client, &csr).await.unwrap();
    check_chain_with_openssl(d, &reference, &key);
    for (row, input) in [
        ("CRLF", csr.replace('\n', "\r\n")),
        (
            "blank lines and spaces around it",
            format!("\n\n  \t{csr}\n  \n"),
        ),
        ("no final newline", csr.trim_end().to_string()),
        (
            "NEW CERTIFICATE REQUEST",
            csr.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"),
        ),
    ] {
        assert_eq!(
            sign(&svc.client, &input).await.unwrap(),
            reference,
            "row {row:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the variants are one CSR");
    assert_eq!(svc.signer.counts().in_flight, 0);

    // RSASSA-PSS with SHA-256, as `openssl req` makes it, is accepted.
    let pss = req(
        &rsa_key,
        "/CN=pss",
        &[
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
        ],
    );
    check_chain_with_openssl(d, &sign(&svc.client, &pss).await.unwrap(), &rsa_key);
}

/// A transport whose request task panics.
struct Panicking;

impl HypervisorTransport for Panicking {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn sign(&self, _csr: Arc<ValidCsr>) -> BoxFuture<'static, Result<Answer, Error>> {
        Box::pin(async { panic!("a transport bug") })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_task_panics_is_answered_and_leaves_no_slot_taken() {
    let svc = start(
        Arc::new(Panicking),
        settings(|s| s.limits.max_in_flight = 1),
    )
    .await;
    let csr = csr_for(&ec_key(), "unlucky");
    for _ in 0..2 {
        assert_eq!(
            sign(&svc.client, &csr).await.unwrap_err(),
            (
                common("InternalFailure"),
                "the signing task failed; retry".to_string()
            )
        );
        let mut in_flight = svc.signer.watch_in_flight();
        in_flight.wait_for(|n| *n == 0).await.unwrap();
        assert_eq!(svc.signer.counts().cached, 0, "a failure is not cached");
    }
}
