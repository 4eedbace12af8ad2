//! The service binary on a private bus with the emulator transport, driven the way people and
//! bmcweb drive it: zbus calls, busctl, the sign subcommand and the demo; answers checked with
//! the openssl command-line tool.

mod common;

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn signs_rsa_and_ec_csrs_made_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_bus, conn, _svc) = emulator_service(d, &[]).await;
    for (kind, usage) in [
        ("rsa2048", "Digital Signature, Key Encipherment"),
        ("rsa4096", "Digital Signature, Key Encipherment"),
        ("p256", "Digital Signature"),
        ("p384", "Digital Signature"),
    ] {
        let key = genpkey(d, kind, kind);
        let csr = req(
            &key,
            &format!("/O=Example HMC/CN=hmc-{kind}"),
            &["-addext", "subjectAltName=DNS:hmc.example.com,IP:192.0.2.7"],
        );
        let chain = sign(&conn, &csr).await.unwrap();
        let (leaf, _root) = check_chain_with_openssl(d, &chain, &key);
        let leaf_file = d.join(format!("{kind}.crt"));
        std::fs::write(&leaf_file, leaf).unwrap();
        let text = openssl(&[
            "x509",
            "-in",
            leaf_file.to_str().unwrap(),
            "-noout",
            "-text",
        ]);
        let subject = openssl(&[
            "x509",
            "-in",
            leaf_file.to_str().unwrap(),
            "-noout",
            "-subject",
        ]);
        assert_eq!(
            subject,
            format!("subject=O = Example HMC, CN = hmc-{kind}\n")
        );
        let after = |label: &str| {
            let mut lines = text.lines().skip_while(|l| !l.contains(label));
            lines.next().expect(label);
            lines.next().unwrap().trim().to_string()
        };
        assert_eq!(after("X509v3 Basic Constraints: critical"), "CA:FALSE");
        assert_eq!(after("X509v3 Key Usage: critical"), usage);
        assert_eq!(
            after("X509v3 Extended Key Usage"),
            "TLS Web Client Authentication"
        );
        assert_eq!(
            after("X509v3 Subject Alternative Name"),
            "DNS:hmc.example.com, IP Address:192.0.2.7"
        );
        let serial = openssl(&[
            "x509",
            "-in",
            leaf_file.to_str().unwrap(),
            "-noout",
            "-serial",
        ]);
        assert!(
            serial.len() > "serial=".len() + 16,
            "random serial: {serial}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn busctl_call_returns_the_chain_and_the_error_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (bus, _conn, _svc) = emulator_service(d, &[]).await;
    let key = genpkey(d, "hmc", "p256");
    let csr = req(&key, "/CN=busctl-user", &[]);
    let busctl = |arg: &str| {
        Command::new("busctl")
            .arg(format!("--address={}", bus.address()))
            .arg("--json=short")
            .args([
                "--",
                "call",
                "xyz.openbmc_project.HMC.VMInterface",
                "/xyz/openbmc_project/HMC/VMInterface",
                "xyz.openbmc_project.HMC.VMInterface",
                "SignCSR",
                "s",
                arg,
            ])
            .output()
            .expect("busctl must be installed (see .ci/run)")
    };
    let out = busctl(&csr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["type"], "s");
    let chain = reply["data"][0].as_str().unwrap();
    check_chain_with_openssl(d, chain, &key);

    let out = busctl("not a csr");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Call failed: the CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- line\n"
    );

    // What a debugging user sees of the object.
    let out = Command::new("busctl")
        .arg(format!("--address={}", bus.address()))
        .args([
            "introspect",
            "xyz.openbmc_project.HMC.VMInterface",
            "/xyz/openbmc_project/HMC/VMInterface",
            "xyz.openbmc_project.HMC.VMInterface",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(".SignCSR"))
        .expect("SignCSR listed");
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        [".SignCSR", "method", "s", "s", "-"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bus = private_bus();
    let conn = connect(&bus).await;
    let state = d.join("state");
    let args = [
        "--transport",
        "emulator",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let key = genpkey(d, "hmc", "p384");

    let svc = Service::start(&bus, &conn, &args).await;
    let first = sign(&conn, &req(&key, "/CN=first", &[])).await.unwrap();
    svc.stop().await;
    let key_mode = std::fs::metadata(state.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let ca_file = std::fs::read_to_string(state.join("ca.crt")).unwrap();

    let _svc = Service::start(&bus, &conn, &args).await;
    let second = sign(&conn, &req(&key, "/CN=second", &[])).await.unwrap();
    let (_, root1) = check_chain_with_openssl(d, &first, &key);
    let (_, root2) = check_chain_with_openssl(d, &second, &key);
    assert_eq!(root1, root2);
    assert_eq!(root1, ca_file);
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_parallel_callers_each_get_their_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_bus, conn, _svc) = emulator_service(d, &[]).await;
    // Every CSR first, so that the 32 calls are on the bus at the same time.
    let requests: Vec<_> = (0..32)
        .map(|i| {
            let kind = if i % 2 == 0 { "p256" } else { "rsa2048" };
            let key = genpkey(d, &format!("k{i}"), kind);
            let csr = req(&key, &format!("/CN=hmc-{i}"), &[]);
            (key, csr)
        })
        .collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(key, csr)| {
            let conn = conn.clone();
            tokio::spawn(async move { (key, sign(&conn, &csr).await) })
        })
        .collect();
    let mut roots = std::collections::HashSet::new();
    for t in tasks {
        let (key, answer) = t.await.unwrap();
        let (_, root) = check_chain_with_openssl(d, &answer.unwrap(), &key);
        roots.insert(root);
    }
    assert_eq!(roots.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_subcommand_writes_the_chain_or_prints_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (bus, conn, _svc) = emulator_service(d, &[]).await;
    let key = genpkey(d, "hmc", "rsa2048");
    let csr_file = d.join("hmc.csr");
    std::fs::write(&csr_file, req(&key, "/CN=cli", &[])).unwrap();
    let out_dir = d.join("out/nested");
    let out = run_bin(&[
        "sign",
        "--address",
        bus.address(),
        "--csr",
        csr_file.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "wrote chain.pem, client.crt and ca.crt into {}\n",
            out_dir.display()
        )
    );
    let chain = std::fs::read_to_string(out_dir.join("chain.pem")).unwrap();
    // The same CSR again over D-Bus is answered from the cache: chain.pem is that answer,
    // byte for byte.
    let csr_text = std::fs::read_to_string(&csr_file).unwrap();
    assert_eq!(chain, sign(&conn, &csr_text).await.unwrap());
    let (leaf, root) = check_chain_with_openssl(d, &chain, &key);
    assert_eq!(
        std::fs::read_to_string(out_dir.join("client.crt")).unwrap(),
        leaf
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("ca.crt")).unwrap(),
        root
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        out_dir.join("ca.crt").to_str().unwrap(),
        out_dir.join("client.crt").to_str().unwrap(),
    ]);
    assert!(verified.ends_with(": OK\n"));

    // Without --out the answer goes to stdout, byte for byte; `--csr -` reads stdin.
    let out = run_bin(&[
        "sign",
        "--address",
        bus.address(),
        "--csr",
        csr_file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), chain);
    let mut child = Command::new(BIN)
        .args(["sign", "--address", bus.address(), "--csr", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), csr_text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), chain);

    std::fs::write(&csr_file, "garbage").unwrap();
    let out = run_bin(&[
        "sign",
        "--address",
        bus.address(),
        "--csr",
        csr_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vmi-cert-exchange: xyz.openbmc_project.Common.Error.InvalidArgument: the CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- line\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_wait_covers_a_service_that_is_not_on_the_bus_yet() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bus = private_bus();
    let conn = connect(&bus).await;
    let key = genpkey(d, "early", "p256");
    let csr_file = d.join("early.csr");
    std::fs::write(&csr_file, req(&key, "/CN=early", &[])).unwrap();
    let mut child = Command::new(BIN)
        .args(["sign", "--address", bus.address(), "--wait", "60", "--csr"])
        .arg(&csr_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first attempt finds nobody; the service starts only once that has been announced.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut first = String::new();
            stderr.read_line(&mut first).unwrap();
            first
        }),
    )
    .await
    .expect("the first attempt is announced within 30 s")
    .unwrap();
    assert_eq!(
        first,
        "vmi-cert-exchange: D-Bus call failed: org.freedesktop.DBus.Error.ServiceUnknown: \
         The name xyz.openbmc_project.HMC.VMInterface was not provided by any .service files; \
         retrying the same CSR in 0.5 s\n"
    );
    let state = d.join("state");
    let _svc = Service::start(
        &bus,
        &conn,
        &[
            "--transport",
            "emulator",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    )
    .await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    check_chain_with_openssl(d, &String::from_utf8(out.stdout).unwrap(), &key);

    // Without --wait an absent service is reported at once.
    let other = private_bus();
    let out = run_bin(&[
        "sign",
        "--address",
        other.address(),
        "--csr",
        csr_file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vmi-cert-exchange: D-Bus call failed: org.freedesktop.DBus.Error.ServiceUnknown: \
         The name xyz.openbmc_project.HMC.VMInterface was not provided by any .service files\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_state_lock_makes_a_second_process_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join("lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let bus = private_bus();
    let out = serve_emulator(bus.address(), &state, &[]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "state directory {} is in use by another vmi-cert-exchange process",
            state.display()
        )),
        "{stderr}"
    );
    assert!(
        !state.join("ca.key").exists(),
        "nothing created without the lock"
    );
    drop(lock);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_present_or_corrupt_ca_is_exit_code_3_and_never_a_new_root() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bus = private_bus();
    let conn = connect(&bus).await;
    let args = [
        "--transport",
        "emulator",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    Service::start(&bus, &conn, &args).await.stop().await;
    let key = std::fs::read(state.join("ca.key")).unwrap();

    std::fs::remove_file(state.join("ca.crt")).unwrap();
    let out = serve_emulator(bus.address(), &state, &[]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is half present: ca.key exists but ca.crt does not"),
        "{stderr}"
    );
    assert!(!state.join("ca.crt").exists());
    assert_eq!(std::fs::read(state.join("ca.key")).unwrap(), key);

    std::fs::write(
        state.join("ca.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = serve_emulator(bus.address(), &state, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.crt is not a certificate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_refusals_have_clear_messages_and_non_zero_exits() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let s = state.to_str().unwrap();

    // The emulator on the system bus without the flag: refused before touching the bus.
    let out = run_bin(&["serve", "--transport", "emulator", "--state-dir", s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "refuses to run on the system bus unless --allow-emulator-on-system-bus is given"
    ));

    // An unreachable bus.
    let out = serve_emulator("unix:path=/nonexistent/bus", &state, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot connect to unix:path=/nonexistent/bus: "));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(choose a bus with --address or --bus)"));
    assert!(
        !state.exists(),
        "nothing is created before the bus is reached"
    );

    // A taken name.
    let bus = private_bus();
    let conn = connect(&bus).await;
    let _first = Service::start(&bus, &conn, &["--transport", "emulator", "--state-dir", s]).await;
    let other = dir.path().join("other");
    let out = serve_emulator(bus.address(), &other, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "the bus name xyz.openbmc_project.HMC.VMInterface is already owned by another process"
    ));
    assert!(!other.exists(), "nothing is created for a taken name");

    // A configuration file with an unknown key.
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[policy]\nkey_type = [\"p256\"]\n").unwrap();
    let out = serve_emulator(bus.address(), &other, &["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `key_type`"));

    // A negative duration is named as such, not taken for an unknown flag.
    let out = serve_emulator(bus.address(), &other, &["--sign-timeout", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "invalid value '-1' for '--sign-timeout <SIGN_TIMEOUT>': -1 is negative; give a number of seconds of 0 or more"
    ));
    assert!(!other.exists(), "nothing is created for a bad command line");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_file_policy_applies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("vmi.toml");
    std::fs::write(
        &cfg,
        "[policy]\nkey_types = [\"p384\"]\n[emulator]\nvalidity_days = 7\n",
    )
    .unwrap();
    let (_bus, conn, _svc) = emulator_service(d, &["--config", cfg.to_str().unwrap()]).await;
    let p256 = genpkey(d, "p256", "p256");
    let (name, message) = sign(&conn, &req(&p256, "/CN=x", &[])).await.unwrap_err();
    assert_eq!(name, common("InvalidArgument"));
    assert_eq!(
        message,
        "EC P-256 keys are not accepted (allowed: EC P-384)"
    );
    let p384 = genpkey(d, "p384", "p384");
    let chain = sign(&conn, &req(&p384, "/CN=x", &[])).await.unwrap();
    let (leaf, _) = check_chain_with_openssl(d, &chain, &p384);
    let leaf_file = d.join("leaf.crt");
    std::fs::write(&leaf_file, leaf).unwrap();
    // 7 days of validity: valid in 6 days, expired in 8.
    let checkend = |secs: u64| {
        Command::new("openssl")
            .args([
                "x509",
                "-in",
                leaf_file.to_str().unwrap(),
                "-noout",
                "-checkend",
                &secs.to_string(),
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(checkend(6 * 86400));
    assert!(!checkend(8 * 86400));
}

#[test]
fn demo_completes_the_mutual_tls_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo-out");
    let out = run_bin(&["demo", "--out", out_dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "mutual TLS handshake with client.key + client.crt: <version> <cipher> (server saw ...)"
    let handshake = stdout
        .lines()
        .find_map(|l| l.split_once("mutual TLS handshake with client.key + client.crt: "))
        .map(|(_, rest)| rest.split(' ').collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no handshake line: {stdout}"));
    assert_eq!(handshake[0], "TLSv1.3", "{stdout}");
    assert!(
        [
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256",
            "TLS_AES_128_GCM_SHA256"
        ]
        .contains(&handshake[1]),
        "a TLS 1.3 cipher suite: {stdout}"
    );
    assert_eq!(
        handshake[2..].join(" "),
        "(server saw client O=Example HMC,CN=hmc-demo.example.com)"
    );
    assert!(stdout.contains("a client without a certificate is refused by the endpoint"));
    assert!(stdout.contains("demo succeeded"));
    let verified = openssl(&[
        "verify",
        "-CAfile",
        out_dir.join("ca.crt").to_str().unwrap(),
        out_dir.join("client.crt").to_str().unwrap(),
    ]);
    assert_eq!(
        verified,
        format!("{}: OK\n", out_dir.join("client.crt").display())
    );
    let mode = std::fs::metadata(out_dir.join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let chain = std::fs::read_to_string(out_dir.join("chain.pem")).unwrap();
    check_chain_with_openssl(dir.path(), &chain, &out_dir.join("client.key"));
    let csr_pub = openssl(&[
        "req",
        "-in",
        out_dir.join("client.csr").to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    let key_pub = openssl(&[
        "pkey",
        "-in",
        out_dir.join("client.key").to_str().unwrap(),
        "-pubout",
    ]);
    assert_eq!(csr_pub, key_pub);
    let _ = File::open(out_dir.join("chain.pem")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_log_line_per_request_with_escaped_subject_and_no_pem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_bus, conn, svc) = emulator_service(d, &[]).await;
    let key = genpkey(d, "hmc", "p256");
    let csr = req(&key, "/CN=logged", &[]);
    let chain = sign(&conn, &csr).await.unwrap();
    // A subject with a line break and an escape sequence must not forge log lines, nor one
    // with spaces and '=' fields.
    let evil = {
        use openssl::{
            hash::MessageDigest,
            pkey::PKey,
            x509::{X509NameBuilder, X509ReqBuilder},
        };
        let k = PKey::private_key_from_pem(&std::fs::read(&key).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "evil\nINFO fake\u{1b}[31m")
            .unwrap();
        let mut b = X509ReqBuilder::new().unwrap();
        b.set_subject_name(&name.build()).unwrap();
        b.set_pubkey(&k).unwrap();
        b.sign(&k, MessageDigest::sha256()).unwrap();
        String::from_utf8(b.build().to_pem().unwrap()).unwrap()
    };
    assert_eq!(
        sign(&conn, &evil).await.unwrap_err(),
        (
            common("InvalidArgument"),
            "a subject attribute holds a control character".to_string()
        )
    );
    sign(&conn, "garbage").await.unwrap_err();
    // A refused CSR that parses is still identified in the log.
    let weak = req(&genpkey(d, "weak", "rsa1024"), "/CN=weak", &[]);
    sign(&conn, &weak).await.unwrap_err();
    let spaced = req(&key, "/CN=x outcome=ok caller=:1.99/O=a,b", &[]);
    sign(&conn, &spaced).await.unwrap();
    // The same CSR again: answered from the result cache, and the log says so.
    assert_eq!(sign(&conn, &csr).await.unwrap(), chain);
    let log = svc.log();
    svc.stop().await;

    let body: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
    let fingerprint = openssl::sha::sha256(&openssl::base64::decode_block(&body).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("SignCSR")).collect();
    assert_eq!(lines.len(), 6, "{log}");
    assert!(lines[5].contains(" source=cache "), "{}", lines[5]);
    assert!(lines[2].contains(" source=none "), "{}", lines[2]);
    for field in [
        "caller=\":",
        " source=new ",
        "subject=\"CN=logged\" ",
        "key_type=EC P-256",
        &format!("fingerprint={fingerprint}"),
        "outcome=ok",
        "duration_ms=",
        "cert_fingerprint=",
    ] {
        assert!(lines[0].contains(field), "{field} missing in {}", lines[0]);
    }
    assert!(
        lines[1].contains("subject=\"CN=evil\\nINFO fake\\u{1b}[31m\" "),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("outcome=InvalidArgument"), "{}", lines[1]);
    assert!(lines[2].contains("outcome=InvalidArgument"), "{}", lines[2]);
    assert!(
        lines[2].contains("subject=\"\" key_type= fingerprint= "),
        "{}",
        lines[2]
    );
    assert!(
        lines[4].contains("subject=\"CN=x outcome=ok caller=:1.99,O=a\\,b\" "),
        "{}",
        lines[4]
    );
    assert_eq!(
        lines[4].matches("outcome=").count(),
        2,
        "the forged field stays inside the quotes: {}",
        lines[4]
    );
    let weak_body: String = weak.lines().filter(|l| !l.starts_with("-----")).collect();
    let weak_fingerprint =
        openssl::sha::sha256(&openssl::base64::decode_block(&weak_body).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
    for field in [
        "subject=\"CN=weak\"".to_string(),
        "key_type=RSA-1024".to_string(),
        format!("fingerprint={weak_fingerprint}"),
        "outcome=InvalidArgument".to_string(),
    ] {
        assert!(lines[3].contains(&field), "{field} missing in {}", lines[3]);
    }
    assert_eq!(
        log.lines().filter(|l| l.contains("INFO fake")).count(),
        1,
        "no forged line"
    );
    assert!(
        !log.contains("-----BEGIN CERTIFICATE-----"),
        "no certificate in the log"
    );
    for line in csr
        .lines()
        .chain(chain.lines())
        .filter(|l| !l.starts_with("-----"))
    {
        assert!(!log.contains(line), "PEM body line in the log: {line}");
    }
}

#[test]
fn ctrl_c_stops_the_demo_and_everything_it_started() {
    // The signal is sent right after the service is up; on a machine fast enough for the demo
    // to finish before it lands, the run proves nothing and is repeated.
    for _ in 0..3 {
        if interrupt_demo_once_the_service_runs() {
            return;
        }
    }
    panic!("the demo finished before Ctrl-C three times");
}

/// Runs the demo, interrupts its process group once the service is up, as a terminal's Ctrl-C
/// does, and checks that nothing is left. False when the demo had already finished.
fn interrupt_demo_once_the_service_runs() -> bool {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(BIN)
        .args(["demo", "--out", out_dir.to_str().unwrap()])
        // In a group of its own, which gets the signal as a terminal's Ctrl-C would.
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // "[ 1] ... private dbus-daemon listening at unix:path=/tmp/vmi-bus-.../dbus-...,guid=..."
    let socket_dir = first
        .split("unix:path=")
        .nth(1)
        .and_then(|rest| rest.rsplit_once('/'))
        .map(|(dir, _)| std::path::PathBuf::from(dir))
        .expect("bus address on the first line");
    // Once the service runs, the signal would also reach it and the bus if they shared the
    // demo's group, and the demo would report a broken bus instead of the interruption.
    let mut line = String::new();
    while !line.contains("service owns") {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
    assert!(Command::new("kill")
        .args(["-INT", "--", &format!("-{}", child.id())])
        .status()
        .unwrap()
        .success());
    // The rest of what the demo printed, as far as it got.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(0) {
        return false;
    }
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vmi-cert-exchange: interrupted; stopped everything that was started\n"
    );
    assert!(!socket_dir.exists(), "the private bus directory is removed");
    // Files are written only once the answer is verified: a run stopped before that leaves
    // no key without its certificate.
    if !rest.contains("wrote client.key") {
        assert!(!out_dir.exists(), "an interrupted demo wrote no files");
    }
    let leftovers = Command::new("pgrep")
        .args(["-f", socket_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&leftovers.stdout),
        "",
        "no process of the demo is left"
    );
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_exits_when_its_bus_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bus, _conn, mut svc) = emulator_service(dir.path(), &[]).await;
    bus.kill();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), svc.child.wait())
        .await
        .expect("the service exits by itself")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        svc.log()
            .contains("lost xyz.openbmc_project.HMC.VMInterface or the connection to the bus"),
        "{}",
        svc.log()
    );
}

/// Runs `serve` with the emulator transport to its exit: for start-up refusals.
fn serve_emulator(address: &str, state: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "serve",
        "--address",
        address,
        "--transport",
        "emulator",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_bin(&args)
}
