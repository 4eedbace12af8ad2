//! The `pldm` transport against the host simulator on a private bus: the production path as
//! pldmd drives it, with the ways real hosts misbehave. Waits follow D-Bus signals or the
//! service's own deadlines; nothing sleeps to wait for readiness.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use tokio::process::Child;
use vmi_cert_exchange::{
    bus::{next, wait_for_name, PrivateBus},
    transport::pldm::{MANAGER_NAME, MANAGER_PATH, PLDM_NAME, STATUS_COMPLETE},
};
use zbus::{message::Type, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};

struct Rig {
    bus: PrivateBus,
    conn: zbus::Connection,
    dir: tempfile::TempDir,
    root_file: PathBuf,
}

impl Rig {
    async fn new() -> Self {
        let bus = private_bus();
        let conn = connect(&bus).await;
        let dir = tempfile::tempdir().unwrap();
        let root_file = dir.path().join("bmcweb/RootCert");
        Rig {
            bus,
            conn,
            dir,
            root_file,
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// `simulate-host --fault <fault>`, waited for by its bus name.
    async fn host(&self, fault: &str, extra: &[&str]) -> Child {
        let log = self.d().join(format!("host-{}.log", rand_hex()));
        let mut child = tokio::process::Command::new(BIN)
            .args([
                "simulate-host",
                "--address",
                self.bus.address(),
                "--state-dir",
            ])
            .arg(self.d().join("host-state"))
            .arg("--root-cert-file")
            .arg(&self.root_file)
            .args(["--fault", fault])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::select! {
            r = wait_for_name(&self.conn, PLDM_NAME) => r.unwrap(),
            s = child.wait() => panic!("simulator exited ({s:?}): {}", std::fs::read_to_string(&log).unwrap()),
        }
        child
    }

    async fn service(&self, extra: &[&str]) -> Service {
        let state = self.d().join("service-state");
        let mut args = vec![
            "--transport",
            "pldm",
            "--state-dir",
            state.to_str().unwrap(),
            "--root-cert-file",
            self.root_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let svc = Service::start(&self.bus, &self.conn, &args).await;
        wait_for_name(&self.conn, MANAGER_NAME).await.unwrap();
        svc
    }

    fn csr(&self, name: &str) -> (PathBuf, String) {
        let key = genpkey(self.d(), name, "p256");
        let csr = req(&key, &format!("/CN={name}"), &[]);
        (key, csr)
    }

    /// InterfacesAdded/InterfacesRemoved from the Manager's ObjectManager.
    async fn entry_signals(&self) -> MessageStream {
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .path(MANAGER_PATH)
            .interface("org.freedesktop.DBus.ObjectManager")
            .build()
            .unwrap();
        self.stream(rule).await
    }

    async fn stream(&self, rule: MatchRule<'_>) -> MessageStream {
        // Room for every signal of a test: a full queue would stall the whole connection.
        let room = std::num::NonZeroUsize::new(1024);
        MessageStream::for_match_rule(rule, &self.conn, room)
            .await
            .unwrap()
    }

    /// PropertiesChanged of the Certs.Entry interface of any entry.
    async fn entry_property_changes(&self) -> MessageStream {
        let rule = MatchRule::builder()
            .msg_type(Type::Signal)
            .sender(MANAGER_NAME)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .arg(0, "xyz.openbmc_project.Certs.Entry")
            .build()
            .unwrap();
        self.stream(rule).await
    }

    async fn delete_all(&self) {
        delete_all(&self.conn).await;
    }

    async fn managed_objects(&self) -> Vec<String> {
        let reply = self
            .conn
            .call_method(
                Some(MANAGER_NAME),
                MANAGER_PATH,
                Some("org.freedesktop.DBus.ObjectManager"),
                "GetManagedObjects",
                &(),
            )
            .await
            .unwrap();
        type Objects = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedVariant>>>;
        let objects: Objects = reply.body().deserialize().unwrap();
        // Intermediate nodes (`.../ca/entry`) are listed too; only entries count here.
        let mut paths: Vec<_> = objects
            .iter()
            .filter(|(_, ifaces)| ifaces.contains_key("xyz.openbmc_project.Certs.Entry"))
            .map(|(p, _)| p.as_str().to_string())
            .collect();
        paths.sort();
        paths
    }
}

/// The next InterfacesAdded/Removed: (member, entry path, interface names).
async fn next_entry_signal(stream: &mut MessageStream) -> (String, String, Vec<String>) {
    let msg = tokio::time::timeout(Duration::from_secs(30), next(stream))
        .await
        .expect("an entry signal within 30 s")
        .unwrap()
        .unwrap();
    let member = msg.header().member().unwrap().to_string();
    if member == "InterfacesAdded" {
        let (path, ifaces): (
            OwnedObjectPath,
            HashMap<String, HashMap<String, OwnedVariant>>,
        ) = msg.body().deserialize().unwrap();
        (
            member,
            path.as_str().to_string(),
            ifaces.into_keys().collect(),
        )
    } else {
        let (path, ifaces): (OwnedObjectPath, Vec<String>) = msg.body().deserialize().unwrap();
        (member, path.as_str().to_string(), ifaces)
    }
}

/// The next change of an entry: `Status=<last part of the state>` or `ClientCertificate`.
async fn next_property_change(stream: &mut MessageStream) -> String {
    let msg = tokio::time::timeout(Duration::from_secs(30), next(stream))
        .await
        .expect("a PropertiesChanged within 30 s")
        .unwrap()
        .unwrap();
    let (_, changed, _): (String, HashMap<String, OwnedVariant>, Vec<String>) =
        msg.body().deserialize().unwrap();
    let mut names: Vec<_> = changed.keys().cloned().collect();
    names.sort();
    assert_eq!(names.len(), 1, "one property per Set: {names:?}");
    match names[0].as_str() {
        "Status" => {
            let value: String = changed["Status"].try_clone().unwrap().try_into().unwrap();
            format!("Status={}", value.rsplit('.').next().unwrap())
        }
        other => other.to_string(),
    }
}

/// Follows the entry signals until `path` has lost all three of its interfaces.
async fn until_entry_removed(stream: &mut MessageStream, path: &str) {
    let mut removed = Vec::new();
    while removed.len() < 3 {
        let (member, p, ifaces) = next_entry_signal(stream).await;
        if member == "InterfacesRemoved" && p == path {
            removed.extend(ifaces);
        }
    }
    removed.sort();
    assert_eq!(
        removed,
        [
            "xyz.openbmc_project.Certs.Entry",
            "xyz.openbmc_project.Object.Delete",
            "xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR"
        ]
    );
}

/// `xyz.openbmc_project.Collection.DeleteAll` at the Manager object.
async fn delete_all(conn: &zbus::Connection) {
    conn.call_method(
        Some(MANAGER_NAME),
        MANAGER_PATH,
        Some("xyz.openbmc_project.Collection.DeleteAll"),
        "DeleteAll",
        &(),
    )
    .await
    .unwrap();
}

const ENTRY1: &str = "/xyz/openbmc_project/certs/ca/entry/1";

#[tokio::test(flavor = "multi_thread")]
async fn the_pldm_path_signs_and_the_entry_comes_and_goes_in_order() {
    let rig = Rig::new().await;
    let _host = rig.host("none", &[]).await;
    let _svc = rig.service(&[]).await;
    let mut signals = rig.entry_signals().await;
    let (key, csr) = rig.csr("hmc01");
    let chain = sign(&rig.conn, &csr).await.unwrap();
    let (_, root) = check_chain_with_openssl(rig.d(), &chain, &key);
    assert_eq!(root, std::fs::read_to_string(&rig.root_file).unwrap());

    let mut seen = Vec::new();
    for _ in 0..6 {
        let (member, path, ifaces) = next_entry_signal(&mut signals).await;
        assert_eq!(path, ENTRY1);
        seen.push((member, ifaces.join(",")));
    }
    let expected: Vec<(String, String)> = [
        ("InterfacesAdded", "xyz.openbmc_project.Certs.Entry"),
        ("InterfacesAdded", "xyz.openbmc_project.Object.Delete"),
        (
            "InterfacesAdded",
            "xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR",
        ),
        (
            "InterfacesRemoved",
            "xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR",
        ),
        ("InterfacesRemoved", "xyz.openbmc_project.Object.Delete"),
        ("InterfacesRemoved", "xyz.openbmc_project.Certs.Entry"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());

    // busctl call, as a BMC developer debugs it.
    let (busctl_key, busctl_csr) = rig.csr("busctl");
    let out = Command::new("busctl")
        .arg(format!("--address={}", rig.bus.address()))
        .args([
            "--json=short",
            "--",
            "call",
            "xyz.openbmc_project.HMC.VMInterface",
            "/xyz/openbmc_project/HMC/VMInterface",
            "xyz.openbmc_project.HMC.VMInterface",
            "SignCSR",
            "s",
        ])
        .arg(&busctl_csr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["type"], "s");
    let (_, root) =
        check_chain_with_openssl(rig.d(), reply["data"][0].as_str().unwrap(), &busctl_key);
    assert_eq!(root, std::fs::read_to_string(&rig.root_file).unwrap());
}

/// `busctl tree` and `busctl introspect`, as a BMC developer watches a request wait for the
/// host: the entry is there with its three interfaces while the host is silent, and gone after
/// the request lifetime.
fn busctl(rig: &Rig, args: &[&str]) -> String {
    let out = Command::new("busctl")
        .arg(format!("--address={}", rig.bus.address()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "busctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_map_to_the_documented_errors() {
    let cases: [(&str, &str, &str); 7] = [
        (
            "bad-csr",
            "InvalidArgument",
            "the hypervisor rejected the CSR",
        ),
        (
            "wrong-key",
            "InternalFailure",
            "the hypervisor returned a certificate for a different key than the CSR's",
        ),
        (
            "garbage",
            "InternalFailure",
            "the hypervisor's answer is unusable: it is not a sequence of PEM certificates",
        ),
        (
            "empty",
            "InternalFailure",
            "the hypervisor returned no certificate",
        ),
        (
            "ca-true",
            "InternalFailure",
            "the hypervisor issued a CA certificate (CA:TRUE)",
        ),
        (
            "wrong-root",
            "NoCACertificate",
            "the root certificate does not verify the client certificate",
        ),
        (
            "no-root-file",
            "NoCACertificate",
            "the hypervisor has not provided its root certificate yet",
        ),
    ];
    for (fault, name, message) in cases {
        let rig = Rig::new().await;
        let _host = rig.host(fault, &[]).await;
        let _svc = rig.service(&[]).await;
        let mut signals = rig.entry_signals().await;
        let (_, csr) = rig.csr("hmc");
        let got = sign(&rig.conn, &csr).await.expect_err(fault);
        assert_eq!(got, (common(name), message.to_string()), "fault {fault}");
        // The request has ended: its entry goes, whatever the host answered.
        until_entry_removed(&mut signals, ENTRY1).await;
        assert_eq!(rig.managed_objects().await, Vec::<String>::new(), "{fault}");
    }
}

/// The root file is read afresh for every answer: a stale or unreadable one is
/// NoCACertificate, and once the right root is back the next request succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn the_root_file_is_read_for_every_answer() {
    let rig = Rig::new().await;
    let _host = rig.host("none", &[]).await;
    let _svc = rig.service(&[]).await;
    let pushed = std::fs::read_to_string(&rig.root_file).unwrap();
    let (key, csr) = rig.csr("first");
    let (_, root) = check_chain_with_openssl(rig.d(), &sign(&rig.conn, &csr).await.unwrap(), &key);
    assert_eq!(root, pushed);

    // A stale root: some other CA's.
    let stale = vmi_cert_exchange::ca::SoftCa::generate()
        .unwrap()
        .root_pem();
    std::fs::write(&rig.root_file, &stale).unwrap();
    assert_eq!(
        sign(&rig.conn, &rig.csr("stale").1).await.unwrap_err(),
        (
            common("NoCACertificate"),
            "the root certificate does not verify the client certificate".to_string()
        )
    );
    // An unreadable one (a directory where the file should be).
    std::fs::remove_file(&rig.root_file).unwrap();
    std::fs::create_dir(&rig.root_file).unwrap();
    assert_eq!(
        sign(&rig.conn, &rig.csr("unreadable").1).await.unwrap_err(),
        (
            common("NoCACertificate"),
            "the hypervisor's root certificate cannot be read".to_string()
        )
    );
    // The host's root back in place: the next request goes through.
    std::fs::remove_dir(&rig.root_file).unwrap();
    std::fs::write(&rig.root_file, &pushed).unwrap();
    let (key, csr) = rig.csr("again");
    check_chain_with_openssl(rig.d(), &sign(&rig.conn, &csr).await.unwrap(), &key);
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authority_entry_nobody_deletes_goes_after_the_request_lifetime() {
    let rig = Rig::new().await;
    let _host = rig.host("silent", &[]).await;
    let _svc = rig
        .service(&["--sign-timeout", "0.3", "--request-lifetime", "1"])
        .await;
    let mut signals = rig.entry_signals().await;
    let authority = AuthorityProxy::new(&rig.conn).await.unwrap();
    let path = authority.sign_csr(&rig.csr("forgotten").1).await.unwrap();
    assert_eq!(path.as_str(), ENTRY1);
    until_entry_removed(&mut signals, ENTRY1).await;
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn untidy_answers_become_a_clean_leaf_then_root_chain() {
    for fault in ["root-first", "duplicate", "crlf", "pending-ack"] {
        let rig = Rig::new().await;
        let _host = rig.host(fault, &[]).await;
        let _svc = rig.service(&[]).await;
        let mut signals = rig.entry_signals().await;
        let mut sets = rig.entry_property_changes().await;
        let (key, csr) = rig.csr("hmc");
        let chain = sign(&rig.conn, &csr)
            .await
            .unwrap_or_else(|e| panic!("{fault}: {e:?}"));
        let (_, root) = check_chain_with_openssl(rig.d(), &chain, &key);
        assert_eq!(
            root,
            std::fs::read_to_string(&rig.root_file).unwrap(),
            "{fault}"
        );
        until_entry_removed(&mut signals, ENTRY1).await;
        // What pldmd set, in order, as the entry announced it.
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("Status=Complete") {
            seen.push(next_property_change(&mut sets).await);
        }
        let expected: &[&str] = if fault == "pending-ack" {
            &["Status=Pending", "ClientCertificate", "Status=Complete"]
        } else {
            &["ClientCertificate", "Status=Complete"]
        };
        assert_eq!(seen, expected, "{fault}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_delay_succeeds_and_a_long_one_is_unavailable_then_the_retry_succeeds() {
    let rig = Rig::new().await;
    let _host = rig.host("delay:0.3", &[]).await;
    let _svc = rig.service(&["--sign-timeout", "10"]).await;
    let (key, csr) = rig.csr("quick");
    check_chain_with_openssl(rig.d(), &sign(&rig.conn, &csr).await.unwrap(), &key);

    let rig = Rig::new().await;
    let _host = rig.host("delay:3", &[]).await;
    let _svc = rig.service(&["--sign-timeout", "0.5"]).await;
    let (key, csr) = rig.csr("slow");
    assert_eq!(
        sign(&rig.conn, &csr).await.unwrap_err(),
        (
            common("Unavailable"),
            "signing in progress, retry with the same CSR".to_string()
        )
    );
    // `sign --wait` retries the same CSR while the answer is Unavailable; with too short a
    // wait it gives up with the service's answer and says how often it tried.
    let csr_file = rig.d().join("slow.csr");
    std::fs::write(&csr_file, &csr).unwrap();
    let (address, file) = (rig.bus.address().to_string(), csr_file.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["sign", "--address", &address, "--wait", "1.5", "--csr"])
            .arg(&file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let unavailable = "vmi-cert-exchange: xyz.openbmc_project.Common.Error.Unavailable: \
                       signing in progress, retry with the same CSR";
    let retries = stderr
        .lines()
        .filter(|l| l.starts_with(unavailable) && l.contains("; retrying the same CSR in "))
        .count();
    assert!(retries >= 1, "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "{unavailable} (still so after {} attempts in ",
            retries + 1
        )) && last.ends_with(" s)"),
        "{stderr}"
    );
    let out_dir = rig.d().join("out");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "sign",
        "--address",
        rig.bus.address(),
        "--wait",
        "30",
        "--csr",
    ])
    .arg(&csr_file)
    .arg("--out")
    .arg(&out_dir);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chain = std::fs::read_to_string(out_dir.join("chain.pem")).unwrap();
    check_chain_with_openssl(rig.d(), &chain, &key);
    let counter = std::fs::read_to_string(rig.d().join("service-state/entry-counter")).unwrap();
    assert_eq!(counter, "1\n", "the retries shared one entry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{unavailable}; retrying the same CSR in 0.5 s\n")),
        "each retry is announced: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_host_gives_unavailable_and_the_entry_goes_after_the_lifetime() {
    let rig = Rig::new().await;
    let _host = rig.host("silent", &[]).await;
    let _svc = rig
        .service(&["--sign-timeout", "0.3", "--request-lifetime", "1.5"])
        .await;
    let mut signals = rig.entry_signals().await;
    let (_, csr) = rig.csr("lost");
    let (name, _) = sign(&rig.conn, &csr).await.unwrap_err();
    assert_eq!(name, common("Unavailable"));
    assert_eq!(
        rig.managed_objects().await,
        vec![ENTRY1.to_string()],
        "still waiting for the host"
    );
    let tree = busctl(&rig, &["tree", "--list", MANAGER_NAME]);
    assert_eq!(
        tree.lines()
            .filter(|l| l.contains("/entry/"))
            .collect::<Vec<_>>(),
        [ENTRY1]
    );
    let introspected = busctl(&rig, &["introspect", MANAGER_NAME, ENTRY1]);
    let members: Vec<Vec<&str>> = introspected
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>())
        .filter(|w| {
            w.first()
                .is_some_and(|n| n.starts_with('.') || n.starts_with("xyz."))
        })
        .collect();
    for expected in [
        vec!["xyz.openbmc_project.Certs.Entry", "interface"],
        vec![".ClientCertificate", "property"],
        vec![".Status", "property"],
        vec!["xyz.openbmc_project.Object.Delete", "interface"],
        vec![".Delete", "method"],
        vec![
            "xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR",
            "interface",
        ],
        vec![".CSR", "property"],
    ] {
        assert!(
            members.contains(&expected),
            "{expected:?} in\n{introspected}"
        );
    }
    assert_eq!(
        busctl(
            &rig,
            &[
                "get-property",
                MANAGER_NAME,
                ENTRY1,
                "xyz.openbmc_project.Certs.Entry",
                "Status"
            ]
        ),
        "s \"xyz.openbmc_project.Certs.Entry.State.Pending\"\n"
    );
    // The entry belongs to the waiting request: nobody can fail it from outside with Delete.
    let e = rig
        .conn
        .call_method(
            Some(MANAGER_NAME),
            ENTRY1,
            Some("xyz.openbmc_project.Object.Delete"),
            "Delete",
            &(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        method_error(&e),
        (
            common("NotAllowed"),
            "this certificate entry belongs to a SignCSR request still in progress; it is removed \
             when the request ends"
                .into()
        )
    );
    assert_eq!(rig.managed_objects().await, vec![ENTRY1.to_string()]);
    until_entry_removed(&mut signals, ENTRY1).await;
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());
    let tree = busctl(&rig, &["tree", "--list", MANAGER_NAME]);
    assert!(!tree.contains("/entry/"), "{tree}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_pldmd_or_a_host_that_is_off_answers_unavailable_at_once() {
    let rig = Rig::new().await;
    let svc = rig.service(&[]).await;
    let log = svc.log();
    assert!(
        log.contains(
            "pldmd is not on the bus (xyz.openbmc_project.PLDM has no owner): requests answer \
             Unavailable until it is"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "no root certificate yet: answers are NoCACertificate until the host provides it"
        ),
        "{log}"
    );
    let (_, csr) = rig.csr("nobody");
    assert_eq!(
        sign(&rig.conn, &csr).await.unwrap_err(),
        (
            common("Unavailable"),
            "pldmd is not running (xyz.openbmc_project.PLDM has no owner); retry later".to_string()
        )
    );
    assert_eq!(
        rig.managed_objects().await,
        Vec::<String>::new(),
        "no entry was made"
    );
    // The Authority API, too: no entry that nobody would act on.
    let authority = AuthorityProxy::new(&rig.conn).await.unwrap();
    let e = authority.sign_csr(&csr).await.unwrap_err();
    assert_eq!(
        method_error(&e),
        (
            common("Unavailable"),
            "pldmd is not running (xyz.openbmc_project.PLDM has no owner); retry later".to_string()
        )
    );
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());

    let _host = rig
        .host(
            "none",
            &[
                "--host-state",
                "xyz.openbmc_project.State.Host.HostState.Off",
            ],
        )
        .await;
    wait_for_name(&rig.conn, "xyz.openbmc_project.State.Host0")
        .await
        .unwrap();
    assert_eq!(
        sign(&rig.conn, &csr).await.unwrap_err(),
        (
            common("Unavailable"),
            "the host is not running (CurrentHostState Off); retry when it runs".to_string()
        )
    );
    assert!(
        !rig.d().join("service-state/entry-counter").exists(),
        "no entry was made"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_parallel_callers_through_pldm_and_no_entry_is_left() {
    let rig = Rig::new().await;
    let _host = rig
        .host(
            "none",
            &[
                "--host-state",
                "xyz.openbmc_project.State.Host.HostState.Running",
            ],
        )
        .await;
    let _svc = rig.service(&[]).await;
    let mut signals = rig.entry_signals().await;
    // Every CSR first, so that the 32 calls are on the bus at the same time.
    let requests: Vec<_> = (0..32).map(|i| rig.csr(&format!("hmc{i}"))).collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(key, csr)| {
            let conn = rig.conn.clone();
            tokio::spawn(async move { (key, sign(&conn, &csr).await) })
        })
        .collect();
    for t in tasks {
        let (key, answer) = t.await.unwrap();
        check_chain_with_openssl(rig.d(), &answer.unwrap(), &key);
    }
    let mut removed_entries = 0;
    while removed_entries < 32 {
        let (member, _, ifaces) = next_entry_signal(&mut signals).await;
        if member == "InterfacesRemoved" && ifaces == ["xyz.openbmc_project.Certs.Entry"] {
            removed_entries += 1;
        }
    }
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_simulator_picks_up_the_pending_request_and_ids_never_repeat() {
    let rig = Rig::new().await;
    let mut host = rig.host("delay:600", &[]).await;
    let svc = rig.service(&["--sign-timeout", "0.5"]).await;
    let mut signals = rig.entry_signals().await;
    let (key, csr) = rig.csr("survivor");
    assert_eq!(
        sign(&rig.conn, &csr).await.unwrap_err().0,
        common("Unavailable")
    );

    // The host dies mid-request and comes back: the service announces the entry again.
    host.kill().await.unwrap();
    let _host = rig.host("none", &[]).await;
    let chain =
        vmi_cert_exchange::client::sign_with_retry(&rig.conn, &csr, Duration::from_secs(30))
            .await
            .map_err(|e| e.describe())
            .unwrap();
    check_chain_with_openssl(rig.d(), &chain, &key);
    let (other_key, other) = rig.csr("other");
    check_chain_with_openssl(rig.d(), &sign(&rig.conn, &other).await.unwrap(), &other_key);

    // A service restart continues the id sequence.
    svc.stop().await;
    let _svc = rig.service(&[]).await;
    let (_, third) = rig.csr("third");
    sign(&rig.conn, &third).await.unwrap();
    let mut added = Vec::new();
    while let Ok(signal) =
        tokio::time::timeout(Duration::from_secs(5), next_entry_signal(&mut signals)).await
    {
        if signal.0 == "InterfacesAdded" && signal.2 == ["xyz.openbmc_project.Certs.Entry"] {
            added.push(signal.1);
        }
        if added.len() == 3 {
            break;
        }
    }
    assert_eq!(
        added,
        [
            "/xyz/openbmc_project/certs/ca/entry/1",
            "/xyz/openbmc_project/certs/ca/entry/2",
            "/xyz/openbmc_project/certs/ca/entry/3"
        ]
    );
}

#[zbus::proxy(
    interface = "xyz.openbmc_project.Certs.Authority",
    default_service = "xyz.openbmc_project.Certs.ca.authority.Manager",
    default_path = "/xyz/openbmc_project/certs/ca"
)]
trait Authority {
    #[zbus(name = "SignCSR")]
    fn sign_csr(&self, csr: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "xyz.openbmc_project.Certs.Entry",
    default_service = "xyz.openbmc_project.Certs.ca.authority.Manager"
)]
trait Entry {
    #[zbus(property)]
    fn client_certificate(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn set_client_certificate(&self, value: &str) -> zbus::Result<()>;
    #[zbus(property)]
    fn status(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn set_status(&self, value: &str) -> zbus::Result<()>;
}

fn method_error(e: &zbus::Error) -> (String, String) {
    match e {
        zbus::Error::MethodError(name, message, _) => {
            (name.to_string(), message.clone().unwrap_or_default())
        }
        other => (format!("not a method error: {other}"), String::new()),
    }
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

/// The way IBM's bmcweb route /ibm/v1/Host/Actions/SignCSR uses the Authority API: SignCSR,
/// watch the entry's PropertiesChanged, read ClientCertificate, Delete.
#[tokio::test(flavor = "multi_thread")]
async fn the_asynchronous_authority_api_works_as_ibm_bmcweb_uses_it() {
    let rig = Rig::new().await;
    let _host = rig.host("delay:0.3", &[]).await;
    let svc = rig.service(&[]).await;
    let authority = AuthorityProxy::new(&rig.conn).await.unwrap();
    let (key, csr) = rig.csr("console");
    let path = authority.sign_csr(&csr).await.unwrap();
    assert_eq!(path.as_str(), ENTRY1);
    let entry = EntryProxy::builder(&rig.conn)
        .path(path.clone())
        .build()
        .await
        .unwrap();
    let mut changes = entry.receive_status_changed().await;
    if entry.status().await.unwrap() != STATUS_COMPLETE {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(change) = next(&mut changes).await {
                if change.get().await.unwrap() == STATUS_COMPLETE {
                    break;
                }
            }
        })
        .await
        .expect("Status Complete within 30 s");
    }
    // Exactly what pldmd set: the leaf alone, as upstream shows it.
    let leaf = entry.client_certificate().await.unwrap();
    assert_eq!(vmi_cert_exchange::util::pem_blocks(&leaf).len(), 1);
    let chain = format!("{leaf}{}", std::fs::read_to_string(&rig.root_file).unwrap());
    check_chain_with_openssl(rig.d(), &chain, &key);

    // A completed entry refuses further writes; the tree shows it until Delete.
    let e = entry
        .set_status("xyz.openbmc_project.Certs.Entry.State.Pending")
        .await
        .unwrap_err();
    assert_eq!(error_name(&e), common("NotAllowed"));
    let tree = Command::new("busctl")
        .arg(format!("--address={}", rig.bus.address()))
        .args(["tree", "--list", MANAGER_NAME])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&tree.stdout),
        "/\n/xyz\n/xyz/openbmc_project\n/xyz/openbmc_project/certs\n/xyz/openbmc_project/certs/ca\n/xyz/openbmc_project/certs/ca/entry\n/xyz/openbmc_project/certs/ca/entry/1\n"
    );
    let mut signals = rig.entry_signals().await;
    rig.conn
        .call_method(
            Some(MANAGER_NAME),
            path.as_str(),
            Some("xyz.openbmc_project.Object.Delete"),
            "Delete",
            &(),
        )
        .await
        .unwrap();
    until_entry_removed(&mut signals, ENTRY1).await;
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());

    // Our validation runs first: an invalid CSR never becomes an entry.
    let e = authority.sign_csr("not a csr").await.unwrap_err();
    assert_eq!(error_name(&e), common("InvalidArgument"));
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());

    // One request log line for each call, like SignCSR's.
    let log = svc.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("vmi_cert_exchange::request"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    for field in [
        "Authority.SignCSR ",
        "subject=\"CN=console\"",
        "key_type=EC P-256",
        "entry=1",
        "outcome=entry_created ",
        "duration_ms=",
    ] {
        assert!(lines[0].contains(field), "{field}: {}", lines[0]);
    }
    for field in [
        "Authority.SignCSR failed",
        "subject=\"\"",
        "outcome=InvalidArgument",
        "reason=\"the CSR is not PEM: expected a -----BEGIN CERTIFICATE REQUEST----- line\"",
    ] {
        assert!(lines[1].contains(field), "{field}: {}", lines[1]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_pldmd_may_set_entries_and_sets_follow_the_rules() {
    let rig = Rig::new().await;
    // The test plays pldmd itself: its connection owns xyz.openbmc_project.PLDM.
    let pldmd = connect(&rig.bus).await;
    pldmd.request_name(PLDM_NAME).await.unwrap();
    let svc = rig.service(&[]).await;
    let authority = AuthorityProxy::new(&rig.conn).await.unwrap();
    let path = authority.sign_csr(&rig.csr("a").1).await.unwrap();
    let as_pldmd = EntryProxy::builder(&pldmd)
        .path(path.clone())
        .build()
        .await
        .unwrap();
    let as_other = EntryProxy::builder(&rig.conn)
        .path(path.clone())
        .build()
        .await
        .unwrap();

    // Any other root process is refused: otherwise it could fail a console's request.
    let e = as_other
        .set_status("xyz.openbmc_project.Certs.Entry.State.BadCSR")
        .await
        .unwrap_err();
    assert_eq!(
        method_error(&e),
        (
            common("NotAllowed"),
            "only pldmd (the owner of xyz.openbmc_project.PLDM) may set certificate entries".into()
        )
    );
    assert_eq!(
        as_other.status().await.unwrap(),
        "xyz.openbmc_project.Certs.Entry.State.Pending"
    );

    // Pending -> Pending is what pldmd does when the host is not ready.
    as_pldmd
        .set_status("xyz.openbmc_project.Certs.Entry.State.Pending")
        .await
        .unwrap();
    let e = as_pldmd.set_status("Complete").await.unwrap_err();
    assert_eq!(
        method_error(&e),
        (common("NotAllowed"), "unknown Status value".into())
    );
    let e = as_pldmd
        .set_client_certificate(&"x".repeat(64 * 1024 + 1))
        .await
        .unwrap_err();
    assert_eq!(
        method_error(&e),
        (
            common("NotAllowed"),
            "ClientCertificate is larger than 64 KiB".into()
        )
    );
    as_pldmd
        .set_client_certificate("anything pldmd sets")
        .await
        .unwrap();
    as_pldmd
        .set_status("xyz.openbmc_project.Certs.Entry.State.BadCSR")
        .await
        .unwrap();
    assert_eq!(
        as_other.client_certificate().await.unwrap(),
        "anything pldmd sets"
    );
    let e = as_pldmd.set_client_certificate("late").await.unwrap_err();
    assert_eq!(
        method_error(&e),
        (
            common("NotAllowed"),
            "the certificate entry is no longer Pending".into()
        )
    );
    // Every refusal is logged, with who asked and why.
    let log = svc.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a property Set on a certificate entry"))
        .collect();
    assert_eq!(refusals.len(), 4, "{log}");
    for (line, reason) in refusals.iter().zip([
        "only pldmd (the owner of xyz.openbmc_project.PLDM) may set certificate entries",
        "unknown Status value",
        "ClientCertificate is larger than 64 KiB",
        "the certificate entry is no longer Pending",
    ]) {
        assert!(line.contains(&format!("reason=\"{reason}\"")), "{line}");
        assert!(line.contains("entry=1 "), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_all_removes_authority_entries_and_leaves_waiting_requests_alone() {
    let rig = Rig::new().await;
    let _host = rig.host("silent", &[]).await;
    let _svc = rig.service(&["--sign-timeout", "0.5"]).await;
    let authority = AuthorityProxy::new(&rig.conn).await.unwrap();
    let p1 = authority.sign_csr(&rig.csr("a").1).await.unwrap();
    let p2 = authority.sign_csr(&rig.csr("b").1).await.unwrap();
    // A SignCSR request whose entry keeps waiting for the (silent) host.
    let (_, csr) = rig.csr("waiting");
    assert_eq!(
        sign(&rig.conn, &csr).await.unwrap_err().0,
        common("Unavailable")
    );
    let waiting = "/xyz/openbmc_project/certs/ca/entry/3".to_string();
    assert_eq!(
        rig.managed_objects().await,
        vec![
            p1.as_str().to_string(),
            p2.as_str().to_string(),
            waiting.clone()
        ]
    );

    let mut signals = rig.entry_signals().await;
    rig.delete_all().await;
    let mut removed = std::collections::BTreeSet::new();
    while removed.len() < 2 {
        let (member, path, _) = next_entry_signal(&mut signals).await;
        if member == "InterfacesRemoved" {
            removed.insert(path);
        }
    }
    assert_eq!(
        removed,
        [p1.as_str().to_string(), p2.as_str().to_string()].into()
    );
    assert_eq!(rig.managed_objects().await, vec![waiting]);
}

/// Entries created and deleted at once from many connections: nothing may survive a final
/// DeleteAll (an entry half removed while being created used to keep its CSR interface).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creation_and_delete_all_leave_nothing_behind() {
    let rig = Rig::new().await;
    let _host = rig.host("silent", &[]).await;
    let _svc = rig.service(&["--max-in-flight", "10000"]).await;
    let csr = rig.csr("busy").1;
    let mut tasks = Vec::new();
    for creator in 0..4 {
        let conn = connect(&rig.bus).await;
        let csr = csr.clone();
        tasks.push(tokio::spawn(async move {
            let authority = AuthorityProxy::new(&conn).await.unwrap();
            for _ in 0..40 {
                authority.sign_csr(&csr).await.unwrap();
            }
            creator
        }));
    }
    for deleter in 0..2 {
        let conn = connect(&rig.bus).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                delete_all(&conn).await;
            }
            deleter
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    rig.delete_all().await;
    assert_eq!(rig.managed_objects().await, Vec::<String>::new());
    let xml = introspect_xml(&rig.conn, MANAGER_NAME, MANAGER_PATH).await;
    assert!(
        !xml.contains("<node name=\"entry\""),
        "no entry node is left: {xml}"
    );
}

/// A host-state service that never answers must not eat the caller's deadline.
struct SilentHost;

#[zbus::interface(name = "xyz.openbmc_project.State.Host")]
impl SilentHost {
    #[zbus(property)]
    async fn current_host_state(&self) -> String {
        std::future::pending::<()>().await;
        unreachable!()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_readiness_probes_still_answer_within_the_sign_timeout() {
    let rig = Rig::new().await;
    let _host = rig.host("none", &[]).await;
    let state = zbus::connection::Builder::address(rig.bus.address())
        .serve_at("/xyz/openbmc_project/state/host0", SilentHost)
        .name("xyz.openbmc_project.State.Host0")
        .build()
        .await
        .unwrap();
    // The probes may take 2 s in all; the caller's deadline here is shorter.
    let svc = rig.service(&["--sign-timeout", "1"]).await;
    let (_, csr) = rig.csr("patient");
    assert_eq!(
        sign(&rig.conn, &csr).await.unwrap_err(),
        (
            common("Unavailable"),
            "the path to the hypervisor did not answer in time; retry later".to_string()
        )
    );
    // With a deadline past the probes' budget, an unknown host state does not block signing.
    // The first service is gone before the second starts, or the call could reach it.
    svc.stop().await;
    let _svc = rig.service(&["--sign-timeout", "10"]).await;
    let (key, csr) = rig.csr("patient2");
    check_chain_with_openssl(rig.d(), &sign(&rig.conn, &csr).await.unwrap(), &key);
    drop(state);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hmc_object_is_under_exactly_one_well_known_name() {
    let rig = Rig::new().await;
    let _host = rig.host("none", &[]).await;
    let _svc = rig.service(&[]).await;
    let dbus = zbus::fdo::DBusProxy::new(&rig.conn).await.unwrap();
    let mut owners = Vec::new();
    for name in dbus.list_names().await.unwrap() {
        let name = name.to_string();
        if name.starts_with(':') || name.starts_with("org.freedesktop") {
            continue;
        }
        let xml = rig
            .conn
            .call_method(
                Some(name.as_str()),
                "/xyz/openbmc_project/HMC/VMInterface",
                Some("org.freedesktop.DBus.Introspectable"),
                "Introspect",
                &(),
            )
            .await
            .ok()
            .and_then(|r| r.body().deserialize::<String>().ok())
            .unwrap_or_default();
        if xml.contains("interface name=\"xyz.openbmc_project.HMC.VMInterface\"") {
            owners.push(name);
        }
    }
    assert_eq!(owners, ["xyz.openbmc_project.HMC.VMInterface"]);
}

#[test]
fn demo_through_the_pldm_transport_completes_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo");
    let out = run_bin(&[
        "demo",
        "--transport",
        "pldm",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("host simulator (pldmd + hypervisor CA) owns xyz.openbmc_project.PLDM"));
    assert!(stdout.contains("(pldm transport)"));
    assert!(stdout.contains("mutual TLS handshake with client.key + client.crt: TLSv1.3"));
    let chain = std::fs::read_to_string(out_dir.join("chain.pem")).unwrap();
    check_chain_with_openssl(dir.path(), &chain, &out_dir.join("client.key"));
    // Signed by the simulated hypervisor's root, not by an emulator CA.
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(out_dir.join("ca.crt"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&subject.stdout),
        "subject=CN=VMI Simulated Hypervisor Root CA,O=vmi-cert-exchange\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_authority_api_leaves_only_the_object_manager() {
    let rig = Rig::new().await;
    let _host = rig.host("none", &[]).await;
    let _svc = rig.service(&["--no-authority-api"]).await;
    let xml = introspect_xml(&rig.conn, MANAGER_NAME, MANAGER_PATH).await;
    assert!(xml.contains("interface name=\"org.freedesktop.DBus.ObjectManager\""));
    assert!(
        !xml.contains("xyz.openbmc_project.Certs.Authority"),
        "{xml}"
    );
    assert!(
        !xml.contains("xyz.openbmc_project.Collection.DeleteAll"),
        "{xml}"
    );
    let e = AuthorityProxy::new(&rig.conn)
        .await
        .unwrap()
        .sign_csr(&rig.csr("x").1)
        .await
        .unwrap_err();
    // zbus maps the standard error to its own FDO variant.
    assert!(
        matches!(e, zbus::Error::FDO(ref fdo) if matches!(**fdo, zbus::fdo::Error::UnknownInterface(_))),
        "{e:?}"
    );
    // The synchronous path is unaffected.
    let (key, csr) = rig.csr("sync");
    check_chain_with_openssl(rig.d(), &sign(&rig.conn, &csr).await.unwrap(), &key);
}
