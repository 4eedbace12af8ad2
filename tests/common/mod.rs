//! Fixtures shared by the integration tests: a private `dbus-daemon`, the service binary on it,
//! keys and CSRs made by the `openssl` command-line tool, and a D-Bus client.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use tokio::process::Child;
use vmi_cert_exchange::{bus::PrivateBus, client::VmInterfaceProxy};

pub const BIN: &str = env!("CARGO_BIN_EXE_vmi-cert-exchange");

/// A private bus; a missing `dbus-daemon` fails the test.
pub fn private_bus() -> PrivateBus {
    PrivateBus::start().expect("dbus-daemon must be installed (see .ci/run)")
}

pub async fn connect(bus: &PrivateBus) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address())
        .method_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap()
}

/// A service process on `bus`, killed when dropped.
pub struct Service {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Service {
    /// Starts `vmi-cert-exchange serve --address ... <args>` and waits for its name.
    pub async fn start(bus: &PrivateBus, conn: &zbus::Connection, args: &[&str]) -> Self {
        let stderr = bus.dir().join(format!("service-{}.log", rand_hex()));
        let child = tokio::process::Command::new(BIN)
            .arg("serve")
            .arg("--address")
            .arg(bus.address())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut service = Service { child, stderr };
        tokio::select! {
            r = vmi_cert_exchange::bus::wait_for_name(conn, vmi_cert_exchange::BUS_NAME) => r.unwrap(),
            s = service.child.wait() => panic!("service exited ({s:?}): {}", service.log()),
        }
        service
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap();
        assert!(Command::new("kill")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("service stops on SIGTERM")
            .unwrap();
        assert!(status.success(), "service exit: {status:?}\n{}", self.log());
    }
}

/// A private bus with the service on it, emulator transport, state in `<dir>/state`.
pub async fn emulator_service(
    dir: &Path,
    extra: &[&str],
) -> (PrivateBus, zbus::Connection, Service) {
    let bus = private_bus();
    let conn = connect(&bus).await;
    let state = dir.join("state");
    let mut args = vec![
        "--transport",
        "emulator",
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let svc = Service::start(&bus, &conn, &args).await;
    (bus, conn, svc)
}

/// `org.freedesktop.DBus.Introspectable.Introspect` of `path` under `destination`.
pub async fn introspect_xml(conn: &zbus::Connection, destination: &str, path: &str) -> String {
    conn.call_method(
        Some(destination),
        path,
        Some("org.freedesktop.DBus.Introspectable"),
        "Introspect",
        &(),
    )
    .await
    .unwrap()
    .body()
    .deserialize()
    .unwrap()
}

/// Runs `vmi-cert-exchange <args>` to completion.
pub fn run_bin(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn rand_hex() -> String {
    let mut b = [0u8; 6];
    openssl::rand::rand_bytes(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the `openssl` tool and returns stdout; a failure fails the test.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Key kinds as `openssl genpkey` makes them.
pub fn genpkey(dir: &Path, name: &str, kind: &str) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    let k = key.to_str().unwrap();
    match kind {
        "rsa2048" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            k,
        ]),
        "rsa4096" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:4096",
            "-out",
            k,
        ]),
        "rsa1024" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            k,
        ]),
        "p256" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            k,
        ]),
        "p384" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            k,
        ]),
        "brainpool" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:brainpoolP256r1",
            "-out",
            k,
        ]),
        "ed25519" => openssl(&["genpkey", "-algorithm", "ED25519", "-out", k]),
        other => panic!("unknown key kind {other}"),
    };
    key
}

/// `openssl req -new` with `subj` and extra arguments; returns the CSR PEM.
pub fn req(key: &Path, subj: &str, extra: &[&str]) -> String {
    let mut args = vec!["req", "-new", "-key", key.to_str().unwrap(), "-subj", subj];
    args.extend_from_slice(extra);
    openssl(&args)
}

pub async fn sign(conn: &zbus::Connection, csr: &str) -> Result<String, (String, String)> {
    let proxy = VmInterfaceProxy::new(conn).await.unwrap();
    proxy.sign_csr(csr).await.map_err(|e| match e {
        zbus::Error::MethodError(name, msg, _) => (name.to_string(), msg.unwrap_or_default()),
        other => panic!("not a D-Bus error reply: {other}"),
    })
}

pub fn common(name: &str) -> String {
    format!("xyz.openbmc_project.Common.Error.{name}")
}

/// Checks a returned chain with the openssl tool: two blocks, the leaf verifies under the
/// root, and the leaf's public key equals the key's. Returns (client.crt, ca.crt).
pub fn check_chain_with_openssl(dir: &Path, chain: &str, key: &Path) -> (String, String) {
    let blocks = vmi_cert_exchange::util::pem_blocks(chain);
    assert_eq!(blocks.len(), 2, "leaf then root");
    assert_eq!(
        blocks.concat(),
        chain,
        "nothing but the two blocks, LF endings"
    );
    assert!(!chain.contains('\r'));
    assert!(blocks[0].starts_with("-----BEGIN CERTIFICATE-----\n"));
    let leaf = dir.join(format!("leaf-{}.crt", rand_hex()));
    let root = dir.join(format!("root-{}.crt", rand_hex()));
    std::fs::write(&leaf, &blocks[0]).unwrap();
    std::fs::write(&root, &blocks[1]).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-purpose",
        "sslclient",
        leaf.to_str().unwrap(),
    ]);
    assert_eq!(verified, format!("{}: OK\n", leaf.display()));
    let leaf_pub = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert_eq!(leaf_pub, key_pub, "certificate is for the caller's key");
    (blocks[0].clone(), blocks[1].clone())
}
