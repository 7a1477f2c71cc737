//! Who is calling: API keys, roles and the internal credential.
//!
//! A caller presents `authorization: Bearer <key>`. A shop's key has the form
//! `hk_<id>_<secret>`; only a SHA-256 of the secret is stored (the secret has
//! 160 random bits, so a slow password hash would add cost and no safety).
//! Services call each other with the internal credential plus
//! `x-huitou-shop-id` naming the shop they act for.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::error::Failure;

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Metadata naming the shop an internal call acts for.
pub const SHOP_HEADER: &str = "x-huitou-shop-id";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A storefront backend: orders, lookups, checkout; never personal data
    /// in clear, never settings.
    Storefront,
    /// Operations staff: reveals with a reason, settings.
    Operator,
    /// The shop's administrator: also API keys.
    Admin,
    /// Another Huitou service acting for a shop.
    Internal,
}

impl Role {
    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storefront => "storefront",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Internal => "internal",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "storefront" => Some(Role::Storefront),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            "internal" => Some(Role::Internal),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of one request, put in the request's extensions
/// by the server's call layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The shop every read and write of this request is scoped to.
    pub shop_id: String,
    /// What the caller may do.
    pub role: Role,
    /// The API key id (or `internal`), for audit logs.
    pub key_id: String,
}

impl Caller {
    /// May see personal data in clear (with a reason) and erase it.
    pub fn require_personal_data_access(&self) -> Result<(), Failure> {
        match self.role {
            Role::Operator | Role::Admin | Role::Internal => Ok(()),
            Role::Storefront => Err(Failure::permission_denied(
                "a storefront key cannot see or erase personal data; use an operator key",
            )),
        }
    }

    /// May change the shop's settings.
    pub fn require_settings_access(&self) -> Result<(), Failure> {
        match self.role {
            Role::Operator | Role::Admin => Ok(()),
            Role::Storefront | Role::Internal => Err(Failure::permission_denied(
                "only operator and admin keys can change settings",
            )),
        }
    }

    /// May manage API keys.
    pub fn require_admin(&self) -> Result<(), Failure> {
        match self.role {
            Role::Admin => Ok(()),
            _ => Err(Failure::permission_denied(
                "only admin keys can manage API keys",
            )),
        }
    }
}

/// Takes the caller out of a request, as put there by the call layer.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, Failure> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            Failure::new(
                tonic::Code::Unauthenticated,
                "UNAUTHENTICATED",
                "no caller on this request",
            )
        })
}

/// A parsed shop API key.
pub struct ApiKeySecret {
    /// The public part, stored in clear and shown in lists.
    pub key_id: String,
    secret: SecretString,
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({}, ****)", self.key_id)
    }
}

const KEY_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn random_token(len: usize) -> Result<String, Failure> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| Failure::internal(format!("no randomness: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| KEY_ALPHABET[(b & 31) as usize] as char)
        .collect())
}

impl ApiKeySecret {
    /// A fresh random key: 16 characters of id, 32 of secret (160 bits).
    pub fn generate() -> Result<Self, Failure> {
        Ok(Self {
            key_id: random_token(16)?,
            secret: SecretString::from(random_token(32)?),
        })
    }

    /// Parses `hk_<id>_<secret>`; `None` when it is not of that form.
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix("hk_")?;
        let (id, secret) = rest.split_once('_')?;
        let valid =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| KEY_ALPHABET.contains(&b));
        if !valid(id, 16) || !valid(secret, 32) {
            return None;
        }
        Some(Self {
            key_id: id.to_owned(),
            secret: SecretString::from(secret.to_owned()),
        })
    }

    /// The stored form of the secret.
    pub fn secret_hash(&self) -> String {
        hex(&Sha256::digest(self.secret.expose_secret().as_bytes()))
    }

    /// The whole key, to show once to whoever created it.
    pub fn reveal(&self) -> String {
        format!("hk_{}_{}", self.key_id, self.secret.expose_secret())
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Looks up shop API keys. Implemented by the service that stores them.
pub trait KeyVerifier: Send + Sync + 'static {
    /// The caller a key stands for, `None` when unknown or revoked.
    fn verify<'a>(
        &'a self,
        key: &'a ApiKeySecret,
    ) -> BoxFuture<'a, Result<Option<Caller>, Failure>>;
}

