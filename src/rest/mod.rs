//! `rest-sign`: the console side. Logs in to bmcweb, posts the CSR to the generic D-Bus REST
//! route of `SignCSR`, retries the same CSR while the answer says "later", verifies the chain
//! locally and writes `client.crt`, `ca.crt` and `chain.pem`.
//!
//! The private key never leaves the console: with `--key` it is created (or read) here and
//! only the CSR goes over the wire.

pub mod http;

use std::{
    io::Read,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

use openssl::{
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    rsa::Rsa,
    x509::{X509Name, X509NameBuilder, X509Req, X509ReqBuilder, X509},
};
use serde_json::Value;

use crate::{
    chain::{self, Answer},
    client::write_chain,
    config::{KeyType, Policy},
    csr::{self, ValidCsr},
    error::{Escaped, StartError},
    util::{pem_blocks, write_file_atomically},
};
use http::{Client, HttpError, Response, Trust};

/// bmcweb's generic D-Bus REST route of the method (reference/bmcweb.md).
pub const SIGN_PATH: &str = "/xyz/openbmc_project/HMC/VMInterface/action/SignCSR";
/// Where the password comes from when there is no `--password-file`.
pub const PASSWORD_ENV: &str = "VMI_BMC_PASSWORD";
/// The longest pause between two attempts.
pub const MAX_PAUSE: Duration = Duration::from_secs(30);
/// How far in the future the leaf's notBefore may be: the BMC's and the hypervisor's clocks
/// drift, as on the BMC side (DESIGN.md section 3, step 6).
const CLOCK_SKEW: Duration = Duration::from_secs(86400);
/// Logging out must not wait on a BMC that stopped answering.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(10);

const ERROR: &str = "xyz.openbmc_project.Common.Error.";

/// How to authenticate to bmcweb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `POST /login`, then `X-Auth-Token` on each request, `POST /logout` at the end.
    Session,
    /// HTTP Basic on each request (bmcweb makes a session per request).
    Basic,
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "session" => Ok(AuthMode::Session),
            "basic" => Ok(AuthMode::Basic),
            _ => Err(format!("unknown auth mode {s:?} (known: session, basic)")),
        }
    }
}

/// Where the CSR comes from.
#[derive(Debug, Clone)]
pub enum CsrSource {
    /// A PEM file, or `-` for stdin.
    File(PathBuf),
    /// Our own key (created if missing); the CSR is made here and written to `client.csr`.
    Key {
        path: PathBuf,
        subject: Option<String>,
        key_type: KeyType,
    },
}

#[derive(Debug, Clone)]
pub struct RestSignOptions {
    pub url: String,
    pub user: String,
    pub password_file: Option<PathBuf>,
    pub auth: AuthMode,
    pub source: CsrSource,
    pub out: PathBuf,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    /// Total time for login, every attempt and the pauses between them.
    pub timeout: Duration,
    /// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
    pub retry_interval: Duration,
}

/// Runs `rest-sign`. The HTTP client is blocking, so it runs on a blocking thread.
pub async fn run(opts: RestSignOptions) -> Result<(), StartError> {
    tokio::task::spawn_blocking(move || run_blocking(opts))
        .await
        .map_err(|e| StartError::Failed(format!("rest-sign stopped: {e}")))?
}

