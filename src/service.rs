//! The D-Bus object `/xyz/openbmc_project/HMC/VMInterface`: converts types and errors, nothing
//! more. All behaviour lives in [`crate::signer`].

// The argument is named `CSR` as in the interface YAML (introspection shows Rust's name), and
// the interface macro does not carry an allow on the parameter itself.
#![allow(non_snake_case)]

use std::sync::Arc;

use zbus::{interface, message::Header};

use crate::{error::WireError, signer::Signer};

pub struct VmInterface {
    signer: Arc<Signer>,
}

impl VmInterface {
    pub fn new(signer: Arc<Signer>) -> Self {
        VmInterface { signer }
    }
}

#[interface(name = "xyz.openbmc_project.HMC.VMInterface")]
impl VmInterface {
    /// Signs a PEM CSR through the hypervisor's CA and returns the client certificate followed
    /// by the root CA certificate. Runs on `&self`: callers never wait for each other.
    #[zbus(name = "SignCSR", out_args("Certificate"))]
    async fn sign_csr(
        &self,
        #[zbus(header)] header: Header<'_>,
        CSR: String,
    ) -> Result<String, WireError> {
        let caller = header.sender().map(|s| s.as_str()).unwrap_or("");
        Ok(self.signer.sign(caller, &CSR).await?)
    }
}
