//! `sign`: the client a BMC developer uses instead of hand-typing busctl.

use std::{
    io::Read,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use zbus::{proxy, Connection};

use crate::{bus::Bus, error::StartError, util::pem_blocks};

#[proxy(
    interface = "xyz.openbmc_project.HMC.VMInterface",
    default_service = "xyz.openbmc_project.HMC.VMInterface",
    default_path = "/xyz/openbmc_project/HMC/VMInterface"
)]
pub trait VmInterface {
    #[zbus(name = "SignCSR")]
    fn sign_csr(&self, csr: &str) -> zbus::Result<String>;
}

/// How long one call may take: above the service's 20 s deadline, so the service's
/// `Unavailable` arrives rather than a client-side timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A D-Bus error as `name: message`, or the transport failure.
pub fn describe(err: &zbus::Error) -> String {
    match err {
        zbus::Error::MethodError(name, message, _) => {
            format!("{name}: {}", message.as_deref().unwrap_or(""))
        }
        other => format!("D-Bus call failed: {other}"),
    }
}

/// The error name of a failed call, if the service answered with one.
pub fn error_name(err: &zbus::Error) -> Option<&str> {
    match err {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
    }
}

/// The last failure of [`sign_with_retry`], and how hard it tried.
#[derive(Debug)]
pub struct GaveUp {
    pub error: zbus::Error,
    pub attempts: u32,
    pub elapsed: Duration,
}

impl GaveUp {
    /// `name: message`, and after retries, how many there were.
    pub fn describe(&self) -> String {
        let mut text = describe(&self.error);
        if self.attempts > 1 {
            text.push_str(&format!(
                " (still so after {} attempts in {:.1} s)",
                self.attempts,
                self.elapsed.as_secs_f64()
            ));
        }
        text
    }
}

/// Whether the same CSR may succeed later: the service said `Unavailable`, it is not on the
/// bus at the moment (not started yet, or being restarted by systemd after losing the bus), or
/// it went away during the call (NoReply). A repeated CSR is safe: identical ones share one
/// request and its cached result.
fn worth_retrying(err: &zbus::Error) -> bool {
    match err {
        zbus::Error::FDO(e) => matches!(
            **e,
            zbus::fdo::Error::ServiceUnknown(_)
                | zbus::fdo::Error::NameHasNoOwner(_)
                | zbus::fdo::Error::NoReply(_)
        ),
        _ => error_name(err) == Some("xyz.openbmc_project.Common.Error.Unavailable"),
    }
}

/// Calls `SignCSR`, retrying the same CSR while the answer is `Unavailable` or the service is
/// not on the bus. A new attempt
/// starts only while `wait` has not run out; each one may take as long as the service's
/// sign timeout. Each retry is announced on stderr.
pub async fn sign_with_retry(
    conn: &Connection,
    csr: &str,
    wait: Duration,
) -> Result<String, GaveUp> {
    let started = Instant::now();
    let gave_up = |error, attempts| GaveUp {
        error,
        attempts,
        elapsed: started.elapsed(),
    };
    let proxy = VmInterfaceProxy::new(conn)
        .await
        .map_err(|e| gave_up(e, 0))?;
    let give_up = started + wait;
    let mut pause = Duration::from_millis(500);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match proxy.sign_csr(csr).await {
            Err(e) if worth_retrying(&e) && Instant::now() + pause < give_up => {
                eprintln!(
                    "vmi-cert-exchange: {}; retrying the same CSR in {:.1} s",
                    describe(&e),
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(gave_up(e, attempts)),
            Ok(chain) => return Ok(chain),
        }
    }
}

pub struct SignOptions {
    pub bus: Bus,
    pub csr: PathBuf,
    pub out: Option<PathBuf>,
    pub wait: Duration,
}

/// Runs `sign`; the error is what to print.
pub async fn run(opts: SignOptions) -> Result<(), StartError> {
    let csr = if opts.csr == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| StartError::Io(format!("cannot read the CSR from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(&opts.csr)
            .map_err(|e| StartError::Io(format!("cannot read {}: {e}", opts.csr.display())))?
    };
    let conn = opts
        .bus
        .builder()?
        .method_timeout(CALL_TIMEOUT)
        .build()
        .await
        .map_err(|e| StartError::Connect(format!("{}: {e}", opts.bus)))?;
    let chain = sign_with_retry(&conn, &csr, opts.wait)
        .await
        .map_err(|e| StartError::Failed(e.describe()))?;
    match opts.out {
        None => print!("{chain}"),
        Some(dir) => {
            write_chain(&dir, &chain)?;
            println!(
                "wrote chain.pem, client.crt and ca.crt into {}",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Writes `chain.pem` (the answer as received), `client.crt` and `ca.crt` into `dir`.
pub fn write_chain(dir: &Path, chain: &str) -> Result<(), StartError> {
    let blocks = split_chain(chain)?;
    let io =
        |p: &Path, e: std::io::Error| StartError::Io(format!("cannot write {}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, data) in [
        ("chain.pem", chain),
        ("client.crt", blocks[0].as_str()),
        ("ca.crt", blocks[1].as_str()),
    ] {
        let path = dir.join(name);
        crate::util::write_file_atomically(&path, data.as_bytes(), 0o644)
            .map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// The answer's two blocks: the client certificate, then the root.
pub fn split_chain(chain: &str) -> Result<Vec<String>, StartError> {
    let blocks = pem_blocks(chain);
    if blocks.len() != 2 {
        return Err(StartError::Failed(format!(
            "the answer holds {} PEM blocks; expected the client certificate and the root",
            blocks.len()
        )));
    }
    Ok(blocks)
}