/// Everything the call layer needs to authenticate a request.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<dyn KeyVerifier>,
    internal_token_hash: Arc<[u8]>,
}

impl Authenticator {
    /// Shop keys from `keys`; the internal credential `internal_token`.
    pub fn new(keys: Arc<dyn KeyVerifier>, internal_token: &SecretString) -> Self {
        Self {
            keys,
            internal_token_hash: Sha256::digest(internal_token.expose_secret().as_bytes())
                .to_vec()
                .into(),
        }
    }

    /// Authenticates a request's headers.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, Failure> {
        let unauthenticated =
            |msg: &str| Failure::new(tonic::Code::Unauthenticated, "UNAUTHENTICATED", msg);
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("missing `authorization: Bearer <api key>` metadata"))?
            .to_str()
            .map_err(|_| unauthenticated("authorization metadata is not text"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| unauthenticated("authorization must be `Bearer <api key>`"))?
            .trim();
        if let Some(key) = ApiKeySecret::parse(token) {
            return self
                .keys
                .verify(&key)
                .await?
                .ok_or_else(|| unauthenticated("unknown or revoked API key"));
        }
        if constant_time_eq(&Sha256::digest(token.as_bytes()), &self.internal_token_hash) {
            let shop_id = headers
                .get(SHOP_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|s| !s.is_empty() && s.len() <= 64)
                .ok_or_else(|| {
                    unauthenticated("internal calls must name the shop in x-huitou-shop-id")
                })?;
            return Ok(Caller {
                shop_id: shop_id.to_owned(),
                role: Role::Internal,
                key_id: "internal".into(),
            });
        }
        Err(unauthenticated("unknown or revoked API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneKey(String);

    impl KeyVerifier for OneKey {
        fn verify<'a>(
            &'a self,
            key: &'a ApiKeySecret,
        ) -> BoxFuture<'a, Result<Option<Caller>, Failure>> {
            Box::pin(async move {
                Ok((key.secret_hash() == self.0).then(|| Caller {
                    shop_id: "shop-1".into(),
                    role: Role::Storefront,
                    key_id: key.key_id.clone(),
                }))
            })
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                h.insert(k, v);
            }
        }
        h
    }

    #[tokio::test]
    async fn keys_round_trip_and_only_the_right_secret_passes() -> Result<(), Failure> {
        let key = ApiKeySecret::generate()?;
        let full = key.reveal();
        let parsed = ApiKeySecret::parse(&full).ok_or_else(|| Failure::internal("parse"))?;
        assert_eq!(parsed.secret_hash(), key.secret_hash());
        assert!(
            !format!("{parsed:?}").contains(&full[20..]),
            "debug output hides the secret"
        );

        let auth = Authenticator::new(
            Arc::new(OneKey(key.secret_hash())),
            &SecretString::from("internal-secret"),
        );
        let ok = auth
            .authenticate(&headers(&[("authorization", &format!("Bearer {full}"))]))
            .await?;
        assert_eq!(ok.role, Role::Storefront);

        let other = ApiKeySecret::generate()?.reveal();
        let denied = auth
            .authenticate(&headers(&[("authorization", &format!("Bearer {other}"))]))
            .await;
        assert_eq!(
            denied.map_err(|f| f.code),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(auth.authenticate(&headers(&[])).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn internal_credential_needs_a_shop() -> Result<(), Failure> {
        let auth = Authenticator::new(
            Arc::new(OneKey(String::new())),
            &SecretString::from("internal-secret"),
        );
        let no_shop = auth
            .authenticate(&headers(&[("authorization", "Bearer internal-secret")]))
            .await;
        assert!(no_shop.is_err());
        let caller = auth
            .authenticate(&headers(&[
                ("authorization", "Bearer internal-secret"),
                (SHOP_HEADER, "s1"),
            ]))
            .await?;
        assert_eq!(
            (caller.role, caller.shop_id.as_str()),
            (Role::Internal, "s1")
        );
        Ok(())
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in [
            "",
            "hk_",
            "hk_short_short",
            "sk_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        ] {
            assert!(ApiKeySecret::parse(bad).is_none(), "{bad}");
        }
    }
}
