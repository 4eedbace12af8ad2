//! `serve`: the daemon.

use std::{future::Future, path::PathBuf, sync::Arc};

use crate::{
    bus::Bus,
    ca::{SoftCa, StateLock},
    config::Settings,
    error::StartError,
    signer::Signer,
    transport::{
        emulator::Emulator,
        pldm::{Pldm, PldmOptions},
        HypervisorTransport,
    },
};

/// Which transport carries CSRs to the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Pldm,
    Emulator,
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pldm" => Ok(TransportKind::Pldm),
            "emulator" => Ok(TransportKind::Emulator),
            _ => Err(format!("unknown transport {s:?} (known: pldm, emulator)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bus: Bus,
    pub transport: TransportKind,
    pub allow_emulator_on_system_bus: bool,
    pub state_dir: PathBuf,
    pub settings: Settings,
    /// pldm: the root certificate file the host pushes.
    pub root_cert_file: PathBuf,
    /// pldm: serve the upstream-compatible asynchronous Authority API.
    pub authority_api: bool,
}

/// Runs the service until `shutdown` completes.
pub async fn run(opts: ServeOptions, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    opts.settings.limits.check().map_err(StartError::Usage)?;
    if opts.settings.limits.sign_timeout >= std::time::Duration::from_secs(25) {
        // Callers with D-Bus's default timeout (bmcweb, busctl) then see NoReply instead.
        tracing::warn!(
            sign_timeout_s = opts.settings.limits.sign_timeout.as_secs_f64(),
            "--sign-timeout is not below D-Bus's default method timeout of 25 s: callers that \
             keep that default get NoReply instead of Unavailable"
        );
    }
    if opts.transport == TransportKind::Emulator
        && opts.bus.is_system()
        && !opts.allow_emulator_on_system_bus
    {
        return Err(StartError::Usage(
            "the emulator transport signs with a software CA, not the hypervisor's; it refuses \
             to run on the system bus unless --allow-emulator-on-system-bus is given"
                .into(),
        ));
    }
    // The bus first: an unreachable bus or a taken name is said as such, before anything is
    // created in the state directory.
    let conn = opts.bus.connect().await?;
    if name_has_owner(&conn, crate::BUS_NAME).await? {
        return Err(StartError::NameTaken(crate::BUS_NAME.to_string()));
    }
    let lock = StateLock::acquire(&opts.state_dir)?;
    let transport: Arc<dyn HypervisorTransport> = match opts.transport {
        TransportKind::Emulator => {
            let ca = SoftCa::open_or_create(&lock, crate::ca::EMULATOR_CA_NAME)?;
            tracing::info!(
                root_fingerprint = %ca.root_fingerprint(),
                state_dir = %opts.state_dir.display(),
                "software CA ready"
            );
            Arc::new(Emulator::new(ca, opts.settings.validity_days))
        }
        TransportKind::Pldm => {
            let pldm = Pldm::start(
                &PldmOptions {
                    bus: opts.bus.clone(),
                    state_dir: opts.state_dir.clone(),
                    root_cert_file: opts.root_cert_file.clone(),
                    authority_api: opts.authority_api,
                },
                &opts.settings,
            )
            .await?;
            tracing::info!(
                manager = crate::transport::pldm::MANAGER_NAME,
                root_cert_file = %opts.root_cert_file.display(),
                authority_api = opts.authority_api,
                "pldm transport ready"
            );
            Arc::new(pldm)
        }
    };
    // NameLost arrives if the name is taken from us; the stream ends if the bus goes away.
    // Either way this process no longer serves anyone: exit, and let systemd start it again.
    // Subscribed before the name is requested, so that nothing in between is missed.
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let mut lost = dbus.receive_name_lost().await?;
    let signer = Signer::new(transport, opts.settings.clone());
    crate::serve(&conn, signer).await?;
    tracing::info!(
        bus = %opts.bus,
        name = crate::BUS_NAME,
        object = crate::OBJECT_PATH,
        transport = opts.transport_name(),
        "serving"
    );
    tokio::select! {
        _ = shutdown => {}
        _ = crate::bus::next(&mut lost) => {
            return Err(StartError::Failed(format!(
                "lost {} or the connection to the bus; exiting so that it can be started again",
                crate::BUS_NAME
            )));
        }
    }
    tracing::info!("shutting down");
    let _ = conn.release_name(crate::BUS_NAME).await;
    drop(lock);
    Ok(())
}

impl ServeOptions {
    fn transport_name(&self) -> &'static str {
        match self.transport {
            TransportKind::Pldm => "pldm",
            TransportKind::Emulator => "emulator",
        }
    }
}

async fn name_has_owner(conn: &zbus::Connection, name: &str) -> Result<bool, StartError> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let name =
        zbus::names::BusName::try_from(name).map_err(|e| StartError::Failed(e.to_string()))?;
    dbus.name_has_owner(name)
        .await
        .map_err(|e| StartError::Bus(e.to_string()))
}
