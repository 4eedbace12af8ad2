//! `simulate-host`: plays pldmd + hypervisor on a bus against the `pldm` transport, as the
//! real pldmd behaves (reference/pldm.md): it owns `xyz.openbmc_project.PLDM`, writes the root
//! certificate file at start (the host pushes it when VMI boots), takes each CSR from the
//! InterfacesAdded body (never reading properties), signs with its own software CA and sets
//! `ClientCertificate`, then `Status`, through Properties.Set. Fault modes reproduce what real
//! hosts get wrong.

use std::{
    collections::HashMap, future::Future, path::PathBuf, str::FromStr, sync::Arc, time::Duration,
};

use openssl::{
    ec::{EcGroup, EcKey},
    nid::Nid,
    pkey::PKey,
};
use zbus::{
    fdo::{RequestNameFlags, RequestNameReply},
    interface,
    message::Type,
    Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Variant,
};

use crate::{
    bus::Bus,
    ca::{SoftCa, StateLock},
    config::Policy,
    csr,
    error::StartError,
    transport::pldm::{
        CSR_INTERFACE, ENTRY_INTERFACE, MANAGER_PATH, PLDM_NAME, STATUS_BAD_CSR, STATUS_COMPLETE,
        STATUS_PENDING,
    },
    util::write_file_atomically,
};

/// What the simulated host does wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// Sets Status Pending first (the host answered "not ready"), then completes.
    PendingAck,
    /// Answers after this long.
    Delay(Duration),
    /// Never answers (a powered-off host).
    Silent,
    /// Rejects every CSR.
    BadCsr,
    /// Certifies another key.
    WrongKey,
    /// Signs with a CA other than the root file's.
    WrongRoot,
    /// Sends the root, then the leaf.
    RootFirst,
    /// Sends the leaf twice.
    Duplicate,
    /// Sends CRLF line endings.
    Crlf,
    Garbage,
    /// An empty certificate with Complete.
    Empty,
    /// Never provides the root certificate file.
    NoRootFile,
    /// Issues a CA:TRUE certificate.
    CaTrue,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(secs) = s.strip_prefix("delay:") {
            return crate::config::parse_seconds(secs).map(Fault::Delay);
        }
        Ok(match s {
            "none" => Fault::None,
            "pending-ack" => Fault::PendingAck,
            "silent" => Fault::Silent,
            "bad-csr" => Fault::BadCsr,
            "wrong-key" => Fault::WrongKey,
            "wrong-root" => Fault::WrongRoot,
            "root-first" => Fault::RootFirst,
            "duplicate" => Fault::Duplicate,
            "crlf" => Fault::Crlf,
            "garbage" => Fault::Garbage,
            "empty" => Fault::Empty,
            "no-root-file" => Fault::NoRootFile,
            "ca-true" => Fault::CaTrue,
            _ => {
                return Err(format!(
                "unknown fault {s:?} (known: none, pending-ack, delay:<seconds>, silent, bad-csr, \
                     wrong-key, wrong-root, root-first, duplicate, crlf, garbage, empty, \
                     no-root-file, ca-true)"
            ))
            }
        })
    }
}

pub struct SimulateOptions {
    pub bus: Bus,
    pub state_dir: PathBuf,
    pub root_cert_file: PathBuf,
    pub fault: Fault,
    /// Also serve host 0's state (`xyz.openbmc_project.State.Host0`) with this CurrentHostState.
    pub host_state: Option<String>,
}

struct Host {
    conn: Connection,
    ca: SoftCa,
    /// The other CA of the `wrong-root` fault.
    other_ca: Option<SoftCa>,
    fault: Fault,
}

/// Host 0's state object, as phosphor-state-manager serves it.
struct HostState {
    state: String,
}

#[interface(name = "xyz.openbmc_project.State.Host")]
impl HostState {
    #[zbus(property)]
    fn current_host_state(&self) -> String {
        self.state.clone()
    }
}

