//! Command line, logging and runtime; everything else is in the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};
use vmi_cert_exchange::{
    bus::Bus,
    client, config,
    daemon::{self, TransportKind},
    demo,
    error::StartError,
    simulate,
};

#[derive(Parser)]
#[command(
    name = "vmi-cert-exchange",
    version,
    about = "VMI certificate exchange for OpenBMC: SignCSR on D-Bus"
)]
struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct BusArgs {
    /// Which bus to use.
    #[arg(long, default_value = "system", value_parser = ["system", "session"])]
    bus: String,
    /// A D-Bus address; overrides --bus.
    #[arg(long)]
    address: Option<String>,
}

impl BusArgs {
    fn bus(&self) -> Result<Bus, StartError> {
        Bus::from_args(&self.bus, self.address.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the D-Bus service.
    Serve(ServeArgs),
    /// Ask the service to sign a CSR, as bmcweb would.
    Sign(SignArgs),
    /// Run the whole exchange end to end on a private bus, with a mutual-TLS handshake.
    Demo(DemoArgs),
    /// Play pldmd + hypervisor on a bus, for the pldm transport (development and tests).
    SimulateHost(SimulateArgs),
    /// Console side: have the BMC sign a CSR through bmcweb's REST API.
    #[cfg(feature = "rest-client")]
    RestSign(RestSignArgs),
}

#[cfg(feature = "rest-client")]
#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["csr", "key"])))]
struct RestSignArgs {
    /// The BMC: https://host[:port].
    #[arg(long)]
    url: String,
    /// The BMC user; SignCSR needs the Administrator role.
    #[arg(long, default_value = "admin")]
    user: String,
    /// A file holding the password (else the environment variable VMI_BMC_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// session (POST /login, X-Auth-Token, POST /logout) or basic.
    #[arg(long, default_value = "session")]
    auth: vmi_cert_exchange::rest::AuthMode,
    /// The CSR file, or - for stdin.
    #[arg(long)]
    csr: Option<PathBuf>,
    /// The console's private key, created (mode 0600) if missing; the CSR is made from it.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Subject of the CSR made with --key (default /CN=<host name>).
    #[arg(long, conflicts_with = "csr")]
    subject: Option<String>,
    /// Type of the key --key creates: rsa2048, rsa3072, rsa4096, p256, p384.
    #[arg(long, default_value = "rsa2048", conflicts_with = "csr")]
    key_type: config::KeyType,
    /// Where to write client.crt, ca.crt, chain.pem (and client.csr with --key).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The CA certificate(s) the BMC's HTTPS certificate must chain to (default: the system's).
    #[arg(long, conflicts_with = "insecure")]
    cacert: Option<PathBuf>,
    /// Do not verify the BMC's HTTPS certificate (test systems only).
    #[arg(long)]
    insecure: bool,
    /// Total seconds for login, every attempt and the pauses between them (fractions allowed).
    #[arg(long, allow_negative_numbers = true, value_parser = config::parse_seconds, default_value = "300")]
    timeout: Duration,
    /// Seconds before the first retry; the pause doubles up to 30 s.
    #[arg(long, allow_negative_numbers = true, value_parser = config::parse_seconds, default_value = "1")]
    retry_interval: Duration,
}

#[derive(Args)]
struct SimulateArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// State directory of the simulated hypervisor's CA.
    #[arg(long)]
    state_dir: PathBuf,
    /// Where to write the root certificate, as the host pushes it.
    #[arg(long, default_value = vmi_cert_exchange::transport::pldm::DEFAULT_ROOT_CERT_FILE)]
    root_cert_file: PathBuf,
    /// none, pending-ack, delay:<seconds>, silent, bad-csr, wrong-key, wrong-root, root-first,
    /// duplicate, crlf, garbage, empty, no-root-file, ca-true.
    #[arg(long, default_value = "none")]
    fault: simulate::Fault,
    /// Also serve host 0's CurrentHostState with this value (e.g.
    /// xyz.openbmc_project.State.Host.HostState.Off).
    #[arg(long)]
    host_state: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// How CSRs reach the hypervisor: pldm (pldmd, production) or emulator (software CA).
    #[arg(long, default_value = "pldm")]
    transport: TransportKind,
    /// Let the software CA answer on the system bus (development images only).
    #[arg(long)]
    allow_emulator_on_system_bus: bool,
    /// State directory: the lock, the pldm entry counter, the emulator's software CA.
    #[arg(long, default_value = "/var/lib/vmi-cert-exchange")]
    state_dir: PathBuf,
    /// Seconds a caller waits before `Unavailable` (fractions allowed) [default: 20].
    #[arg(long, allow_negative_numbers = true, value_parser = config::parse_seconds)]
    sign_timeout: Option<Duration>,
    /// Seconds a request may keep going in the background [default: 600].
    #[arg(long, allow_negative_numbers = true, value_parser = config::parse_seconds)]
    request_lifetime: Option<Duration>,
    /// Seconds a finished result is answered from the cache (default: the request lifetime).
    #[arg(long, allow_negative_numbers = true, value_parser = config::parse_seconds)]
    result_ttl: Option<Duration>,
    /// Distinct requests in flight at once [default: 64].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Seconds a returned certificate's notBefore may lie in the future [default: 86400].
    #[arg(long, allow_negative_numbers = true, value_parser = config::parse_seconds)]
    clock_skew: Option<Duration>,
    /// TOML configuration file (flags win over it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// pldm: the root certificate file the host pushes when VMI boots.
    #[arg(long, default_value = vmi_cert_exchange::transport::pldm::DEFAULT_ROOT_CERT_FILE)]
    root_cert_file: PathBuf,
    /// pldm: do not serve the asynchronous xyz.openbmc_project.Certs.Authority API.
    #[arg(long)]
    no_authority_api: bool,
}

#[derive(Args)]
struct SignArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// The CSR file, or - for stdin.
    #[arg(long)]
    csr: PathBuf,
    /// Write chain.pem, client.crt and ca.crt here instead of printing the answer.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep retrying the same CSR while the answer is Unavailable or the service is not on the
    /// bus: new attempts start for this many seconds, and each may take up to the service's
    /// --sign-timeout.
    #[arg(long, allow_negative_numbers = true, value_parser = config::parse_seconds, default_value = "0")]
    wait: Duration,
}

