//! The function's settings, read once at start-up from the environment variables of the contract.
//!
//! Parsing takes an iterator of `(name, value)` pairs rather than reading the process environment,
//! so tests never touch global state. A value that does not parse stops start-up with an error
//! naming the variable, the value and what was expected: a typo in a threshold must not silently
//! fall back to a default that operators did not choose.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::resilience::backoff::Backoff;
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::policy::RetryPolicy;
use crate::resilience::ResilienceConfig;

/// The time kept back for the heartbeat or the completion: one whole finishing attempt (its
/// attempt and connect timeouts, `aws::ATTEMPT_TIMEOUT` + `aws::CONNECT_TIMEOUT`) and a margin
/// for posting the answer. A shorter reserve cuts a slow but healthy completion off.
pub const DEFAULT_DEADLINE_RESERVE: Duration = Duration::from_millis(4500);

/// A variable whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// How etcd client URLs are built from an instance's private IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Client certificate material for etcd over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Every setting of the configuration table in the product contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Groups the function acts on; empty means any group.
    pub asg_names: Vec<String>,
    /// Hooks the sweep may heartbeat or complete; empty means every hook of the group.
    pub lifecycle_hook_names: Vec<String>,
    /// Client URLs of the cluster; empty means "build them from the group's instances".
    pub etcd_endpoints: Vec<String>,
    pub etcd_client_scheme: Scheme,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub etcd_tls: TlsFiles,
    pub etcd_add_learner_on_launch: bool,
    /// `ETCD_MIN_VOTERS`: a voter is never removed when fewer voters would remain.
    pub etcd_min_voters: u32,
    pub retry_max_attempts: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    pub breaker_failure_threshold: u32,
    pub breaker_reset_timeout: Duration,
    pub breaker_success_threshold: u32,
    pub deadline_reserve: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            asg_names: Vec::new(),
            lifecycle_hook_names: Vec::new(),
            etcd_endpoints: Vec::new(),
            etcd_client_scheme: Scheme::Https,
            etcd_client_port: 2379,
            etcd_peer_port: 2380,
            etcd_tls: TlsFiles::default(),
            etcd_add_learner_on_launch: false,
            etcd_min_voters: 2,
            retry_max_attempts: 4,
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_millis(5000),
            breaker_failure_threshold: 5,
            breaker_reset_timeout: Duration::from_secs(60),
            breaker_success_threshold: 2,
            deadline_reserve: DEFAULT_DEADLINE_RESERVE,
        }
    }
}

