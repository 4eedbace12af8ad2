//! Just enough HTTPS/1.1 to talk to bmcweb: one request per connection (`Connection: close`),
//! bodies sent with `Content-Length`, answers framed by `Content-Length`, chunked transfer
//! encoding or the end of the stream. Every step is bounded by one deadline, so a silent BMC
//! cannot hold the console past its `--timeout`.

use std::{
    fmt,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    path::Path,
    time::{Duration, Instant},
};

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};

/// bmcweb's request limit is 1 MB and a chain is a few KiB: anything far larger is not bmcweb.
const MAX_BODY: usize = 4 << 20;
const MAX_HEADER_LINE: usize = 16 << 10;
const MAX_HEADERS: usize = 100;

/// Where the BMC listens, from `https://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Name or address, IPv6 without brackets: what TLS checks the certificate against.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `https://host[:port][/]`. The paths are fixed by bmcweb, so a URL with a path is
    /// a mistake worth pointing out rather than silently dropping.
    pub fn parse(url: &str) -> Result<Self, String> {
        let usage = |why: &str| format!("--url {why}; expected https://host[:port]");
        let rest = url
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("https://"))
            .map(|_| &url[8..])
            .ok_or_else(|| usage("must start with https:// (bmcweb speaks only HTTPS)"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(usage("must not have a path"));
        }
        if rest.contains('@') {
            return Err(usage("must not carry a user; use --user"));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| usage("has an unclosed ["))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| usage("has text after the ]"))?,
                    ),
                ),
            }
        } else {
            match rest.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(usage("needs brackets around an IPv6 address"))
                }
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(usage("has no host"));
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| usage("has an invalid port"))?,
        };
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

/// Which certificates the BMC's may chain to.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's trust store.
    System,
    /// Only the CA certificates in this file.
    CaFile(std::path::PathBuf),
    /// No verification at all (`--insecure`).
    Insecure,
}

#[derive(Debug)]
pub enum HttpError {
    /// No TCP connection (name resolution, refused, unreachable).
    Connect(String),
    /// The BMC's certificate did not verify.
    CertificateVerification(String),
    /// Any other TLS failure.
    Tls(String),
    /// The deadline passed.
    Timeout,
    /// Reading or writing failed.
    Io(String),
    /// The answer is not HTTP/1.x as we can read it.
    Protocol(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "cannot connect: {e}"),
            HttpError::CertificateVerification(e) => write!(
                f,
                "certificate verification of the BMC failed ({e}); give the CA that issued \
                 the BMC's certificate with --cacert (or, on a test system, --insecure)"
            ),
            HttpError::Tls(e) => write!(f, "TLS failed: {e}"),
            HttpError::Timeout => f.write_str("no answer before the timeout"),
            HttpError::Io(e) => write!(f, "connection failed: {e}"),
            HttpError::Protocol(e) => write!(f, "not an HTTP answer we understand: {e}"),
        }
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTPS client for one endpoint.
pub struct Client {
    endpoint: Endpoint,
    connector: SslConnector,
    verify: bool,
}

impl Client {
    pub fn new(endpoint: Endpoint, trust: &Trust) -> Result<Self, String> {
        let tls = |e: openssl::error::ErrorStack| format!("cannot set up TLS: {e}");
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(tls)?;
        let verify = match trust {
            Trust::System => true,
            Trust::CaFile(path) => {
                load_ca_file(&mut b, path)?;
                true
            }
            Trust::Insecure => {
                b.set_verify(SslVerifyMode::NONE);
                false
            }
        };
        Ok(Client {
            endpoint,
            connector: b.build(),
            verify,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one request and reads the whole answer, all before `deadline`. `headers` must
    /// not contain CR or LF (the caller checks values that come from the network).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        deadline: Instant,
    ) -> Result<Response, HttpError> {
        let mut stream = self.connect(deadline)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: vmi-cert-exchange/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            self.endpoint.authority(),
            env!("CARGO_PKG_VERSION")
        );
        for (name, value) in headers {
            debug_assert!(!value.contains(['\r', '\n']));
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                head.push_str(&format!(
                    "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                    bytes.len()
                ));
                bytes
            }
            None => {
                head.push_str("Content-Length: 0\r\n");
                &[][..]
            }
        };
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream.set_deadline_timeout(true).map_err(io_error)?;
        stream
            .inner
            .write_all(&request)
            .and_then(|()| stream.inner.flush())
            .map_err(io_error)?;
        let mut reader = BufReader::new(stream);
        let response = read_response(&mut reader, method == "HEAD")?;
        // A polite close; the answer is complete, so a failure here changes nothing.
        let _ = reader.get_mut().inner.shutdown();
        Ok(response)
    }

