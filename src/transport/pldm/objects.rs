//! The D-Bus objects of the pldm transport: certificate entries (what pldmd reads and writes)
//! and the Authority API at the Manager object. They convert types and errors; the entry
//! lifecycle lives in the parent module.

// D-Bus argument names follow the interface definitions (`CSR`), not Rust's case rules.
#![allow(non_snake_case)]

use std::sync::{Arc, Weak};

use tokio::sync::watch;
use zbus::{interface, message::Header, OwnedObjectPath};

use super::{
    entry_path, EntryState, Origin, Shared, MAX_PROPERTY_BYTES, STATUS_BAD_CSR, STATUS_COMPLETE,
    STATUS_PENDING,
};
use crate::{
    csr::{self, ValidCsr},
    error::{Error, Escaped, Quoted, WireError},
};

/// Why a Set is refused, or `None` when pldmd may write `value` now.
pub(super) fn refuse_set(current: &EntryState, property: &str, value: &str) -> Option<String> {
    if value.len() > MAX_PROPERTY_BYTES {
        return Some(format!("{property} is larger than 64 KiB"));
    }
    if current.deleted {
        return Some("the certificate entry is being removed".into());
    }
    if current.status != STATUS_PENDING {
        return Some("the certificate entry is no longer Pending".into());
    }
    if property == "Status" && ![STATUS_PENDING, STATUS_BAD_CSR, STATUS_COMPLETE].contains(&value) {
        return Some("unknown Status value".into());
    }
    None
}

/// `xyz.openbmc_project.Certs.Entry`: what pldmd writes.
pub(super) struct EntryIface {
    pub(super) id: u64,
    pub(super) state: watch::Sender<EntryState>,
    pub(super) shared: Weak<Shared>,
}

impl EntryIface {
    async fn set(
        &self,
        header: Option<Header<'_>>,
        property: &str,
        value: String,
    ) -> Result<(), WireError> {
        let sender = header
            .as_ref()
            .and_then(|h| h.sender())
            .map(|s| s.to_string())
            .unwrap_or_default();
        // Any root process may call us; only pldmd speaks for the hypervisor. Otherwise anyone
        // could fail a console's request with BadCSR, which is cached.
        let from_pldmd = match self.shared.upgrade() {
            Some(shared) => shared.is_pldmd(&sender).await,
            None => false,
        };
        let mut refused = (!from_pldmd).then(|| {
            "only pldmd (the owner of xyz.openbmc_project.PLDM) may set certificate entries"
                .to_string()
        });
        if refused.is_none() {
            self.state.send_if_modified(|s| {
                refused = refuse_set(s, property, &value);
                if refused.is_some() {
                    return false;
                }
                match property {
                    "Status" => s.status = value.clone(),
                    _ => s.client_certificate = value.clone(),
                }
                true
            });
        }
        match refused {
            Some(why) => {
                tracing::warn!(entry = self.id, property, sender = %Quoted(Escaped(&sender)), bytes = value.len(), reason = %why, "refused a property Set on a certificate entry");
                Err(Error::EntryChangeRefused(why).into())
            }
            None => {
                tracing::info!(entry = self.id, property, sender = %Quoted(Escaped(&sender)), bytes = value.len(), "pldmd set a certificate entry property");
                Ok(())
            }
        }
    }
}

#[interface(name = "xyz.openbmc_project.Certs.Entry")]
impl EntryIface {
    #[zbus(property)]
    fn client_certificate(&self) -> String {
        self.state.borrow().client_certificate.clone()
    }

    #[zbus(property)]
    async fn set_client_certificate(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        value: String,
    ) -> Result<(), WireError> {
        self.set(header, "ClientCertificate", value).await
    }

    #[zbus(property)]
    fn status(&self) -> String {
        self.state.borrow().status.clone()
    }

    #[zbus(property)]
    async fn set_status(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        value: String,
    ) -> Result<(), WireError> {
        self.set(header, "Status", value).await
    }
}

/// `xyz.openbmc_project.Object.Delete`.
pub(super) struct DeleteIface {
    pub(super) id: u64,
    pub(super) shared: Weak<Shared>,
}