pub async fn run(
    opts: SimulateOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let lock = StateLock::acquire(&opts.state_dir)?;
    let ca = SoftCa::open_or_create(&lock, crate::ca::SIMULATOR_CA_NAME)?;
    if opts.fault == Fault::NoRootFile {
        match std::fs::remove_file(&opts.root_cert_file) {
            Ok(()) => {
                tracing::info!(file = %opts.root_cert_file.display(), "removed the root certificate file")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StartError::Io(format!(
                    "cannot remove {}: {e}",
                    opts.root_cert_file.display()
                )))
            }
        }
    } else {
        if let Some(dir) = opts.root_cert_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        write_file_atomically(&opts.root_cert_file, ca.root_pem().as_bytes(), 0o600).map_err(
            |e| {
                StartError::Io(format!(
                    "cannot write {}: {e}",
                    opts.root_cert_file.display()
                ))
            },
        )?;
    }

    let conn = opts.bus.connect().await?;
    // Like pldmd, answer Introspect and Ping: the ObjectMapper introspects every name.
    let _ = conn.object_server();
    // Subscribed before the name appears, so no entry announced after that is missed. pldmd
    // matches arg0path `.../certs/ca/`, which zbus cannot express (a path ending in '/'); the
    // ObjectManager at MANAGER_PATH sends these signals, and the entry prefix is checked below.
    let rule = MatchRule::builder()
        .msg_type(Type::Signal)
        .path(MANAGER_PATH)
        .interface("org.freedesktop.DBus.ObjectManager")
        .member("InterfacesAdded")
        .build()
        .map_err(|e| StartError::Failed(e.to_string()))?;
    let mut stream = MessageStream::for_match_rule(rule, &conn, None).await?;

    let _host_conn = match &opts.host_state {
        Some(state) => {
            let c = opts.bus.connect().await?;
            c.object_server()
                .at(
                    "/xyz/openbmc_project/state/host0",
                    HostState {
                        state: state.clone(),
                    },
                )
                .await?;
            c.request_name("xyz.openbmc_project.State.Host0").await?;
            Some(c)
        }
        None => None,
    };
    match conn
        .request_name_with_flags(PLDM_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await
    {
        Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {}
        Ok(_) | Err(zbus::Error::NameTaken) => return Err(StartError::NameTaken(PLDM_NAME.into())),
        Err(e) => return Err(StartError::Bus(e.to_string())),
    }
    let other_ca = match opts.fault {
        Fault::WrongRoot => Some(
            SoftCa::generate_named("Some Other Root CA")
                .map_err(|e| StartError::Failed(e.to_string()))?,
        ),
        _ => None,
    };
    let host = Arc::new(Host {
        conn: conn.clone(),
        ca,
        other_ca,
        fault: opts.fault,
    });
    tracing::info!(fault = ?opts.fault, root_cert_file = %opts.root_cert_file.display(), "host simulator ready");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            msg = crate::bus::next(&mut stream) => {
                let Some(Ok(msg)) = msg else { break };
                let sender = msg.header().sender().map(|s| s.to_string());
                type Added = (OwnedObjectPath, HashMap<String, HashMap<String, OwnedVariant>>);
                let Ok((path, interfaces)) = msg.body().deserialize::<Added>() else { continue };
                // Like pldmd, act only on the announcement that carries the CSR.
                let Some(csr) = interfaces
                    .get(CSR_INTERFACE)
                    .and_then(|props| props.get("CSR"))
                    .and_then(|v| String::try_from(v.clone()).ok())
                else {
                    continue;
                };
                let (Some(sender), Some(_)) = (sender, path.as_str().strip_prefix(crate::transport::pldm::ENTRY_PREFIX)) else {
                    continue;
                };
                let host = host.clone();
                tokio::spawn(async move {
                    if let Err(e) = host.answer(&sender, path.as_str(), &csr).await {
                        tracing::warn!(entry = %path.as_str(), error = %e, "could not answer");
                    }
                });
            }
        }
    }
    drop(lock);
    Ok(())
}

impl Host {
    async fn set(&self, owner: &str, path: &str, property: &str, value: &str) -> zbus::Result<()> {
        self.conn
            .call_method(
                Some(owner),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Set",
                &(ENTRY_INTERFACE, property, Variant::from(value)),
            )
            .await
            .map(|_| ())
    }

    async fn answer(&self, owner: &str, path: &str, csr_pem: &str) -> zbus::Result<()> {
        tracing::info!(entry = path, fault = ?self.fault, "CSR received");
        match self.fault {
            Fault::Silent => return Ok(()),
            Fault::PendingAck => self.set(owner, path, "Status", STATUS_PENDING).await?,
            Fault::Delay(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        let policy = Policy {
            key_types: crate::config::KeyType::ALL.to_vec(),
            ..Policy::default()
        };
        let csr = match csr::validate(csr_pem, &policy) {
            Ok(csr) if self.fault != Fault::BadCsr => csr,
            _ => return self.set(owner, path, "Status", STATUS_BAD_CSR).await,
        };
        let pem = |c: openssl::x509::X509| {
            String::from_utf8_lossy(&c.to_pem().unwrap_or_default()).into_owned()
        };
        let failure = |e: openssl::error::ErrorStack| zbus::Error::Failure(e.to_string());
        let certificate = match self.fault {
            Fault::WrongKey => {
                let other = PKey::from_ec_key(
                    EcKey::generate(
                        &*EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(failure)?,
                    )
                    .map_err(failure)?,
                )
                .map_err(failure)?;
                pem(self
                    .ca
                    .issue_server(&other, "not-the-hmc")
                    .map_err(failure)?)
            }
            Fault::WrongRoot => {
                let other = self.other_ca.as_ref().expect("created for this fault");
                pem(other.issue_client(&csr, 365).map_err(failure)?)
            }
            Fault::CaTrue => pem(self.ca.issue_ca_true(&csr).map_err(failure)?),
            Fault::Garbage => "this is not a certificate\n".to_string(),
            Fault::Empty => String::new(),
            _ => {
                let leaf = pem(self.ca.issue_client(&csr, 365).map_err(failure)?);
                match self.fault {
                    Fault::RootFirst => format!("{}{leaf}", self.ca.root_pem()),
                    Fault::Duplicate => format!("{leaf}{leaf}"),
                    Fault::Crlf => leaf.replace('\n', "\r\n"),
                    _ => leaf,
                }
            }
        };
        self.set(owner, path, "ClientCertificate", &certificate)
            .await?;
        self.set(owner, path, "Status", STATUS_COMPLETE).await?;
        tracing::info!(
            entry = path,
            bytes = certificate.len(),
            "certificate written"
        );
        Ok(())
    }
}