impl Config {
    /// Reads the process environment. Only `main` calls this.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_pairs(std::env::vars())
    }

    /// Parses the settings from `(name, value)` pairs; unknown names are ignored, empty values
    /// mean "use the default".
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = Vars(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        let config = Self::from_vars(&vars)?;
        config.consistent()?;
        Ok(config)
    }

    /// Each variable on its own, in one fixed order, before any check between variables: with
    /// several bad values the one reported is always the same, and a value wrong in itself is
    /// never hidden behind a disagreement with another variable.
    fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let d = Config::default();
        Ok(Config {
            asg_names: vars.list("ASG_NAMES"),
            lifecycle_hook_names: vars.list("LIFECYCLE_HOOK_NAMES"),
            etcd_endpoints: endpoints(vars.get("ETCD_ENDPOINTS"))?,
            etcd_client_scheme: vars.scheme("ETCD_CLIENT_SCHEME", d.etcd_client_scheme)?,
            etcd_client_port: vars.port("ETCD_CLIENT_PORT", d.etcd_client_port)?,
            etcd_peer_port: vars.port("ETCD_PEER_PORT", d.etcd_peer_port)?,
            etcd_tls: TlsFiles {
                ca: vars.path("ETCD_CA_FILE"),
                cert: vars.path("ETCD_CERT_FILE"),
                key: vars.path("ETCD_KEY_FILE"),
            },
            etcd_add_learner_on_launch: vars
                .flag("ETCD_ADD_LEARNER_ON_LAUNCH", d.etcd_add_learner_on_launch)?,
            etcd_min_voters: vars.number("ETCD_MIN_VOTERS", d.etcd_min_voters, &VOTERS)?,
            retry_max_attempts: vars.number(
                "RETRY_MAX_ATTEMPTS",
                d.retry_max_attempts,
                &ATTEMPTS,
            )?,
            retry_base_delay: vars.millis(
                "RETRY_BASE_DELAY_MS",
                d.retry_base_delay,
                &BASE_DELAY_MS,
            )?,
            retry_max_delay: vars.millis("RETRY_MAX_DELAY_MS", d.retry_max_delay, &MAX_DELAY_MS)?,
            breaker_failure_threshold: vars.number(
                "BREAKER_FAILURE_THRESHOLD",
                d.breaker_failure_threshold,
                &FAILURES,
            )?,
            breaker_reset_timeout: vars.seconds(
                "BREAKER_RESET_TIMEOUT_SECS",
                d.breaker_reset_timeout,
                &RESET_SECS,
            )?,
            breaker_success_threshold: vars.number(
                "BREAKER_SUCCESS_THRESHOLD",
                d.breaker_success_threshold,
                &SUCCESSES,
            )?,
            deadline_reserve: vars.millis(
                "DEADLINE_RESERVE_MS",
                d.deadline_reserve,
                &RESERVE_MS,
            )?,
        })
    }

    /// The checks between variables, once each parsed on its own.
    fn consistent(&self) -> Result<(), ConfigError> {
        if self.retry_max_delay < self.retry_base_delay {
            return Err(ConfigError {
                variable: "RETRY_MAX_DELAY_MS",
                value: self.retry_max_delay.as_millis().to_string(),
                expected: "a value no smaller than RETRY_BASE_DELAY_MS",
            });
        }
        let tls = &self.etcd_tls;
        if tls.cert.is_some() != tls.key.is_some() {
            let variable = if tls.cert.is_some() {
                "ETCD_KEY_FILE"
            } else {
                "ETCD_CERT_FILE"
            };
            return Err(ConfigError {
                variable,
                value: String::new(),
                expected: "a path: ETCD_CERT_FILE and ETCD_KEY_FILE are set together",
            });
        }
        Ok(())
    }

    pub fn resilience(&self) -> ResilienceConfig {
        ResilienceConfig {
            retry: RetryPolicy {
                max_attempts: self.retry_max_attempts,
                backoff: Backoff {
                    base: self.retry_base_delay,
                    max: self.retry_max_delay,
                },
            },
            breaker: BreakerConfig {
                failure_threshold: self.breaker_failure_threshold,
                reset_timeout: self.breaker_reset_timeout,
                success_threshold: self.breaker_success_threshold,
            },
        }
    }

    /// Whether the function acts on `group` (`ASG_NAMES` empty means any group).
    pub fn handles_group(&self, group: &str) -> bool {
        self.asg_names.is_empty() || self.asg_names.iter().any(|g| g == group)
    }

    /// The groups whose instances may run the cluster's members, for an event of `group`: the
    /// event's group and every group of `ASG_NAMES` (one cluster over one group per zone is
    /// common; a zone's group alone may have no running member to ask).
    pub fn cluster_groups(&self, group: &str) -> Vec<String> {
        let mut groups = vec![group.to_string()];
        groups.extend(self.asg_names.iter().filter(|g| *g != group).cloned());
        groups
    }

    /// Whether `hook` is one of ours (`LIFECYCLE_HOOK_NAMES` empty means every hook).
    pub fn owns_hook(&self, hook: &str) -> bool {
        self.lifecycle_hook_names.is_empty() || self.lifecycle_hook_names.iter().any(|h| h == hook)
    }
}

/// The values a number may take, and how the error for any other value says so.
struct Bounds {
    range: std::ops::RangeInclusive<u32>,
    expected: &'static str,
}

const VOTERS: Bounds = Bounds {
    range: 1..=100,
    expected: "a whole number of voters from 1 to 100 (2 keeps raft out of its hazardous two-to-one step; 1 only to run a single node on purpose)",
};
const ATTEMPTS: Bounds = Bounds {
    range: 1..=20,
    expected: "a whole number of attempts from 1 to 20",
};
const BASE_DELAY_MS: Bounds = Bounds {
    range: 1..=60_000,
    expected: "milliseconds from 1 to 60000",
};
const MAX_DELAY_MS: Bounds = Bounds {
    range: 1..=300_000,
    expected: "milliseconds from 1 to 300000",
};
const FAILURES: Bounds = Bounds {
    range: 1..=1000,
    expected: "a whole number of failures from 1 to 1000",
};
const RESET_SECS: Bounds = Bounds {
    range: 1..=3600,
    expected: "seconds from 1 to 3600",
};
const SUCCESSES: Bounds = Bounds {
    range: 1..=100,
    expected: "a whole number of successes from 1 to 100",
};
const RESERVE_MS: Bounds = Bounds {
    range: 0..=600_000,
    expected: "milliseconds from 0 to 600000",
};

/// The variables as given, each read by its name once: the name in an error is always the name
/// that was read.
struct Vars(HashMap<String, String>);

