//! `huitou.customer.v1.ShopService`: the caller's shop and its API keys.

use std::sync::Arc;

use huitou_proto::customer::v1 as pb;
use huitou_proto::customer::v1::shop_service_server::ShopService;
use huitou_runtime::auth::caller;
use huitou_runtime::{Failure, FieldViolations, Role};
use huitou_storage::idempotency::{IdempotencyKey, check_request_id};
use tonic::{Request, Response, Status};

use super::convert;
use crate::store::Store;
use crate::store::shops::{StoredKeys, check_shop_name, check_time_zone};

/// The shop service's handlers.
pub struct ShopApi {
    store: Store,
    keys: Arc<StoredKeys>,
}

impl ShopApi {
    /// Handlers over `store`; `keys` is told about revocations.
    pub fn new(store: Store, keys: Arc<StoredKeys>) -> Self {
        Self { store, keys }
    }
}

#[tonic::async_trait]
impl ShopService for ShopApi {
    async fn get_shop(
        &self,
        request: Request<pb::GetShopRequest>,
    ) -> Result<Response<pb::GetShopResponse>, Status> {
        let caller = caller(&request)?;
        let shop = self.store.shop(&caller.shop_id).await?;
        Ok(Response::new(pb::GetShopResponse {
            shop: Some(convert::shop(&shop)),
        }))
    }

    async fn update_shop(
        &self,
        request: Request<pb::UpdateShopRequest>,
    ) -> Result<Response<pb::UpdateShopResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        if let Some(name) = &req.name
            && let Err(why) = check_shop_name(name)
        {
            v.add("name", why);
        }
        if let Some(tz) = &req.time_zone
            && let Err(why) = check_time_zone(tz)
        {
            v.add("time_zone", why);
        }
        v.finish()?;
        let key = IdempotencyKey::for_request(&caller.shop_id, "UpdateShop", &req.request_id, &req);
        let (shop, name, tz) = (
            caller.shop_id.clone(),
            req.name.clone(),
            req.time_zone.clone(),
        );
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, name, tz) = (shop.clone(), name.clone(), tz.clone());
                Box::pin(async move {
                    store
                        .update_shop(tx, &shop, name.as_deref(), tz.as_deref())
                        .await?;
                    Ok(pb::UpdateShopResponse::default())
                })
            })
            .await;
        response?;
        let shop = self.store.shop(&caller.shop_id).await?;
        Ok(Response::new(pb::UpdateShopResponse {
            shop: Some(convert::shop(&shop)),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_admin()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let role = match pb::Role::try_from(req.role) {
            Ok(pb::Role::Storefront) => Some(Role::Storefront),
            Ok(pb::Role::Operator) => Some(Role::Operator),
            Ok(pb::Role::Admin) => Some(Role::Admin),
            _ => {
                v.add(
                    "role",
                    "must be ROLE_STOREFRONT, ROLE_OPERATOR or ROLE_ADMIN",
                );
                None
            }
        };
        if req.label.chars().count() > 64 {
            v.add("label", "must be at most 64 characters");
        }
        v.finish()?;
        let role = role.ok_or_else(|| Failure::invalid_field("role", "is required"))?;
        let (record, api_key) = self
            .store
            .create_api_key(&caller.shop_id, role, req.label.trim())
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(convert::api_key(&record)),
            api_key,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_admin()?;
        let keys = self.store.api_keys(&caller.shop_id).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.iter().map(convert::api_key).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_admin()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        convert::id_field(&req.key_id, "key_id", &mut v);
        v.finish()?;
        let key = self
            .store
            .revoke_api_key(&caller.shop_id, &req.key_id)
            .await?;
        self.keys.forget(&key.id);
        Ok(Response::new(pb::RevokeApiKeyResponse {
            key: Some(convert::api_key(&key)),
        }))
    }

    async fn verify_api_key(
        &self,
        request: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        if caller.role != Role::Internal {
            return Err(Failure::permission_denied("only Huitou services check API keys").into());
        }
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(
            !req.key_id.is_empty() && req.key_id.len() <= 64,
            "key_id",
            "must be 1-64 characters",
        );
        v.check(
            req.secret_sha256.len() == 64
                && req
                    .secret_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "secret_sha256",
            "must be 64 lower-case hex characters",
        );
        v.finish()?;
        let found = self
            .keys
            .verify_hash(&req.key_id, &req.secret_sha256)
            .await?;
        Ok(Response::new(match found {
            Some(c) => pb::VerifyApiKeyResponse {
                valid: true,
                shop_id: c.shop_id,
                role: c.role.as_str().into(),
            },
            None => pb::VerifyApiKeyResponse::default(),
        }))
    }
}
