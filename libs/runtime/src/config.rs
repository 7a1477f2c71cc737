//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `HUITOU__SECTION__KEY` environment variables, validated before anything
//! starts. A bad setting stops the process with every problem listed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The environment prefix; `HUITOU__SERVER__LISTEN=0.0.0.0:50051` sets `server.listen`.
pub const ENV_PREFIX: &str = "HUITOU__";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or parsed.
    #[error("configuration could not be read: {0}")]
    Load(String),
    /// Values were read but are not acceptable.
    #[error("configuration is invalid:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// A configuration that can check itself.
pub trait Validate {
    /// Appends a line per problem, naming the setting (`server.listen: ...`).
    fn validate(&self, problems: &mut Vec<String>);
}

/// Loads `T` from defaults, an optional file and the environment, then validates it.
pub fn load<T>(defaults: &T, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Validate,
{
    load_layers(defaults, file.into_iter().collect::<Vec<_>>().as_slice())
}

/// Loads `T` from defaults, then each file in order (later files win), then
/// the environment, and validates it.
pub fn load_layers<T>(defaults: &T, files: &[&Path]) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Validate,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    for file in files {
        if !file.exists() {
            return Err(ConfigError::Load(format!(
                "{} does not exist",
                file.display()
            )));
        }
        figment = figment.merge(Toml::file(file));
    }
    figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").lowercase(true));
    let config: T = figment
        .extract()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let mut problems = Vec::new();
    config.validate(&mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// How a gRPC server listens, limits and shuts down.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Requests served at once over all connections; more wait briefly, then
    /// are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Longest a request may run when the caller sets no shorter deadline, in ms.
    pub request_timeout_ms: u64,
    /// After SIGTERM, how long health reports NOT_SERVING before the listener
    /// closes, so load balancers stop sending new calls, in ms.
    pub drain_delay_ms: u64,
    /// After the listener closes, how long in-flight calls may take to finish, in ms.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            request_timeout_ms: 30_000,
            drain_delay_ms: 0,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl ServerConfig {
    /// The request timeout as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

impl Validate for ServerConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        if !(1024..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            problems.push("server.max_message_bytes: must be between 1024 and 67108864".into());
        }
        if self.max_concurrent_requests == 0 {
            problems.push("server.max_concurrent_requests: must be at least 1".into());
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            problems.push("server.request_timeout_ms: must be between 100 and 600000".into());
        }
        if self.drain_delay_ms > 120_000 {
            problems.push("server.drain_delay_ms: must be at most 120000".into());
        }
        if !(100..=600_000).contains(&self.shutdown_grace_ms) {
            problems.push("server.shutdown_grace_ms: must be between 100 and 600000".into());
        }
    }
}

/// Logs and traces.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info,huitou_customer=debug`; `RUST_LOG` overrides it.
    pub log_filter: String,
    /// OTLP/gRPC endpoint of a collector, e.g. `http://otel-collector:4317`;
    /// empty to export nothing.
    pub otlp_endpoint: String,
    /// Fraction of new traces sampled when the caller did not decide, 0.0-1.0.
    pub sample_ratio: f64,
    /// How often metrics are exported to the OTLP endpoint, in ms.
    pub metrics_interval_ms: u64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            metrics_interval_ms: 15_000,
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        if tracing_subscriber::EnvFilter::try_new(&self.log_filter).is_err() {
            problems.push(format!(
                "telemetry.log_filter: {:?} is not a valid filter",
                self.log_filter
            ));
        }
        let endpoint = &self.otlp_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            problems.push("telemetry.otlp_endpoint: must start with http:// or https://".into());
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push("telemetry.sample_ratio: must be between 0.0 and 1.0".into());
        }
        if !(100..=3_600_000).contains(&self.metrics_interval_ms) {
            problems.push("telemetry.metrics_interval_ms: must be 100-3600000".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Sample {
        server: ServerConfig,
    }

    impl Validate for Sample {
        fn validate(&self, problems: &mut Vec<String>) {
            self.server.validate(problems);
        }
    }

    #[test]
    fn file_overrides_defaults_and_problems_name_the_setting() {
        let dir = std::env::temp_dir().join(format!("huitou-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("huitou.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:6000\"\n").ok();
        let loaded = load(&Sample::default(), Some(&file));
        assert_eq!(loaded.ok().map(|c| c.server.listen.port()), Some(6000));

        std::fs::write(&file, "[server]\nmax_concurrent_requests = 0\n").ok();
        match load(&Sample::default(), Some(&file)) {
            Err(ConfigError::Invalid(p)) => {
                assert!(p[0].starts_with("server.max_concurrent_requests"))
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_file_is_an_error() {
        assert!(matches!(
            load(
                &Sample::default(),
                Some(Path::new("/nonexistent/huitou.toml"))
            ),
            Err(ConfigError::Load(_))
        ));
    }
}
