//! The request pipeline behind `SignCSR`: validation, the in-flight table with dedupe, the
//! result cache, the in-flight limit and the caller's deadline (DESIGN.md section 3).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    chain::{self, Chain},
    config::Settings,
    csr::{self, ValidCsr},
    error::{Error, Escaped, Quoted},
    transport::HypervisorTransport,
};

type Key = [u8; 32];
type Outcome = Result<Chain, Error>;

/// A bound on cached results, so a flood of distinct CSRs cannot grow memory without limit.
const MAX_CACHED: usize = 4096;

#[derive(Default)]
struct Table {
    in_flight: HashMap<Key, watch::Receiver<Option<Outcome>>>,
    cache: HashMap<Key, (Instant, Outcome)>,
}

impl Table {
    fn purge(&mut self, ttl: Duration) {
        let now = Instant::now();
        self.cache
            .retain(|_, (at, _)| now.duration_since(*at) < ttl);
    }
}

/// Counts for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub in_flight: usize,
    pub cached: usize,
}

pub struct Signer {
    transport: Arc<dyn HypervisorTransport>,
    settings: Settings,
    table: Mutex<Table>,
    /// The number of requests in flight, for whoever needs to wait until none is left.
    in_flight_count: watch::Sender<usize>,
    /// How many callers have attached to a request already in flight, ever.
    attached_count: watch::Sender<u64>,
}

/// Where a caller's answer came from, for the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This caller started the request.
    New,
    /// An identical CSR was in flight; this caller waited for it.
    Attached,
    /// A finished result of an identical CSR.
    Cache,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::New => "new",
            Source::Attached => "attached",
            Source::Cache => "cache",
        }
    }
}

enum Admission {
    Done(Outcome),
    Wait(watch::Receiver<Option<Outcome>>, Source),
}

impl Signer {
    pub fn new(transport: Arc<dyn HypervisorTransport>, settings: Settings) -> Arc<Self> {
        Arc::new(Signer {
            transport,
            settings,
            table: Mutex::new(Table::default()),
            in_flight_count: watch::Sender::new(0),
            attached_count: watch::Sender::new(0),
        })
    }

    pub fn counts(&self) -> Counts {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        Counts {
            in_flight: t.in_flight.len(),
            cached: t.cache.len(),
        }
    }

    /// Follows the number of requests in flight (e.g. to wait until it is 0).
    pub fn watch_in_flight(&self) -> watch::Receiver<usize> {
        self.in_flight_count.subscribe()
    }

    /// Follows how many callers have attached to an identical request in flight.
    pub fn watch_attached(&self) -> watch::Receiver<u64> {
        self.attached_count.subscribe()
    }

    /// Signs the CSR text `input` sent by `caller` and logs one line about it.
    pub async fn sign(self: &Arc<Self>, caller: &str, input: &str) -> Result<String, Error> {
        let started = Instant::now();
        let (facts, source, result) = match csr::validate(input, &self.settings.policy) {
            Ok(csr) => {
                let facts = csr::LogFacts::of(&csr);
                let (source, result) = self.sign_valid(Arc::new(csr)).await;
                (facts, source, result)
            }
            // Say as much as can be read of a refused CSR, so that its sender can be found.
            Err(e) => (
                csr::LogFacts::best_effort(input, &self.settings.policy),
                None,
                Err(e),
            ),
        };
        let entry = LogEntry {
            caller,
            size: input.len(),
            facts: &facts,
            source,
            elapsed: started.elapsed(),
        };
        entry.log(&result);
        result.map(|chain| chain.pem)
    }

