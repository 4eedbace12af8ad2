//! Which bus to use, and a private `dbus-daemon` for the demo and the tests.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use zbus::{connection, fdo::DBusProxy, Connection};

use crate::{error::StartError, util::TempDir};

/// A bus to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    System,
    Session,
    Address(String),
}

impl Bus {
    /// `--address` overrides `--bus`.
    pub fn from_args(bus: &str, address: Option<&str>) -> Result<Self, StartError> {
        if let Some(a) = address {
            return Ok(Bus::Address(a.to_string()));
        }
        match bus {
            "system" => Ok(Bus::System),
            "session" => Ok(Bus::Session),
            other => Err(StartError::Usage(format!(
                "--bus must be system or session, not {other:?}"
            ))),
        }
    }

    /// Whether this is (or names) the system bus.
    pub fn is_system(&self) -> bool {
        match self {
            Bus::System => true,
            Bus::Session => false,
            Bus::Address(a) => {
                let configured = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok();
                a == "unix:path=/run/dbus/system_bus_socket"
                    || a == "unix:path=/var/run/dbus/system_bus_socket"
                    || configured.as_deref() == Some(a.as_str())
            }
        }
    }

    /// A connection builder; an unusable address shows up when it is built.
    pub fn builder(&self) -> Result<connection::Builder<'static>, StartError> {
        Ok(match self {
            Bus::System => connection::Builder::system(),
            Bus::Session => connection::Builder::session(),
            Bus::Address(a) => connection::Builder::address(a.as_str()),
        })
    }

    pub async fn connect(&self) -> Result<Connection, StartError> {
        self.builder()?
            .build()
            .await
            .map_err(|e| StartError::Connect(format!("{self}: {e}")))
    }
}

impl std::fmt::Display for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bus::System => f.write_str("the system bus"),
            Bus::Session => f.write_str("the session bus"),
            Bus::Address(a) => write!(f, "{a}"),
        }
    }
}

/// A `dbus-daemon` of our own, listening on a socket in a private directory, killed on drop.
pub struct PrivateBus {
    child: Child,
    address: String,
    dir: TempDir,
}

/// The allow-all policy of a private test bus.
pub const OPEN_POLICY: &str = r#"<policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>"#;

impl PrivateBus {
    /// A bus where anyone may own any name and call anything.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with_policy(OPEN_POLICY)
    }

    /// A bus with the given `<policy>`/`<include>` elements in its configuration.
    pub fn start_with_policy(policy: &str) -> std::io::Result<Self> {
        let dir = TempDir::new("vmi-bus")?;
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  {policy}
</busconfig>
"#,
                dir.path().display()
            ),
        )?;
        Self::spawn(&config, dir)
    }

    fn spawn(config: &Path, dir: TempDir) -> std::io::Result<Self> {
        let mut child = Command::new("dbus-daemon")
            // Its own process group: a Ctrl-C for whoever started it must not stop the bus
            // under them; they stop it when they are done.
            .process_group(0)
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start dbus-daemon: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if !line.trim().is_empty() => Ok(PrivateBus {
                child,
                address: line.trim().to_string(),
                dir,
            }),
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(std::io::Error::other(format!(
                    "dbus-daemon printed no address (exit status {status:?})"
                )))
            }
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bus(&self) -> Bus {
        Bus::Address(self.address.clone())
    }

    /// Stops the daemon now (as a crash of the system bus would), keeping its directory.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `name` has an owner on `conn`'s bus, driven by NameOwnerChanged: no polling.
pub async fn wait_for_name(conn: &Connection, name: &str) -> zbus::Result<()> {
    let dbus = DBusProxy::new(conn).await?;
    // Subscribe first, then ask: an owner that appears in between is seen either way.
    let mut changes = dbus
        .receive_name_owner_changed_with_args(&[(0, name)])
        .await?;
    if dbus.name_has_owner(name.try_into()?).await? {
        return Ok(());
    }
    while let Some(signal) = next(&mut changes).await {
        if signal.args().is_ok_and(|a| a.new_owner().is_some()) {
            return Ok(());
        }
    }
    Err(zbus::Error::Failure("the bus closed".into()))
}

/// The next item of a signal stream.
pub async fn next<S>(stream: &mut S) -> Option<S::Item>
where
    S: zbus::export::futures_core::Stream + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}
