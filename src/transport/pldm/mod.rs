//! The `pldm` transport: hands CSRs to the existing `pldmd` (oem-ibm) over D-Bus.
//!
//! Each request becomes a certificate entry under `/xyz/openbmc_project/certs/ca`, served by a
//! connection of its own that owns `xyz.openbmc_project.Certs.ca.authority.Manager`. pldmd reacts
//! to the InterfacesAdded that carries the CSR interface, forwards the CSR to the hypervisor over
//! PLDM, and writes the signed certificate back with Properties.Set. The root certificate is the
//! file the hypervisor pushes when VMI boots. README.md, "The pldm transport", has the details.

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
    error::{Error, StartError},
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

mod lifecycle;
mod objects;
#[cfg(test)]
use lifecycle::refuse_set;
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
    counter: Arc<Mutex<Counter>>,
    /// Live entries by id, with the channel their state is published on.
    entries: Mutex<BTreeMap<u64, LiveEntry>>,
    /// Serialises every change of the entry objects on the bus, so that an entry being created
    /// and one being removed (Delete, DeleteAll, the lifetime, a re-announcement) never
    /// interleave: a half-removed entry must not get its CSR interface back.
    objects: tokio::sync::Mutex<()>,
    /// The unique name that owns `xyz.openbmc_project.PLDM`: only pldmd may set entries.
    pldm_owner: Mutex<Option<String>>,
    settings: Settings,
}

/// Who an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A `SignCSR` request on the HMC object: the entry lives as long as the request.
    Request,
    /// The Authority API: the entry lives until Delete, DeleteAll or the request lifetime.
    Authority,
}

struct LiveEntry {
    state: watch::Sender<EntryState>,
    csr_pem: String,
    origin: Origin,
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
            counter: Arc::new(Mutex::new(counter)),
            entries: Mutex::new(BTreeMap::new()),
            objects: tokio::sync::Mutex::new(()),
            pldm_owner: Mutex::new(None),
            settings: settings.clone(),
        });
        // Follow pldmd before looking it up, so that no change of owner is missed.
        let dbus = DBusProxy::new(&conn).await?;
        let owner_changes = dbus
            .receive_name_owner_changed_with_args(&[(0, PLDM_NAME)])
            .await?;
        *shared.pldm_owner.lock().unwrap_or_else(|p| p.into_inner()) = pldm_owner(&conn).await;
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
        tokio::spawn(follow_pldmd(Arc::downgrade(&shared), owner_changes));
        // Neither stops the service (pldmd may start later, the host pushes its root when VMI
        // boots), but whoever reads the start-up log should know what requests will meet.
        if shared
            .pldm_owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            tracing::warn!(
                "pldmd is not on the bus ({PLDM_NAME} has no owner): requests answer \
                 Unavailable until it is"
            );
        }
        if !opts.root_cert_file.exists() {
            tracing::warn!(
                file = %opts.root_cert_file.display(),
                "no root certificate yet: answers are NoCACertificate until the host provides it"
            );
        }
        Ok(Pldm { shared })
    }
}

pub fn entry_path(id: u64) -> String {
    format!("{ENTRY_PREFIX}{id}")
}

