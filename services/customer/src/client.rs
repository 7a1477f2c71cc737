//! API keys checked by the customer service for a service running on its
//! own (loyalty, coupon, notification in their own Deployments).
//!
//! Answers are kept for a short while so a storefront's calls do not each
//! cost a round trip: a valid key for 30 s, an unknown one for 5 s. A
//! revoked key therefore stops working everywhere within 30 s (in the
//! customer service itself at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use huitou_proto::customer::v1::VerifyApiKeyRequest;
use huitou_proto::customer::v1::shop_service_client::ShopServiceClient;
use huitou_runtime::auth::{ApiKeySecret, BoxFuture, KeyVerifier};
use huitou_runtime::client::{InternalCredential, channel, for_shop};
use huitou_runtime::{Caller, Failure, Role};
use secrecy::SecretString;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long a valid answer is kept.
const VALID_FOR: Duration = Duration::from_secs(30);
/// How long an invalid answer is kept.
const INVALID_FOR: Duration = Duration::from_secs(5);
/// Answers kept at most (then the oldest half is dropped).
const MAX_ANSWERS: usize = 10_000;

type Answer = (Instant, String, Option<Caller>);

/// A [`KeyVerifier`] asking the customer service.
pub struct RemoteKeys {
    client: ShopServiceClient<InterceptedService<Channel, InternalCredential>>,
    answers: Mutex<HashMap<String, Answer>>,
}

impl RemoteKeys {
    /// Asks the customer service at `endpoint` (e.g. `http://customer:50051`)
    /// with the internal `token`.
    pub fn new(endpoint: &str, token: &SecretString) -> Result<Self, Failure> {
        let channel = channel(endpoint, Duration::from_secs(3))?;
        Ok(Self {
            client: ShopServiceClient::with_interceptor(channel, InternalCredential::new(token)?),
            answers: Mutex::default(),
        })
    }

    fn cached(&self, key_id: &str, hash: &str) -> Option<Option<Caller>> {
        let answers = self.answers.lock().ok()?;
        let (at, h, caller) = answers.get(key_id)?;
        let ttl = if caller.is_some() {
            VALID_FOR
        } else {
            INVALID_FOR
        };
        (h == hash && at.elapsed() < ttl).then(|| caller.clone())
    }

    fn keep(&self, key_id: &str, hash: String, caller: Option<Caller>) {
        if let Ok(mut answers) = self.answers.lock() {
            if answers.len() >= MAX_ANSWERS {
                let mut by_age: Vec<(Instant, String)> =
                    answers.iter().map(|(k, v)| (v.0, k.clone())).collect();
                by_age.sort();
                for (_, k) in by_age.into_iter().take(MAX_ANSWERS / 2) {
                    answers.remove(&k);
                }
            }
            answers.insert(key_id.to_owned(), (Instant::now(), hash, caller));
        }
    }
}

impl KeyVerifier for RemoteKeys {
    fn verify<'a>(
        &'a self,
        key: &'a ApiKeySecret,
    ) -> BoxFuture<'a, Result<Option<Caller>, Failure>> {
        Box::pin(async move {
            let hash = key.secret_hash();
            if let Some(answer) = self.cached(&key.key_id, &hash) {
                return Ok(answer);
            }
            let request = for_shop(
                // Internal calls name a shop; a key check is for none yet.
                "-",
                VerifyApiKeyRequest {
                    key_id: key.key_id.clone(),
                    secret_sha256: hash.clone(),
                },
            )?;
            let answer = self
                .client
                .clone()
                .verify_api_key(request)
                .await
                .map_err(|s| {
                    Failure::unavailable(
                        "KEY_SERVICE_UNAVAILABLE",
                        format!("API keys cannot be checked now: {}", s.message()),
                    )
                })?
                .into_inner();
            let caller = match (answer.valid, Role::parse(&answer.role)) {
                (true, Some(role)) if role != Role::Internal => Some(Caller {
                    shop_id: answer.shop_id,
                    role,
                    key_id: key.key_id.clone(),
                }),
                _ => None,
            };
            self.keep(&key.key_id, hash, caller.clone());
            Ok(caller)
        })
    }
}
