//! `rest-sign` against a local HTTPS server that answers like bmcweb (reference/bmcweb.md:
//! status codes, pretty-printed JSON bodies, the login flow) and forwards `SignCSR` to the real
//! service on a private bus. Everything runs on 127.0.0.1; the answers are checked with the
//! openssl command-line tool.
#![cfg(feature = "rest-client")]

mod common;

use std::{
    collections::{HashSet, VecDeque},
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::*;
use openssl::{
    ec::{EcGroup, EcKey},
    nid::Nid,
    pkey::PKey,
    ssl::{SslAcceptor, SslMethod, SslStream},
};
use serde::Serialize;
use serde_json::{json, Value};
use vmi_cert_exchange::{
    bus::PrivateBus,
    ca::SoftCa,
    rest::http::{Client, Endpoint, Trust},
};

const SIGN_PATH: &str = "/xyz/openbmc_project/HMC/VMInterface/action/SignCSR";
const USER: &str = "admin";
const PASSWORD: &str = "s3cret pass-Phrase";

/// A canned bmcweb error answer.
#[derive(Clone, Debug)]
struct Canned {
    status: u16,
    description: String,
    message: String,
}

fn dbus_error(name: &str, message: &str) -> Canned {
    Canned {
        status: 400,
        description: name.into(),
        message: message.into(),
    }
}

fn unavailable() -> Canned {
    dbus_error(
        &common("Unavailable"),
        "The service is temporarily unavailable.",
    )
}

/// How the server frames its answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Framing {
    #[default]
    ContentLength,
    Chunked,
    /// Neither header: the body ends with the connection.
    Eof,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SignPost {
    /// "token" or "basic".
    auth: &'static str,
    csr: String,
}

/// What the server saw and what it is told to do.
#[derive(Default)]
struct State {
    tokens: HashSet<String>,
    logins: usize,
    failed_logins: usize,
    logouts: usize,
    unauthorized: usize,
    handshake_failures: usize,
    /// Every authenticated, well-formed SignCSR request.
    sign_posts: Vec<SignPost>,
    /// Answered, in order, before anything is forwarded to the service.
    inject: VecDeque<Canned>,
    /// Answered to every SignCSR request once `inject` is empty.
    inject_forever: Option<Canned>,
    /// The `data` of every 200 answer to SignCSR.
    answers: Vec<String>,
    framing: Framing,
    /// Ends every session at the next SignCSR request, as bmcweb does when one times out.
    expire_sessions: bool,
}

/// The fake bmcweb. Dropping it stops the accept loop.
struct Bmc {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    ca_file: PathBuf,
    accept: Option<JoinHandle<()>>,
}

impl Bmc {
    /// Listens on 127.0.0.1 before returning, so a client may connect at once.
    fn start(dir: &Path, conn: zbus::Connection) -> Bmc {
        let ca = SoftCa::generate_named("Test BMC HTTPS CA").unwrap();
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let cert = ca.issue_server(&key, "localhost").unwrap();
        let ca_file = dir.join("bmc-https-ca.pem");
        std::fs::write(&ca_file, ca.root_pem()).unwrap();
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        acceptor.set_private_key(&key).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        let acceptor = Arc::new(acceptor.build());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::runtime::Handle::current();
        let accept = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for tcp in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(tcp) = tcp else { continue };
                    let (acceptor, state, conn, handle) = (
                        acceptor.clone(),
                        state.clone(),
                        conn.clone(),
                        handle.clone(),
                    );
                    std::thread::spawn(move || serve_one(tcp, &acceptor, &state, &conn, &handle));
                }
            })
        };
        Bmc {
            addr,
            state,
            stop,
            ca_file,
            accept: Some(accept),
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request<R: BufRead>(r: &mut R) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.trim_end().split(' ');
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// bmcweb's error body.
fn error_body(description: &str, message: &str) -> Value {
    json!({"data": {"description": description}, "message": message, "status": "error"})
}

/// bmcweb pretty-prints with four spaces.
fn pretty(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    v.serialize(&mut ser).unwrap();
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        415 => "Unsupported Media Type",
        _ => "Other",
    }
}

