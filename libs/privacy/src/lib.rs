//! Personal data (phone, address, WeChat id, email, name) at rest and on the
//! wire.
//!
//! - [`Vault::seal`] encrypts with AES-256-GCM under the active key; the
//!   sealed bytes carry the key id, so old keys keep opening old values while
//!   new writes use the new key (rotation). The shop and field are bound in as
//!   associated data, so a value copied to another customer or field will not
//!   open.
//! - [`Vault::blind_index`] is a keyed hash (HMAC-SHA256) for exact lookups
//!   (find by phone) without storing the value in clear.
//! - [`contact`] validates and normalises values and masks them for display.

pub mod contact;

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Keys for personal data, from config or a secret.
#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PersonalDataConfig {
    /// Encryption keys by id: 64 hex characters (32 bytes) each. Keep old
    /// keys until every value has been re-sealed under the active one.
    #[serde(skip_serializing)]
    pub keys: BTreeMap<String, SecretString>,
    /// The key id new values are sealed with.
    pub active_key_id: String,
    /// Key of the blind index (64 hex characters). It cannot rotate without
    /// re-indexing, so it is separate from the encryption keys.
    #[serde(skip_serializing)]
    pub index_key: Option<SecretString>,
}

impl fmt::Debug for PersonalDataConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonalDataConfig")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("active_key_id", &self.active_key_id)
            .field("index_key", &"****")
            .finish()
    }
}

impl PersonalDataConfig {
    /// Problems with the settings, each naming the setting.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.keys.is_empty() {
            problems.push(format!("{section}.keys: at least one key is required"));
        }
        for (id, key) in &self.keys {
            if !valid_key_id(id) {
                problems.push(format!(
                    "{section}.keys.{id}: key ids are 1-32 letters, digits, '-' or '_'"
                ));
            }
            if parse_hex_key(key.expose_secret()).is_none() {
                problems.push(format!(
                    "{section}.keys.{id}: must be 64 hex characters (32 bytes)"
                ));
            }
        }
        if !self.keys.contains_key(&self.active_key_id) {
            problems.push(format!(
                "{section}.active_key_id: must name one of {section}.keys"
            ));
        }
        match &self.index_key {
            Some(k) if parse_hex_key(k.expose_secret()).is_some() => {}
            _ => problems.push(format!(
                "{section}.index_key: must be 64 hex characters (32 bytes)"
            )),
        }
        problems
    }

    /// A fresh config with one random key and a random index key, as hex.
    pub fn generate(key_id: &str) -> Result<Self, PrivacyError> {
        let mut keys = BTreeMap::new();
        keys.insert(key_id.to_owned(), SecretString::from(random_hex_key()?));
        Ok(Self {
            keys,
            active_key_id: key_id.to_owned(),
            index_key: Some(SecretString::from(random_hex_key()?)),
        })
    }
}

/// 32 random bytes as 64 hex characters.
pub fn random_hex_key() -> Result<String, PrivacyError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| PrivacyError::NoRandomness)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_hex_key(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Why personal data could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivacyError {
    /// The settings are wrong.
    #[error("personal data keys are misconfigured: {0}")]
    Config(String),
    /// The value was sealed under a key that is no longer configured.
    #[error("personal data was sealed with key {0:?}, which is not configured")]
    UnknownKey(String),
    /// The value is damaged, or belongs to another shop or field.
    #[error("personal data could not be opened (damaged or moved)")]
    Corrupt,
    /// The operating system gave no randomness.
    #[error("no randomness available")]
    NoRandomness,
}

/// Where a sealed value belongs; bound into the ciphertext.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    /// The shop.
    pub shop_id: &'a str,
    /// The field, e.g. `phone`.
    pub field: &'a str,
}

impl SealContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.shop_id.len() + self.field.len() + 1);
        aad.extend_from_slice(self.shop_id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(self.field.as_bytes());
        aad
    }
}

/// Seals and opens personal data, and computes blind indexes.
pub struct Vault {
    ciphers: BTreeMap<String, Aes256Gcm>,
    active_key_id: String,
    index_mac: Hmac<Sha256>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vault(active key {:?})", self.active_key_id)
    }
}

impl Vault {
    /// A vault from validated settings.
    pub fn new(config: &PersonalDataConfig) -> Result<Self, PrivacyError> {
        let problems = config.problems("personal_data");
        if !problems.is_empty() {
            return Err(PrivacyError::Config(problems.join("; ")));
        }
        let mut ciphers = BTreeMap::new();
        for (id, key) in &config.keys {
            let bytes = parse_hex_key(key.expose_secret())
                .ok_or_else(|| PrivacyError::Config(id.clone()))?;
            let cipher =
                Aes256Gcm::new_from_slice(&bytes).map_err(|_| PrivacyError::Config(id.clone()))?;
            ciphers.insert(id.clone(), cipher);
        }
        let index_key = config
            .index_key
            .as_ref()
            .and_then(|k| parse_hex_key(k.expose_secret()))
            .ok_or_else(|| PrivacyError::Config("index_key".into()))?;
        let index_mac = Hmac::<Sha256>::new_from_slice(&index_key)
            .map_err(|_| PrivacyError::Config("index_key".into()))?;
        Ok(Self {
            ciphers,
            active_key_id: config.active_key_id.clone(),
            index_mac,
        })
    }

