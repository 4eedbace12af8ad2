//! `vmi-cert-exchange`: the BMC side of the VMI certificate exchange.
//!
//! A management console sends a CSR to `SignCSR` on `/xyz/openbmc_project/HMC/VMInterface`;
//! the service validates it, carries it to the hypervisor's CA through a
//! [`transport::HypervisorTransport`], verifies the answer and returns the client certificate
//! followed by the root CA certificate.

use std::sync::Arc;

use zbus::{fdo::RequestNameFlags, fdo::RequestNameReply, Connection};

pub mod bus;
pub mod ca;
pub mod chain;
pub mod client;
pub mod config;
pub mod csr;
pub mod daemon;
pub mod demo;
mod der;
pub mod error;
#[cfg(feature = "rest-client")]
pub mod rest;
pub mod service;
pub mod signer;
pub mod simulate;
pub mod transport;
pub mod util;

pub use error::{Error, StartError};
pub use signer::Signer;

/// The well-known name of the HMC object's connection.
pub const BUS_NAME: &str = "xyz.openbmc_project.HMC.VMInterface";
/// The only object served under [`BUS_NAME`].
pub const OBJECT_PATH: &str = "/xyz/openbmc_project/HMC/VMInterface";
/// The interface of that object.
pub const INTERFACE: &str = "xyz.openbmc_project.HMC.VMInterface";

/// Serves the HMC object on `conn`, then requests [`BUS_NAME`]. The object is in place before
/// the name appears, because the ObjectMapper introspects as soon as it sees the name. `conn`
/// must serve nothing else: the mapper would otherwise find the object under two names and
/// bmcweb would call it twice.
pub async fn serve(conn: &Connection, signer: Arc<Signer>) -> Result<(), StartError> {
    conn.object_server()
        .at(OBJECT_PATH, service::VmInterface::new(signer))
        .await?;
    let reply = conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await
        .map_err(|e| match e {
            zbus::Error::NameTaken => StartError::NameTaken(BUS_NAME.to_string()),
            other => StartError::Bus(other.to_string()),
        })?;
    match reply {
        RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner => Ok(()),
        RequestNameReply::Exists | RequestNameReply::InQueue => {
            Err(StartError::NameTaken(BUS_NAME.to_string()))
        }
    }
}
