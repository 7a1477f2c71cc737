//! The suite's settings: one file for every service in the process, layered
//! as defaults < embedded secrets < `--config` file < `HUITOU__…` variables.

use std::path::{Path, PathBuf};

use huitou_coupon::CouponConfig;
use huitou_customer::CustomerConfig;
use huitou_loyalty::LoyaltyConfig;
use huitou_notification::NotificationConfig;
use huitou_privacy::PersonalDataConfig;
use huitou_runtime::config::{ConfigError, ServerConfig, TelemetryConfig, Validate, load_layers};
use huitou_storage::DatabaseConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Service-to-service credentials.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The internal token Huitou services present to each other; at least
    /// 32 characters. Never serialised back out.
    #[serde(skip_serializing)]
    pub internal_token: Option<SecretString>,
    /// Where the customer service answers API-key checks, for a service
    /// running without it (e.g. `http://customer:50051`); empty in the
    /// one-process suite.
    pub key_service: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AuthConfig {{ internal_token: ****, key_service: {:?} }}",
            self.key_service
        )
    }
}

impl AuthConfig {
    /// The token (checked by validation to be present).
    pub fn token(&self) -> SecretString {
        self.internal_token
            .clone()
            .unwrap_or_else(|| SecretString::from(String::new()))
    }
}

/// Everything the `huitou` command reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gRPC server.
    pub server: ServerConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Service-to-service credentials.
    pub auth: AuthConfig,
    /// The customer service.
    pub customer: CustomerConfig,
    /// The loyalty service; it runs in this process when present.
    pub loyalty: Option<LoyaltyConfig>,
    /// The coupon service; it runs in this process when present.
    pub coupon: Option<CouponConfig>,
    /// The notification service; it runs in this process when present.
    pub notification: Option<NotificationConfig>,
}

impl Validate for Settings {
    fn validate(&self, problems: &mut Vec<String>) {
        self.server.validate(problems);
        self.telemetry.validate(problems);
        match &self.auth.internal_token {
            Some(t) if t.expose_secret().len() >= 32 => {}
            _ => problems.push("auth.internal_token: required, at least 32 characters".into()),
        }
        // Each service's own section is checked when it is opened (see
        // `Suite::open_services`): a process checks only what it runs.
    }
}

/// The file of generated secrets in an embedded data folder.
pub const SECRETS_FILE: &str = "secrets.toml";

/// Settings for the embedded default: SQLite files and secrets under
/// `data_dir` (secrets generated on first use), then `config_file`, then the
/// environment.
pub fn embedded(data_dir: &Path, config_file: Option<&Path>) -> Result<Settings, ConfigError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ConfigError::Load(format!("cannot create {}: {e}", data_dir.display())))?;
    let secrets = data_dir.join(SECRETS_FILE);
    if !secrets.exists() {
        write_secrets(&secrets)?;
    }
    let mut defaults = Settings::default();
    defaults.customer.database = DatabaseConfig::sqlite_file(&data_dir.join("customer.db"));
    defaults.loyalty = Some(LoyaltyConfig {
        database: DatabaseConfig::sqlite_file(&data_dir.join("loyalty.db")),
        ..LoyaltyConfig::default()
    });
    defaults.coupon = Some(CouponConfig {
        database: DatabaseConfig::sqlite_file(&data_dir.join("coupon.db")),
        ..CouponConfig::default()
    });
    let mut notification = NotificationConfig {
        database: DatabaseConfig::sqlite_file(&data_dir.join("notification.db")),
        ..NotificationConfig::default()
    };
    // Messages leave through the file provider: one JSON line each.
    notification.providers.insert(
        "log".into(),
        huitou_notification::providers::ProviderConfig::Log {
            path: data_dir.join("messages.jsonl").display().to_string(),
        },
    );
    defaults.notification = Some(notification);
    let mut files: Vec<&Path> = vec![&secrets];
    files.extend(config_file);
    load_layers(&defaults, &files)
}

/// Settings for one service in a cluster: no generated secrets, the
/// database URL must be configured.
pub fn cluster(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
    let files: Vec<&Path> = config_file.into_iter().collect();
    load_layers(&Settings::default(), &files)
}

