//! The webhook provider: POSTs each message as JSON to a gateway, signed
//! with HMAC-SHA256 over `timestamp.body` (header `X-Huitou-Signature:
//! sha256=<hex>`, `X-Huitou-Timestamp`), with the message id in
//! `Idempotency-Key`. A 2xx answer is success (its JSON `id`, if any, is
//! the provider's message id); 408, 429 and 5xx are retried; other 4xx are
//! final. Plain HTTP/1.1 written by hand: one short request per message
//! does not justify an HTTP client dependency, and a gateway inside the
//! cluster (or a TLS-terminating sidecar) is the deployment we expect
//! (decision 0016).

use std::time::Duration;

use hmac::{Hmac, Mac};
use huitou_runtime::auth::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Outgoing, Provider, SendError};

/// Where the webhook goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// host:port to connect to.
    pub authority: String,
    /// Host header.
    pub host: String,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// Parses `http://host[:port]/path`.
    pub fn parse(url: &str) -> Option<Target> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains(['@', ' ']) {
            return None;
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Some(Target {
            authority: with_port,
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// What the POST carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The whole message as JSON (any gateway).
    Message,
    /// A Chinese SMS gateway's template call: the approved template code,
    /// its parameters and the signature, never free text —
    /// `{"PhoneNumbers", "SignName", "TemplateCode", "TemplateParam",
    /// "OutId"}` — answered `{"Code": "OK", "BizId": …}`.
    SmsTemplate,
}

/// Posts messages to a URL.
pub struct WebhookProvider {
    name: String,
    target: Target,
    secret: SecretString,
    timeout: Duration,
    shape: Shape,
}

impl WebhookProvider {
    /// A provider posting to `url`.
    pub fn new(
        name: &str,
        url: &str,
        secret: SecretString,
        timeout: Duration,
        shape: Shape,
    ) -> Result<Self, String> {
        let target =
            Target::parse(url).ok_or_else(|| format!("{url}: must be http://host:port/path"))?;
        Ok(Self {
            name: name.to_owned(),
            target,
            secret,
            timeout,
            shape,
        })
    }

    fn body(&self, message: &Outgoing) -> Result<Vec<u8>, SendError> {
        let encoded = match self.shape {
            Shape::Message => serde_json::to_vec(message),
            Shape::SmsTemplate => {
                if message.provider_template_id.is_empty() {
                    return Err(SendError::Permanent(
                        "the template has no provider_template_id, which a template SMS gateway needs".into(),
                    ));
                }
                let sign = message
                    .text
                    .strip_prefix('【')
                    .and_then(|rest| rest.split_once('】'))
                    .map(|(sign, _)| sign)
                    .unwrap_or_default();
                let params = serde_json::to_string(&message.variables).unwrap_or_default();
                serde_json::to_vec(&serde_json::json!({
                    "PhoneNumbers": message.to,
                    "SignName": sign,
                    "TemplateCode": message.provider_template_id,
                    "TemplateParam": params,
                    "OutId": message.id,
                }))
            }
        };
        encoded.map_err(|e| SendError::Permanent(format!("cannot encode: {e}")))
    }

    async fn post(&self, message: &Outgoing) -> Result<String, SendError> {
        let body = self.body(message)?;
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(self.secret.expose_secret().as_bytes(), timestamp, &body);
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Idempotency-Key: {}\r\nX-Huitou-Timestamp: {timestamp}\r\nX-Huitou-Signature: sha256={signature}\r\n\
             Connection: close\r\n\r\n",
            self.target.path,
            self.target.host,
            body.len(),
            message.id,
        );
        let mut stream = TcpStream::connect(&self.target.authority)
            .await
            .map_err(|e| SendError::Transient(format!("connect {}: {e}", self.target.host)))?;
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| SendError::Transient(e.to_string()))?;
        stream
            .write_all(&body)
            .await
            .map_err(|e| SendError::Transient(e.to_string()))?;
        let mut answer = Vec::with_capacity(1024);
        stream
            .take(64 * 1024)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| SendError::Transient(e.to_string()))?;
        let (code, body) = parse_response(&answer)
            .ok_or_else(|| SendError::Transient("the gateway's answer is not HTTP".into()))?;
        match code {
            200..=299 if self.shape == Shape::SmsTemplate => template_answer(body),
            200..=299 => Ok(provider_id(body).unwrap_or_else(|| message.id.clone())),
            408 | 429 | 500..=599 => Err(SendError::Transient(format!("HTTP {code}"))),
            _ => Err(SendError::Permanent(format!(
                "HTTP {code}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }
}

/// The signature of `body` sent at `timestamp` under `secret`, hex.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    huitou_runtime::auth::hex(&mac.finalize().into_bytes())
}

fn parse_response(raw: &[u8]) -> Option<(u16, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.lines().next()?;
    let code = status.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, &raw[end + 4..]))
}

/// A template gateway's answer: `Code` OK with its `BizId`; throttling and
/// the gateway's own trouble are retried, a refused template or number is
/// final.
fn template_answer(body: &[u8]) -> Result<String, SendError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| SendError::Transient("the gateway's answer is not JSON".into()))?;
    let code = v.get("Code").and_then(|c| c.as_str()).unwrap_or_default();
    let text = v
        .get("Message")
        .and_then(|c| c.as_str())
        .unwrap_or_default();
    match code {
        "OK" => Ok(v
            .get("BizId")
            .and_then(|b| b.as_str())
            .unwrap_or_default()
            .to_owned()),
        c if c.contains("LIMIT") || c.starts_with("isp.") || c.contains("Throttling") => {
            Err(SendError::Transient(format!("{c}: {text}")))
        }
        c => Err(SendError::Permanent(format!("{c}: {text}"))),
    }
}

fn provider_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("id")? {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
        _ => None,
    }
}

impl Provider for WebhookProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: &'a Outgoing) -> BoxFuture<'a, Result<String, SendError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.post(message)).await {
                Ok(answer) => answer,
                Err(_) => Err(SendError::Transient(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn urls_and_answers_parse() {
        assert_eq!(
            Target::parse("http://gw:8080/sms/send"),
            Some(Target {
                authority: "gw:8080".into(),
                host: "gw:8080".into(),
                path: "/sms/send".into()
            })
        );
        assert_eq!(Target::parse("http://gw").unwrap().authority, "gw:80");
        assert!(Target::parse("https://gw/x").is_none());
        let (code, body) =
            parse_response(b"HTTP/1.1 202 Accepted\r\nX: y\r\n\r\n{\"id\":\"gw-1\"}").unwrap();
        assert_eq!(code, 202);
        assert_eq!(provider_id(body).as_deref(), Some("gw-1"));
        assert_eq!(sign(b"k", 1, b"{}").len(), 64);
        assert_eq!(
            template_answer(br#"{"Code":"OK","BizId":"900619746936498440^0"}"#),
            Ok("900619746936498440^0".into())
        );
        assert!(matches!(
            template_answer(
                r#"{"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"触发分钟级流控"}"#.as_bytes()
            ),
            Err(SendError::Transient(_))
        ));
        assert!(matches!(
            template_answer(br#"{"Code":"isv.SMS_TEMPLATE_ILLEGAL"}"#),
            Err(SendError::Permanent(_))
        ));
    }
}
