//! What happens to certificate entries when someone on the bus acts on them: pldmd's Sets, a
//! Delete, DeleteAll and the Authority API's SignCSR. The D-Bus objects in `objects` only
//! convert to and from these calls.

use std::sync::Arc;

use tokio::sync::watch;

use super::{
    EntryState, Origin, Shared, MAX_PROPERTY_BYTES, STATUS_BAD_CSR, STATUS_COMPLETE, STATUS_PENDING,
};
use crate::{
    csr::{self, ValidCsr},
    error::{Error, Escaped, Quoted},
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

impl Shared {
    /// A Set of `ClientCertificate` or `Status` on entry `id` by `sender`. Any root process
    /// may call us; only pldmd speaks for the hypervisor. Otherwise anyone could fail a
    /// console's request with BadCSR, which is cached.
    pub(super) async fn set_entry_property(
        &self,
        id: u64,
        state: &watch::Sender<EntryState>,
        sender: &str,
        property: &str,
        value: String,
    ) -> Result<(), Error> {
        let mut refused = (!self.is_pldmd(sender).await).then(|| {
            "only pldmd (the owner of xyz.openbmc_project.PLDM) may set certificate entries"
                .to_string()
        });
        if refused.is_none() {
            state.send_if_modified(|s| {
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
                tracing::warn!(entry = id, property, sender = %Quoted(Escaped(sender)), bytes = value.len(), reason = %Quoted(Escaped(&why)), "refused a property Set on a certificate entry");
                Err(Error::EntryChangeRefused(why))
            }
            None => {
                tracing::info!(entry = id, property, sender = %Quoted(Escaped(sender)), bytes = value.len(), "pldmd set a certificate entry property");
                Ok(())
            }
        }
    }

    /// `Delete` of entry `id` by `sender`.
    pub(super) fn delete_entry(self: &Arc<Self>, id: u64, sender: &str) -> Result<(), Error> {
        // The entry of a SignCSR request belongs to that request: deleting it would fail a
        // console's request from outside. It goes when the request ends.
        if self.entry_origin(id) == Some(Origin::Request) {
            tracing::warn!(entry = id, sender = %Quoted(Escaped(sender)), "refused Delete of the entry of a SignCSR request still in progress");
            return Err(Error::EntryChangeRefused(
                "this certificate entry belongs to a SignCSR request still in progress; it is \
                 removed when the request ends"
                    .into(),
            ));
        }
        // Removing this very object from inside its own method call would wait on itself.
        let shared = self.clone();
        tokio::spawn(async move {
            shared.remove_entry(id).await;
        });
        Ok(())
    }

    /// `DeleteAll`: the entries made through the Authority API; those of SignCSR requests
    /// still in progress belong to their requests.
    pub(super) async fn delete_authority_entries(&self) {
        for id in self.entry_ids(Origin::Authority) {
            self.remove_entry(id).await;
        }
    }

    /// The Authority API's `SignCSR` from `caller`: the id of the new entry. Logs one line,
    /// like every request.
    pub(super) async fn authority_sign(
        self: &Arc<Self>,
        caller: &str,
        input: &str,
    ) -> Result<u64, Error> {
        let started = std::time::Instant::now();
        let result = self.create_authority_entry(input).await;
        let facts = match &result {
            Ok((_, csr)) => csr::LogFacts::of(csr),
            Err(_) => csr::LogFacts::best_effort(input, &self.settings.policy),
        };
        let duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let (caller, subject) = (Quoted(Escaped(caller)), Quoted(&facts.subject));
        match &result {
            Ok((id, _)) => tracing::info!(
                target: "vmi_cert_exchange::request",
                caller = %caller, subject = %subject, key_type = %facts.key_type,
                fingerprint = %facts.fingerprint, csr_bytes = input.len(), entry = id,
                outcome = %"entry_created", duration_ms, "Authority.SignCSR"
            ),
            Err(e) => tracing::warn!(
                target: "vmi_cert_exchange::request",
                caller = %caller, subject = %subject, key_type = %facts.key_type,
                fingerprint = %facts.fingerprint, csr_bytes = input.len(),
                outcome = %e.outcome(), reason = %Quoted(Escaped(&e.to_string())), duration_ms,
                "Authority.SignCSR failed"
            ),
        }
        result.map(|(id, _)| id)
    }

    async fn create_authority_entry(
        self: &Arc<Self>,
        input: &str,
    ) -> Result<(u64, ValidCsr), Error> {
        let csr = csr::validate(input, &self.settings.policy)?;
        // As for SignCSR: say at once that nobody would act on the entry.
        self.check_ready().await?;
        let limit = self.settings.limits.max_in_flight;
        let (id, mut state) = self
            .create_entry(&csr.pem, Origin::Authority, Some(limit))
            .await?;
        // The entry shows what pldmd set until Delete, DeleteAll or the request lifetime; the
        // timer ends with the entry, so deleted entries leave no task behind.
        let shared = Arc::downgrade(self);
        let lifetime = self.settings.limits.request_lifetime;
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
