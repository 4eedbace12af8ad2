//! Errors of the request pipeline and their one mapping to D-Bus error names.
//!
//! bmcweb shows the error *name* to the console in `data.description` and our message in
//! `message`, so every variant says what happened in words safe to show a console user, and
//! none of them ever carries CSR or certificate text.

use std::fmt;

/// Prefix of every error name the service raises (phosphor-dbus-interfaces' common errors).
pub const ERROR_PREFIX: &str = "xyz.openbmc_project.Common.Error";

/// What went wrong with one request. Cheap to clone: a finished request's outcome is handed to
/// every caller attached to it and kept in the result cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not one well-formed PEM certificate request.
    #[error("{0}")]
    MalformedCsr(String),
    /// The CSR parses but breaks the validation or key policy.
    #[error("{0}")]
    PolicyViolation(String),
    /// The CSR asks for CA capability; a client certificate never gets it.
    #[error("the CSR asks for CA capability ({0}); only client certificates are issued")]
    CaCapabilityRequested(&'static str),
    /// The hypervisor looked at the CSR and refused it (pldm Status BadCSR).
    #[error("the hypervisor rejected the CSR")]
    HypervisorRejected,
    /// The path to the hypervisor is down right now.
    #[error("{0}")]
    HypervisorUnavailable(String),
    /// The deadline passed while the hypervisor is still working on the request.
    #[error("signing in progress, retry with the same CSR")]
    SigningInProgress,
    /// Too many distinct requests are in flight.
    #[error("too many signing requests in flight ({0}); retry later")]
    InFlightLimit(usize),
    /// The root certificate is missing, unreadable or does not verify the leaf.
    #[error("{0}")]
    NoRootCertificate(String),
    /// The hypervisor answered with something that is not a usable client certificate.
    #[error("{0}")]
    UnusableAnswer(String),
    /// A change of a certificate entry (a property Set, a Delete) that the entry's state or
    /// its owner does not allow.
    #[error("{0}")]
    EntryChangeRefused(String),
    /// A fault of the service itself.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The D-Bus error name (without prefix) this error is raised as.
    pub fn dbus_name(&self) -> &'static str {
        self.wire_kind().name()
    }

    /// This match is the only place where internal errors meet D-Bus names.
    fn wire_kind(&self) -> WireKind {
        match self {
            Error::MalformedCsr(_) | Error::PolicyViolation(_) | Error::HypervisorRejected => {
                WireKind::InvalidArgument
            }
            Error::CaCapabilityRequested(_) | Error::EntryChangeRefused(_) => WireKind::NotAllowed,
            Error::HypervisorUnavailable(_) | Error::SigningInProgress => WireKind::Unavailable,
            Error::InFlightLimit(_) => WireKind::TooManyResources,
            Error::NoRootCertificate(_) => WireKind::NoCACertificate,
            Error::UnusableAnswer(_) | Error::Internal(_) => WireKind::InternalFailure,
        }
    }

    /// Whether a finished request with this outcome is kept in the result cache. Only the
    /// hypervisor's verdict on the CSR is final; everything else may go away on a retry.
    pub fn is_final(&self) -> bool {
        matches!(self, Error::HypervisorRejected)
    }

    /// A short, stable word for logs and metrics.
    pub fn outcome(&self) -> &'static str {
        self.dbus_name()
    }
}

/// The error names the service raises, without [`ERROR_PREFIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireKind {
    InvalidArgument,
    NotAllowed,
    Unavailable,
    TooManyResources,
    NoCACertificate,
    InternalFailure,
}

impl WireKind {
    fn name(self) -> &'static str {
        match self {
            WireKind::InvalidArgument => "InvalidArgument",
            WireKind::NotAllowed => "NotAllowed",
            WireKind::Unavailable => "Unavailable",
            WireKind::TooManyResources => "TooManyResources",
            WireKind::NoCACertificate => "NoCACertificate",
            WireKind::InternalFailure => "InternalFailure",
        }
    }
}

/// The error as it goes on the wire: `xyz.openbmc_project.Common.Error.<Name>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "xyz.openbmc_project.Common.Error")]
pub enum WireError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgument(String),
    NotAllowed(String),
    Unavailable(String),
    TooManyResources(String),
    NoCACertificate(String),
    InternalFailure(String),
}

impl From<Error> for WireError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err.wire_kind() {
            WireKind::InvalidArgument => WireError::InvalidArgument(message),
            WireKind::NotAllowed => WireError::NotAllowed(message),
            WireKind::Unavailable => WireError::Unavailable(message),
            WireKind::TooManyResources => WireError::TooManyResources(message),
            WireKind::NoCACertificate => WireError::NoCACertificate(message),
            WireKind::InternalFailure => WireError::InternalFailure(message),
        }
    }
}