fn serve_one(
    tcp: TcpStream,
    acceptor: &SslAcceptor,
    state: &Mutex<State>,
    conn: &zbus::Connection,
    handle: &tokio::runtime::Handle,
) {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ssl = match acceptor.accept(tcp) {
        Ok(s) => s,
        Err(_) => {
            state.lock().unwrap().handshake_failures += 1;
            return;
        }
    };
    let mut reader = BufReader::new(ssl);
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    let (status, body) = route(&req, state, conn, handle);
    let framing = state.lock().unwrap().framing;
    respond(reader.get_mut(), status, body.as_ref(), framing);
}

fn respond(ssl: &mut SslStream<TcpStream>, status: u16, body: Option<&Value>, framing: Framing) {
    let body = body.map(pretty).unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n",
        reason(status)
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    let mut out = Vec::new();
    match framing {
        Framing::ContentLength => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&body);
        }
        Framing::Chunked => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
            let half = body.len() / 2;
            for chunk in [&body[..half], &body[half..]] {
                if !chunk.is_empty() {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Framing::Eof => {
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&body);
        }
    }
    let _ = ssl.write_all(&out);
    let _ = ssl.flush();
    let _ = ssl.shutdown();
}

fn route(
    req: &Request,
    state: &Mutex<State>,
    conn: &zbus::Connection,
    handle: &tokio::runtime::Handle,
) -> (u16, Option<Value>) {
    if req.method == "POST" && req.path == "/login" {
        let creds: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut s = state.lock().unwrap();
        if creds["username"] == USER && creds["password"] == PASSWORD {
            s.logins += 1;
            let token = rand_hex();
            s.tokens.insert(token.clone());
            return (200, Some(json!({ "token": token })));
        }
        s.failed_logins += 1;
        return (401, None);
    }

    let auth = {
        let mut s = state.lock().unwrap();
        if req.path == SIGN_PATH && std::mem::take(&mut s.expire_sessions) {
            s.tokens.clear();
        }
        let basic = format!(
            "Basic {}",
            openssl::base64::encode_block(format!("{USER}:{PASSWORD}").as_bytes())
        );
        if req
            .header("X-Auth-Token")
            .is_some_and(|t| s.tokens.contains(t))
        {
            Some("token")
        } else if req.header("Authorization") == Some(basic.as_str()) {
            Some("basic")
        } else {
            None
        }
    };
    let Some(auth) = auth else {
        state.lock().unwrap().unauthorized += 1;
        return (401, None);
    };

    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/logout") => {
            let mut s = state.lock().unwrap();
            if let Some(t) = req.header("X-Auth-Token") {
                s.tokens.remove(t);
            }
            s.logouts += 1;
            (
                200,
                Some(
                    json!({"data": format!("User '{USER}' logged out"), "message": "200 OK", "status": "ok"}),
                ),
            )
        }
        ("POST", "/xyz/openbmc_project/HMC/VMInterface/SignCSR") => (
            405,
            Some(error_body("Method not allowed", "405 Method Not Allowed")),
        ),
        ("POST", SIGN_PATH) => sign_csr(req, auth, state, conn, handle),
        _ => (404, None),
    }
}

