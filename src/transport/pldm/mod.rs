//! The `pldm` transport: hands CSRs to the existing `pldmd` (oem-ibm) over D-Bus.
//!
//! Each request becomes a certificate entry under `/xyz/openbmc_project/certs/ca`, served by a
//! connection of its own that owns `xyz.openbmc_project.Certs.ca.authority.Manager`. pldmd reacts
//! to the InterfacesAdded that carries the CSR interface, forwards the CSR to the hypervisor over
//! PLDM, and writes the signed certificate back with Properties.Set. The root certificate is the
//! file the hypervisor pushes when VMI boots. Facts: `shared/reference/pldm.md`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use zbus::{
    fdo::{DBusProxy, RequestNameFlags, RequestNameReply},
    names::BusName,
    Connection,
};

use super::{BoxFuture, HypervisorTransport};
use crate::{
    bus::Bus,
    chain::Answer,
    config::Settings,
    csr::ValidCsr,
    error::{Error, Escaped, StartError},
    util::write_file_atomically,
};

pub const MANAGER_NAME: &str = "xyz.openbmc_project.Certs.ca.authority.Manager";
pub const MANAGER_PATH: &str = "/xyz/openbmc_project/certs/ca";
pub const ENTRY_PREFIX: &str = "/xyz/openbmc_project/certs/ca/entry/";
pub const PLDM_NAME: &str = "xyz.openbmc_project.PLDM";
pub const ENTRY_INTERFACE: &str = "xyz.openbmc_project.Certs.Entry";
pub const CSR_INTERFACE: &str = "xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR";
pub const DEFAULT_ROOT_CERT_FILE: &str = "/var/lib/ibm/bmcweb/RootCert";

pub const STATUS_PENDING: &str = "xyz.openbmc_project.Certs.Entry.State.Pending";
pub const STATUS_BAD_CSR: &str = "xyz.openbmc_project.Certs.Entry.State.BadCSR";
pub const STATUS_COMPLETE: &str = "xyz.openbmc_project.Certs.Entry.State.Complete";

const HOST_PATH: &str = "/xyz/openbmc_project/state/host0";
const HOST_INTERFACE: &str = "xyz.openbmc_project.State.Host";
const HOST_RUNNING: &str = "xyz.openbmc_project.State.Host.HostState.Running";
/// phosphor-state-manager's names for host 0, newest first; used when no ObjectMapper answers.
const HOST_SERVICES: [&str; 2] = [
    "xyz.openbmc_project.State.Host0",
    "xyz.openbmc_project.State.Host",
];
const MAPPER_NAME: &str = "xyz.openbmc_project.ObjectMapper";

/// pldmd writes at most what fits a PLDM file; anything larger is not a certificate.
pub const MAX_PROPERTY_BYTES: usize = 64 * 1024;
/// How long readiness checks may take before the answer counts as unknown.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub const COUNTER_FILE: &str = "entry-counter";

mod objects;
#[cfg(test)]
use objects::refuse_set;
use objects::{Authority, CsrIface, DeleteAll, DeleteIface, EntryIface};

#[derive(Debug, Clone)]
pub struct PldmOptions {
    pub bus: Bus,
    pub state_dir: PathBuf,
    pub root_cert_file: PathBuf,
    /// Serve `xyz.openbmc_project.Certs.Authority` and `Collection.DeleteAll` like bmc-vmi-ca.
    pub authority_api: bool,
}

/// What pldmd has written on an entry, and whether the entry still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    pub client_certificate: String,
    pub status: String,
    pub deleted: bool,
}

impl Default for EntryState {
    fn default() -> Self {
        EntryState {
            client_certificate: String::new(),
            status: STATUS_PENDING.to_string(),
            deleted: false,
        }
    }
}

/// The persisted entry id counter: ids are pldmd's file handles and must never repeat.
struct Counter {
    path: PathBuf,
    last: u64,
}

