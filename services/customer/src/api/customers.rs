//! `huitou.customer.v1.CustomerService`: check, scope to the caller's shop,
//! call the store, convert.

use std::time::Duration;

use huitou_proto::customer::v1 as pb;
use huitou_proto::customer::v1::customer_service_server::CustomerService;
use huitou_runtime::auth::caller;
use huitou_runtime::{Caller, Failure, FieldViolations};
use huitou_storage::cache::{rate_limit, shop_key};
use huitou_storage::idempotency::{IdempotencyKey, check_request_id};
use huitou_storage::{now_micros, outbox};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::domain::customer::{Consent, ContactField, MAX_TAGS, channel_name};
use crate::domain::order::Step;
use crate::domain::paging;
use crate::error::CustomerError;
use crate::events;
use crate::intake::OrderIntake;
use crate::store::Store;
use crate::store::audit::AuditAction;
use crate::store::customers::CustomerFilter;
use crate::store::imports::EarlierBatch;

/// Batches of one import written at once on PostgreSQL. Measured: two gave
/// 20,600-22,300 rows/s, three 22,000-22,600 (docs/benchmarks.md). SQLite
/// has one writer at a time: there a batch is written while the next
/// message is read and checked, no more (a batch holding the write gate
/// while it waits for an earlier one still queued for the gate would never
/// finish).
const IMPORT_BATCHES_IN_FLIGHT: usize = 3;

/// An import batch being written: its task, the buyers and order numbers it
/// writes, and its outcome for the batch after it.
struct InFlight {
    task: tokio::task::JoinHandle<Result<pb::ImportOrdersResponse, CustomerError>>,
    keys: std::collections::HashSet<String>,
    outcome: EarlierBatch,
}

/// Limits on lookups of personal data, per API key.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersonalDataLimits {
    /// RevealContact calls per key per hour.
    pub reveals_per_hour: i64,
    /// FindCustomerByPhone calls per key per minute (stops enumeration).
    pub phone_lookups_per_minute: i64,
}

impl Default for PersonalDataLimits {
    fn default() -> Self {
        Self {
            reveals_per_hour: 200,
            phone_lookups_per_minute: 600,
        }
    }
}

/// The customer service's handlers.
pub struct CustomerApi {
    store: Store,
    intake: OrderIntake,
    limits: PersonalDataLimits,
}

impl CustomerApi {
    /// Handlers over `store`.
    pub fn new(store: Store, limits: PersonalDataLimits) -> Self {
        Self {
            intake: OrderIntake::start(store.clone()),
            store,
            limits,
        }
    }

    async fn step(
        &self,
        caller: &Caller,
        method: &'static str,
        request_id: &str,
        key_source: &impl prost::Message,
        order_no: &str,
        step: Step,
    ) -> Result<pb::Order, Status> {
        let mut v = FieldViolations::new();
        check_request_id(request_id, &mut v);
        v.finish()?;
        let key = IdempotencyKey::for_request(&caller.shop_id, method, request_id, key_source);
        let shop = caller.shop_id.clone();
        let order_no = order_no.to_owned();
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, order_no, step) = (shop.clone(), order_no.clone(), step.clone());
                Box::pin(async move {
                    let order = store.step_order(tx, &shop, &order_no, step).await?;
                    Ok(pb::GetOrderResponse {
                        order: Some(convert::order(&order)),
                    })
                })
            })
            .await?;
        response
            .order
            .ok_or_else(|| Status::internal("missing order"))
    }
}

