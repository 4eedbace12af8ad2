//! `demo`: the whole exchange end to end on a private bus, finished by a mutual-TLS handshake
//! against a VMI-like endpoint.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use openssl::{
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    rsa::Rsa,
    ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion},
    x509::{X509NameBuilder, X509ReqBuilder, X509},
};
use tokio::process::{Child, Command};

use crate::{
    bus::{wait_for_name, PrivateBus},
    ca::SoftCa,
    client::{describe, split_chain, write_chain, VmInterfaceProxy, CALL_TIMEOUT},
    error::StartError,
    util::{write_file_atomically, TempDir},
};

pub struct DemoOptions {
    pub out: PathBuf,
    /// The transport the service uses; `pldm` also starts the host simulator.
    pub transport: crate::daemon::TransportKind,
}

fn failed(step: &str, e: impl std::fmt::Display) -> StartError {
    StartError::Failed(format!("{step}: {e}"))
}

struct Steps {
    n: usize,
    started: Instant,
}

impl Steps {
    fn say(&mut self, text: impl std::fmt::Display) {
        self.n += 1;
        println!(
            "[{:>2}] {:>6.0} ms  {text}",
            self.n,
            self.started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// A child process killed when dropped, whose stderr went to a log file shown on failure.
struct Process {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Process {
    fn spawn(name: &'static str, args: &[String], log: PathBuf) -> Result<Self, StartError> {
        let exe = std::env::current_exe().map_err(|e| failed("cannot find own binary", e))?;
        let stderr = std::fs::File::create(&log).map_err(|e| failed("cannot create log", e))?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // A process group of its own: a terminal's Ctrl-C goes to the demo's whole group,
            // and the demo, not the signal, must decide how its children stop.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(&format!("cannot start {name}"), e))?;
        Ok(Process { child, log, name })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits for `name` on the bus, or reports the process's own words if it exits first.
    async fn wait_ready(&mut self, conn: &zbus::Connection, name: &str) -> Result<(), StartError> {
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(30), wait_for_name(conn, name)) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(failed(&format!("waiting for {name}"), e)),
                Err(_) => Err(StartError::Failed(format!(
                    "{} did not take {name} within 30 s:\n{}", self.name, self.log_tail()
                ))),
            },
            status = self.child.wait() => Err(StartError::Failed(format!(
                "{} exited ({}) before taking {name}:\n{}",
                self.name,
                status.map(|s| s.to_string()).unwrap_or_default(),
                self.log_tail()
            ))),
        }
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM first so the service releases its name and state lock cleanly.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

impl Drop for Process {
    /// An interrupted demo drops its children without [`Process::stop`]: kill them and wait
    /// (briefly) for their exit, so that no zombie outlives the demo.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
            for _ in 0..200 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn hmc_key_and_csr() -> Result<(PKey<Private>, String), openssl::error::ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Example HMC")?;
    name.append_entry_by_nid(Nid::COMMONNAME, "hmc-demo.example.com")?;
    let mut req = X509ReqBuilder::new()?;
    req.set_subject_name(&name.build())?;
    req.set_pubkey(&key)?;
    req.sign(&key, MessageDigest::sha256())?;
    let pem = String::from_utf8_lossy(&req.build().to_pem()?).into_owned();
    Ok((key, pem))
}

fn subject(cert: &X509) -> String {
    crate::csr::subject_for_log(cert.subject_name())
}

/// Runs the demo; every step is printed, and any failure ends it with an error.
pub async fn run(opts: DemoOptions) -> Result<(), StartError> {
    let mut steps = Steps {
        n: 0,
        started: Instant::now(),
    };
    let work = TempDir::new("vmi-demo").map_err(|e| failed("cannot create a work directory", e))?;
    let bus = PrivateBus::start().map_err(|e| failed("cannot start a private D-Bus daemon", e))?;
    steps.say(format_args!(
        "private dbus-daemon listening at {}",
        bus.address()
    ));

    let conn = bus
        .bus()
        .builder()?
        .method_timeout(CALL_TIMEOUT)
        .build()
        .await
        .map_err(|e| failed("cannot connect to the private bus", e))?;

    let service_state = work.path().join("service-state");
    let mut service_args = vec![
        "serve".to_string(),
        "--address".into(),
        bus.address().to_string(),
        "--state-dir".into(),
        service_state.display().to_string(),
    ];
    let mut simulator = None;
    let ca_dir = match opts.transport {
        crate::daemon::TransportKind::Emulator => {
            service_args.extend(["--transport".into(), "emulator".into()]);
            service_state.clone()
        }
        crate::daemon::TransportKind::Pldm => {
            let sim_state = work.path().join("host-state");
            let root_file = work.path().join("RootCert");
            let mut sim = Process::spawn(
                "simulate-host",
                &[
                    "simulate-host".into(),
                    "--address".into(),
                    bus.address().to_string(),
                    "--state-dir".into(),
                    sim_state.display().to_string(),
                    "--root-cert-file".into(),
                    root_file.display().to_string(),
                ],
                work.path().join("simulate-host.log"),
            )?;
            sim.wait_ready(&conn, "xyz.openbmc_project.PLDM").await?;
            steps.say("host simulator (pldmd + hypervisor CA) owns xyz.openbmc_project.PLDM");
            service_args.extend([
                "--transport".into(),
                "pldm".into(),
                "--root-cert-file".into(),
                root_file.display().to_string(),
            ]);
            simulator = Some(sim);
            sim_state
        }
    };
    let mut service = Process::spawn(
        "the service",
        &service_args,
        work.path().join("service.log"),
    )?;
    let result = async {
        service.wait_ready(&conn, crate::BUS_NAME).await?;
        steps.say(format_args!(
            "service owns {} ({} transport)",
            crate::BUS_NAME,
            match opts.transport {
                crate::daemon::TransportKind::Emulator => "emulator",
                crate::daemon::TransportKind::Pldm => "pldm",
            }
        ));
        exchange(&mut steps, &conn, &opts.out, &ca_dir).await
    }
    .await;
    let result = match result {
        Err(StartError::Failed(msg)) => Err(StartError::Failed(format!(
            "{msg}\n--- service log ---\n{}",
            service.log_tail()
        ))),
        other => other,
    };
    service.stop().await;
    if let Some(sim) = simulator {
        sim.stop().await;
    }
    drop(conn);
    drop(bus);
    if result.is_ok() {
        steps.say("stopped the service and the private bus; demo succeeded");
    }
    result
}

async fn exchange(
    steps: &mut Steps,
    conn: &zbus::Connection,
    out: &Path,
    ca_dir: &Path,
) -> Result<(), StartError> {
    let (key, csr) = hmc_key_and_csr().map_err(|e| failed("cannot create the HMC key", e))?;
    steps.say("HMC side: created an RSA-2048 key and a CSR for CN=hmc-demo.example.com");

    let proxy = VmInterfaceProxy::new(conn)
        .await
        .map_err(|e| failed("cannot create the proxy", e))?;
    let t = Instant::now();
    let chain = proxy
        .sign_csr(&csr)
        .await
        .map_err(|e| failed("SignCSR", describe(&e)))?;
    steps.say(format_args!(
        "SignCSR over D-Bus returned {} bytes in {:.0} ms",
        chain.len(),
        t.elapsed().as_secs_f64() * 1000.0
    ));

    let blocks = split_chain(&chain)?;
    let leaf = X509::from_pem(blocks[0].as_bytes()).map_err(|e| failed("client.crt", e))?;
    let root = X509::from_pem(blocks[1].as_bytes()).map_err(|e| failed("ca.crt", e))?;
    let leaf_key = leaf.public_key().map_err(|e| failed("client.crt key", e))?;
    if !leaf_key.public_eq(&key) {
        return Err(StartError::Failed(
            "client.crt is not for the HMC's key".into(),
        ));
    }
    let root_key = root.public_key().map_err(|e| failed("ca.crt key", e))?;
    if !leaf.verify(&root_key).map_err(|e| failed("verify", e))? {
        return Err(StartError::Failed(
            "client.crt is not signed by ca.crt".into(),
        ));
    }
    steps.say(format_args!(
        "split and verified: client.crt ({}) is for the HMC key and signed by ca.crt ({})",
        subject(&leaf),
        subject(&root)
    ));
    // Written only now: a run stopped or refused before the answer is verified leaves nothing
    // here, so never a new key beside the certificates of an earlier run.
    std::fs::create_dir_all(out)
        .map_err(|e| failed(&format!("cannot create {}", out.display()), e))?;
    let key_pem = key
        .private_key_to_pem_pkcs8()
        .map_err(|e| failed("cannot encode the HMC key", e))?;
    write_file_atomically(&out.join("client.key"), &key_pem, 0o600)
        .map_err(|e| failed("cannot write client.key", e))?;
    write_file_atomically(&out.join("client.csr"), csr.as_bytes(), 0o644)
        .map_err(|e| failed("cannot write client.csr", e))?;
    write_chain(out, &chain)?;
    steps.say(format_args!(
        "wrote client.key (0600) client.csr client.crt ca.crt chain.pem into {}",
        out.display()
    ));

    // The VMI endpoint: a server certificate from the same CA, as the hypervisor has.
    let ca = SoftCa::load(ca_dir)?;
    let server_key = PKey::from_rsa(Rsa::generate(2048).map_err(|e| failed("server key", e))?)
        .map_err(|e| failed("server key", e))?;
    let server_cert = ca
        .issue_server(&server_key, "vmi.localhost")
        .map_err(|e| failed("server certificate", e))?;
    let out = out.to_path_buf();
    let outcome = tokio::task::spawn_blocking(move || mutual_tls(&out, &server_key, &server_cert))
        .await
        .map_err(|e| failed("TLS task", e))??;
    steps.say(format_args!(
        "VMI-like TLS endpoint on {} demands a client certificate from ca.crt",
        outcome.address
    ));
    steps.say("a client without a certificate is refused by the endpoint");
    steps.say(format_args!(
        "mutual TLS handshake with client.key + client.crt: {} {} (server saw client {})",
        outcome.version, outcome.cipher, outcome.peer
    ));
    Ok(())
}

struct TlsOutcome {
    address: String,
    version: String,
    cipher: String,
    peer: String,
}

fn mutual_tls(
    out: &Path,
    server_key: &PKey<Private>,
    server_cert: &X509,
) -> Result<TlsOutcome, StartError> {
    let tls = |what: &str, e: &dyn std::fmt::Display| failed(&format!("TLS {what}"), e);
    let ca_file = out.join("ca.crt");
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| tls("server setup", &e))?;
    acceptor
        .set_private_key(server_key)
        .map_err(|e| tls("server key", &e))?;
    acceptor
        .set_certificate(server_cert)
        .map_err(|e| tls("server certificate", &e))?;
    acceptor
        .set_ca_file(&ca_file)
        .map_err(|e| tls("server CA", &e))?;
    acceptor.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    let acceptor = acceptor.build();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| tls("bind", &e))?;
    let address = listener.local_addr().map_err(|e| tls("bind", &e))?;

    let server = std::thread::spawn(move || -> Result<String, String> {
        // First connection: no client certificate, must fail.
        let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        if acceptor.accept(stream).is_ok() {
            return Err("the endpoint accepted a client without a certificate".into());
        }
        // Second: the HMC with its new certificate.
        let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut ssl = acceptor.accept(stream).map_err(|e| e.to_string())?;
        let peer = ssl
            .ssl()
            .peer_certificate()
            .map(|c| subject(&c))
            .ok_or("no peer certificate")?;
        let mut buf = [0u8; 5];
        ssl.read_exact(&mut buf).map_err(|e| e.to_string())?;
        ssl.write_all(b"pong\n").map_err(|e| e.to_string())?;
        let _ = ssl.shutdown();
        Ok(peer)
    });

    let connector = |with_cert: bool| -> Result<SslConnector, StartError> {
        let mut c =
            SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls("client setup", &e))?;
        c.set_ca_file(&ca_file).map_err(|e| tls("client CA", &e))?;
        c.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| tls("client setup", &e))?;
        if with_cert {
            c.set_certificate_file(out.join("client.crt"), SslFiletype::PEM)
                .map_err(|e| tls("client certificate", &e))?;
            c.set_private_key_file(out.join("client.key"), SslFiletype::PEM)
                .map_err(|e| tls("client key", &e))?;
            c.check_private_key().map_err(|e| tls("client key", &e))?;
        }
        Ok(c.build())
    };