impl Counter {
    fn open(state_dir: &Path) -> Result<Self, StartError> {
        let path = state_dir.join(COUNTER_FILE);
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| {
                StartError::Failed(format!(
                    "{} does not hold an entry number; fix or remove it (ids must never repeat)",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(StartError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Counter { path, last })
    }

    /// The next id, persisted before it is used.
    fn next(&mut self) -> Result<u64, Error> {
        let id = self.last + 1;
        write_file_atomically(&self.path, format!("{id}\n").as_bytes(), 0o644).map_err(|e| {
            Error::Internal(format!("cannot persist the certificate entry counter: {e}"))
        })?;
        self.last = id;
        Ok(id)
    }
}

struct Shared {
    conn: Connection,
    root_cert_file: PathBuf,
    counter: Mutex<Counter>,
    /// Live entries by id, with the channel their state is published on.
    entries: Mutex<BTreeMap<u64, LiveEntry>>,
    settings: Settings,
}

struct LiveEntry {
    state: watch::Sender<EntryState>,
    csr_pem: String,
}

pub struct Pldm {
    shared: Arc<Shared>,
}

impl Pldm {
    /// Connects, serves the ObjectManager (and the Authority API), then takes the Manager name.
    pub async fn start(opts: &PldmOptions, settings: &Settings) -> Result<Self, StartError> {
        let counter = Counter::open(&opts.state_dir)?;
        let conn = opts.bus.connect().await?;
        let shared = Arc::new(Shared {
            conn: conn.clone(),
            root_cert_file: opts.root_cert_file.clone(),
            counter: Mutex::new(counter),
            entries: Mutex::new(BTreeMap::new()),
            settings: settings.clone(),
        });
        let server = conn.object_server();
        server.at(MANAGER_PATH, zbus::fdo::ObjectManager).await?;
        if opts.authority_api {
            server
                .at(
                    MANAGER_PATH,
                    Authority {
                        shared: shared.clone(),
                    },
                )
                .await?;
            server
                .at(
                    MANAGER_PATH,
                    DeleteAll {
                        shared: shared.clone(),
                    },
                )
                .await?;
        }
        let reply = conn
            .request_name_with_flags(MANAGER_NAME, RequestNameFlags::DO_NOT_QUEUE)
            .await;
        match reply {
            Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
            Ok(_) | Err(zbus::Error::NameTaken) => {
                return Err(StartError::NameTaken(format!(
                    "{MANAGER_NAME} (bmc-vmi-ca must not run beside this service)"
                )))
            }
            Err(e) => return Err(StartError::Bus(e.to_string())),
        }
        tokio::spawn(reannounce_on_pldmd_restart(Arc::downgrade(&shared)));
        Ok(Pldm { shared })
    }

    /// The ids of the entries that exist now.
    pub fn entry_ids(&self) -> Vec<u64> {
        self.shared
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

pub fn entry_path(id: u64) -> String {
    format!("{ENTRY_PREFIX}{id}")
}

impl Shared {
    /// Creates entry `<n>`: Entry and Delete first, the CSR interface last, because pldmd acts
    /// on the InterfacesAdded that carries the CSR.
    async fn create_entry(
        self: &Arc<Self>,
        csr_pem: &str,
    ) -> Result<(u64, watch::Receiver<EntryState>), Error> {
        let id = self
            .counter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next()?;
        let (tx, rx) = watch::channel(EntryState::default());
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                LiveEntry {
                    state: tx.clone(),
                    csr_pem: csr_pem.to_string(),
                },
            );
        let path = entry_path(id);
        let server = self.conn.object_server();
        let result = async {
            server
                .at(path.as_str(), EntryIface { id, state: tx })
                .await?;
            server
                .at(
                    path.as_str(),
                    DeleteIface {
                        id,
                        shared: Arc::downgrade(self),
                    },
                )
                .await?;
            server
                .at(
                    path.as_str(),
                    CsrIface {
                        csr: csr_pem.to_string(),
                    },
                )
                .await?;
            Ok::<_, zbus::Error>(())
        }
        .await;
        if let Err(e) = result {
            self.remove_entry(id).await;
            return Err(Error::Internal(format!(
                "cannot create certificate entry {id}: {e}"
            )));
        }
        tracing::debug!(entry = id, "certificate entry created");
        Ok((id, rx))
    }

    /// Removes entry `<n>` (CSR interface first) and tells whoever waits on it.
    async fn remove_entry(&self, id: u64) -> bool {
        let Some(entry) = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        else {
            return false;
        };
        entry.state.send_modify(|s| s.deleted = true);
        let path = entry_path(id);
        let server = self.conn.object_server();
        let _ = server.remove::<CsrIface, _>(path.as_str()).await;
        let _ = server.remove::<DeleteIface, _>(path.as_str()).await;
        let _ = server.remove::<EntryIface, _>(path.as_str()).await;
        tracing::debug!(entry = id, "certificate entry removed");
        true
    }

    fn entry_count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The root certificate, read afresh: the host pushes a new one when VMI boots.
    fn read_root(&self) -> Result<String, Error> {
        std::fs::read_to_string(&self.root_cert_file).map_err(|e| {
            tracing::warn!(file = %self.root_cert_file.display(), error = %e, "root certificate unavailable");
            Error::NoRootCertificate(if e.kind() == std::io::ErrorKind::NotFound {
                "the hypervisor has not provided its root certificate yet".into()
            } else {
                "the hypervisor's root certificate cannot be read".into()
            })
        })
    }

    async fn check_ready(&self) -> Result<(), Error> {
        let dbus = DBusProxy::new(&self.conn)
            .await
            .map_err(|e| Error::Internal(format!("cannot query the bus: {e}")))?;
        let has_owner = |name: &'static str| {
            let dbus = &dbus;
            async move {
                match tokio::time::timeout(
                    PROBE_TIMEOUT,
                    dbus.name_has_owner(BusName::from_static_str(name).expect("valid bus name")),
                )
                .await
                {
                    Ok(Ok(owned)) => owned,
                    _ => false,
                }
            }
        };
        if !has_owner(PLDM_NAME).await {
            return Err(Error::HypervisorUnavailable(
                "pldmd is not running (xyz.openbmc_project.PLDM has no owner); retry later".into(),
            ));
        }
        let mut services = Vec::new();
        if has_owner(MAPPER_NAME).await {
            if let Ok(Ok(found)) =
                tokio::time::timeout(PROBE_TIMEOUT, mapper_get_object(&self.conn)).await
            {
                services = found;
            }
        }
        if services.is_empty() {
            for name in HOST_SERVICES {
                if has_owner(name).await {
                    services.push(name.to_string());
                }
            }
        }
        for service in services {
            let state = tokio::time::timeout(PROBE_TIMEOUT, host_state(&self.conn, &service)).await;
            if let Ok(Ok(state)) = state {
                if state != HOST_RUNNING {
                    let short = state.rsplit('.').next().unwrap_or(&state).to_string();
                    return Err(Error::HypervisorUnavailable(format!(
                        "the host is not running (CurrentHostState {}); retry when it runs",
                        Escaped(&short)
                    )));
                }
                return Ok(());
            }
        }
        Ok(())
    }
}

async fn mapper_get_object(conn: &Connection) -> zbus::Result<Vec<String>> {
    let reply = conn
        .call_method(
            Some(MAPPER_NAME),
            "/xyz/openbmc_project/object_mapper",
            Some("xyz.openbmc_project.ObjectMapper"),
            "GetObject",
            &(HOST_PATH, vec![HOST_INTERFACE]),
        )
        .await?;
    let map: BTreeMap<String, Vec<String>> = reply.body().deserialize()?;
    Ok(map.into_keys().collect())
}

async fn host_state(conn: &Connection, service: &str) -> zbus::Result<String> {
    let reply = conn
        .call_method(
            Some(service),
            HOST_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(HOST_INTERFACE, "CurrentHostState"),
        )
        .await?;
    let value: zbus::OwnedVariant = reply.body().deserialize()?;
    String::try_from(value).map_err(|e| zbus::Error::Failure(e.to_string()))
}

/// When pldmd (re)starts it knows nothing of entries announced before: announce the pending
/// ones again, so a restarted pldmd picks them up instead of leaving them Pending for good.
async fn reannounce_on_pldmd_restart(shared: std::sync::Weak<Shared>) {
    let Some(conn) = shared.upgrade().map(|s| s.conn.clone()) else {
        return;
    };
    let Ok(dbus) = DBusProxy::new(&conn).await else {
        return;
    };
    let Ok(mut changes) = dbus
        .receive_name_owner_changed_with_args(&[(0, PLDM_NAME)])
        .await
    else {
        return;
    };
    while let Some(signal) = crate::bus::next(&mut changes).await {
        let Ok(args) = signal.args() else { continue };
        if args.new_owner().is_none() {
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let pending: Vec<(u64, String)> = shared
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| e.state.borrow().status == STATUS_PENDING)
            .map(|(id, e)| (*id, e.csr_pem.clone()))
            .collect();
        if pending.is_empty() {
            continue;
        }
        tracing::info!(
            entries = pending.len(),
            "pldmd restarted: announcing pending certificate entries again"
        );
        let server = shared.conn.object_server();
        for (id, csr) in pending {
            let path = entry_path(id);
            let _ = server.remove::<CsrIface, _>(path.as_str()).await;
            let _ = server.at(path.as_str(), CsrIface { csr }).await;
        }
    }
}

/// Removes an entry of a synchronous request when the request ends, however it ends.
struct EntryGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for EntryGuard {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let id = self.id;
        // Removal talks to the bus, so it runs as a task of its own; when the runtime itself is
        // going away, the connection closes and the entries vanish with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                shared.remove_entry(id).await;
            });
        }
    }
}