impl Shared {
    /// Creates entry `<n>`: Entry and Delete first, the CSR interface last, because pldmd acts
    /// on the InterfacesAdded that carries the CSR. With `limit`, refuses when that many
    /// entries exist already (checked under the same lock as the insertion).
    async fn create_entry(
        self: &Arc<Self>,
        csr_pem: &str,
        origin: Origin,
        limit: Option<usize>,
    ) -> Result<(u64, watch::Receiver<EntryState>), Error> {
        let _objects = self.objects.lock().await;
        if let Some(limit) = limit {
            if self.entry_count() >= limit {
                return Err(Error::InFlightLimit(limit));
            }
        }
        // The counter is synced to disk before the id is used: off the async workers.
        let counter = self.counter.clone();
        let id = tokio::task::spawn_blocking(move || {
            counter.lock().unwrap_or_else(|p| p.into_inner()).next()
        })
        .await
        .map_err(|e| Error::Internal(format!("entry counter task failed: {e}")))??;
        let (tx, rx) = watch::channel(EntryState::default());
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                LiveEntry {
                    state: tx.clone(),
                    csr_pem: csr_pem.to_string(),
                    origin,
                },
            );
        let path = entry_path(id);
        let server = self.conn.object_server();
        let result = async {
            server
                .at(
                    path.as_str(),
                    EntryIface {
                        id,
                        state: tx,
                        shared: Arc::downgrade(self),
                    },
                )
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
            self.remove_locked(id).await;
            return Err(Error::Internal(format!(
                "cannot create certificate entry {id}: {e}"
            )));
        }
        tracing::debug!(entry = id, ?origin, "certificate entry created");
        Ok((id, rx))
    }

    /// Removes entry `<n>` (CSR interface first) and tells whoever waits on it.
    async fn remove_entry(&self, id: u64) -> bool {
        let _objects = self.objects.lock().await;
        self.remove_locked(id).await
    }

    async fn remove_locked(&self, id: u64) -> bool {
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

    fn entry_origin(&self, id: u64) -> Option<Origin> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|e| e.origin)
    }

    /// The ids of the entries of `origin`.
    fn entry_ids(&self, origin: Origin) -> Vec<u64> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| e.origin == origin)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether `sender` is pldmd. The cached owner is checked first; on a mismatch the bus is
    /// asked, since a pldmd that has just started may set before its NameOwnerChanged is seen.
    async fn is_pldmd(&self, sender: &str) -> bool {
        let cached = self
            .pldm_owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if cached.as_deref() == Some(sender) {
            return true;
        }
        let current = pldm_owner(&self.conn).await;
        let is = current.as_deref() == Some(sender);
        *self.pldm_owner.lock().unwrap_or_else(|p| p.into_inner()) = current;
        is
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

    /// Fails fast when pldmd is not on the bus or the host is known not to run. The host-state
    /// lookup has one budget of [`PROBE_TIMEOUT`] in all; a slow answer counts as unknown, so
    /// the caller's deadline is never spent here.
    async fn check_ready(&self) -> Result<(), Error> {
        let cached = self
            .pldm_owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A pldmd that has just arrived may not be in the cache yet: ask before refusing.
        if cached.is_none() && pldm_owner(&self.conn).await.is_none() {
            return Err(Error::HypervisorUnavailable(
                "pldmd is not running (xyz.openbmc_project.PLDM has no owner); retry later".into(),
            ));
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.host_state()).await {
            Ok(Some(state)) if state != HOST_RUNNING => Err(host_not_running(&state)),
            _ => Ok(()),
        }
    }

    /// Host 0's CurrentHostState, from the service the ObjectMapper names or, without a
    /// mapper, from phosphor-state-manager's well-known names.
    async fn host_state(&self) -> Option<String> {
        let dbus = DBusProxy::new(&self.conn).await.ok()?;
        let has_owner = |name: &'static str| {
            let dbus = &dbus;
            async move {
                let name = BusName::from_static_str(name).ok()?;
                dbus.name_has_owner(name).await.ok()
            }
        };
        let mut services = Vec::new();
        if has_owner(MAPPER_NAME).await == Some(true) {
            services = mapper_get_object(&self.conn).await.unwrap_or_default();
        }
        if services.is_empty() {
            for name in HOST_SERVICES {
                if has_owner(name).await == Some(true) {
                    services.push(name.to_string());
                }
            }
        }
        for service in services {
            if let Ok(state) = host_state(&self.conn, &service).await {
                return Some(state);
            }
        }
        None
    }
}

/// The refusal for a host whose CurrentHostState is `state`. Only the enumeration's own word
/// goes into the message a console sees: the value comes from another service.
fn host_not_running(state: &str) -> Error {
    let short = state.rsplit('.').next().unwrap_or_default();
    let shown =
        if (1..=32).contains(&short.len()) && short.bytes().all(|b| b.is_ascii_alphanumeric()) {
            short
        } else {
            "an unexpected value"
        };
    Error::HypervisorUnavailable(format!(
        "the host is not running (CurrentHostState {shown}); retry when it runs"
    ))
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

/// The unique name that owns `xyz.openbmc_project.PLDM` now, if any.
async fn pldm_owner(conn: &Connection) -> Option<String> {
    let dbus = DBusProxy::new(conn).await.ok()?;
    let name = BusName::from_static_str(PLDM_NAME).ok()?;
    tokio::time::timeout(PROBE_TIMEOUT, dbus.get_name_owner(name))
        .await
        .ok()?
        .ok()
        .map(|owner| owner.to_string())
}

/// Follows pldmd's name. When pldmd (re)starts it knows nothing of entries announced before,
/// so the pending ones are announced again instead of staying Pending for good.
async fn follow_pldmd(
    shared: std::sync::Weak<Shared>,
    mut changes: zbus::fdo::NameOwnerChangedStream,
) {
    while let Some(signal) = crate::bus::next(&mut changes).await {
        let Ok(args) = signal.args() else { continue };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let owner = args.new_owner().as_ref().map(|o| o.to_string());
        *shared.pldm_owner.lock().unwrap_or_else(|p| p.into_inner()) = owner.clone();
        if owner.is_none() {
            tracing::warn!("pldmd left the bus; requests answer Unavailable until it is back");
            continue;
        }
        let _objects = shared.objects.lock().await;
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
            let (id, mut state) = shared.create_entry(&csr.pem, Origin::Request, None).await?;
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
    fn host_state_words_only_reach_the_message() {
        let message = |state: &str| host_not_running(state).to_string();
        assert_eq!(
            message("xyz.openbmc_project.State.Host.HostState.Quiesced"),
            "the host is not running (CurrentHostState Quiesced); retry when it runs"
        );
        assert_eq!(
            message("Off) outcome=ok source=cache (x\nINFO fake line"),
            "the host is not running (CurrentHostState an unexpected value); retry when it runs"
        );
        assert_eq!(
            message(""),
            "the host is not running (CurrentHostState an unexpected value); retry when it runs"
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