    /// The outcome, and where it came from when the request got that far.
    async fn sign_valid(self: &Arc<Self>, csr: Arc<ValidCsr>) -> (Option<Source>, Outcome) {
        // One deadline for everything, readiness checks included: the caller must hear from us
        // before its own D-Bus timeout.
        let deadline = tokio::time::Instant::now() + self.settings.limits.sign_timeout;
        let (mut rx, source) = match tokio::time::timeout_at(deadline, self.admit(csr)).await {
            Err(_) => {
                return (
                    None,
                    Err(Error::HypervisorUnavailable(
                        "the path to the hypervisor did not answer in time; retry later".into(),
                    )),
                )
            }
            Ok(Err(e)) => return (None, Err(e)),
            Ok(Ok(Admission::Done(outcome))) => return (Some(Source::Cache), outcome),
            Ok(Ok(Admission::Wait(rx, source))) => (rx, source),
        };
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some))
            .await
            .map(|r| r.map(|outcome| (*outcome).clone()));
        let outcome = match waited {
            Ok(Ok(Some(outcome))) => outcome,
            Ok(Ok(None)) | Err(_) => Err(Error::SigningInProgress),
            Ok(Err(_)) => Err(Error::Internal(
                "the signing task ended without an answer".into(),
            )),
        };
        (Some(source), outcome)
    }

    /// Answers from the cache, attaches to an identical request in flight, or starts a new one.
    async fn admit(self: &Arc<Self>, csr: Arc<ValidCsr>) -> Result<Admission, Error> {
        let key = csr.fingerprint;
        if let Some(found) = self.lookup(&key) {
            return Ok(found);
        }
        self.transport.check_ready().await?;
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have started the same request while we checked readiness.
        if let Some(found) = self.lookup_locked(&mut table, &key) {
            return Ok(found);
        }
        if table.in_flight.len() >= self.settings.limits.max_in_flight {
            return Err(Error::InFlightLimit(self.settings.limits.max_in_flight));
        }
        let (tx, rx) = watch::channel(None);
        table.in_flight.insert(key, rx.clone());
        self.in_flight_count.send_replace(table.in_flight.len());
        drop(table);
        let mut finish = Finish {
            signer: self.clone(),
            key,
            tx: Some(tx),
        };
        tokio::spawn(async move {
            let outcome = finish.signer.run(csr).await;
            finish.complete(outcome);
        });
        Ok(Admission::Wait(rx, Source::New))
    }

    /// Takes a finished request out of the table, caches a final outcome, tells the waiters.
    fn finish(&self, key: &Key, tx: watch::Sender<Option<Outcome>>, outcome: Outcome) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.in_flight.remove(key);
        self.in_flight_count.send_replace(table.in_flight.len());
        if outcome.as_ref().err().is_none_or(Error::is_final) {
            if table.cache.len() >= MAX_CACHED {
                table.purge(self.settings.limits.result_ttl);
            }
            if table.cache.len() < MAX_CACHED {
                table.cache.insert(*key, (Instant::now(), outcome.clone()));
            }
        }
        drop(table);
        let _ = tx.send(Some(outcome));
    }

    fn lookup(&self, key: &Key) -> Option<Admission> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        self.lookup_locked(&mut table, key)
    }

    fn lookup_locked(&self, table: &mut Table, key: &Key) -> Option<Admission> {
        table.purge(self.settings.limits.result_ttl);
        if let Some((_, outcome)) = table.cache.get(key) {
            return Some(Admission::Done(outcome.clone()));
        }
        let rx = table.in_flight.get(key)?.clone();
        self.attached_count.send_modify(|n| *n += 1);
        Some(Admission::Wait(rx, Source::Attached))
    }

    /// One request from start to verified chain, bounded by the request lifetime. When the
    /// lifetime ends the transport's future is dropped, which removes what it left on the bus.
    async fn run(&self, csr: Arc<ValidCsr>) -> Outcome {
        let lifetime = self.settings.limits.request_lifetime;
        match tokio::time::timeout(lifetime, self.transport.sign(csr.clone())).await {
            Ok(Ok(answer)) => chain::verify(&csr, &answer, self.settings.limits.clock_skew),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                tracing::warn!(
                    fingerprint = %csr.fingerprint_hex(),
                    lifetime_s = lifetime.as_secs_f64(),
                    "request dropped: no answer from the hypervisor within the request lifetime"
                );
                Err(Error::HypervisorUnavailable(
                    "the hypervisor did not answer within the request lifetime".into(),
                ))
            }
        }
    }
}

/// A request's way out of the in-flight table. If its task ends without an outcome (a panic
/// in a transport), dropping this still frees the slot and answers the waiters, so no request
/// is stuck and the identical CSR can be tried again.
struct Finish {
    signer: Arc<Signer>,
    key: Key,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Finish {
    fn complete(&mut self, outcome: Outcome) {
        if let Some(tx) = self.tx.take() {
            self.signer.finish(&self.key, tx, outcome);
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.complete(Err(Error::Internal(
            "the signing task failed; retry".into(),
        )));
    }
}

/// What the one structured line per request says besides the outcome.
struct LogEntry<'a> {
    caller: &'a str,
    size: usize,
    facts: &'a csr::LogFacts,
    source: Option<Source>,
    elapsed: Duration,
}

impl LogEntry<'_> {
    /// Subject and caller are attacker-controlled: escaped and quoted.
    fn log(&self, result: &Outcome) {
        let caller = Quoted(Escaped(self.caller));
        let csr::LogFacts {
            subject,
            key_type,
            fingerprint,
        } = self.facts;
        let size = self.size;
        // A refused CSR never reached the table.
        let source = self.source.map_or("none", Source::as_str);
        // Microseconds are plenty; more digits are float noise.
        let duration_ms = (self.elapsed.as_secs_f64() * 1e6).round() / 1e3;
        match result {
            Ok(chain) => tracing::info!(
                target: "vmi_cert_exchange::request",
                caller = %caller, subject = %Quoted(subject), key_type = %key_type,
                fingerprint = %fingerprint, csr_bytes = size, source = %source,
                outcome = %"ok", cert_fingerprint = %chain.leaf_fingerprint,
                duration_ms, "SignCSR ok"
            ),
            Err(e) => tracing::warn!(
                target: "vmi_cert_exchange::request",
                caller = %caller, subject = %Quoted(subject), key_type = %key_type,
                fingerprint = %fingerprint, csr_bytes = size, source = %source,
                outcome = %e.outcome(), reason = %Quoted(Escaped(&e.to_string())),
                duration_ms, "SignCSR failed"
            ),
        }
    }
}
