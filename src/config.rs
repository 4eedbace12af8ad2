//! Settings: built-in defaults, then the TOML file (`--config`), then command-line flags.

use std::{fmt, path::Path, str::FromStr, time::Duration};

use serde::Deserialize;

/// A key type a CSR may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    P256,
    P384,
}

impl KeyType {
    pub const ALL: [KeyType; 5] = [
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::P256,
        KeyType::P384,
    ];

    pub fn is_ec(self) -> bool {
        matches!(self, KeyType::P256 | KeyType::P384)
    }

    pub fn is_rsa(self) -> bool {
        !self.is_ec()
    }

    /// The spelling used in the configuration file.
    pub fn config_name(self) -> &'static str {
        match self {
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
            KeyType::P256 => "p256",
            KeyType::P384 => "p384",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Rsa2048 => "RSA-2048",
            KeyType::Rsa3072 => "RSA-3072",
            KeyType::Rsa4096 => "RSA-4096",
            KeyType::P256 => "EC P-256",
            KeyType::P384 => "EC P-384",
        })
    }
}

impl FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KeyType::ALL
            .into_iter()
            .find(|k| k.config_name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = KeyType::ALL.iter().map(|k| k.config_name()).collect();
                format!("unknown key type {s:?} (known: {})", names.join(", "))
            })
    }
}

impl<'de> Deserialize<'de> for KeyType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a CSR must satisfy (DESIGN.md section 3, step 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub key_types: Vec<KeyType>,
    pub max_sans: usize,
    pub max_csr_bytes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            key_types: KeyType::ALL.to_vec(),
            max_sans: 32,
            max_csr_bytes: 16 * 1024,
        }
    }
}

/// Timing and capacity of the request pipeline (DESIGN.md section 3, steps 3 and 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a caller waits before it is told `Unavailable` (stays under D-Bus's 25 s).
    pub sign_timeout: Duration,
    /// How long a request may keep going in the background.
    pub request_lifetime: Duration,
    /// How long a finished result is answered from the cache.
    pub result_ttl: Duration,
    /// Distinct requests in flight at once.
    pub max_in_flight: usize,
    /// How far in the future a returned leaf's notBefore may be.
    pub clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sign_timeout: Duration::from_secs(20),
            request_lifetime: Duration::from_secs(600),
            result_ttl: Duration::from_secs(600),
            max_in_flight: 64,
            clock_skew: Duration::from_secs(86400),
        }
    }
}

/// Everything the service needs besides its transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub policy: Policy,
    pub limits: Limits,
    pub validity_days: u32,
}

impl Settings {
    pub fn new() -> Self {
        Settings {
            validity_days: 365,
            ..Default::default()
        }
    }
}

/// The TOML file. Every key is optional; unknown keys are an error so a typo is never ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub emulator: EmulatorSection,
    #[serde(default)]
    pub service: ServiceSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub key_types: Option<Vec<KeyType>>,
    pub max_sans: Option<usize>,
    pub max_csr_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorSection {
    pub validity_days: Option<u32>,
}

/// The pipeline limits may also be set in the file; flags still win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub sign_timeout: Option<f64>,
    pub request_lifetime: Option<f64>,
    pub result_ttl: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub clock_skew: Option<f64>,
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Applies the file on top of `settings`.
    pub fn apply(&self, settings: &mut Settings) -> Result<(), String> {
        let p = &self.policy;
        if let Some(kt) = &p.key_types {
            if kt.is_empty() {
                return Err("policy.key_types must name at least one key type".into());
            }
            settings.policy.key_types = kt.clone();
        }
        if let Some(n) = p.max_sans {
            settings.policy.max_sans = n;
        }
        if let Some(n) = p.max_csr_bytes {
            if !(256..=1024 * 1024).contains(&n) {
                return Err("policy.max_csr_bytes must be between 256 and 1048576".into());
            }
            settings.policy.max_csr_bytes = n;
        }
        if let Some(d) = self.emulator.validity_days {
            if d == 0 {
                return Err("emulator.validity_days must be at least 1".into());
            }
            settings.validity_days = d;
        }
        let s = &self.service;
        let l = &mut settings.limits;
        for (value, slot, name) in [
            (s.sign_timeout, &mut l.sign_timeout, "service.sign_timeout"),
            (
                s.request_lifetime,
                &mut l.request_lifetime,
                "service.request_lifetime",
            ),
            (s.result_ttl, &mut l.result_ttl, "service.result_ttl"),
            (s.clock_skew, &mut l.clock_skew, "service.clock_skew"),
        ] {
            if let Some(v) = value {
                *slot = seconds(v).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        if let Some(n) = s.max_in_flight {
            l.max_in_flight = n;
        }
        Ok(())
    }
}

/// The pipeline limits given on the command line; `None` keeps the file's value or the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitFlags {
    pub sign_timeout: Option<Duration>,
    pub request_lifetime: Option<Duration>,
    pub result_ttl: Option<Duration>,
    pub max_in_flight: Option<usize>,
    pub clock_skew: Option<Duration>,
}