/// Runs `rest-sign` on the calling thread; the error is what to print.
pub fn run_blocking(opts: RestSignOptions) -> Result<(), StartError> {
    let endpoint = http::Endpoint::parse(&opts.url).map_err(StartError::Usage)?;
    if opts.retry_interval < Duration::from_millis(10) {
        return Err(StartError::Usage(
            "--retry-interval must be at least 0.01 seconds".into(),
        ));
    }
    let trust = match (&opts.cacert, opts.insecure) {
        (Some(_), true) => {
            return Err(StartError::Usage(
                "--cacert and --insecure exclude each other".into(),
            ))
        }
        (Some(file), false) => Trust::CaFile(file.clone()),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::System,
    };
    let password = read_password(opts.password_file.as_deref())?;
    let client = Client::new(endpoint, &trust).map_err(StartError::Usage)?;
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| StartError::Io(format!("cannot create {}: {e}", opts.out.display())))?;

    let (csr_text, key) = match &opts.source {
        CsrSource::File(path) => (read_csr(path)?, None),
        CsrSource::Key {
            path,
            subject,
            key_type,
        } => {
            let (key, text) = key_and_csr(path, subject.as_deref(), *key_type, &opts.out)?;
            (text, Some(key))
        }
    };
    // The BMC checks again with its own policy; this catches what no policy accepts before
    // anything goes over the network, and gives the key the answer must match.
    let valid = csr::validate(&csr_text, &lenient_policy()).map_err(|e| {
        StartError::Failed(format!(
            "the CSR was not sent (checked here first): {}.{}: {e}; fix the CSR",
            crate::error::ERROR_PREFIX,
            e.dbus_name()
        ))
    })?;

    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut auth = Auth::start(&client, opts.auth, &opts.user, password, deadline)?;
    let answer = sign_until_done(&client, &mut auth, &csr_text, &opts, deadline);
    auth.end(&client);
    let data = answer?;

    let leaf = verify_answer(&valid, key.as_ref(), &data)?;
    write_chain(&opts.out, &data)?;
    let root = X509::from_pem(pem_blocks(&data)[1].as_bytes())
        .map_err(|e| StartError::Failed(format!("ca.crt: {e}")))?;
    println!(
        "client.crt: {}, valid until {}, issued by {}",
        csr::subject_for_log(leaf.subject_name()),
        leaf.not_after(),
        csr::subject_for_log(root.subject_name())
    );
    println!(
        "wrote chain.pem client.crt ca.crt into {}",
        opts.out.display()
    );
    Ok(())
}

/// What the local check accepts: anything the service could be configured to accept.
fn lenient_policy() -> Policy {
    Policy {
        key_types: KeyType::ALL.to_vec(),
        max_sans: usize::MAX,
        // bmcweb's request body limit.
        max_csr_bytes: 1 << 20,
    }
}

fn read_password(file: Option<&Path>) -> Result<String, StartError> {
    let mut password = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            StartError::Usage(format!(
                "cannot read the password file {}: {e}",
                path.display()
            ))
        })?,
        None => std::env::var(PASSWORD_ENV).map_err(|_| {
            StartError::Usage(format!(
                "no password: give --password-file <file> or set {PASSWORD_ENV} \
                 (a password on the command line would show in ps)"
            ))
        })?,
    };
    // `echo secret > file` adds a newline that is not part of the password.
    if password.ends_with('\n') {
        password.pop();
        if password.ends_with('\r') {
            password.pop();
        }
    }
    if password.is_empty() {
        return Err(StartError::Usage("the password is empty".into()));
    }
    Ok(password)
}

fn read_csr(path: &Path) -> Result<String, StartError> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| StartError::Io(format!("cannot read the CSR from stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| StartError::Io(format!("cannot read {}: {e}", path.display())))
    }
}

/// Parses an OpenSSL-style subject, `/CN=hmc01/O=Example HMC`; `\/` is a literal slash.
pub fn parse_subject(text: &str) -> Result<X509Name, String> {
    let usage = |why: String| format!("--subject {why}; expected /CN=name[/O=org...]");
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| usage("must start with /".into()))?;
    let mut parts = vec![String::new()];
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => parts.last_mut().expect("never empty").push(next),
                None => return Err(usage("ends in a backslash".into())),
            },
            '/' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    let mut name = X509NameBuilder::new().map_err(|e| e.to_string())?;
    for part in parts {
        let (field, value) = part
            .split_once('=')
            .filter(|(f, v)| !f.is_empty() && !v.is_empty())
            .ok_or_else(|| usage(format!("has an entry without field=value: {:?}", part)))?;
        name.append_entry_by_text(field, value)
            .map_err(|_| usage(format!("has an unknown field {field:?}")))?;
    }
    Ok(name.build())
}

