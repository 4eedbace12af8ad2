//! Load benchmark, run on demand (never part of the tests):
//!
//! ```sh
//! cargo build --release --locked --bins --examples
//! target/release/examples/load [--requests N] [--concurrency C] [--transport emulator|pldm]
//! ```
//!
//! Starts a private bus and the release service binary on it (plus the host simulator for
//! `pldm`), sends N distinct EC P-256 CSRs with C callers over one connection, and prints
//! throughput, latency percentiles and the service's memory (VmRSS idle, VmHWM at the end).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use openssl::{
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::PKey,
    x509::{X509NameBuilder, X509ReqBuilder},
};
use vmi_cert_exchange::{bus::PrivateBus, client::VmInterfaceProxy, util::TempDir};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn memory(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

fn csr(n: usize) -> String {
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", &format!("hmc-load-{n}"))
        .unwrap();
    let mut b = X509ReqBuilder::new().unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    String::from_utf8(b.build().to_pem().unwrap()).unwrap()
}

#[tokio::main]
async fn main() {
    let requests: usize = arg("--requests", "2000").parse().unwrap();
    let concurrency: usize = arg("--concurrency", "32").parse().unwrap();
    let transport = arg("--transport", "emulator");
    let exe = std::env::current_exe().unwrap();
    let bin: PathBuf = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("vmi-cert-exchange");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release --locked --bins"
    );

    let work = TempDir::new("vmi-load").unwrap();
    let bus = PrivateBus::start().unwrap();
    let conn = zbus::connection::Builder::address(bus.address())
        .method_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let root = work.path().join("RootCert");
    let _host = (transport == "pldm").then(|| {
        Killed(
            Command::new(&bin)
                .args(["simulate-host", "--address", bus.address(), "--state-dir"])
                .arg(work.path().join("host"))
                .arg("--root-cert-file")
                .arg(&root)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    });
    if transport == "pldm" {
        vmi_cert_exchange::bus::wait_for_name(&conn, "xyz.openbmc_project.PLDM")
            .await
            .unwrap();
    }
    let service = Killed(
        Command::new(&bin)
            .args([
                "serve",
                "--address",
                bus.address(),
                "--transport",
                &transport,
            ])
            .arg("--state-dir")
            .arg(work.path().join("state"))
            .arg("--root-cert-file")
            .arg(&root)
            .arg("--max-in-flight")
            .arg(concurrency.max(64).to_string())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    vmi_cert_exchange::bus::wait_for_name(&conn, vmi_cert_exchange::BUS_NAME)
        .await
        .unwrap();
    let pid = service.0.id();
    let idle = memory(pid, "VmRSS:");

    let csrs: Vec<String> = (0..requests).map(csr).collect();
    let csrs = Arc::new(csrs);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let conn = conn.clone();
        let csrs = csrs.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let proxy = VmInterfaceProxy::new(&conn).await.unwrap();
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= csrs.len() {
                    break latencies;
                }
                let t = Instant::now();
                proxy.sign_csr(&csrs[i]).await.expect("signed");
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "transport={transport} requests={requests} concurrency={concurrency} \
         elapsed={:.2}s throughput={:.0}/s p50={:.1}ms p99={:.1}ms max={:.1}ms \
         rss_idle={idle} rss_peak={}",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        memory(pid, "VmHWM:"),
    );
}