fn sign_csr(
    req: &Request,
    auth: &'static str,
    state: &Mutex<State>,
    conn: &zbus::Connection,
    handle: &tokio::runtime::Handle,
) -> (u16, Option<Value>) {
    let bad = |d: &str| (400, Some(error_body(d, "400 Bad Request")));
    let json_type = req.header("Content-Type").is_some_and(|t| {
        t.eq_ignore_ascii_case("application/json")
            || t.eq_ignore_ascii_case("application/json; charset=utf-8")
    });
    if !json_type {
        return (
            415,
            Some(error_body(
                "Content-type header is missing or invalid",
                "415 Unsupported Media Type",
            )),
        );
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let Some(args) = body.get("data").and_then(Value::as_array) else {
        return bad("No JSON object could be decoded");
    };
    // bmcweb converts as many arguments as the introspected method takes and ignores the rest.
    let csr = match &args[..] {
        [] => return bad("Invalid method args"),
        [Value::String(s), ..] => s.clone(),
        [_, ..] => return bad("Invalid method arg type"),
    };
    let canned = {
        let mut s = state.lock().unwrap();
        s.sign_posts.push(SignPost {
            auth,
            csr: csr.clone(),
        });
        s.inject.pop_front().or_else(|| s.inject_forever.clone())
    };
    if let Some(c) = canned {
        return (c.status, Some(error_body(&c.description, &c.message)));
    }
    match handle.block_on(sign(conn, &csr)) {
        Ok(chain) => {
            state.lock().unwrap().answers.push(chain.clone());
            (
                200,
                Some(json!({"data": chain, "message": "200 OK", "status": "ok"})),
            )
        }
        Err((name, message)) => (400, Some(error_body(&name, &message))),
    }
}

/// A private bus, the service on it (emulator transport) and the fake bmcweb in front.
struct Setup {
    dir: tempfile::TempDir,
    bmc: Bmc,
    _svc: Service,
    _conn: zbus::Connection,
    _bus: PrivateBus,
}

impl Setup {
    async fn start(service_args: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let bus = private_bus();
        let conn = connect(&bus).await;
        let state = dir.path().join("service-state");
        let mut args = vec![
            "--transport",
            "emulator",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(service_args);
        let svc = Service::start(&bus, &conn, &args).await;
        let bmc = Bmc::start(dir.path(), conn.clone());
        Setup {
            dir,
            bmc,
            _svc: svc,
            _conn: conn,
            _bus: bus,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `rest-sign --url <the fake BMC>` with the password in the environment.
    fn client(&self) -> tokio::process::Command {
        self.client_at(&self.bmc.url())
    }

    fn client_at(&self, url: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("rest-sign")
            .arg("--url")
            .arg(url)
            .env("VMI_BMC_PASSWORD", PASSWORD)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

async fn finish(cmd: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("rest-sign finishes within 60 s")
        .unwrap()
}

async fn finish_with_stdin(cmd: &mut tokio::process::Command, input: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("rest-sign finishes within 60 s")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The files in `out` verify with the openssl tool, belong to `key`, and chain.pem is exactly
/// what the BMC answered.
fn check_out_dir(out: &Path, key: &Path, answered: &str) {
    let chain = read(&out.join("chain.pem"));
    assert_eq!(
        chain, answered,
        "chain.pem is the answer's data, byte for byte"
    );
    assert_eq!(
        read(&out.join("client.crt")) + &read(&out.join("ca.crt")),
        chain
    );
    let verified = openssl(&[
        "verify",
        "-CAfile",
        out.join("ca.crt").to_str().unwrap(),
        out.join("client.crt").to_str().unwrap(),
    ]);
    assert_eq!(
        verified,
        format!("{}: OK\n", out.join("client.crt").display())
    );
    check_chain_with_openssl(out, &chain, key);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_mode_gets_a_verified_chain_retrying_the_same_csr() {
    let s = Setup::start(&[]).await;
    s.bmc.state().inject = VecDeque::from([
        unavailable(),
        dbus_error(
            "org.freedesktop.DBus.Error.NoReply",
            "Method call timed out",
        ),
        unavailable(),
        dbus_error(
            &common("TooManyResources"),
            "too many signing requests in flight (64); retry later",
        ),
    ]);
    let key = s.path("console/private/client.key");
    let out = s.path("out");
    let run = || {
        let mut c = s.client();
        c.args([
            "--key",
            key.to_str().unwrap(),
            "--key-type",
            "p256",
            "--subject",
            "/O=Example HMC/CN=hmc01",
            "--out",
            out.to_str().unwrap(),
            "--cacert",
            s.bmc.ca_file.to_str().unwrap(),
            "--retry-interval",
            "0.01",
            "--timeout",
            "30",
        ]);
        c
    };
    let result = finish(&mut run()).await;
    assert_ok(&result);
    assert_eq!(
        text(&result.stderr),
        [
            "vmi-cert-exchange: xyz.openbmc_project.Common.Error.Unavailable: The service is temporarily unavailable.; retrying the same CSR in 0.01 s",
            "vmi-cert-exchange: org.freedesktop.DBus.Error.NoReply: Method call timed out; retrying the same CSR in 0.02 s",
            "vmi-cert-exchange: xyz.openbmc_project.Common.Error.Unavailable: The service is temporarily unavailable.; retrying the same CSR in 0.04 s",
            "vmi-cert-exchange: xyz.openbmc_project.Common.Error.TooManyResources: too many signing requests in flight (64); retry later; retrying the same CSR in 0.08 s",
            "",
        ]
        .join("\n")
    );
    let stdout = text(&result.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("client.crt: O=Example HMC,CN=hmc01, valid until ")
            && lines[0].ends_with(" GMT, issued by O=vmi-cert-exchange,CN=VMI Emulated Root CA"),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        format!("wrote chain.pem client.crt ca.crt into {}", out.display())
    );

    // The key: created here, PKCS#8, P-256, mode 0600, in a 0700 directory.
    let key_pem = read(&key);
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(key.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let key_text = openssl(&["pkey", "-in", key.to_str().unwrap(), "-noout", "-text"]);
    assert_eq!(key_text.lines().next(), Some("Private-Key: (256 bit)"));
    assert!(key_text.contains("ASN1 OID: prime256v1"), "{key_text}");

    let csr = read(&out.join("client.csr"));
    {
        let st = s.bmc.state();
        assert_eq!(st.sign_posts.len(), 5, "four refusals, then the signature");
        for post in &st.sign_posts {
            assert_eq!(
                post,
                &SignPost {
                    auth: "token",
                    csr: csr.clone()
                }
            );
        }
        assert_eq!((st.logins, st.logouts, st.failed_logins), (1, 1, 0));
        assert!(st.tokens.is_empty(), "the session was logged out");
        assert_eq!(st.answers.len(), 1);
        check_out_dir(&out, &key, &st.answers[0]);
    }
    let subject = openssl(&[
        "x509",
        "-in",
        out.join("client.crt").to_str().unwrap(),
        "-noout",
        "-subject",
    ]);
    assert_eq!(subject, "subject=O = Example HMC, CN = hmc01\n");
    let csr_subject = openssl(&[
        "req",
        "-in",
        out.join("client.csr").to_str().unwrap(),
        "-noout",
        "-subject",
    ]);
    assert_eq!(csr_subject, "subject=O = Example HMC, CN = hmc01\n");

    // Again with the same key: the key stays, the same CSR goes out again, and the service
    // answers it from its result cache with the same chain.
    let first_chain = read(&out.join("chain.pem"));
    let again = finish(&mut run()).await;
    assert_ok(&again);
    assert_eq!(text(&again.stderr), "");
    assert_eq!(read(&key), key_pem);
    assert_eq!(read(&out.join("client.csr")), csr);
    assert_eq!(read(&out.join("chain.pem")), first_chain);
    let st = s.bmc.state();
    assert_eq!(st.sign_posts.len(), 6);
    assert_eq!(st.sign_posts[5].csr, csr);
    assert_eq!((st.logins, st.logouts), (2, 2));
    assert!(st.tokens.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn csr_file_or_stdin_with_basic_auth_and_every_framing() {
    let s = Setup::start(&[]).await;
    let key = genpkey(s.dir.path(), "hmc", "rsa2048");
    let csr = req(&key, "/CN=hmc-basic", &[]);
    std::fs::write(s.path("hmc.csr"), &csr).unwrap();
    // A password file as `echo` writes it: the newline is not part of the password.
    std::fs::write(s.path("password"), format!("{PASSWORD}\n")).unwrap();

    for (n, framing) in [Framing::ContentLength, Framing::Chunked, Framing::Eof]
        .into_iter()
        .enumerate()
    {
        s.bmc.state().framing = framing;
        let out = s.path(&format!("out-{n}"));
        let mut c = s.client();
        c.args([
            "--auth",
            "basic",
            "--out",
            out.to_str().unwrap(),
            "--cacert",
            s.bmc.ca_file.to_str().unwrap(),
        ]);
        let result = if n == 2 {
            c.env_remove("VMI_BMC_PASSWORD").args([
                "--password-file",
                &s.p("password"),
                "--csr",
                "-",
            ]);
            finish_with_stdin(&mut c, &csr).await
        } else {
            c.args(["--csr", &s.p("hmc.csr")]);
            finish(&mut c).await
        };
        assert_ok(&result);
        assert_eq!(text(&result.stderr), "", "{framing:?}");
        let st = s.bmc.state();
        assert_eq!(
            st.sign_posts[n],
            SignPost {
                auth: "basic",
                csr: csr.clone()
            }
        );
        check_out_dir(&out, &key, &st.answers[n]);
        assert!(!out.join("client.csr").exists());
    }
    let st = s.bmc.state();
    assert_eq!((st.logins, st.logouts, st.unauthorized), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_argument_fails_at_once_with_the_services_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policy.toml");
    std::fs::write(&config, "[policy]\nkey_types = [\"rsa2048\"]\n").unwrap();
    let s = Setup::start(&["--config", config.to_str().unwrap()]).await;
    let key = genpkey(s.dir.path(), "hmc", "p256");
    std::fs::write(s.path("hmc.csr"), req(&key, "/CN=hmc-ec", &[])).unwrap();
    let out = s.path("out");
    let result = finish(s.client().args([
        "--csr",
        &s.p("hmc.csr"),
        "--out",
        out.to_str().unwrap(),
        "--cacert",
        s.bmc.ca_file.to_str().unwrap(),
        "--retry-interval",
        "0.01",
    ]))
    .await;
    assert_eq!(result.status.code(), Some(1));
    assert_eq!(
        text(&result.stderr),
        "vmi-cert-exchange: the BMC refused the CSR: xyz.openbmc_project.Common.Error.InvalidArgument: \
         EC P-256 keys are not accepted (allowed: RSA-2048); fix the CSR\n"
    );
    assert_eq!(text(&result.stdout), "");
    let st = s.bmc.state();
    assert_eq!(st.sign_posts.len(), 1, "no retry");
    assert_eq!((st.logins, st.logouts), (1, 1));
    assert!(!out.join("chain.pem").exists());
    assert!(!out.join("client.crt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verification_is_on_unless_insecure_is_asked_for() {
    let s = Setup::start(&[]).await;
    let key = genpkey(s.dir.path(), "hmc", "p256");
    std::fs::write(s.path("hmc.csr"), req(&key, "/CN=hmc-tls", &[])).unwrap();
    let base_at = |url: &str, out: &str| {
        let mut c = s.client_at(url);
        c.args(["--csr", &s.p("hmc.csr"), "--out", &s.p(out)]);
        c
    };
    let base = |out: &str| base_at(&s.bmc.url(), out);

    // Neither --cacert nor --insecure: the system store does not know the test CA.
    let result = finish(&mut base("out-default")).await;
    assert_eq!(result.status.code(), Some(1));
    assert_eq!(
        text(&result.stderr),
        format!(
            "vmi-cert-exchange: {}: certificate verification of the BMC failed (unable to get \
             local issuer certificate); give the CA that issued the BMC's certificate with \
             --cacert (or, on a test system, --insecure)\n",
            s.bmc.url()
        )
    );
    // A CA that did not issue the BMC's certificate.
    let other = s.path("other-ca.pem");
    std::fs::write(&other, SoftCa::generate().unwrap().root_pem()).unwrap();
    let result = finish(base("out-other").args(["--cacert", other.to_str().unwrap()])).await;
    assert_eq!(result.status.code(), Some(1));
    assert!(text(&result.stderr).contains("certificate verification of the BMC failed"));
    {
        let st = s.bmc.state();
        assert_eq!(st.handshake_failures, 2);
        assert_eq!((st.logins, st.sign_posts.len()), (0, 0));
    }
    assert!(!s.path("out-default/chain.pem").exists());

    // --insecure skips the check; the answer itself is still verified.
    let result = finish(base("out-insecure").arg("--insecure")).await;
    assert_ok(&result);
    check_out_dir(&s.path("out-insecure"), &key, &s.bmc.state().answers[0]);

    // The certificate names localhost too: host name verification passes with the name.
    let mut c = base_at(
        &format!("https://localhost:{}", s.bmc.addr.port()),
        "out-name",
    );
    c.args(["--cacert", s.bmc.ca_file.to_str().unwrap()]);
    let result = finish(&mut c).await;
    assert_ok(&result);
    check_out_dir(&s.path("out-name"), &key, &s.bmc.state().answers[1]);

    let st = s.bmc.state();
    assert_eq!(st.handshake_failures, 2);
    assert_eq!((st.logins, st.logouts), (2, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_a_login_failure_and_never_printed() {
    let s = Setup::start(&[]).await;
    let key = genpkey(s.dir.path(), "hmc", "p256");
    std::fs::write(s.path("hmc.csr"), req(&key, "/CN=hmc-login", &[])).unwrap();
    let wrong = "wr0ng-Passw0rd";
    for auth in ["session", "basic"] {
        let result = finish(
            s.client()
                .env("VMI_BMC_PASSWORD", wrong)
                .args([
                    "--auth",
                    auth,
                    "--csr",
                    &s.p("hmc.csr"),
                    "--out",
                    &s.p("out"),
                ])
                .args(["--cacert", s.bmc.ca_file.to_str().unwrap()]),
        )
        .await;
        assert_eq!(result.status.code(), Some(1), "{auth}");
        assert_eq!(
            text(&result.stderr),
            "vmi-cert-exchange: login failed for user admin: the BMC answered HTTP 401 \
             Unauthorized; check --user and the password\n"
        );
        assert!(!text(&result.stderr).contains(wrong));
    }
    {
        let st = s.bmc.state();
        assert_eq!((st.failed_logins, st.unauthorized, st.logins), (1, 1, 0));
        assert!(st.sign_posts.is_empty());
    }

    // No password at all is a usage error; a password flag does not exist.
    let result = finish(
        s.client()
            .env_remove("VMI_BMC_PASSWORD")
            .args(["--csr", &s.p("hmc.csr")]),
    )
    .await;
    assert_eq!(result.status.code(), Some(2));
    assert_eq!(
        text(&result.stderr),
        "vmi-cert-exchange: no password: give --password-file <file> or set VMI_BMC_PASSWORD \
         (a password on the command line would show in ps)\n"
    );
    let result = finish(
        s.client()
            .args(["--csr", &s.p("hmc.csr"), "--password", "x"]),
    )
    .await;
    assert_eq!(result.status.code(), Some(2));

    // A session that ends while we wait is renewed once, with the password we still hold.
    s.bmc.state().expire_sessions = true;
    let result = finish(s.client().args([
        "--csr",
        &s.p("hmc.csr"),
        "--out",
        &s.p("out"),
        "--cacert",
        s.bmc.ca_file.to_str().unwrap(),
    ]))
    .await;
    assert_ok(&result);
    let st = s.bmc.state();
    assert_eq!((st.logins, st.logouts, st.unauthorized), (2, 1, 2));
    assert_eq!(st.sign_posts.len(), 1);
    assert!(st.tokens.is_empty(), "the second session was logged out");
    check_out_dir(&s.path("out"), &key, &st.answers[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn gives_up_at_the_total_timeout_and_says_why() {
    let s = Setup::start(&[]).await;
    let key = genpkey(s.dir.path(), "hmc", "p256");
    std::fs::write(s.path("hmc.csr"), req(&key, "/CN=hmc-wait", &[])).unwrap();
    let cases = [
        (
            unavailable(),
            "xyz.openbmc_project.Common.Error.Unavailable: The service is temporarily \
             unavailable.; the hypervisor did not sign in time; retry later with the same CSR",
        ),
        (
            dbus_error(
                &common("NoCACertificate"),
                "the root certificate file /var/lib/ibm/bmcweb/RootCert is missing",
            ),
            "xyz.openbmc_project.Common.Error.NoCACertificate: the root certificate file \
             /var/lib/ibm/bmcweb/RootCert is missing; the hypervisor has not provided its root \
             certificate yet; retry once the host is running",
        ),
    ];
    let mut posts_before = 0;
    for (n, (canned, said)) in cases.into_iter().enumerate() {
        s.bmc.state().inject_forever = Some(canned);
        // Attempts at ~0 s and ~1 s; the next pause (2 s) would end past the 3 s budget. A slow
        // machine may manage fewer, so the count the client reports is checked against the
        // count the server saw, not against a number.
        let result = finish(s.client().args([
            "--csr",
            &s.p("hmc.csr"),
            "--out",
            &s.p("out"),
            "--cacert",
            s.bmc.ca_file.to_str().unwrap(),
            "--timeout",
            "3",
            "--retry-interval",
            "1",
        ]))
        .await;
        assert_eq!(result.status.code(), Some(1));
        let st = s.bmc.state();
        let attempts = st.sign_posts.len() - posts_before;
        posts_before = st.sign_posts.len();
        assert!(attempts >= 1);
        let stderr = text(&result.stderr);
        let plural = if attempts == 1 { "" } else { "s" };
        assert_eq!(
            stderr.lines().last().unwrap(),
            format!(
                "vmi-cert-exchange: {said} (gave up after {attempts} attempt{plural} within the \
                 --timeout of 3 s)"
            )
        );
        assert_eq!((st.logins, st.logouts), (n + 1, n + 1));
    }
    assert!(!s.path("out/chain.pem").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bmcweb_refusals_are_named_and_not_retried() {
    let s = Setup::start(&[]).await;
    let key = genpkey(s.dir.path(), "hmc", "p256");
    std::fs::write(s.path("hmc.csr"), req(&key, "/CN=hmc-refused", &[])).unwrap();
    let cases = [
        (
            Canned {
                status: 415,
                description: "Content-type header is missing or invalid".into(),
                message: "415 Unsupported Media Type".into(),
            },
            "the BMC answered HTTP 415 Unsupported Media Type: Content-type header is missing \
             or invalid"
                .to_string(),
        ),
        (
            Canned {
                status: 405,
                description: "Method not allowed".into(),
                message: "405 Method Not Allowed".into(),
            },
            "the BMC answered HTTP 405 Method Not Allowed: Method not allowed".to_string(),
        ),
        (
            Canned {
                status: 400,
                description: "Invalid method arg type".into(),
                message: "400 Bad Request".into(),
            },
            "the BMC answered HTTP 400 Bad Request: Invalid method arg type; bmcweb from \
             76c2ad6444 (2026-01-30) on fails every REST method call that takes an argument: \
             the BMC's bmcweb needs 0001-openbmc_rest-pass-method-arguments-from-data-again.patch \
             (README)"
                .to_string(),
        ),
        (
            dbus_error(
                &common("InternalFailure"),
                "the hypervisor returned a certificate for a different key than the CSR's",
            ),
            "xyz.openbmc_project.Common.Error.InternalFailure: the hypervisor returned a \
             certificate for a different key than the CSR's; the hypervisor's answer was \
             unusable and nothing was returned; report it to the BMC's administrator"
                .to_string(),
        ),
        (
            dbus_error(&common("NotAllowed"), "the CSR asks for CA capability"),
            "the BMC refused the CSR: xyz.openbmc_project.Common.Error.NotAllowed: the CSR asks \
             for CA capability; fix the CSR"
                .to_string(),
        ),
    ];
    for (n, (canned, said)) in cases.into_iter().enumerate() {
        s.bmc.state().inject = VecDeque::from([canned]);
        let result = finish(s.client().args([
            "--csr",
            &s.p("hmc.csr"),
            "--out",
            &s.p("out"),
            "--cacert",
            s.bmc.ca_file.to_str().unwrap(),
        ]))
        .await;
        assert_eq!(result.status.code(), Some(1));
        assert_eq!(text(&result.stderr), format!("vmi-cert-exchange: {said}\n"));
        let st = s.bmc.state();
        assert_eq!(st.sign_posts.len(), n + 1, "no retry");
        assert_eq!(st.logouts, n + 1);
    }

    // A CSR no policy accepts never reaches the BMC.
    std::fs::write(s.path("garbage.csr"), "hello\n").unwrap();
    let result = finish(s.client().args([
        "--csr",
        &s.p("garbage.csr"),
        "--cacert",
        s.bmc.ca_file.to_str().unwrap(),
    ]))
    .await;
    assert_eq!(result.status.code(), Some(1));
    let why = vmi_cert_exchange::csr::validate("hello\n", &Default::default()).unwrap_err();
    assert_eq!(
        text(&result.stderr),
        format!(
            "vmi-cert-exchange: the CSR was not sent (checked here first): \
             xyz.openbmc_project.Common.Error.InvalidArgument: {why}; fix the CSR\n"
        )
    );
    assert_eq!(s.bmc.state().logins, 5);
}

/// The fake answers what reference/bmcweb.md recorded, checked through the client's own HTTP
/// layer: the tests above are only as good as this server.
#[tokio::test(flavor = "multi_thread")]
async fn the_test_server_answers_like_bmcweb() {
    let s = Setup::start(&[]).await;
    let client = Client::new(
        Endpoint::parse(&s.bmc.url()).unwrap(),
        &Trust::CaFile(s.bmc.ca_file.clone()),
    )
    .unwrap();
    let client = Arc::new(client);
    let call = |path: &'static str,
                headers: Vec<(&'static str, String)>,
                body: Option<(&'static str, Vec<u8>)>| {
        let client = client.clone();
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            client
                .send(
                    "POST",
                    path,
                    &h,
                    body.as_ref().map(|(t, b)| (*t, &b[..])),
                    Instant::now() + Duration::from_secs(30),
                )
                .unwrap()
        })
    };
    let login = call(
        "/login",
        vec![],
        Some((
            "application/json",
            json!({"username": USER, "password": PASSWORD})
                .to_string()
                .into_bytes(),
        )),
    )
    .await
    .unwrap();
    assert_eq!(login.status, 200);
    assert_eq!(login.header("content-type"), Some("application/json"));
    let token = serde_json::from_slice::<Value>(&login.body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = || vec![("X-Auth-Token", token.clone())];
    let json_body = |v: Value| Some(("application/json", v.to_string().into_bytes()));

    let r = call(
        "/xyz/openbmc_project/HMC/VMInterface/SignCSR",
        auth(),
        json_body(json!({"data": ["x"]})),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.reason.as_str()), (405, "Method Not Allowed"));
    assert_eq!(
        text(&r.body),
        "{\n    \"data\": {\n        \"description\": \"Method not allowed\"\n    },\n    \
         \"message\": \"405 Method Not Allowed\",\n    \"status\": \"error\"\n}"
    );
    let cases = [
        (
            Some(("application/x-www-form-urlencoded", b"data=x".to_vec())),
            415,
            error_body(
                "Content-type header is missing or invalid",
                "415 Unsupported Media Type",
            ),
        ),
        (
            json_body(json!({"data": "x"})),
            400,
            error_body("No JSON object could be decoded", "400 Bad Request"),
        ),
        (
            json_body(json!({"data": []})),
            400,
            error_body("Invalid method args", "400 Bad Request"),
        ),
        (
            json_body(json!({"data": [["x"]]})),
            400,
            error_body("Invalid method arg type", "400 Bad Request"),
        ),
        (
            json_body(json!({"data": ["hello"]})),
            400,
            error_body(
                &common("InvalidArgument"),
                &vmi_cert_exchange::csr::validate("hello", &Default::default())
                    .unwrap_err()
                    .to_string(),
            ),
        ),
    ];
    for (body, status, expected) in cases {
        let r = call(SIGN_PATH, auth(), body).await.unwrap();
        assert_eq!(r.status, status);
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), expected);
    }
    let r = call(SIGN_PATH, vec![], json_body(json!({"data": ["x"]})))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = call("/logout", auth(), json_body(json!({}))).await.unwrap();
    assert_eq!(r.status, 200);
    let r = call(SIGN_PATH, auth(), json_body(json!({"data": ["x"]})))
        .await
        .unwrap();
    assert_eq!(r.status, 401, "the token ends with the session");
    let st = s.bmc.state();
    assert_eq!((st.logins, st.logouts, st.unauthorized), (1, 1, 2));
}