/// `/CN=<this host's name>`: what a console is known by.
fn default_subject() -> Result<X509Name, StartError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        return Err(StartError::Usage(
            "cannot find this host's name for the CSR subject; give --subject /CN=<name>".into(),
        ));
    }
    let mut name = X509NameBuilder::new().map_err(|e| StartError::Failed(e.to_string()))?;
    name.append_entry_by_nid(Nid::COMMONNAME, &host)
        .map_err(|e| StartError::Usage(format!("the host name cannot be a CN: {e}")))?;
    Ok(name.build())
}

fn generate_key(kind: KeyType) -> Result<PKey<Private>, openssl::error::ErrorStack> {
    let ec = |nid| {
        let group = EcGroup::from_curve_name(nid)?;
        PKey::from_ec_key(EcKey::generate(&group)?)
    };
    match kind {
        KeyType::Rsa2048 => PKey::from_rsa(Rsa::generate(2048)?),
        KeyType::Rsa3072 => PKey::from_rsa(Rsa::generate(3072)?),
        KeyType::Rsa4096 => PKey::from_rsa(Rsa::generate(4096)?),
        KeyType::P256 => ec(Nid::X9_62_PRIME256V1),
        KeyType::P384 => ec(Nid::SECP384R1),
    }
}

fn make_csr(key: &PKey<Private>, subject: &X509Name) -> Result<String, openssl::error::ErrorStack> {
    let digest = if key.id() == openssl::pkey::Id::EC && key.bits() > 256 {
        MessageDigest::sha384()
    } else {
        MessageDigest::sha256()
    };
    let mut req = X509ReqBuilder::new()?;
    req.set_version(0)?;
    req.set_subject_name(subject)?;
    req.set_pubkey(key)?;
    req.sign(key, digest)?;
    Ok(String::from_utf8_lossy(&req.build().to_pem()?).into_owned())
}

/// The CSR already in `csr_path` if it is for `key` and `subject`: sending the same CSR again
/// lets the BMC attach to the request still in flight, or answer from its cache.
fn reusable_csr(csr_path: &Path, key: &PKey<Private>, subject: &X509Name) -> Option<String> {
    let text = std::fs::read_to_string(csr_path).ok()?;
    let req = X509Req::from_pem(text.as_bytes()).ok()?;
    let same_key = req.public_key().ok()?.public_eq(key);
    let same_subject = req.subject_name().to_der().ok()? == subject.to_der().ok()?;
    (same_key && same_subject).then_some(text)
}

