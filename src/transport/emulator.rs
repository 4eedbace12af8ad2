//! The `emulator` transport: an in-process software VMI CA for development, QEMU images, CI and
//! the demo.

use std::sync::Arc;

use super::{BoxFuture, HypervisorTransport};
use crate::{ca::SoftCa, chain::Answer, csr::ValidCsr, error::Error};

pub struct Emulator {
    ca: Arc<SoftCa>,
    validity_days: u32,
}

impl Emulator {
    pub fn new(ca: SoftCa, validity_days: u32) -> Self {
        Emulator {
            ca: Arc::new(ca),
            validity_days,
        }
    }
}

impl HypervisorTransport for Emulator {
    fn name(&self) -> &'static str {
        "emulator"
    }

    fn sign(&self, csr: Arc<ValidCsr>) -> BoxFuture<'static, Result<Answer, Error>> {
        let ca = self.ca.clone();
        let days = self.validity_days;
        Box::pin(async move {
            // Signing with a P-384 key takes about a millisecond: off the async workers anyway,
            // so a burst of callers never stalls the bus connection.
            tokio::task::spawn_blocking(move || {
                let leaf = ca
                    .issue_client(&csr, days)
                    .map_err(|e| Error::Internal(format!("the software CA failed to sign: {e}")))?;
                let pem = leaf
                    .to_pem()
                    .map_err(|e| Error::Internal(format!("PEM encoding failed: {e}")))?;
                Ok(Answer {
                    certificate: String::from_utf8_lossy(&pem).into_owned(),
                    root: ca.root_pem(),
                })
            })
            .await
            .map_err(|e| Error::Internal(format!("signing task failed: {e}")))?
        })
    }
}