    fn connect(&self, deadline: Instant) -> Result<DeadlineStream, HttpError> {
        let addrs: Vec<_> = (self.endpoint.host.as_str(), self.endpoint.port)
            .to_socket_addrs()
            .map_err(|e| HttpError::Connect(format!("{}: {e}", self.endpoint.host)))?
            .collect();
        let mut last = HttpError::Connect(format!("{} has no address", self.endpoint.host));
        let mut tcp = None;
        for addr in addrs {
            let left = remaining(deadline)?;
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) if is_timeout(&e) => last = HttpError::Timeout,
                Err(e) => last = HttpError::Connect(format!("{addr}: {e}")),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        let left = remaining(deadline)?;
        tcp.set_read_timeout(Some(left)).map_err(io_error)?;
        tcp.set_write_timeout(Some(left)).map_err(io_error)?;
        let mut config = self
            .connector
            .configure()
            .map_err(|e| HttpError::Tls(e.to_string()))?;
        if !self.verify {
            config.set_verify_hostname(false);
        }
        let ssl = config
            .connect(&self.endpoint.host, tcp)
            .map_err(|e| self.handshake_error(e))?;
        Ok(DeadlineStream {
            inner: ssl,
            deadline,
        })
    }

    fn handshake_error(&self, e: HandshakeError<TcpStream>) -> HttpError {
        match e {
            HandshakeError::SetupFailure(e) => HttpError::Tls(e.to_string()),
            HandshakeError::Failure(mid) | HandshakeError::WouldBlock(mid) => {
                let verdict = mid.ssl().verify_result();
                if self.verify && verdict.as_raw() != 0 {
                    return HttpError::CertificateVerification(verdict.error_string().into());
                }
                let error = mid.error();
                if error.io_error().is_some_and(is_timeout) {
                    return HttpError::Timeout;
                }
                HttpError::Tls(format!("handshake with {}: {error}", self.endpoint))
            }
        }
    }
}

fn load_ca_file(b: &mut openssl::ssl::SslConnectorBuilder, path: &Path) -> Result<(), String> {
    // Read it ourselves first: OpenSSL's own message for a missing file names no file.
    let text =
        std::fs::read(path).map_err(|e| format!("cannot read --cacert {}: {e}", path.display()))?;
    let certs = openssl::x509::X509::stack_from_pem(&text)
        .map_err(|_| format!("--cacert {} is not PEM certificates", path.display()))?;
    if certs.is_empty() {
        return Err(format!("--cacert {} holds no certificate", path.display()));
    }
    // Only this file: the system store stays out, so the BMC must chain to what was given.
    let mut store = openssl::x509::store::X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for cert in certs {
        store.add_cert(cert).map_err(|e| e.to_string())?;
    }
    b.set_verify_cert_store(store.build())
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(HttpError::Timeout)
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn io_error(e: std::io::Error) -> HttpError {
    if is_timeout(&e) {
        HttpError::Timeout
    } else {
        HttpError::Io(e.to_string())
    }
}

/// A TLS stream whose every read and write ends at the deadline: a socket timeout alone
/// restarts with each byte, so a BMC trickling bytes could otherwise stall us forever.
struct DeadlineStream {
    inner: SslStream<TcpStream>,
    deadline: Instant,
}

impl DeadlineStream {
    fn set_deadline_timeout(&mut self, write: bool) -> std::io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let tcp = self.inner.get_ref();
        tcp.set_read_timeout(Some(left))?;
        if write {
            tcp.set_write_timeout(Some(left))?;
        }
        Ok(())
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.set_deadline_timeout(false)?;
        self.inner.read(buf)
    }
}