#[derive(Args)]
struct DemoArgs {
    /// Where to write client.key, client.csr, client.crt, ca.crt and chain.pem.
    #[arg(long, default_value = "./vmi-demo")]
    out: PathBuf,
    /// The transport the demo's service uses: emulator, or pldm through simulate-host.
    #[arg(long, default_value = "emulator")]
    transport: TransportKind,
}

/// Whether stderr is the journal stream systemd gave this process. JOURNAL_STREAM names that
/// stream's device and inode; a child whose stderr was redirected inherits the variable, so it
/// must be compared with what stderr is now (as sd_journal_stream_fd's documentation advises).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
    else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Sets up logging; true when it goes to the journal. Only the daemons (`to_journal_allowed`)
/// log there: the other subcommands talk to the person who started them.
fn init_logging(verbose: u8, default: &str, to_journal_allowed: bool) -> bool {
    let level = match verbose {
        0 => default.to_string(),
        1 => "debug,zbus=info".into(),
        _ => "trace".into(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // systemd connects stderr to the journal and says so in JOURNAL_STREAM: log natively
    // there, with structured fields.
    if to_journal_allowed && stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald.with_syslog_identifier("vmi-cert-exchange".into()))
                .init();
            return true;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    false
}

fn serve_options(a: ServeArgs) -> Result<daemon::ServeOptions, StartError> {
    let file = a
        .config
        .as_deref()
        .map(config::FileConfig::load)
        .transpose()
        .map_err(StartError::Usage)?;
    let flags = config::LimitFlags {
        sign_timeout: a.sign_timeout,
        request_lifetime: a.request_lifetime,
        result_ttl: a.result_ttl,
        max_in_flight: a.max_in_flight,
        clock_skew: a.clock_skew,
    };
    let settings = config::Settings::resolve(file.as_ref(), &flags).map_err(StartError::Usage)?;
    Ok(daemon::ServeOptions {
        bus: a.bus.bus()?,
        transport: a.transport,
        allow_emulator_on_system_bus: a.allow_emulator_on_system_bus,
        state_dir: a.state_dir,
        settings,
        root_cert_file: a.root_cert_file,
        authority_api: !a.no_authority_api,
    })
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when it
/// is first polled, so a signal that arrives while the work starts is not lost.
fn terminated() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

async fn run(command: Command) -> Result<(), StartError> {
    match command {
        Command::Serve(a) => daemon::run(serve_options(a)?, terminated()).await,
        Command::Sign(a) => {
            client::run(client::SignOptions {
                bus: a.bus.bus()?,
                csr: a.csr,
                out: a.out,
                wait: a.wait,
            })
            .await
        }
        Command::SimulateHost(a) => {
            simulate::run(
                simulate::SimulateOptions {
                    bus: a.bus.bus()?,
                    state_dir: a.state_dir,
                    root_cert_file: a.root_cert_file,
                    fault: a.fault,
                    host_state: a.host_state,
                },
                terminated(),
            )
            .await
        }
        #[cfg(feature = "rest-client")]
        Command::RestSign(a) => {
            use vmi_cert_exchange::rest::{self, CsrSource};
            let source = match (a.csr, a.key) {
                (Some(csr), _) => CsrSource::File(csr),
                (None, Some(path)) => CsrSource::Key {
                    path,
                    subject: a.subject,
                    key_type: a.key_type,
                },
                (None, None) => unreachable!("clap requires --csr or --key"),
            };
            rest::run(rest::RestSignOptions {
                url: a.url,
                user: a.user,
                password_file: a.password_file,
                auth: a.auth,
                source,
                out: a.out,
                cacert: a.cacert,
                insecure: a.insecure,
                timeout: a.timeout,
                retry_interval: a.retry_interval,
            })
            .await
        }
        Command::Demo(a) => {
            let interrupted = terminated();
            let demo = demo::run(demo::DemoOptions {
                out: a.out,
                transport: a.transport,
            });
            tokio::select! {
                r = demo => r,
                _ = interrupted => Err(StartError::Interrupted),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Serve(_) | Command::SimulateHost(_));
    let default_level = if daemon { "info,zbus=warn" } else { "warn" };
    let to_journal = init_logging(cli.verbose, default_level, daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmi-cert-exchange: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if to_journal {
                tracing::error!(exit_code = e.exit_code(), "{e}");
            } else {
                eprintln!("vmi-cert-exchange: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