/// Reads the key at `path`, or creates it (mode 0600); then returns it with a CSR for it,
/// written to `<out>/client.csr`.
fn key_and_csr(
    path: &Path,
    subject: Option<&str>,
    kind: KeyType,
    out: &Path,
) -> Result<(PKey<Private>, String), StartError> {
    let subject = match subject {
        Some(s) => parse_subject(s).map_err(StartError::Usage)?,
        None => default_subject()?,
    };
    let csr_path = out.join("client.csr");
    let key = match std::fs::read(path) {
        Ok(pem) => {
            // An encrypted key would make OpenSSL prompt on the terminal; refuse it instead.
            let key = PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|_| {
                StartError::Usage(format!(
                    "{} is not an unencrypted PEM private key",
                    path.display()
                ))
            })?;
            if let Some(text) = reusable_csr(&csr_path, &key, &subject) {
                return Ok((key, text));
            }
            key
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key(kind)
                .map_err(|e| StartError::Failed(format!("cannot create a {kind} key: {e}")))?;
            let pem = key
                .private_key_to_pem_pkcs8()
                .map_err(|e| StartError::Failed(format!("cannot encode the key: {e}")))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| StartError::Io(format!("cannot create {}: {e}", dir.display())))?;
            }
            write_file_atomically(path, &pem, 0o600)
                .map_err(|e| StartError::Io(format!("cannot write {}: {e}", path.display())))?;
            key
        }
        Err(e) => {
            return Err(StartError::Io(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let text = make_csr(&key, &subject)
        .map_err(|e| StartError::Failed(format!("cannot create the CSR: {e}")))?;
    write_file_atomically(&csr_path, text.as_bytes(), 0o644)
        .map_err(|e| StartError::Io(format!("cannot write {}: {e}", csr_path.display())))?;
    Ok((key, text))
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn login_failed(user: &str) -> StartError {
    StartError::Failed(format!(
        "login failed for user {}: the BMC answered HTTP 401 Unauthorized; check --user and \
         the password",
        Escaped(user)
    ))
}

fn network(client: &Client, e: HttpError) -> StartError {
    StartError::Failed(format!("{}: {e}", client.endpoint()))
}

/// The credentials on each request.
enum Auth {
    Basic {
        header: String,
    },
    Session {
        user: String,
        password: String,
        token: Option<String>,
    },
}

impl Auth {
    fn start(
        client: &Client,
        mode: AuthMode,
        user: &str,
        password: String,
        deadline: Instant,
    ) -> Result<Self, StartError> {
        Ok(match mode {
            AuthMode::Basic => Auth::Basic {
                header: format!(
                    "Basic {}",
                    openssl::base64::encode_block(format!("{user}:{password}").as_bytes())
                ),
            },
            AuthMode::Session => {
                let mut auth = Auth::Session {
                    user: user.to_string(),
                    password,
                    token: None,
                };
                auth.login(client, deadline)?;
                auth
            }
        })
    }

    fn login(&mut self, client: &Client, deadline: Instant) -> Result<(), StartError> {
        let Auth::Session {
            user,
            password,
            token,
        } = self
        else {
            return Ok(());
        };
        let body = serde_json::json!({"username": user, "password": password}).to_string();
        let r = client
            .send(
                "POST",
                "/login",
                &[],
                Some(("application/json", body.as_bytes())),
                deadline,
            )
            .map_err(|e| match e {
                HttpError::Timeout => StartError::Failed(format!(
                    "{}: no answer to the login before the timeout",
                    client.endpoint()
                )),
                e => network(client, e),
            })?;
        match r.status {
            200 => {}
            401 => return Err(login_failed(user)),
            _ => {
                return Err(StartError::Failed(format!(
                    "login failed: {}",
                    http_failure(&r, &json(&r))
                )))
            }
        }
        let t = json(&r)
            .and_then(|v| v.get("token")?.as_str().map(str::to_string))
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                StartError::Failed("the BMC's login answer carries no usable token".into())
            })?;
        *token = Some(t);
        Ok(())
    }

    fn header(&self) -> (&'static str, &str) {
        match self {
            Auth::Basic { header } => ("Authorization", header),
            Auth::Session { token, .. } => ("X-Auth-Token", token.as_deref().unwrap_or("")),
        }
    }

    /// Ends the session, if there is one; a failure is only reported, because the session
    /// expires on the BMC by itself.
    fn end(&mut self, client: &Client) {
        let Auth::Session { token, .. } = self else {
            return;
        };
        let Some(t) = token.take() else { return };
        let result = client.send(
            "POST",
            "/logout",
            &[("X-Auth-Token", &t)],
            Some(("application/json", b"{}")),
            Instant::now() + LOGOUT_TIMEOUT,
        );
        match result {
            Ok(r) if r.status == 200 => {}
            Ok(r) => eprintln!(
                "vmi-cert-exchange: logging out: the BMC answered HTTP {} {}; the session \
                 expires on its own",
                r.status,
                Escaped(&r.reason)
            ),
            Err(e) => {
                eprintln!("vmi-cert-exchange: logging out: {e}; the session expires on its own")
            }
        }
    }
}

/// An answer that says "not now".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Later {
    /// The error name (or HTTP status) and bmcweb's message.
    pub what: String,
    /// What it means for the console, said when the time is up.
    pub advice: &'static str,
}

/// What one answer to `SignCSR` means for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain as bmcweb returned it.
    Signed(String),
    /// Send the same CSR again after a pause.
    Retry(Later),
    /// The credentials were refused.
    Unauthorized,
    /// Stop; the message says why and what to do.
    Fail(String),
}

fn json(r: &Response) -> Option<Value> {
    serde_json::from_slice(&r.body).ok()
}