/// Why the daemon (or another subcommand) could not start or run, with the process exit code
/// that systemd and scripts see. Documented in README.md; the unit's
/// `RestartPreventExitStatus=` names [`EXIT_CA_CORRUPT`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{0}")]
    Usage(String),
    /// Connecting failed; the text names the bus.
    #[error("cannot connect to {0} (choose a bus with --address or --bus)")]
    Connect(String),
    /// A call to the bus daemon failed after connecting.
    #[error("D-Bus: {0}")]
    Bus(String),
    #[error("the bus name {0} is already owned by another process")]
    NameTaken(String),
    #[error("{0}")]
    StateLocked(String),
    #[error("{0}")]
    CaCorrupt(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Failed(String),
    #[error("interrupted; stopped everything that was started")]
    Interrupted,
}

/// Exit code for a bad command line or configuration file.
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a corrupt or half-present software CA: restarting cannot help, and a new root
/// would invalidate every certificate already issued.
pub const EXIT_CA_CORRUPT: i32 = 3;
/// Exit code for a state directory held by another process.
pub const EXIT_STATE_LOCKED: i32 = 4;
/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Usage(_) => EXIT_USAGE,
            StartError::CaCorrupt(_) => EXIT_CA_CORRUPT,
            StartError::StateLocked(_) => EXIT_STATE_LOCKED,
            StartError::Interrupted => EXIT_INTERRUPTED,
            _ => 1,
        }
    }
}

impl From<zbus::Error> for StartError {
    fn from(err: zbus::Error) -> Self {
        StartError::Bus(err.to_string())
    }
}

/// Renders attacker-controlled text (subject values, D-Bus senders, bmcweb's messages) for a
/// log line or a terminal: printable characters stay; control characters, invisible formatting
/// (bidirectional overrides, line separators), quotes and backslashes are escaped; the length
/// is capped.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX_CHARS: usize = 256;
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX_CHARS {
                return f.write_str("...");
            }
            // escape_debug leaves exactly the printable characters alone (and escapes quotes,
            // of which only the double one matters here).
            if c != '\'' && c.escape_debug().len() > 1 {
                write!(f, "{}", c.escape_debug())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Puts already escaped text in double quotes for a log field, so that spaces and `=` in it
/// cannot pass for the start of another field.
pub struct Quoted<T>(pub T);

impl<T: fmt::Display> fmt::Display for Quoted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_a_common_error_name() {
        let cases = [
            (Error::MalformedCsr("x".into()), "InvalidArgument"),
            (Error::PolicyViolation("x".into()), "InvalidArgument"),
            (Error::HypervisorRejected, "InvalidArgument"),
            (Error::CaCapabilityRequested("keyCertSign"), "NotAllowed"),
            (Error::EntryChangeRefused("x".into()), "NotAllowed"),
            (Error::HypervisorUnavailable("x".into()), "Unavailable"),
            (Error::SigningInProgress, "Unavailable"),
            (Error::InFlightLimit(64), "TooManyResources"),
            (Error::NoRootCertificate("x".into()), "NoCACertificate"),
            (Error::UnusableAnswer("x".into()), "InternalFailure"),
            (Error::Internal("x".into()), "InternalFailure"),
        ];
        for (err, name) in cases {
            assert_eq!(err.dbus_name(), name, "{err:?}");
            let wire = WireError::from(err.clone());
            assert_eq!(
                zbus::DBusError::name(&wire).as_str(),
                format!("{ERROR_PREFIX}.{name}")
            );
            assert_eq!(
                zbus::DBusError::description(&wire),
                Some(err.to_string().as_str())
            );
        }
    }

    #[test]
    fn escaping_neutralises_control_characters_and_quotes() {
        assert_eq!(
            Escaped("CN=a\nb\"c\\d\u{1b}[31m").to_string(),
            "CN=a\\nb\\\"c\\\\d\\u{1b}[31m"
        );
        assert_eq!(Escaped("Zürich").to_string(), "Zürich");
        assert_eq!(
            Escaped("a\u{202e}b\u{2028}c'd e=f").to_string(),
            "a\\u{202e}b\\u{2028}c'd e=f"
        );
        assert_eq!(
            Quoted(Escaped("x outcome=ok\"")).to_string(),
            "\"x outcome=ok\\\"\""
        );
        let long = "x".repeat(300);
        assert_eq!(
            Escaped(&long).to_string(),
            format!("{}...", "x".repeat(256))
        );
    }

    #[test]
    fn only_hypervisor_rejection_is_final() {
        assert!(Error::HypervisorRejected.is_final());
        assert!(!Error::SigningInProgress.is_final());
        assert!(!Error::NoRootCertificate("x".into()).is_final());
        assert!(!Error::UnusableAnswer("x".into()).is_final());
    }
}