impl Vars {
    /// The trimmed value; an empty one counts as unset.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn list(&self, variable: &str) -> Vec<String> {
        list(self.get(variable))
    }

    fn path(&self, variable: &str) -> Option<PathBuf> {
        self.get(variable).map(PathBuf::from)
    }

    /// Case-insensitive, as operators write `HTTPS` as often as `https`; anything else is refused
    /// rather than guessed, since the wrong scheme fails every etcd call.
    fn scheme(&self, variable: &'static str, default: Scheme) -> Result<Scheme, ConfigError> {
        match self.get(variable) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("https") => Ok(Scheme::Https),
            Some(v) if v.eq_ignore_ascii_case("http") => Ok(Scheme::Http),
            Some(v) => Err(invalid(variable, v, "http or https")),
        }
    }

    /// A switch: a value that is neither true nor false is refused, not read as off.
    fn flag(&self, variable: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(variable) {
            None => Ok(default),
            Some(v) => parse_bool(v).ok_or_else(|| invalid(variable, v, "true or false")),
        }
    }

    fn port(&self, variable: &'static str, default: u16) -> Result<u16, ConfigError> {
        port(variable, self.get(variable), default)
    }

    fn number(
        &self,
        variable: &'static str,
        default: u32,
        bounds: &Bounds,
    ) -> Result<u32, ConfigError> {
        number(variable, self.get(variable), default, bounds)
    }

    fn seconds(
        &self,
        variable: &'static str,
        default: Duration,
        bounds: &Bounds,
    ) -> Result<Duration, ConfigError> {
        let secs = u32::try_from(default.as_secs()).unwrap_or(u32::MAX);
        let secs = number(variable, self.get(variable), secs, bounds)?;
        Ok(Duration::from_secs(u64::from(secs)))
    }

    fn millis(
        &self,
        variable: &'static str,
        default: Duration,
        bounds: &Bounds,
    ) -> Result<Duration, ConfigError> {
        millis(variable, self.get(variable), default, bounds)
    }
}

fn invalid(variable: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError {
        variable,
        value: value.to_string(),
        expected,
    }
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn endpoints(value: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let urls = list(value);
    for url in &urls {
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
        if !ok {
            return Err(invalid(
                "ETCD_ENDPOINTS",
                url,
                "comma-separated client URLs such as https://10.0.1.5:2379",
            ));
        }
    }
    Ok(urls)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn port(variable: &'static str, value: Option<&str>, default: u16) -> Result<u16, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(variable, v, "a TCP port from 1 to 65535")),
    }
}

fn number(
    variable: &'static str,
    value: Option<&str>,
    default: u32,
    bounds: &Bounds,
) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| bounds.range.contains(n))
            .ok_or_else(|| invalid(variable, v, bounds.expected)),
    }
}