/// bmcweb's error fields: `data.description` and `message`.
fn error_fields(body: &Option<Value>) -> (Option<String>, Option<String>) {
    let get = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| Escaped(s).to_string());
    match body {
        Some(v) => (
            get(v.get("data").and_then(|d| d.get("description"))),
            get(v.get("message")),
        ),
        None => (None, None),
    }
}

/// `HTTP <status> <reason>: <description> (<message>)`, leaving out what bmcweb did not say
/// or only repeated.
fn http_failure(r: &Response, body: &Option<Value>) -> String {
    let mut text = format!("the BMC answered HTTP {}", r.status);
    if !r.reason.is_empty() {
        text.push_str(&format!(" {}", Escaped(&r.reason)));
    }
    let (description, message) = error_fields(body);
    if let Some(d) = &description {
        text.push_str(&format!(": {d}"));
    }
    if let Some(m) = message.filter(|m| !m.starts_with(&r.status.to_string())) {
        text.push_str(&format!(" ({m})"));
    }
    if body.is_none() && !r.body.is_empty() {
        text.push_str(&format!(" and {} bytes that are not JSON", r.body.len()));
    }
    text
}

/// Interprets one answer to the `SignCSR` POST. The D-Bus error names and what a console does
/// about each are in README.md; bmcweb's own refusals are in reference/bmcweb.md.
pub fn classify(r: &Response, user: &str) -> Verdict {
    let body = json(r);
    let later = |what: String, advice| Verdict::Retry(Later { what, advice });
    match r.status {
        200 => {
            let ok = body.as_ref().and_then(|v| {
                (v.get("status")?.as_str()? == "ok").then_some(())?;
                v.get("data")?.as_str().map(str::to_string)
            });
            match ok {
                Some(data) => Verdict::Signed(data),
                None if body
                    .as_ref()
                    .and_then(|v| v.get("data"))
                    .is_some_and(Value::is_array) =>
                {
                    Verdict::Fail(
                        "the BMC answered a list instead of one certificate chain: bmcweb called \
                         SignCSR on more than one D-Bus service (a connection of the service owns \
                         more than one name)"
                            .into(),
                    )
                }
                None => Verdict::Fail(
                    "the BMC answered HTTP 200 without a certificate chain string in data".into(),
                ),
            }
        }
        400 => {
            let (description, message) = error_fields(&body);
            let Some(name) = description else {
                return Verdict::Fail(http_failure(r, &body));
            };
            let message = message.unwrap_or_default();
            let what = format!("{name}: {message}");
            match name.strip_prefix(ERROR).unwrap_or(&name) {
                "Unavailable" | "org.freedesktop.DBus.Error.NoReply" => later(
                    what,
                    "the hypervisor did not sign in time; retry later with the same CSR",
                ),
                "TooManyResources" => later(
                    what,
                    "the BMC is busy with other signing requests; retry later",
                ),
                "NoCACertificate" => later(
                    what,
                    "the hypervisor has not provided its root certificate yet; retry once the \
                     host is running",
                ),
                "InvalidArgument" | "NotAllowed" => {
                    Verdict::Fail(format!("the BMC refused the CSR: {what}; fix the CSR"))
                }
                "InternalFailure" => Verdict::Fail(format!(
                    "{what}; the hypervisor's answer was unusable and nothing was returned; \
                     report it to the BMC's administrator"
                )),
                "Invalid method arg type" => Verdict::Fail(format!(
                    "{}; bmcweb from 76c2ad6444 (2026-01-30) on fails every REST method call \
                     that takes an argument: the BMC's bmcweb needs \
                     0001-openbmc_rest-pass-method-arguments-from-data-again.patch (README)",
                    http_failure(r, &body)
                )),
                _ => Verdict::Fail(http_failure(r, &body)),
            }
        }
        401 => Verdict::Unauthorized,
        403 => Verdict::Fail(format!(
            "user {} may not call SignCSR (HTTP 403 Forbidden): it needs the Administrator role",
            Escaped(user)
        )),
        404 => Verdict::Fail(format!(
            "the BMC has no {SIGN_PATH} (HTTP 404 Not Found): the vmi-cert-exchange service is \
             not running there, or its bmcweb lacks the D-Bus REST API (-Drest=enabled)"
        )),
        // A proxy or a restarting bmcweb: worth another try.
        502..=504 => later(
            http_failure(r, &body),
            "the BMC's web server was not ready; retry later with the same CSR",
        ),
        _ => Verdict::Fail(http_failure(r, &body)),
    }
}