/// Reads one CRLF- (or LF-) terminated line without the terminator.
fn read_line<R: BufRead>(r: &mut R) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let n = r
        .take(MAX_HEADER_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(io_error)?;
    if n == 0 {
        return Err(HttpError::Protocol("the connection closed early".into()));
    }
    if line.last() != Some(&b'\n') {
        return Err(HttpError::Protocol(if n > MAX_HEADER_LINE {
            "a header line is too long".into()
        } else {
            "the connection closed inside a line".into()
        }));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| HttpError::Protocol("a header is not UTF-8".into()))
}

fn read_response<R: BufRead>(r: &mut R, head_only: bool) -> Result<Response, HttpError> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError::Protocol(
                "the status line is not HTTP/1.x".into(),
            ));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|s| (100..1000).contains(s))
            .ok_or_else(|| HttpError::Protocol("the status code is not a number".into()))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            if headers.len() == MAX_HEADERS {
                return Err(HttpError::Protocol("too many headers".into()));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| HttpError::Protocol("a header has no colon".into()))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        // Interim answers (100 Continue and friends) precede the real one.
        if (100..200).contains(&status) {
            continue;
        }
        let mut response = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(response);
        }
        response.body = if response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            read_chunked(r)?
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| HttpError::Protocol("Content-Length is not a number".into()))?;
            if len > MAX_BODY {
                return Err(HttpError::Protocol(format!("the body is {len} bytes long")));
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    HttpError::Protocol("the body is shorter than its Content-Length".into())
                }
                _ => io_error(e),
            })?;
            body
        } else {
            let mut body = Vec::new();
            r.take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map_err(io_error)?;
            if body.len() > MAX_BODY {
                return Err(HttpError::Protocol("the body is too long".into()));
            }
            body
        };
        return Ok(response);
    }
}

fn read_chunked<R: BufRead>(r: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| HttpError::Protocol("a chunk size is not hexadecimal".into()))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(HttpError::Protocol("the body is too long".into()));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).map_err(io_error)?;
        if !read_line(r)?.is_empty() {
            return Err(HttpError::Protocol(
                "a chunk is longer than its size".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let ok = |url: &str, host: &str, port: u16| {
            assert_eq!(
                Endpoint::parse(url).unwrap(),
                Endpoint {
                    host: host.into(),
                    port
                },
                "{url}"
            )
        };
        ok("https://bmc", "bmc", 443);
        ok("HTTPS://bmc.example.com:8443/", "bmc.example.com", 8443);
        ok("https://192.0.2.1:443", "192.0.2.1", 443);
        ok("https://[2001:db8::1]", "2001:db8::1", 443);
        ok("https://[::1]:4443", "::1", 4443);
        for bad in [
            "http://bmc",
            "bmc",
            "https://",
            "https://bmc/redfish",
            "https://bmc:0",
            "https://bmc:x",
            "https://::1",
            "https://root@bmc",
            "https://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Endpoint::parse("https://[::1]:4443").unwrap().to_string(),
            "https://[::1]:4443"
        );
    }

    fn parse(raw: &str) -> Result<Response, HttpError> {
        read_response(&mut std::io::Cursor::new(raw.as_bytes().to_vec()), false)
    }

    #[test]
    fn reads_each_framing() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello+junk").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), &r.body[..]),
            (200, "OK", &b"hello"[..])
        );
        let r = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n\
             3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, &r.body[..]), (400, &b"abcde"[..]));
        let r = parse("HTTP/1.0 200 OK\nContent-Type: application/json\n\n{}\n").unwrap();
        assert_eq!(r.header("CONTENT-TYPE"), Some("application/json"));
        assert_eq!(&r.body[..], b"{}\n");
    }

    #[test]
    fn refuses_broken_answers() {
        for raw in [
            "",
            "SSH-2.0-OpenSSH\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(matches!(parse(raw), Err(HttpError::Protocol(_))), "{raw:?}");
        }
    }
}
