//! The D-Bus objects of the pldm transport: certificate entries (what pldmd reads and writes)
//! and the Authority API at the Manager object. They convert types and errors; what the calls
//! do lives in `lifecycle`, the entries themselves in the parent module.

// D-Bus argument names follow the interface definitions (`CSR`), not Rust's case rules.
#![allow(non_snake_case)]

use std::sync::{Arc, Weak};

use tokio::sync::watch;
use zbus::{interface, message::Header, OwnedObjectPath};

use super::{entry_path, EntryState, Shared};
use crate::error::{Error, WireError};

/// The D-Bus sender of a call, or "" when the message has none (peer-to-peer).
fn sender(header: Option<&Header<'_>>) -> String {
    header
        .and_then(|h| h.sender())
        .map(|s| s.to_string())
        .unwrap_or_default()
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
        let Some(shared) = self.shared.upgrade() else {
            return Err(
                Error::EntryChangeRefused("the certificate entry is being removed".into()).into(),
            );
        };
        let sender = sender(header.as_ref());
        Ok(shared
            .set_entry_property(self.id, &self.state, &sender, property, value)
            .await?)
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
        match self.shared.upgrade() {
            Some(shared) => Ok(shared.delete_entry(self.id, &sender(Some(&header)))?),
            None => Ok(()),
        }
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
        let id = self
            .shared
            .authority_sign(&sender(Some(&header)), &CSR)
            .await?;
        OwnedObjectPath::try_from(entry_path(id))
            .map_err(|e| WireError::from(Error::Internal(e.to_string())))
    }
}

/// `xyz.openbmc_project.Collection.DeleteAll`.
pub(super) struct DeleteAll {
    pub(super) shared: Arc<Shared>,
}

#[interface(name = "xyz.openbmc_project.Collection.DeleteAll")]
impl DeleteAll {
    async fn delete_all(&self) {
        self.shared.delete_authority_entries().await;
    }
}
