//! Hypervisor transports: how a validated CSR reaches the hypervisor's CA and how its answer
//! comes back (DESIGN.md section 4).

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{chain::Answer, csr::ValidCsr, error::Error};

pub mod emulator;
pub mod pldm;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way to get a CSR signed. The request pipeline owns deadlines, dedupe and verification;
/// a transport only carries one request and brings back what it got.
pub trait HypervisorTransport: Send + Sync + 'static {
    /// The name used on the command line and in logs.
    fn name(&self) -> &'static str;

    /// Fails fast with [`Error::HypervisorUnavailable`] when the path to the hypervisor is down.
    /// Called before a new request is admitted.
    fn check_ready(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    /// Carries `csr` to the hypervisor and returns its answer. The future may be dropped when
    /// the request lifetime ends; the transport must then clean up whatever it left on the bus.
    fn sign(&self, csr: Arc<ValidCsr>) -> BoxFuture<'static, Result<Answer, Error>>;
}