fn one_of(a: &str, a_name: &str, b: &str, b_name: &str) -> Result<(), Failure> {
    match (a.is_empty(), b.is_empty()) {
        (false, true) | (true, false) => Ok(()),
        _ => Err(Failure::invalid_field(
            a_name,
            format!("give exactly one of {a_name} and {b_name}"),
        )),
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn upsert_customer(
        &self,
        request: Request<pb::UpsertCustomerRequest>,
    ) -> Result<Response<pb::UpsertCustomerResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        convert::ident(&req.buyer_nick, "buyer_nick", 64, &mut v);
        let changes = convert::profile_changes(&req, &mut v);
        v.finish()?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "UpsertCustomer", &req.request_id, &req);
        let (shop, nick) = (caller.shop_id.clone(), req.buyer_nick.clone());
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, nick, changes) = (shop.clone(), nick.clone(), changes.clone());
                Box::pin(async move {
                    let (mut record, created) =
                        store.lock_or_create_by_nick(tx, &shop, &nick).await?;
                    let changed = record.apply_profile(&store.vault, &changes)?;
                    if created || !changed.is_empty() {
                        store.save_customer(tx, &mut record, created).await?;
                    }
                    let mut pending = Vec::new();
                    if created {
                        pending.push(events::customer_created(&shop, &record.customer));
                    }
                    if !changed.is_empty() {
                        pending.push(events::customer_updated(&shop, &record.customer, changed));
                    }
                    outbox::append_many(tx, pending).await?;
                    Ok(pb::UpsertCustomerResponse {
                        customer: Some(convert::customer(&record.customer)),
                        created,
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        one_of(
            &req.customer_id,
            "customer_id",
            &req.buyer_nick,
            "buyer_nick",
        )?;
        let shop = &caller.shop_id;
        let cached_id = if req.customer_id.is_empty() {
            self.store.cache.id_for_nick(shop, &req.buyer_nick).await
        } else {
            Some(req.customer_id.clone())
        };
        if let Some(id) = &cached_id
            && let Some(customer) = self.store.cache.get(shop, id).await
        {
            return Ok(Response::new(pb::GetCustomerResponse {
                customer: Some(customer),
            }));
        }
        let record = match cached_id {
            Some(id) => self.store.customer(shop, &id).await?,
            None => self.store.customer_by_nick(shop, &req.buyer_nick).await?,
        };
        let customer = self.store.cache.remember(shop, &record.customer).await;
        Ok(Response::new(pb::GetCustomerResponse {
            customer: Some(customer),
        }))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        if !req.tag.is_empty() && crate::domain::customer::check_tag(&req.tag).is_err() {
            v.add("tag", "is not a valid tag");
        }
        let filter = CustomerFilter {
            tag: (!req.tag.is_empty()).then(|| req.tag.clone()),
            last_order_after: req
                .last_order_after
                .as_ref()
                .and_then(|t| check_time(t, "last_order_after", &mut v)),
            last_order_before: req
                .last_order_before
                .as_ref()
                .and_then(|t| check_time(t, "last_order_before", &mut v)),
            min_order_count: req.min_order_count,
            max_order_count: req.max_order_count,
        };
        for (name, n) in [
            ("min_order_count", req.min_order_count),
            ("max_order_count", req.max_order_count),
        ] {
            if n.is_some_and(|n| n < 0) {
                v.add(name, "must be 0 or more");
            }
        }
        if let (Some(a), Some(b)) = (req.min_order_count, req.max_order_count)
            && a > b
        {
            v.add("max_order_count", "must be at least min_order_count");
        }
        v.finish()?;
        let fingerprint = paging::fingerprint(&filter.describe());
        let after = paging::decode(&req.page_token, &fingerprint)?;
        let mut records = self
            .store
            .list_customers(&caller.shop_id, &filter, after.as_deref(), size + 1)
            .await?;
        let next_page_token =
            paging::next_page(&mut records, size, &fingerprint, |r| &r.customer.id);
        Ok(Response::new(pb::ListCustomersResponse {
            customers: records
                .iter()
                .map(|r| convert::customer(&r.customer))
                .collect(),
            next_page_token,
        }))
    }

    async fn find_customer_by_phone(
        &self,
        request: Request<pb::FindCustomerByPhoneRequest>,
    ) -> Result<Response<pb::FindCustomerByPhoneResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let phone = ContactField::Phone
            .normalize(&req.phone)
            .map_err(|why| Failure::invalid_field("phone", why))?;
        let key = shop_key(&caller.shop_id, &["phone-lookups", &caller.key_id]);
        rate_limit(
            &**self.store.cache.inner(),
            &key,
            self.limits.phone_lookups_per_minute,
            Duration::from_secs(60),
        )
        .await?;
        let record = self
            .store
            .customer_by_phone(&caller.shop_id, &phone)
            .await?;
        Ok(Response::new(pb::FindCustomerByPhoneResponse {
            customer: Some(convert::customer(&record.customer)),
        }))
    }

    async fn reveal_contact(
        &self,
        request: Request<pb::RevealContactRequest>,
    ) -> Result<Response<pb::RevealContactResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_personal_data_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        convert::id_field(&req.customer_id, "customer_id", &mut v);
        let field = ContactField::from_i32(req.field);
        if field.is_none() {
            v.add(
                "field",
                "must be one of CONTACT_FIELD_NAME, _PHONE, _ADDRESS, _WECHAT_ID, _EMAIL",
            );
        }
        convert::reason(&req.reason, &mut v);
        v.finish()?;
        let field = field.ok_or_else(|| Failure::invalid_field("field", "is required"))?;
        let key = shop_key(&caller.shop_id, &["reveals", &caller.key_id]);
        rate_limit(
            &**self.store.cache.inner(),
            &key,
            self.limits.reveals_per_hour,
            Duration::from_secs(3600),
        )
        .await?;
        let (customer_id, reason) = (req.customer_id.clone(), req.reason.trim().to_owned());
        let answer = self
            .store
            .write(None, move |tx, store| {
                let (caller, customer_id, reason) =
                    (caller.clone(), customer_id.clone(), reason.clone());
                Box::pin(async move {
                    let record = store
                        .lock_customer(tx, &caller.shop_id, &customer_id)
                        .await?;
                    if record.customer.erased_at.is_some() {
                        return Err(CustomerError::Erased);
                    }
                    let value = record.reveal(&store.vault, field)?.unwrap_or_default();
                    let audit_entry_id = store
                        .audit(
                            tx,
                            &caller,
                            AuditAction::RevealContact,
                            &customer_id,
                            field.as_i32(),
                            &reason,
                        )
                        .await?;
                    Ok(pb::RevealContactResponse {
                        value,
                        audit_entry_id,
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_personal_data_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        if req.customer_id.len() > 64 {
            v.add("customer_id", "must be at most 64 characters");
        }
        v.finish()?;
        let fingerprint = paging::fingerprint(&format!("audit|{}", req.customer_id));
        let before = paging::decode(&req.page_token, &fingerprint)?;
        let customer = (!req.customer_id.is_empty()).then_some(req.customer_id.as_str());
        let mut entries = self
            .store
            .audit_entries(&caller.shop_id, customer, before.as_deref(), size + 1)
            .await?;
        let next_page_token = paging::next_page(&mut entries, size, &fingerprint, |e| &e.id);
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries: entries.iter().map(convert::audit_entry).collect(),
            next_page_token,
        }))
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SetConsentResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        convert::id_field(&req.customer_id, "customer_id", &mut v);
        let channel = channel_name(req.channel);
        if channel.is_none() {
            v.add(
                "channel",
                "must be a known channel, not CHANNEL_UNSPECIFIED",
            );
        }
        if let Err(why) = crate::domain::customer::text(req.source.trim(), 1, 64) {
            v.add("source", why);
        }
        let decided_at = convert::business_time(req.decide_time.as_ref(), "decide_time", &mut v)
            .unwrap_or_else(now_micros);
        v.finish()?;
        let channel_label = channel.unwrap_or("unknown");
        let key = IdempotencyKey::for_request(&caller.shop_id, "SetConsent", &req.request_id, &req);
        let consent = Consent {
            granted: req.granted,
            source: req.source.trim().to_owned(),
            decided_at,
        };
        let (shop, customer_id, channel_number) =
            (caller.shop_id.clone(), req.customer_id.clone(), req.channel);
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, customer_id, consent) =
                    (shop.clone(), customer_id.clone(), consent.clone());
                Box::pin(async move {
                    let mut record = store.lock_live_customer(tx, &shop, &customer_id).await?;
                    store
                        .record_consent_change(tx, &shop, &customer_id, channel_number, &consent)
                        .await?;
                    // A decision older than the one on file is history, not the current state.
                    let newer = record
                        .customer
                        .consents
                        .get(&channel_number)
                        .is_none_or(|c| c.decided_at <= consent.decided_at);
                    if newer {
                        record.customer.consents.insert(channel_number, consent);
                        store.save_customer(tx, &mut record, false).await?;
                        outbox::append(
                            tx,
                            events::customer_updated(
                                &shop,
                                &record.customer,
                                vec![format!("consent.{channel_label}")],
                            ),
                        )
                        .await?;
                    }
                    Ok(pb::SetConsentResponse {
                        customer: Some(convert::customer(&record.customer)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn update_customer_tags(
        &self,
        request: Request<pb::UpdateCustomerTagsRequest>,
    ) -> Result<Response<pb::UpdateCustomerTagsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        convert::id_field(&req.customer_id, "customer_id", &mut v);
        convert::tags(&req.add_tags, &req.remove_tags, &mut v);
        if req.add_tags.is_empty() && req.remove_tags.is_empty() {
            v.add("add_tags", "give tags to add or to remove");
        }
        v.finish()?;
        let key = IdempotencyKey::for_request(
            &caller.shop_id,
            "UpdateCustomerTags",
            &req.request_id,
            &req,
        );
        let (shop, customer_id, add, remove) = (
            caller.shop_id.clone(),
            req.customer_id.clone(),
            req.add_tags.clone(),
            req.remove_tags.clone(),
        );
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, customer_id, add, remove) = (
                    shop.clone(),
                    customer_id.clone(),
                    add.clone(),
                    remove.clone(),
                );
                Box::pin(async move {
                    let mut record = store.lock_live_customer(tx, &shop, &customer_id).await?;
                    let before = record.customer.tags.clone();
                    let mut tags: std::collections::BTreeSet<String> =
                        before.iter().cloned().collect();
                    tags.extend(add);
                    for t in &remove {
                        tags.remove(t);
                    }
                    if tags.len() > MAX_TAGS {
                        return Err(Failure::invalid_field(
                            "add_tags",
                            format!("a customer can carry at most {MAX_TAGS} tags"),
                        )
                        .into());
                    }
                    record.customer.tags = tags.into_iter().collect();
                    if record.customer.tags != before {
                        store.save_customer(tx, &mut record, false).await?;
                        outbox::append(
                            tx,
                            events::customer_updated(&shop, &record.customer, vec!["tags".into()]),
                        )
                        .await?;
                    }
                    Ok(pb::UpdateCustomerTagsResponse {
                        customer: Some(convert::customer(&record.customer)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn set_customer_attributes(
        &self,
        request: Request<pb::SetCustomerAttributesRequest>,
    ) -> Result<Response<pb::SetCustomerAttributesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        convert::id_field(&req.customer_id, "customer_id", &mut v);
        let set = convert::attributes(&req.set, &req.remove, &mut v);
        if req.set.is_empty() && req.remove.is_empty() {
            v.add("set", "give attributes to set or to remove");
        }
        v.finish()?;
        let key = IdempotencyKey::for_request(
            &caller.shop_id,
            "SetCustomerAttributes",
            &req.request_id,
            &req,
        );
        let (shop, customer_id, remove) = (
            caller.shop_id.clone(),
            req.customer_id.clone(),
            req.remove.clone(),
        );
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, customer_id, set, remove) = (
                    shop.clone(),
                    customer_id.clone(),
                    set.clone(),
                    remove.clone(),
                );
                Box::pin(async move {
                    let names: Vec<&str> = set.keys().map(String::as_str).collect();
                    let known = store.attribute_types(tx, &shop, &names).await?;
                    let mut v = FieldViolations::new();
                    for (name, value) in &set {
                        if let Some(t) = known.get(name)
                            && t != value.type_name()
                        {
                            v.add(
                                format!("set[{name}]"),
                                format!("this shop's attribute {name} holds {t} values"),
                            );
                        }
                    }
                    v.finish()?;
                    let mut record = store.lock_live_customer(tx, &shop, &customer_id).await?;
                    let mut changed = Vec::new();
                    for (name, value) in set {
                        if !known.contains_key(&name) {
                            let held = store.define_attribute(tx, &shop, &name, &value).await?;
                            if held != value.type_name() {
                                // Fixed by a request that committed meanwhile.
                                return Err(Failure::invalid_field(
                                    format!("set[{name}]"),
                                    format!("this shop's attribute {name} holds {held} values"),
                                )
                                .into());
                            }
                        }
                        if record.customer.attributes.get(&name) != Some(&value) {
                            changed.push(format!("attributes.{name}"));
                            record.customer.attributes.insert(name, value);
                        }
                    }
                    for name in remove {
                        if record.customer.attributes.remove(&name).is_some() {
                            changed.push(format!("attributes.{name}"));
                        }
                    }
                    if record.customer.attributes.len() > crate::domain::customer::MAX_ATTRIBUTES {
                        return Err(Failure::invalid_field(
                            "set",
                            "a customer can carry at most 64 attributes",
                        )
                        .into());
                    }
                    if !changed.is_empty() {
                        store.save_customer(tx, &mut record, false).await?;
                        outbox::append(
                            tx,
                            events::customer_updated(&shop, &record.customer, changed),
                        )
                        .await?;
                    }
                    Ok(pb::SetCustomerAttributesResponse {
                        customer: Some(convert::customer(&record.customer)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn resolve_contacts(
        &self,
        request: Request<pb::ResolveContactsRequest>,
    ) -> Result<Response<pb::ResolveContactsResponse>, Status> {
        let caller = caller(&request)?;
        if caller.role != huitou_runtime::auth::Role::Internal {
            return Err(Failure::permission_denied(
                "only Huitou's own services may resolve contact addresses",
            )
            .into());
        }
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        v.check(
            (1..=1000).contains(&req.customer_ids.len()),
            "customer_ids",
            "must name 1-1000 customers",
        );
        for (i, id) in req.customer_ids.iter().enumerate() {
            convert::id_field(id, &format!("customer_ids[{i}]"), &mut v);
        }
        let channel = pb::Channel::try_from(req.channel).unwrap_or(pb::Channel::Unspecified);
        v.check(
            channel != pb::Channel::Unspecified,
            "channel",
            "must be one of CHANNEL_SMS, _WECHAT, _PLATFORM_IM, _EMAIL, _APP_PUSH, _PHONE_CALL",
        );
        convert::reason(&req.reason, &mut v);
        v.finish()?;
        let records = self
            .store
            .customers_by_ids(&caller.shop_id, &req.customer_ids)
            .await?;
        let mut found = std::collections::HashMap::with_capacity(records.len());
        for r in &records {
            if r.customer.erased_at.is_some() {
                continue;
            }
            let address = match channel {
                pb::Channel::Sms | pb::Channel::PhoneCall => {
                    r.reveal(&self.store.vault, ContactField::Phone)?
                }
                pb::Channel::Wechat => r.reveal(&self.store.vault, ContactField::WechatId)?,
                pb::Channel::Email => r.reveal(&self.store.vault, ContactField::Email)?,
                pb::Channel::PlatformIm => Some(r.customer.buyer_nick.clone()),
                pb::Channel::AppPush => Some(r.customer.id.clone()),
                pb::Channel::Unspecified => None,
            };
            if let Some(a) = address.filter(|a| !a.is_empty()) {
                found.insert(r.customer.id.as_str(), a);
            }
        }
        let opened: Vec<String> = found.keys().map(|id| (*id).to_owned()).collect();
        if !opened.is_empty() {
            let field = match channel {
                pb::Channel::Sms | pb::Channel::PhoneCall => ContactField::Phone.as_i32(),
                pb::Channel::Wechat => ContactField::WechatId.as_i32(),
                pb::Channel::Email => ContactField::Email.as_i32(),
                _ => 0,
            };
            let reason = req.reason.trim().to_owned();
            self.store
                .write_answer(move |tx, store| {
                    let (caller, opened, reason) = (caller.clone(), opened.clone(), reason.clone());
                    Box::pin(async move {
                        store
                            .audit_each(
                                tx,
                                &caller,
                                AuditAction::ResolveContacts,
                                &opened,
                                field,
                                &reason,
                            )
                            .await
                    })
                })
                .await?;
        }
        let addresses = req
            .customer_ids
            .iter()
            .map(|id| pb::ContactAddress {
                customer_id: id.clone(),
                address: found.get(id.as_str()).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ResolveContactsResponse { addresses }))
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_personal_data_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        convert::id_field(&req.customer_id, "customer_id", &mut v);
        convert::reason(&req.reason, &mut v);
        v.finish()?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "EraseCustomer", &req.request_id, &req);
        let (customer_id, reason) = (req.customer_id.clone(), req.reason.trim().to_owned());
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (caller, customer_id, reason) =
                    (caller.clone(), customer_id.clone(), reason.clone());
                Box::pin(async move {
                    let mut record = store
                        .lock_customer(tx, &caller.shop_id, &customer_id)
                        .await?;
                    if record.customer.erased_at.is_none() {
                        let (cache, shop, nick) = (
                            store.cache.clone(),
                            caller.shop_id.clone(),
                            record.customer.buyer_nick.clone(),
                        );
                        tx.after_commit(Box::pin(
                            async move { cache.forget_nick(&shop, &nick).await },
                        ));
                        record.erase();
                        store.save_customer(tx, &mut record, false).await?;
                        store
                            .forget_consent_history(tx, &caller.shop_id, &customer_id)
                            .await?;
                        store
                            .audit(
                                tx,
                                &caller,
                                AuditAction::EraseCustomer,
                                &customer_id,
                                0,
                                &reason,
                            )
                            .await?;
                        outbox::append(tx, events::customer_erased(&caller.shop_id, &customer_id))
                            .await?;
                    }
                    Ok(pb::EraseCustomerResponse {
                        customer: Some(convert::customer(&record.customer)),
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn record_order(
        &self,
        request: Request<pb::RecordOrderRequest>,
    ) -> Result<Response<pb::RecordOrderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let new = convert::new_order(&req)?;
        let Some(key) =
            IdempotencyKey::for_request(&caller.shop_id, "RecordOrder", &req.request_id, &req)
        else {
            // The order number makes the call idempotent: it joins the
            // intake and is written together with concurrent orders.
            let (order, created) = self.intake.record(&caller.shop_id, new).await?;
            return Ok(Response::new(pb::RecordOrderResponse {
                order: Some(convert::order(&order)),
                created,
            }));
        };
        let key = Some(key);
        let shop = caller.shop_id.clone();
        let response = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, new) = (shop.clone(), new.clone());
                Box::pin(async move {
                    let (order, created) = store.record_order(tx, &shop, &new).await?;
                    Ok(pb::RecordOrderResponse {
                        order: Some(convert::order(&order)),
                        created,
                    })
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn pay_order(
        &self,
        request: Request<pb::PayOrderRequest>,
    ) -> Result<Response<pb::PayOrderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let step = convert::pay_step(&req)?;
        let order = self
            .step(
                &caller,
                "PayOrder",
                &req.request_id,
                &req,
                &req.order_no,
                step,
            )
            .await?;
        Ok(Response::new(pb::PayOrderResponse { order: Some(order) }))
    }

    async fn ship_order(
        &self,
        request: Request<pb::ShipOrderRequest>,
    ) -> Result<Response<pb::ShipOrderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let step = convert::ship_step(&req)?;
        let order = self
            .step(
                &caller,
                "ShipOrder",
                &req.request_id,
                &req,
                &req.order_no,
                step,
            )
            .await?;
        Ok(Response::new(pb::ShipOrderResponse { order: Some(order) }))
    }

    async fn confirm_order_received(
        &self,
        request: Request<pb::ConfirmOrderReceivedRequest>,
    ) -> Result<Response<pb::ConfirmOrderReceivedResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let step = convert::receive_step(&req)?;
        let order = self
            .step(
                &caller,
                "ConfirmOrderReceived",
                &req.request_id,
                &req,
                &req.order_no,
                step,
            )
            .await?;
        Ok(Response::new(pb::ConfirmOrderReceivedResponse {
            order: Some(order),
        }))
    }

    async fn review_order(
        &self,
        request: Request<pb::ReviewOrderRequest>,
    ) -> Result<Response<pb::ReviewOrderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let step = convert::review_step(&req)?;
        let order = self
            .step(
                &caller,
                "ReviewOrder",
                &req.request_id,
                &req,
                &req.order_no,
                step,
            )
            .await?;
        Ok(Response::new(pb::ReviewOrderResponse {
            order: Some(order),
        }))
    }

    async fn refund_order(
        &self,
        request: Request<pb::RefundOrderRequest>,
    ) -> Result<Response<pb::RefundOrderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let step = convert::refund_step(&req)?;
        let order = self
            .step(
                &caller,
                "RefundOrder",
                &req.request_id,
                &req,
                &req.order_no,
                step,
            )
            .await?;
        Ok(Response::new(pb::RefundOrderResponse {
            order: Some(order),
        }))
    }

    async fn close_order(
        &self,
        request: Request<pb::CloseOrderRequest>,
    ) -> Result<Response<pb::CloseOrderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let step = convert::close_step(&req)?;
        let order = self
            .step(
                &caller,
                "CloseOrder",
                &req.request_id,
                &req,
                &req.order_no,
                step,
            )
            .await?;
        Ok(Response::new(pb::CloseOrderResponse { order: Some(order) }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        one_of(&req.order_no, "order_no", &req.order_id, "order_id")?;
        let order = if req.order_no.is_empty() {
            self.store
                .order_by_id(&caller.shop_id, &req.order_id)
                .await?
        } else {
            self.store
                .order_by_no(&caller.shop_id, &req.order_no)
                .await?
        };
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(convert::order(&order)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        convert::id_field(&req.customer_id, "customer_id", &mut v);
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        // An unknown customer is NOT_FOUND rather than an empty list.
        self.store
            .customer(&caller.shop_id, &req.customer_id)
            .await?;
        let fingerprint = paging::fingerprint(&format!("orders|{}", req.customer_id));
        let before = paging::decode(&req.page_token, &fingerprint)?;
        let mut orders = self
            .store
            .orders_of(
                &caller.shop_id,
                &req.customer_id,
                before.as_deref(),
                size + 1,
            )
            .await?;
        let next_page_token = paging::next_page(&mut orders, size, &fingerprint, |o| &o.id);
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(convert::order).collect(),
            next_page_token,
        }))
    }

    async fn import_orders(
        &self,
        request: Request<Streaming<pb::ImportOrdersRequest>>,
    ) -> Result<Response<pb::ImportOrdersResponse>, Status> {
        let caller = caller(&request)?;
        let mut stream = request.into_inner();
        let mut response = pb::ImportOrdersResponse::default();
        let mut last_row = 0i64;
        // Batches being written, oldest first: the newer ones write their
        // orders while older ones commit; each records progress (and so
        // commits) only after the one before it.
        let mut in_flight: std::collections::VecDeque<InFlight> = Default::default();
        let in_flight_at_most = if self.store.db.is_postgres() {
            IMPORT_BATCHES_IN_FLIGHT
        } else {
            1
        };
        /// Adds a written batch's counts to the answer.
        async fn add(
            response: &mut pb::ImportOrdersResponse,
            batch: InFlight,
        ) -> Result<(), Status> {
            let outcome = batch
                .task
                .await
                .map_err(|e| Failure::internal(format!("import batch task: {e}")))??;
            response.rows_imported += outcome.rows_imported;
            response.rows_skipped += outcome.rows_skipped;
            Ok(())
        }
        // On a failure, the batches still in flight are waited for (each
        // rolls back once the one before it failed) before the caller
        // hears of it, so a resume never meets this call's batches.
        let streamed: Result<(), Status> = async {
            while let Some(message) = stream.next().await {
                let message = message?;
                let mut v = FieldViolations::new();
                convert::ident(&message.import_id, "import_id", 64, &mut v);
                if !response.import_id.is_empty() && message.import_id != response.import_id {
                    v.add(
                        "import_id",
                        "must be the same on every message of the stream",
                    );
                }
                if message.rows.len() > 1000 {
                    v.add("rows", "at most 1000 rows per message");
                }
                v.finish()?;
                response.import_id = message.import_id.clone();
                let mut valid = Vec::with_capacity(message.rows.len());
                // Which of the message's rows are valid, to convert them
                // again should the batch's transaction be retried.
                let mut valid_at = Vec::with_capacity(message.rows.len());
                let mut rejected = 0i64;
                for (at, row) in message.rows.iter().enumerate() {
                    response.rows_received += 1;
                    if row.row_number <= last_row {
                        rejected += 1;
                        push_error(
                            &mut response,
                            row,
                            "row_number",
                            format!("must be greater than the previous row's {last_row}"),
                        );
                        continue;
                    }
                    last_row = row.row_number;
                    match convert::import_row(row) {
                        Ok(r) => {
                            valid.push(r);
                            valid_at.push(at);
                        }
                        Err(problems) => {
                            rejected += 1;
                            for (field, reason) in problems {
                                push_error(&mut response, row, &field, reason);
                            }
                        }
                    }
                }
                response.rows_rejected += rejected;
                // Buyers this batch shares with the batches in flight (or whose
                // rows carry an order number they hold) are written only after
                // those batches committed, at the end of this batch's
                // transaction; the rest is written meanwhile. So no batch ever
                // waits on a row another batch in flight holds: the only wait
                // between them is for the earlier one's commit, and that one
                // never waits for a later one.
                while in_flight.len() >= in_flight_at_most {
                    if let Some(done) = in_flight.pop_front() {
                        add(&mut response, done).await?;
                    }
                }
                let held = |key: &String| in_flight.iter().any(|b: &InFlight| b.keys.contains(key));
                let mut keys = std::collections::HashSet::with_capacity(2 * valid.len());
                let mut after_earlier = std::collections::HashSet::new();
                for r in &valid {
                    let buyer = format!("buyer\u{1}{}", r.order.buyer_nick);
                    let order = format!("order\u{1}{}", r.order.order_no);
                    if held(&buyer) || held(&order) {
                        after_earlier.insert(r.order.buyer_nick.clone());
                    }
                    keys.insert(buyer);
                    keys.insert(order);
                }
                let earlier = in_flight.back().map(|b| b.outcome.clone());
                let (outcome, waiting) = EarlierBatch::new();
                let (store, shop, import_id) = (
                    self.store.clone(),
                    caller.shop_id.clone(),
                    message.import_id.clone(),
                );
                let batch_last = last_row;
                // The first attempt takes the rows as converted; a retry
                // (a lost race) converts them again from the message rather
                // than every attempt copying a thousand rows in advance.
                let first_attempt = std::sync::Mutex::new(Some(valid));
                let source = message.rows;
                let task = tokio::spawn(async move {
                    let written = store
                        .write(None, move |tx, store| {
                            let rows = first_attempt
                                .lock()
                                .ok()
                                .and_then(|mut rows| rows.take())
                                .unwrap_or_else(|| {
                                    valid_at
                                        .iter()
                                        .filter_map(|&at| convert::import_row(&source[at]).ok())
                                        .collect()
                                });
                            let (shop, import_id, earlier, after_earlier) = (
                                shop.clone(),
                                import_id.clone(),
                                earlier.clone(),
                                after_earlier.clone(),
                            );
                            Box::pin(async move {
                                let o = store
                                    .import_batch(
                                        tx,
                                        &shop,
                                        &import_id,
                                        rows,
                                        rejected,
                                        batch_last,
                                        earlier.as_ref().map(|e| (e, &after_earlier)),
                                    )
                                    .await?;
                                Ok(pb::ImportOrdersResponse {
                                    rows_imported: o.imported,
                                    rows_skipped: o.skipped,
                                    ..Default::default()
                                })
                            })
                        })
                        .await;
                    let _ = outcome.send(Some(written.is_ok()));
                    written
                });
                in_flight.push_back(InFlight {
                    task,
                    keys,
                    outcome: waiting,
                });
            }
            while let Some(done) = in_flight.pop_front() {
                add(&mut response, done).await?;
            }
            Ok(())
        }
        .await;
        if let Err(status) = streamed {
            while let Some(left) = in_flight.pop_front() {
                let _ = left.task.await;
            }
            return Err(status);
        }
        if response.import_id.is_empty() {
            return Err(Failure::invalid_field("import_id", "the stream carried no rows").into());
        }
        response.last_row_number = self
            .store
            .import_progress(&caller.shop_id, &response.import_id)
            .await?
            .last_row_number;
        Ok(Response::new(response))
    }

    async fn get_order_import(
        &self,
        request: Request<pb::GetOrderImportRequest>,
    ) -> Result<Response<pb::GetOrderImportResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        convert::ident(&req.import_id, "import_id", 64, &mut v);
        v.finish()?;
        let p = self
            .store
            .import_progress(&caller.shop_id, &req.import_id)
            .await?;
        Ok(Response::new(pb::GetOrderImportResponse {
            import_id: p.id,
            rows_imported: p.rows_imported,
            rows_skipped: p.rows_skipped,
            rows_rejected: p.rows_rejected,
            last_row_number: p.last_row_number,
            create_time: Some(huitou_proto::timestamp_from_micros(p.created_at)),
            update_time: Some(huitou_proto::timestamp_from_micros(p.updated_at)),
        }))
    }
}

const MAX_ROW_ERRORS: usize = 1000;

fn push_error(
    response: &mut pb::ImportOrdersResponse,
    row: &pb::ImportedOrder,
    field: &str,
    reason: String,
) {
    if response.row_errors.len() < MAX_ROW_ERRORS {
        response.row_errors.push(pb::ImportRowError {
            row_number: row.row_number,
            order_no: row.order_no.clone(),
            field: field.to_owned(),
            reason,
        });
    }
}

fn check_time(t: &prost_types::Timestamp, field: &str, v: &mut FieldViolations) -> Option<i64> {
    let micros = huitou_proto::micros_from_timestamp(t);
    if micros.is_none() {
        v.add(field, "is not a valid timestamp");
    }
    micros
}