    /// Encrypts `plaintext` under the active key:
    /// `[version][key id length][key id][nonce][ciphertext + tag]`.
    pub fn seal(&self, context: SealContext<'_>, plaintext: &str) -> Result<Vec<u8>, PrivacyError> {
        let cipher = self
            .ciphers
            .get(&self.active_key_id)
            .ok_or_else(|| PrivacyError::UnknownKey(self.active_key_id.clone()))?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| PrivacyError::NoRandomness)?;
        let aad = context.aad();
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| PrivacyError::Corrupt)?;
        let id = self.active_key_id.as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_VERSION);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts a value sealed by [`Vault::seal`] in the same context.
    pub fn open(&self, context: SealContext<'_>, sealed: &[u8]) -> Result<String, PrivacyError> {
        let (key_id, nonce, ciphertext) = split_sealed(sealed)?;
        let cipher = self
            .ciphers
            .get(key_id)
            .ok_or_else(|| PrivacyError::UnknownKey(key_id.to_owned()))?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| PrivacyError::Corrupt)?;
        let aad = context.aad();
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| PrivacyError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| PrivacyError::Corrupt)
    }

    /// True when `sealed` uses a key other than the active one and should be
    /// re-sealed.
    pub fn is_stale(&self, sealed: &[u8]) -> bool {
        split_sealed(sealed)
            .map(|(id, _, _)| id != self.active_key_id)
            .unwrap_or(true)
    }

    /// Keyed hash of a normalised value, for exact lookups: 32 hex characters.
    pub fn blind_index(&self, shop_id: &str, kind: &str, normalized: &str) -> String {
        let mut mac = self.index_mac.clone();
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(shop_id.as_bytes());
        mac.update(&[0]);
        mac.update(normalized.as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn split_sealed(sealed: &[u8]) -> Result<(&str, &[u8], &[u8]), PrivacyError> {
    let (&version, rest) = sealed.split_first().ok_or(PrivacyError::Corrupt)?;
    if version != FORMAT_VERSION {
        return Err(PrivacyError::Corrupt);
    }
    let (&id_len, rest) = rest.split_first().ok_or(PrivacyError::Corrupt)?;
    let id_len = id_len as usize;
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(PrivacyError::Corrupt);
    }
    let (id, rest) = rest.split_at(id_len);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let id = std::str::from_utf8(id).map_err(|_| PrivacyError::Corrupt)?;
    Ok((id, nonce, ciphertext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault_with(ids: &[&str], active: &str) -> Vault {
        let mut config = PersonalDataConfig::generate(ids[0]).expect("config");
        for id in &ids[1..] {
            config.keys.insert(
                (*id).to_owned(),
                SecretString::from(random_hex_key().expect("key")),
            );
        }
        config.active_key_id = active.to_owned();
        Vault::new(&config).expect("vault")
    }

    const CX: SealContext<'static> = SealContext {
        shop_id: "shop-a",
        field: "phone",
    };

    #[test]
    fn seal_open_round_trip_and_ciphertext_hides_the_value() {
        let vault = vault_with(&["k1"], "k1");
        let sealed = vault.seal(CX, "13812345678").expect("seal");
        assert!(!sealed.windows(11).any(|w| w == b"13812345678"));
        assert_eq!(vault.open(CX, &sealed).expect("open"), "13812345678");
        // Same value twice gives different bytes (random nonce).
        assert_ne!(sealed, vault.seal(CX, "13812345678").expect("seal"));
    }

    #[test]
    fn a_value_moved_to_another_shop_or_field_does_not_open() {
        let vault = vault_with(&["k1"], "k1");
        let sealed = vault.seal(CX, "13812345678").expect("seal");
        let other_shop = SealContext {
            shop_id: "shop-b",
            field: "phone",
        };
        let other_field = SealContext {
            shop_id: "shop-a",
            field: "email",
        };
        assert_eq!(vault.open(other_shop, &sealed), Err(PrivacyError::Corrupt));
        assert_eq!(vault.open(other_field, &sealed), Err(PrivacyError::Corrupt));
        let mut damaged = sealed.clone();
        if let Some(last) = damaged.last_mut() {
            *last ^= 1;
        }
        assert_eq!(vault.open(CX, &damaged), Err(PrivacyError::Corrupt));
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let mut config = PersonalDataConfig::generate("k1").expect("config");
        let old = Vault::new(&config).expect("vault");
        let sealed_old = old.seal(CX, "old value").expect("seal");
        config.keys.insert(
            "k2".into(),
            SecretString::from(random_hex_key().expect("key")),
        );
        config.active_key_id = "k2".into();
        let new = Vault::new(&config).expect("vault");
        assert_eq!(new.open(CX, &sealed_old).expect("open"), "old value");
        assert!(new.is_stale(&sealed_old));
        let sealed_new = new.seal(CX, "new value").expect("seal");
        assert!(!new.is_stale(&sealed_new));
        // A vault without the old key says which key is missing.
        let only_k2 = vault_with(&["k2"], "k2");
        assert_eq!(
            only_k2.open(CX, &sealed_old),
            Err(PrivacyError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn blind_index_is_stable_per_shop_and_keyed() {
        let vault = vault_with(&["k1"], "k1");
        let a = vault.blind_index("shop-a", "phone", "+8613812345678");
        assert_eq!(a, vault.blind_index("shop-a", "phone", "+8613812345678"));
        assert_ne!(a, vault.blind_index("shop-b", "phone", "+8613812345678"));
        assert_ne!(
            a,
            vault_with(&["k1"], "k1").blind_index("shop-a", "phone", "+8613812345678")
        );
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn bad_config_names_the_setting() {
        let mut config = PersonalDataConfig::generate("k1").expect("config");
        config.active_key_id = "nope".into();
        config
            .keys
            .insert("bad key".into(), SecretString::from("xyz".to_owned()));
        let problems = config.problems("personal_data");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("personal_data.active_key_id"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("personal_data.keys.bad key"))
        );
        assert!(format!("{config:?}").contains("****"));
    }
}