impl HypervisorTransport for Pldm {
    fn name(&self) -> &'static str {
        "pldm"
    }

    fn check_ready(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.shared.check_ready())
    }

    fn sign(&self, csr: Arc<ValidCsr>) -> BoxFuture<'static, Result<Answer, Error>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (id, mut state) = shared.create_entry(&csr.pem).await?;
            let _guard = EntryGuard {
                shared: shared.clone(),
                id,
            };
            let done = state
                .wait_for(|s| s.deleted || s.status != STATUS_PENDING)
                .await
                .map(|s| s.clone())
                .unwrap_or(EntryState {
                    deleted: true,
                    ..EntryState::default()
                });
            if done.deleted {
                return Err(Error::HypervisorUnavailable(
                    "the certificate entry was deleted before the hypervisor answered; retry"
                        .into(),
                ));
            }
            tracing::debug!(entry = id, status = %done.status, bytes = done.client_certificate.len(), "pldmd answered");
            match done.status.as_str() {
                STATUS_COMPLETE => Ok(Answer {
                    certificate: done.client_certificate,
                    root: shared.read_root()?,
                }),
                _ => Err(Error::HypervisorRejected),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_rules() {
        let pending = EntryState::default();
        assert_eq!(refuse_set(&pending, "Status", STATUS_PENDING), None);
        assert_eq!(refuse_set(&pending, "Status", STATUS_COMPLETE), None);
        assert_eq!(refuse_set(&pending, "ClientCertificate", "x"), None);
        assert_eq!(
            refuse_set(&pending, "Status", "Complete").as_deref(),
            Some("unknown Status value")
        );
        let big = "x".repeat(MAX_PROPERTY_BYTES + 1);
        assert_eq!(
            refuse_set(&pending, "ClientCertificate", &big).as_deref(),
            Some("ClientCertificate is larger than 64 KiB")
        );
        let done = EntryState {
            status: STATUS_COMPLETE.into(),
            ..EntryState::default()
        };
        assert_eq!(
            refuse_set(&done, "Status", STATUS_PENDING).as_deref(),
            Some("the certificate entry is no longer Pending")
        );
        assert_eq!(
            refuse_set(&done, "ClientCertificate", "x").as_deref(),
            Some("the certificate entry is no longer Pending")
        );
    }

    #[test]
    fn counter_persists_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Counter::open(dir.path()).unwrap();
        assert_eq!((c.next().unwrap(), c.next().unwrap()), (1, 2));
        let mut c = Counter::open(dir.path()).unwrap();
        assert_eq!(c.next().unwrap(), 3);
        std::fs::write(dir.path().join(COUNTER_FILE), "x").unwrap();
        assert!(Counter::open(dir.path()).is_err());
    }
}