    // Without a certificate: TLS 1.3 reports the server's refusal on the first read.
    let refused = (|| -> Result<(), String> {
        let tcp = TcpStream::connect(address).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut ssl = connector(false)
            .map_err(|e| e.to_string())?
            .connect("localhost", tcp)
            .map_err(|e| e.to_string())?;
        ssl.write_all(b"ping\n").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        ssl.read_exact(&mut buf).map_err(|e| e.to_string())
    })();
    if refused.is_ok() {
        return Err(StartError::Failed(
            "the endpoint answered a client without a certificate".into(),
        ));
    }

    let tcp = TcpStream::connect(address).map_err(|e| tls("connect", &e))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut ssl = connector(true)?
        .connect("localhost", tcp)
        .map_err(|e| tls("handshake", &e))?;
    ssl.write_all(b"ping\n").map_err(|e| tls("write", &e))?;
    let mut buf = [0u8; 5];
    ssl.read_exact(&mut buf).map_err(|e| tls("read", &e))?;
    if &buf != b"pong\n" {
        return Err(StartError::Failed(
            "the endpoint did not answer pong".into(),
        ));
    }
    let version = ssl.ssl().version_str().to_string();
    let cipher = ssl
        .ssl()
        .current_cipher()
        .map(|c| c.name().to_string())
        .unwrap_or_default();
    let peer = server
        .join()
        .map_err(|_| StartError::Failed("the TLS endpoint thread panicked".into()))?
        .map_err(|e| StartError::Failed(format!("TLS endpoint: {e}")))?;
    Ok(TlsOutcome {
        address: address.to_string(),
        version,
        cipher,
        peer,
    })
}