/// Posts the CSR until it is signed, refused, or the deadline leaves no room for another try.
fn sign_until_done(
    client: &Client,
    auth: &mut Auth,
    csr_text: &str,
    opts: &RestSignOptions,
    deadline: Instant,
) -> Result<String, StartError> {
    let body = serde_json::json!({ "data": [csr_text] }).to_string();
    let mut pause = opts.retry_interval;
    let mut attempts = 0u32;
    let mut logged_in_again = false;
    let mut last: Option<Later> = None;
    loop {
        attempts += 1;
        let (name, value) = auth.header();
        let sent = client.send(
            "POST",
            SIGN_PATH,
            &[(name, value)],
            Some(("application/json", body.as_bytes())),
            deadline,
        );
        let r = match sent {
            Ok(r) => r,
            Err(HttpError::Timeout) => {
                return Err(StartError::Failed(match last {
                    Some(l) => format!(
                        "{}; {} (no answer to attempt {attempts} within the --timeout of {})",
                        l.what,
                        l.advice,
                        secs(opts.timeout)
                    ),
                    None => format!(
                        "{}: no answer within the --timeout of {}",
                        client.endpoint(),
                        secs(opts.timeout)
                    ),
                }))
            }
            Err(e) => return Err(network(client, e)),
        };
        match classify(&r, &opts.user) {
            Verdict::Signed(data) => return Ok(data),
            Verdict::Fail(msg) => return Err(StartError::Failed(msg)),
            Verdict::Unauthorized => match auth {
                // bmcweb ends idle sessions; one new login covers a long wait.
                Auth::Session { .. } if !logged_in_again => {
                    logged_in_again = true;
                    attempts -= 1;
                    auth.login(client, deadline)?;
                }
                Auth::Session { user, .. } => {
                    return Err(StartError::Failed(format!(
                        "the BMC refused the session of user {} (HTTP 401 Unauthorized) right \
                         after login",
                        Escaped(user)
                    )))
                }
                Auth::Basic { .. } => return Err(login_failed(&opts.user)),
            },
            Verdict::Retry(later) => {
                if Instant::now() + pause >= deadline {
                    return Err(StartError::Failed(format!(
                        "{}; {} (gave up after {attempts} attempt{} within the --timeout of {})",
                        later.what,
                        later.advice,
                        if attempts == 1 { "" } else { "s" },
                        secs(opts.timeout)
                    )));
                }
                eprintln!(
                    "vmi-cert-exchange: {}; retrying the same CSR in {}",
                    later.what,
                    secs(pause)
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
                last = Some(later);
            }
        }
    }
}

/// Checks the answer as the BMC did: a client certificate for the CSR's (and our) key that
/// verifies under the root that came with it. Returns the leaf.
fn verify_answer(
    csr: &ValidCsr,
    key: Option<&PKey<Private>>,
    data: &str,
) -> Result<X509, StartError> {
    let bad = |why: String| {
        StartError::Failed(format!(
            "the BMC's answer does not verify, nothing was written: {why}"
        ))
    };
    let blocks = pem_blocks(data);
    if blocks.len() != 2 {
        return Err(bad(format!(
            "it holds {} PEM blocks; expected the client certificate and the root",
            blocks.len()
        )));
    }
    let answer = Answer {
        certificate: blocks[0].clone(),
        root: blocks[1].clone(),
    };
    chain::verify(csr, &answer, CLOCK_SKEW).map_err(|e| bad(e.to_string()))?;
    let leaf = X509::from_pem(blocks[0].as_bytes()).map_err(|e| bad(e.to_string()))?;
    if let Some(key) = key {
        let same = leaf.public_key().map(|k| k.public_eq(key)).unwrap_or(false);
        if !same {
            return Err(bad("client.crt is not for our key".into()));
        }
    }
    Ok(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, reason: &str, body: &str) -> Response {
        Response {
            status,
            reason: reason.into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    fn bmcweb_error(status: u16, reason: &str, description: &str, message: &str) -> Response {
        let body = serde_json::json!({
            "data": {"description": description},
            "message": message,
            "status": "error"
        });
        answer(
            status,
            reason,
            &serde_json::to_string_pretty(&body).unwrap(),
        )
    }

    fn fail(r: &Response) -> String {
        match classify(r, "admin") {
            Verdict::Fail(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_recorded_bmcweb_answers() {
        assert_eq!(
            classify(
                &answer(
                    200,
                    "OK",
                    "{\n    \"data\": \"CERT:hello\",\n    \"message\": \"200 OK\",\n    \"status\": \"ok\"\n}"
                ),
                "admin"
            ),
            Verdict::Signed("CERT:hello".into())
        );
        assert_eq!(
            fail(&bmcweb_error(
                405,
                "Method Not Allowed",
                "Method not allowed",
                "405 Method Not Allowed"
            )),
            "the BMC answered HTTP 405 Method Not Allowed: Method not allowed"
        );
        assert_eq!(
            fail(&bmcweb_error(
                415,
                "Unsupported Media Type",
                "Content-type header is missing or invalid",
                "415 Unsupported Media Type"
            )),
            "the BMC answered HTTP 415 Unsupported Media Type: Content-type header is missing or invalid"
        );
        assert_eq!(
            fail(&bmcweb_error(
                400,
                "Bad Request",
                "No JSON object could be decoded",
                "400 Bad Request"
            )),
            "the BMC answered HTTP 400 Bad Request: No JSON object could be decoded"
        );
        assert!(fail(&bmcweb_error(
            400,
            "Bad Request",
            "Invalid method arg type",
            "400 Bad Request"
        ))
        .contains("76c2ad6444"));
        assert_eq!(
            fail(&bmcweb_error(
                400,
                "Bad Request",
                "xyz.openbmc_project.Common.Error.InvalidArgument",
                "The argument is invalid"
            )),
            "the BMC refused the CSR: xyz.openbmc_project.Common.Error.InvalidArgument: The \
             argument is invalid; fix the CSR"
        );
        assert_eq!(
            classify(
                &bmcweb_error(
                    400,
                    "Bad Request",
                    "org.freedesktop.DBus.Error.NoReply",
                    "Method call timed out"
                ),
                "admin"
            ),
            Verdict::Retry(Later {
                what: "org.freedesktop.DBus.Error.NoReply: Method call timed out".into(),
                advice: "the hypervisor did not sign in time; retry later with the same CSR",
            })
        );
        for name in ["Unavailable", "TooManyResources", "NoCACertificate"] {
            assert!(matches!(
                classify(
                    &bmcweb_error(400, "Bad Request", &format!("{ERROR}{name}"), "x"),
                    "admin"
                ),
                Verdict::Retry(_)
            ));
        }
        assert_eq!(
            classify(&answer(401, "Unauthorized", ""), "admin"),
            Verdict::Unauthorized
        );
    }

    #[test]
    fn server_text_is_escaped() {
        let m = fail(&bmcweb_error(
            400,
            "Bad Request",
            &format!("{ERROR}NotAllowed"),
            "bad\n\u{1b}[31m",
        ));
        assert!(!m.contains('\n') && !m.contains('\u{1b}'), "{m}");
    }

    #[test]
    fn parses_subjects() {
        let name = parse_subject("/O=Example HMC/CN=hmc\\/01").unwrap();
        assert_eq!(csr::subject_for_log(&name), "O=Example HMC,CN=hmc/01");
        for bad in ["CN=x", "/CN=", "/CN=x/", "/NOPE=x", "/CN=x\\"] {
            assert!(parse_subject(bad).is_err(), "{bad}");
        }
    }
}