#[interface(name = "xyz.openbmc_project.Object.Delete")]
impl DeleteIface {
    async fn delete(&self, #[zbus(header)] header: Header<'_>) -> Result<(), WireError> {
        let id = self.id;
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        // The entry of a waiting SignCSR belongs to that request: deleting it would fail a
        // console's request from outside. It goes when the request ends.
        if shared.entry_origin(id) == Some(Origin::Request) {
            let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
            tracing::warn!(entry = id, sender = %Quoted(Escaped(&sender)), "refused Delete of the entry of a SignCSR request still in progress");
            return Err(Error::EntryChangeRefused(
                "this certificate entry belongs to a SignCSR request still in progress; it is \
                 removed when the request ends"
                    .into(),
            )
            .into());
        }
        // Removing this very object from inside its own method call would wait on itself.
        tokio::spawn(async move {
            shared.remove_entry(id).await;
        });
        Ok(())
    }
}

/// `xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR`: what pldmd reads.
pub(super) struct CsrIface {
    pub(super) csr: String,
}

#[interface(name = "xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR")]
impl CsrIface {
    #[zbus(property(emits_changed_signal = "const"), name = "CSR")]
    fn csr(&self) -> String {
        self.csr.clone()
    }
}

/// `xyz.openbmc_project.Certs.Authority`, as bmc-vmi-ca serves it: IBM's bmcweb route
/// `/ibm/v1/Host/Actions/SignCSR` calls it, watches the entry, reads ClientCertificate and
/// deletes the entry. Our intake and validation run first.
pub(super) struct Authority {
    pub(super) shared: Arc<Shared>,
}

#[interface(name = "xyz.openbmc_project.Certs.Authority")]
impl Authority {
    #[zbus(name = "SignCSR", out_args("path"))]
    async fn sign_csr(
        &self,
        #[zbus(header)] header: Header<'_>,
        CSR: String,
    ) -> Result<OwnedObjectPath, WireError> {
        let caller = header.sender().map(|s| s.to_string()).unwrap_or_default();
        let result = self.create(&CSR).await;
        match &result {
            Ok((id, csr)) => tracing::info!(
                target: "vmi_cert_exchange::request",
                caller = %Quoted(Escaped(&caller)), subject = %Quoted(&csr.subject), key_type = %csr.key_type,
                fingerprint = %csr.fingerprint_hex(), entry = id, outcome = "entry created",
                "Authority.SignCSR"
            ),
            Err(e) => tracing::warn!(
                target: "vmi_cert_exchange::request",
                caller = %Quoted(Escaped(&caller)), outcome = e.outcome(), reason = %e, "Authority.SignCSR failed"
            ),
        }
        let (id, _) = result?;
        OwnedObjectPath::try_from(entry_path(id))
            .map_err(|e| WireError::from(Error::Internal(e.to_string())))
    }
}

impl Authority {
    async fn create(&self, input: &str) -> Result<(u64, ValidCsr), Error> {
        let csr = csr::validate(input, &self.shared.settings.policy)?;
        // As for SignCSR: say at once that nobody would act on the entry.
        self.shared.check_ready().await?;
        let limit = self.shared.settings.limits.max_in_flight;
        let (id, mut state) = self
            .shared
            .create_entry(&csr.pem, Origin::Authority, Some(limit))
            .await?;
        // The entry shows what pldmd set until Delete, DeleteAll or the request lifetime; the
        // timer ends with the entry, so deleted entries leave no task behind.
        let shared = Arc::downgrade(&self.shared);
        let lifetime = self.shared.settings.limits.request_lifetime;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(lifetime) => {}
                _ = state.wait_for(|s| s.deleted) => return,
            }
            if let Some(shared) = shared.upgrade() {
                if shared.remove_entry(id).await {
                    tracing::info!(entry = id, "certificate entry expired");
                }
            }
        });
        Ok((id, csr))
    }
}

/// `xyz.openbmc_project.Collection.DeleteAll`.
pub(super) struct DeleteAll {
    pub(super) shared: Arc<Shared>,
}

#[interface(name = "xyz.openbmc_project.Collection.DeleteAll")]
impl DeleteAll {
    /// Removes the entries made through the Authority API; those of waiting `SignCSR`
    /// requests belong to their requests.
    async fn delete_all(&self) {
        for id in self.shared.entry_ids(Origin::Authority) {
            self.shared.remove_entry(id).await;
        }
    }
}