impl Settings {
    /// Defaults, then the file, then the flags. The result TTL follows the request lifetime
    /// unless the file or a flag sets it.
    pub fn resolve(file: Option<&FileConfig>, flags: &LimitFlags) -> Result<Settings, String> {
        let mut settings = Settings::new();
        if let Some(file) = file {
            file.apply(&mut settings)?;
        }
        let l = &mut settings.limits;
        let set = |slot: &mut Duration, v: Option<Duration>| *slot = v.unwrap_or(*slot);
        set(&mut l.sign_timeout, flags.sign_timeout);
        set(&mut l.request_lifetime, flags.request_lifetime);
        set(&mut l.result_ttl, flags.result_ttl);
        set(&mut l.clock_skew, flags.clock_skew);
        l.max_in_flight = flags.max_in_flight.unwrap_or(l.max_in_flight);
        let ttl_given =
            flags.result_ttl.is_some() || file.is_some_and(|f| f.service.result_ttl.is_some());
        if !ttl_given {
            l.result_ttl = l.request_lifetime;
        }
        Ok(settings)
    }
}

/// Seconds as given on the command line or in the file (fractions allowed).
pub fn seconds(v: f64) -> Result<Duration, String> {
    if v < 0.0 {
        return Err(format!(
            "{v} is negative; give a number of seconds of 0 or more"
        ));
    }
    Duration::try_from_secs_f64(v).map_err(|_| format!("{v} is not a number of seconds"))
}

/// clap value parser for `--sign-timeout 0.5` and friends.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    seconds(v)
}

impl Limits {
    /// The combination must make sense: a caller can never wait longer than the request lives.
    pub fn check(&self) -> Result<(), String> {
        if self.sign_timeout.is_zero() {
            return Err("--sign-timeout must be greater than 0".into());
        }
        if self.request_lifetime < self.sign_timeout {
            return Err(format!(
                "--request-lifetime ({} s) must not be shorter than --sign-timeout ({} s)",
                self.request_lifetime.as_secs_f64(),
                self.sign_timeout.as_secs_f64()
            ));
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_unknown_keys_are_refused() {
        let cfg = FileConfig::parse(
            "[policy]\nkey_types = [\"p384\", \"rsa4096\"]\nmax_sans = 4\n[emulator]\nvalidity_days = 30\n[service]\nsign_timeout = 1.5\n",
        )
        .unwrap();
        let mut s = Settings::new();
        cfg.apply(&mut s).unwrap();
        assert_eq!(s.policy.key_types, vec![KeyType::P384, KeyType::Rsa4096]);
        assert_eq!(s.policy.max_sans, 4);
        assert_eq!(s.policy.max_csr_bytes, 16384);
        assert_eq!(s.validity_days, 30);
        assert_eq!(s.limits.sign_timeout, Duration::from_millis(1500));

        let err = FileConfig::parse("[policy]\nmax_san = 3\n").unwrap_err();
        assert!(err.contains("unknown field `max_san`"), "{err}");
        let err = FileConfig::parse("[policy]\nkey_types = [\"rsa1024\"]\n").unwrap_err();
        assert!(err.contains("unknown key type \"rsa1024\""), "{err}");
        let err = FileConfig::parse("[nosuch]\n").unwrap_err();
        assert!(err.contains("unknown field `nosuch`"), "{err}");
    }

    #[test]
    fn defaults_match_the_design() {
        let s = Settings::new();
        assert_eq!(s.policy.max_csr_bytes, 16384);
        assert_eq!(s.policy.max_sans, 32);
        assert_eq!(s.limits.sign_timeout, Duration::from_secs(20));
        assert_eq!(s.limits.request_lifetime, Duration::from_secs(600));
        assert_eq!(s.limits.max_in_flight, 64);
        assert_eq!(s.limits.clock_skew, Duration::from_secs(86400));
        assert_eq!(s.validity_days, 365);
        assert_eq!(parse_seconds("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_seconds("-1").unwrap_err(),
            "-1 is negative; give a number of seconds of 0 or more"
        );
        assert_eq!(
            parse_seconds("abc").unwrap_err(),
            "\"abc\" is not a number of seconds"
        );
        assert_eq!(
            parse_seconds("NaN").unwrap_err(),
            "NaN is not a number of seconds"
        );
    }

    #[test]
    fn flags_win_over_the_file_and_the_ttl_follows_the_lifetime() {
        let secs = Duration::from_secs;
        let file =
            FileConfig::parse("[service]\nrequest_lifetime = 60\nmax_in_flight = 8\n").unwrap();
        let s = Settings::resolve(Some(&file), &LimitFlags::default()).unwrap();
        assert_eq!(
            (
                s.limits.request_lifetime,
                s.limits.result_ttl,
                s.limits.max_in_flight
            ),
            (secs(60), secs(60), 8)
        );

        let flags = LimitFlags {
            request_lifetime: Some(secs(120)),
            max_in_flight: Some(2),
            ..LimitFlags::default()
        };
        let s = Settings::resolve(Some(&file), &flags).unwrap();
        assert_eq!(
            (
                s.limits.request_lifetime,
                s.limits.result_ttl,
                s.limits.max_in_flight
            ),
            (secs(120), secs(120), 2)
        );

        let file = FileConfig::parse("[service]\nresult_ttl = 5\n").unwrap();
        let s = Settings::resolve(Some(&file), &flags).unwrap();
        assert_eq!(
            (s.limits.request_lifetime, s.limits.result_ttl),
            (secs(120), secs(5))
        );

        let flags = LimitFlags {
            result_ttl: Some(secs(7)),
            sign_timeout: Some(Duration::from_millis(500)),
            clock_skew: Some(secs(1)),
            ..LimitFlags::default()
        };
        let s = Settings::resolve(Some(&file), &flags).unwrap();
        assert_eq!(
            (
                s.limits.result_ttl,
                s.limits.sign_timeout,
                s.limits.clock_skew
            ),
            (secs(7), Duration::from_millis(500), secs(1))
        );
        let s = Settings::resolve(None, &LimitFlags::default()).unwrap();
        assert_eq!(s, Settings::new());
    }
}