fn millis(
    variable: &'static str,
    value: Option<&str>,
    default: Duration,
    bounds: &Bounds,
) -> Result<Duration, ConfigError> {
    let default = u32::try_from(default.as_millis()).unwrap_or(u32::MAX);
    let ms = number(variable, value, default, bounds)?;
    Ok(Duration::from_millis(u64::from(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN_VOTERS_EXPECTED: &str = VOTERS.expected;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_pairs(pairs.iter().map(|&(k, v)| (k, v)))
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.etcd_client_scheme, Scheme::Https);
        assert_eq!((c.etcd_client_port, c.etcd_peer_port), (2379, 2380));
        assert_eq!(c.retry_max_attempts, 4);
        assert_eq!(c.retry_base_delay, Duration::from_millis(200));
        assert_eq!(c.retry_max_delay, Duration::from_millis(5000));
        assert_eq!(c.breaker_failure_threshold, 5);
        assert_eq!(c.breaker_reset_timeout, Duration::from_secs(60));
        assert_eq!(c.breaker_success_threshold, 2);
        assert_eq!(c.deadline_reserve, Duration::from_millis(4500));
        assert_eq!(c.etcd_min_voters, 2);
        assert!(!c.etcd_add_learner_on_launch);
        assert!(c.handles_group("any-group"));
        assert!(c.owns_hook("any-hook"));
    }

    #[test]
    fn every_variable_is_read() {
        let c = parse(&[
            ("ASG_NAMES", " etcd-a , etcd-b ,"),
            ("LIFECYCLE_HOOK_NAMES", "drain"),
            (
                "ETCD_ENDPOINTS",
                "https://10.0.0.1:2379, http://10.0.0.2:2379",
            ),
            ("ETCD_CLIENT_SCHEME", "HTTP"),
            ("ETCD_CLIENT_PORT", "12379"),
            ("ETCD_PEER_PORT", "12380"),
            ("ETCD_CA_FILE", "/ca.pem"),
            ("ETCD_CERT_FILE", "/c.pem"),
            ("ETCD_KEY_FILE", "/k.pem"),
            ("ETCD_ADD_LEARNER_ON_LAUNCH", "true"),
            ("ETCD_MIN_VOTERS", "1"),
            ("RETRY_MAX_ATTEMPTS", "6"),
            ("RETRY_BASE_DELAY_MS", "50"),
            ("RETRY_MAX_DELAY_MS", "800"),
            ("BREAKER_FAILURE_THRESHOLD", "3"),
            ("BREAKER_RESET_TIMEOUT_SECS", "10"),
            ("BREAKER_SUCCESS_THRESHOLD", "1"),
            ("DEADLINE_RESERVE_MS", "1500"),
            ("UNRELATED", "ignored"),
        ])
        .unwrap();
        assert_eq!(c.asg_names, vec!["etcd-a", "etcd-b"]);
        assert!(c.handles_group("etcd-b") && !c.handles_group("other"));
        assert_eq!(c.cluster_groups("etcd-b"), vec!["etcd-b", "etcd-a"]);
        assert_eq!(Config::default().cluster_groups("g"), vec!["g"]);
        assert_eq!(c.lifecycle_hook_names, vec!["drain"]);
        assert!(c.owns_hook("drain") && !c.owns_hook("other-tools-hook"));
        assert_eq!(
            c.etcd_endpoints,
            vec!["https://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(c.etcd_client_scheme, Scheme::Http);
        assert_eq!((c.etcd_client_port, c.etcd_peer_port), (12379, 12380));
        assert!(c.etcd_tls.enabled());
        assert!(c.etcd_add_learner_on_launch);
        assert_eq!(c.etcd_min_voters, 1);
        let r = c.resilience();
        assert_eq!(r.retry.max_attempts, 6);
        assert_eq!(r.retry.backoff.base, Duration::from_millis(50));
        assert_eq!(r.retry.backoff.max, Duration::from_millis(800));
        assert_eq!(r.breaker.failure_threshold, 3);
        assert_eq!(r.breaker.reset_timeout, Duration::from_secs(10));
        assert_eq!(r.breaker.success_threshold, 1);
        assert_eq!(c.deadline_reserve, Duration::from_millis(1500));
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_the_expectation() {
        let cases = [
            (
                "RETRY_MAX_ATTEMPTS",
                "four",
                "a whole number of attempts from 1 to 20",
            ),
            (
                "RETRY_MAX_ATTEMPTS",
                "0",
                "a whole number of attempts from 1 to 20",
            ),
            ("BREAKER_RESET_TIMEOUT_SECS", "-1", "seconds from 1 to 3600"),
            ("ETCD_CLIENT_PORT", "70000", "a TCP port from 1 to 65535"),
            ("ETCD_CLIENT_SCHEME", "grpc", "http or https"),
            ("ETCD_ADD_LEARNER_ON_LAUNCH", "maybe", "true or false"),
            (
                "ETCD_ENDPOINTS",
                "10.0.0.1:2379",
                "comma-separated client URLs such as https://10.0.1.5:2379",
            ),
            ("DEADLINE_RESERVE_MS", "2s", "milliseconds from 0 to 600000"),
            ("ETCD_MIN_VOTERS", "0", MIN_VOTERS_EXPECTED),
            ("ETCD_MIN_VOTERS", "two", MIN_VOTERS_EXPECTED),
            ("ETCD_MIN_VOTERS", "-2", MIN_VOTERS_EXPECTED),
        ];
        for (variable, value, expected) in cases {
            let err = parse(&[(variable, value)]).unwrap_err();
            assert_eq!(
                (err.variable, err.value.as_str(), err.expected),
                (variable, value, expected)
            );
            let text = err.to_string();
            assert!(
                text.contains(variable) && text.contains(value) && text.contains(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let err = parse(&[
            ("RETRY_BASE_DELAY_MS", "1000"),
            ("RETRY_MAX_DELAY_MS", "10"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "RETRY_MAX_DELAY_MS");
        let err = parse(&[("ETCD_CERT_FILE", "/c.pem")]).unwrap_err();
        assert_eq!(err.variable, "ETCD_KEY_FILE");
    }

    #[test]
    fn empty_values_mean_defaults() {
        assert_eq!(
            parse(&[("RETRY_MAX_ATTEMPTS", ""), ("ASG_NAMES", " ")]).unwrap(),
            Config::default()
        );
    }
}