fn write_secrets(path: &Path) -> Result<(), ConfigError> {
    let fail = |e: String| ConfigError::Load(format!("cannot write {}: {e}", path.display()));
    let token = huitou_privacy::random_hex_key().map_err(|e| fail(e.to_string()))?;
    let personal = PersonalDataConfig::generate("k1").map_err(|e| fail(e.to_string()))?;
    let key = personal
        .keys
        .get("k1")
        .map(|k| k.expose_secret().to_owned())
        .unwrap_or_default();
    let index = personal
        .index_key
        .as_ref()
        .map(|k| k.expose_secret().to_owned())
        .unwrap_or_default();
    let text = format!(
        "# Generated by `huitou` for this data folder. Keep it private: it opens\n\
         # the personal data in the databases beside it.\n\
         [auth]\ninternal_token = \"{token}\"\n\n\
         [customer.personal_data]\nactive_key_id = \"k1\"\nindex_key = \"{index}\"\n\n\
         [customer.personal_data.keys]\nk1 = \"{key}\"\n"
    );
    write_private(path, &text).map_err(|e| fail(e.to_string()))
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// The default data folder of the embedded default.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("huitou-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings file a Kubernetes ConfigMap carries.
    fn configmap_toml(service: &str) -> std::path::PathBuf {
        let yaml = std::fs::read_to_string(format!(
            "{}/../../k8s/base/{service}/configmap.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("configmap");
        let toml: String = yaml
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("huitou.toml:"))
            .skip(1)
            .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
            .collect::<Vec<_>>()
            .join("\n");
        let path = std::env::temp_dir().join(format!(
            "huitou-configmap-{service}-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, toml).expect("write");
        path
    }

    #[test]
    fn the_kubernetes_configmaps_are_valid_settings() {
        // The token comes from a Secret in the cluster; here, a second layer.
        let secret =
            std::env::temp_dir().join(format!("huitou-secret-{}.toml", std::process::id()));
        std::fs::write(
            &secret,
            format!("[auth]\ninternal_token = \"{}\"\n", "k".repeat(32)),
        )
        .expect("write");
        let defaults = Settings::default();
        let customer = configmap_toml("customer");
        let s = load_layers(&defaults, &[customer.as_path(), secret.as_path()])
            .expect("customer settings");
        assert_eq!(s.server.listen.port(), 50051);
        let loyalty = &s.customer.outbox.subscribers[0];
        assert_eq!(loyalty.endpoint, "http://loyalty:50051");
        // Loyalty gets its customer events from customer and refused coupon
        // rewards from coupon: together, exactly what it subscribes to.
        let coupon_file = configmap_toml("coupon");
        let coupon_side = load_layers(&defaults, &[coupon_file.as_path(), secret.as_path()])
            .expect("coupon settings");
        let to_loyalty = coupon_side
            .coupon
            .as_ref()
            .expect("coupon section")
            .outbox
            .subscribers
            .iter()
            .find(|s| s.name == "loyalty")
            .expect("coupon → loyalty")
            .clone();
        let mut loyalty_types = loyalty.event_types.clone();
        loyalty_types.extend(to_loyalty.event_types.iter().cloned());
        assert_eq!(loyalty_types, huitou_loyalty::events::SUBSCRIBED);
        let path = configmap_toml("loyalty");
        let s =
            load_layers(&defaults, &[path.as_path(), secret.as_path()]).expect("loyalty settings");
        assert!(s.loyalty.is_some());
        assert_eq!(s.auth.key_service, "http://customer:50051");
        // Coupon gets the customer events it acts on from customer and the
        // tier changes from loyalty: together, exactly what it subscribes to.
        let from_loyalty = &s.loyalty.as_ref().expect("loyalty").outbox.subscribers[0];
        let customer_settings = load_layers(&defaults, &[customer.as_path(), secret.as_path()])
            .expect("customer settings");
        let from_customer = &customer_settings.customer.outbox.subscribers[1];
        let mut coupon_types = from_customer.event_types.clone();
        coupon_types.extend(from_loyalty.event_types.iter().cloned());
        coupon_types.sort();
        let mut subscribed: Vec<String> = huitou_coupon::events::SUBSCRIBED
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        subscribed.sort();
        assert_eq!(coupon_types, subscribed);
        assert_eq!(from_customer.endpoint, "http://coupon:50051");
        let coupon = configmap_toml("coupon");
        let s =
            load_layers(&defaults, &[coupon.as_path(), secret.as_path()]).expect("coupon settings");
        // The database URL comes from the Secret; everything else is valid.
        let coupon_settings = s.coupon.expect("coupon section");
        assert_eq!(coupon_settings.sweep_interval_seconds, 60);
        assert!(
            coupon_settings
                .problems("coupon")
                .iter()
                .all(|p| p.starts_with("coupon.database.url"))
        );
        // Notification gets customer events from customer and the "expires
        // soon" event from coupon: together, exactly what it subscribes to.
        let to_notification = |subs: &[huitou_storage::outbox::Subscriber]| {
            subs.iter()
                .find(|s| s.name == "notification")
                .expect("a notification subscriber")
                .clone()
        };
        let from_customer = to_notification(&customer_settings.customer.outbox.subscribers);
        let from_coupon = to_notification(&coupon_settings.outbox.subscribers);
        assert_eq!(from_customer.endpoint, "http://notification:50051");
        let mut types = from_customer.event_types.clone();
        types.extend(from_coupon.event_types.iter().cloned());
        types.sort();
        let mut subscribed: Vec<String> = huitou_notification::events::SUBSCRIBED
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        subscribed.sort();
        assert_eq!(types, subscribed);
        let notification = configmap_toml("notification");
        let s = load_layers(&defaults, &[notification.as_path(), secret.as_path()])
            .expect("notification settings");
        let n = s.notification.expect("notification section");
        assert_eq!(n.customer_endpoint, "http://customer:50051");
        assert!(
            n.problems("notification")
                .iter()
                .all(|p| p.starts_with("notification.database.url")),
            "{:?}",
            n.problems("notification")
        );
        for f in [customer, path, coupon, notification, secret, coupon_file] {
            let _ = std::fs::remove_file(f);
        }
    }

    #[test]
    fn the_embedded_default_runs_every_service() {
        let dir = std::env::temp_dir().join(format!("huitou-settings-{}", std::process::id()));
        let settings = embedded(&dir, None).expect("settings");
        let loyalty = settings.loyalty.expect("loyalty runs");
        assert!(loyalty.database.url.contains("loyalty.db"));
        let coupon = settings.coupon.expect("coupon runs");
        assert!(coupon.database.url.contains("coupon.db"));
        let notification = settings.notification.expect("notification runs");
        assert!(notification.database.url.contains("notification.db"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
