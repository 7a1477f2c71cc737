//! Providers: what takes a message the last step to a gateway. Each send
//! carries the message id as its idempotency key, the same on every
//! attempt, so a gateway that already took a message can drop a resend.

pub mod log;
pub mod smtp;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use huitou_runtime::auth::BoxFuture;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// One message on its way out.
#[derive(Debug, Clone, Serialize)]
pub struct Outgoing {
    /// The message id; also the idempotency key of every attempt.
    pub id: String,
    /// The shop.
    pub shop_id: String,
    /// The customer.
    pub customer_id: String,
    /// The channel's name (sms, wechat, …).
    pub channel: &'static str,
    /// Where it goes: a phone, a WeChat id, an email, a buyer nick.
    pub to: String,
    /// The text, signature included.
    pub text: String,
    /// Email subject.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The gateway's pre-approved template id (SMS).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub provider_template_id: String,
    /// The template's variables, for gateways that fill templates.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Attempt number, from 1.
    pub attempt: i32,
}

/// Why a send did not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth trying again (timeouts, 5xx, throttling).
    Transient(String),
    /// Retrying will not help (a refused address or template).
    Permanent(String),
}

/// A gateway.
pub trait Provider: Send + Sync + 'static {
    /// Its configured name.
    fn name(&self) -> &str;
    /// Sends; the provider's id for the message.
    fn send<'a>(&'a self, message: &'a Outgoing) -> BoxFuture<'a, Result<String, SendError>>;
}

/// A configured provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// Writes each message as a JSON line to a file (or the log when no
    /// path is set): the embedded default, and a sink for tests.
    Log {
        /// The file; empty for the service log.
        #[serde(default)]
        path: String,
    },
    /// POSTs signed JSON to a URL: any gateway (SMS, WeChat, push, email)
    /// can sit behind it.
    Webhook {
        /// `http://host:port/path`.
        url: String,
        /// The HMAC-SHA256 signing secret. Never serialised back out.
        #[serde(skip_serializing, default = "no_secret")]
        secret: SecretString,
        /// Milliseconds before an attempt counts as failed.
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
    /// A Chinese SMS gateway that sends only pre-approved templates: POSTs
    /// the template code, its parameters and the signature (signed like the
    /// webhook); templates sent through it need a provider_template_id.
    SmsTemplate {
        /// `http://host:port/path`.
        url: String,
        /// The HMAC-SHA256 signing secret. Never serialised back out.
        #[serde(skip_serializing, default = "no_secret")]
        secret: SecretString,
        /// Milliseconds before an attempt counts as failed.
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
    /// An SMTP relay for email.
    Smtp {
        /// `host:port` of the relay.
        relay: String,
        /// The sender address.
        from: String,
        /// The user for AUTH PLAIN; empty for none.
        #[serde(default)]
        user: String,
        /// Its password. Never serialised back out.
        #[serde(skip_serializing, default = "no_secret")]
        password: SecretString,
        /// Milliseconds before an attempt counts as failed.
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
}

fn no_secret() -> SecretString {
    SecretString::from(String::new())
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl ProviderConfig {
    /// Problems with the settings under `section`.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        if let ProviderConfig::Webhook {
            url, timeout_ms, ..
        } = self
        {
            if webhook::Target::parse(url).is_none() {
                p.push(format!("{section}.url: must be http://host:port/path"));
            }
            if let ProviderConfig::Webhook { secret, .. } = self
                && secrecy::ExposeSecret::expose_secret(secret).len() < 16
            {
                p.push(format!(
                    "{section}.secret: required, at least 16 characters"
                ));
            }
            if !(100..=60_000).contains(timeout_ms) {
                p.push(format!("{section}.timeout_ms: must be 100-60000"));
            }
        }
        p
    }

    /// The provider.
    pub fn open(&self, name: &str) -> Result<Arc<dyn Provider>, String> {
        Ok(match self {
            ProviderConfig::Log { path } => Arc::new(log::LogProvider::new(name, path)?),
            ProviderConfig::Webhook {
                url,
                secret,
                timeout_ms,
            } => Arc::new(webhook::WebhookProvider::new(
                name,
                url,
                secret.clone(),
                Duration::from_millis(*timeout_ms),
                webhook::Shape::Message,
            )?),
            ProviderConfig::SmsTemplate {
                url,
                secret,
                timeout_ms,
            } => Arc::new(webhook::WebhookProvider::new(
                name,
                url,
                secret.clone(),
                Duration::from_millis(*timeout_ms),
                webhook::Shape::SmsTemplate,
            )?),
            ProviderConfig::Smtp {
                relay,
                from,
                user,
                password,
                timeout_ms,
            } => Arc::new(smtp::SmtpProvider::new(
                name,
                relay,
                from,
                user,
                password.clone(),
                Duration::from_millis(*timeout_ms),
            )),
        })
    }
}

/// Which provider sends a channel, and which takes over when it fails.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The provider tried first.
    pub provider: String,
    /// The provider tried when the first fails; empty for none.
    #[serde(default)]
    pub fallback: String,
    /// Most messages one shop sends on this channel per second (the
    /// gateway account's limit), across replicas when the cache is Redis;
    /// 0 for no limit. Messages past it wait for the next second.
    #[serde(default)]
    pub per_shop_per_second: u32,
}
