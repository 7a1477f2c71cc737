//! `huitou.notification.v1.NotificationService`: check, scope to the
//! caller's shop, call the store, convert back. Rules live in `domain`,
//! SQL in `store`.

use std::collections::BTreeMap;
use std::sync::Arc;

use huitou_proto::customer::v1::Channel;
use huitou_proto::micros_from_timestamp;
use huitou_proto::notification::v1 as pb;
use huitou_proto::notification::v1::notification_service_server::NotificationService;
use huitou_runtime::auth::caller;
use huitou_runtime::{Failure, FieldViolations, paging};
use huitou_storage::idempotency::{IdempotencyKey, check_request_id};
use huitou_storage::now_micros;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::contacts::ContactBook;
use crate::domain::rules::is_opt_out_reply;
use crate::domain::text;
use crate::error::NotificationError;
use crate::events::trigger_variables;
use crate::policy::{Policy, check_holiday, parse_date};
use crate::store::Store;
use crate::store::messages::{MessageRow, NewMessage};
use crate::store::recipients::RecipientChange;
use crate::template::{self, is_marketing};

/// Most recipients in one SendBatch request message.
const MAX_RECIPIENTS_PER_REQUEST: usize = 10_000;
/// Recipients accepted per transaction of a batch.
const BATCH_CHUNK: usize = 2_000;
/// Problems a batch answer lists.
const MAX_PROBLEMS: usize = 20;
/// A schedule may be this far in the past (clock skew) and count as now.
const SKEW_MICROS: i64 = 60_000_000;

/// The notification API over a store.
pub struct NotificationApi {
    store: Store,
    contacts: Arc<dyn ContactBook>,
}

impl NotificationApi {
    /// The API over `store`, finding customers through `contacts`.
    pub fn new(store: Store, contacts: Arc<dyn ContactBook>) -> Self {
        Self { store, contacts }
    }

    async fn message_out(
        &self,
        shop: &str,
        row: &MessageRow,
    ) -> Result<pb::Message, NotificationError> {
        let history = self
            .store
            .history(self.store.db.conn(), shop, &row.id)
            .await?;
        Ok(row.to_pb(history))
    }
}

fn id_field(value: &str, field: &str, v: &mut FieldViolations) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() > 64 {
        v.add(field, "at most 64 characters");
    }
}

fn variables_in(given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    given.clone()
}

/// A template that may send now: present and not paused.
async fn sendable(store: &Store, shop: &str, id: &str) -> Result<pb::Template, NotificationError> {
    let t = store.load_template(store.db.conn(), shop, id).await?;
    if !t.active {
        return Err(NotificationError::TemplatePaused);
    }
    Ok(t)
}

fn schedule(
    send_time: Option<&prost_types::Timestamp>,
    field: &str,
    now: i64,
    v: &mut FieldViolations,
) -> i64 {
    match send_time {
        None => now,
        Some(t) => {
            let Some(at) = micros_from_timestamp(t) else {
                v.add(field, "is not a valid time");
                return now;
            };
            v.check(
                at >= now - SKEW_MICROS,
                field,
                "is in the past; leave it unset to send now",
            );
            v.check(
                at <= now + 366 * 86_400_000_000,
                field,
                "is more than a year ahead",
            );
            at.max(now)
        }
    }
}

/// What the first request of a batch set.
struct BatchHead {
    batch_id: String,
    template: pb::Template,
    variables: BTreeMap<String, String>,
    not_before: i64,
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn create_template(
        &self,
        request: Request<pb::CreateTemplateRequest>,
    ) -> Result<Response<pb::CreateTemplateResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let t = req
            .template
            .clone()
            .ok_or_else(|| Failure::invalid_field("template", "is required"))?;
        template::check(&t, "template.")?;
        let key = IdempotencyKey::for_request(
            &caller.shop_id,
            "CreateNotificationTemplate",
            &req.request_id,
            &req,
        );
        let shop = caller.shop_id.clone();
        let answer = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, t) = (shop.clone(), t.clone());
                Box::pin(async move {
                    Ok(pb::CreateTemplateResponse {
                        template: Some(store.create_template(tx, &shop, &t).await?),
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn update_template(
        &self,
        request: Request<pb::UpdateTemplateRequest>,
    ) -> Result<Response<pb::UpdateTemplateResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        id_field(&req.template_id, "template_id", &mut v);
        v.finish()?;
        let key = IdempotencyKey::for_request(
            &caller.shop_id,
            "UpdateNotificationTemplate",
            &req.request_id,
            &req,
        );
        let shop = caller.shop_id.clone();
        let answer = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, req) = (shop.clone(), req.clone());
                Box::pin(async move {
                    let mut t = store.load_template(&**tx, &shop, &req.template_id).await?;
                    if let Some(name) = &req.name {
                        t.name = name.trim().to_owned();
                    }
                    if let Some(body) = &req.body {
                        t.body = body.clone();
                    }
                    if let Some(subject) = &req.subject {
                        t.subject = subject.clone();
                    }
                    if let Some(active) = req.active {
                        t.active = active;
                    }
                    // The changed template must pass the checks a new one does.
                    template::check(&t, "")?;
                    Ok(pb::UpdateTemplateResponse {
                        template: Some(store.save_template(tx, &shop, &t).await?),
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::GetTemplateResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        id_field(&req.template_id, "template_id", &mut v);
        v.finish()?;
        let t = self
            .store
            .load_template(self.store.db.conn(), &caller.shop_id, &req.template_id)
            .await?;
        Ok(Response::new(pb::GetTemplateResponse { template: Some(t) }))
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let fingerprint = paging::fingerprint("notification-templates");
        let after = paging::decode(&req.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .list_templates(&caller.shop_id, after.as_deref(), size + 1)
            .await?;
        let next_page_token = paging::next_page(&mut rows, size, &fingerprint, |t| &t.id);
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: rows,
            next_page_token,
        }))
    }

    async fn preview_template(
        &self,
        request: Request<pb::PreviewTemplateRequest>,
    ) -> Result<Response<pb::PreviewTemplateResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let t = if !req.template_id.is_empty() {
            self.store
                .load_template(self.store.db.conn(), &caller.shop_id, &req.template_id)
                .await?
        } else {
            let t = req.template.clone().ok_or_else(|| {
                Failure::invalid_field("template_id", "give a template_id or an inline template")
            })?;
            template::check(&t, "template.")?;
            t
        };
        let given = variables_in(&req.variables);
        let mut v = FieldViolations::new();
        template::check_variables(&t, &given, "variables", &mut v);
        v.finish()?;
        let values = text::with_samples(&t.body, &given);
        let rendered = template::render(&t, &values, "variables")?;
        Ok(Response::new(pb::PreviewTemplateResponse {
            text: rendered.text,
            segments: rendered.segments,
            cost_millifen: rendered.cost_millifen,
            variables: text::variables(&t.body).unwrap_or_default(),
        }))
    }

    async fn get_send_policy(
        &self,
        request: Request<pb::GetSendPolicyRequest>,
    ) -> Result<Response<pb::GetSendPolicyResponse>, Status> {
        let caller = caller(&request)?;
        let policy = self
            .store
            .policy(self.store.db.conn(), &caller.shop_id)
            .await?;
        Ok(Response::new(pb::GetSendPolicyResponse {
            policy: Some(policy.to_pb()),
        }))
    }

    async fn set_send_policy(
        &self,
        request: Request<pb::SetSendPolicyRequest>,
    ) -> Result<Response<pb::SetSendPolicyResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let policy = Policy::check(req.policy.as_ref())?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "SetSendPolicy", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let answer = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, policy) = (shop.clone(), policy.clone());
                Box::pin(async move {
                    let replaced_messages = store.set_policy(tx, &shop, &policy).await?;
                    Ok(pb::SetSendPolicyResponse {
                        policy: Some(policy.to_pb()),
                        replaced_messages,
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn set_holiday(
        &self,
        request: Request<pb::SetHolidayRequest>,
    ) -> Result<Response<pb::SetHolidayResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        v.finish()?;
        let holiday = check_holiday(req.holiday.as_ref())?;
        if !holiday.greeting_template_id.is_empty() {
            let t = self
                .store
                .load_template(
                    self.store.db.conn(),
                    &caller.shop_id,
                    &holiday.greeting_template_id,
                )
                .await
                .map_err(|e| match e {
                    NotificationError::TemplateNotFound => Failure::invalid_field(
                        "holiday.greeting_template_id",
                        "no such template in this shop",
                    ),
                    other => other.into(),
                })?;
            if !text::variables(&t.body).unwrap_or_default().is_empty() {
                return Err(Failure::invalid_field(
                    "holiday.greeting_template_id",
                    "a holiday greeting goes to everyone alike: its template cannot use variables",
                )
                .into());
            }
        }
        let key = IdempotencyKey::for_request(&caller.shop_id, "SetHoliday", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let answer = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, holiday) = (shop.clone(), holiday.clone());
                Box::pin(async move {
                    store.set_holiday(tx, &shop, &holiday).await?;
                    Ok(pb::SetHolidayResponse {
                        holiday: Some(holiday),
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn delete_holiday(
        &self,
        request: Request<pb::DeleteHolidayRequest>,
    ) -> Result<Response<pb::DeleteHolidayResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        if parse_date(&req.date).is_none() {
            return Err(Failure::invalid_field("date", "must be a date YYYY-MM-DD").into());
        }
        let shop = caller.shop_id.clone();
        self.store
            .transaction(move |tx, store| {
                let (shop, date) = (shop.clone(), req.date.clone());
                Box::pin(async move { store.delete_holiday(tx, &shop, &date).await })
            })
            .await?;
        Ok(Response::new(pb::DeleteHolidayResponse {}))
    }

    async fn list_holidays(
        &self,
        request: Request<pb::ListHolidaysRequest>,
    ) -> Result<Response<pb::ListHolidaysResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        if !req.from_date.is_empty() && parse_date(&req.from_date).is_none() {
            return Err(Failure::invalid_field("from_date", "must be a date YYYY-MM-DD").into());
        }
        let holidays = self.store.holidays(&caller.shop_id, &req.from_date).await?;
        Ok(Response::new(pb::ListHolidaysResponse { holidays }))
    }

    async fn set_trigger_rule(
        &self,
        request: Request<pb::SetTriggerRuleRequest>,
    ) -> Result<Response<pb::SetTriggerRuleResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        let rule = req
            .rule
            .clone()
            .ok_or_else(|| Failure::invalid_field("rule", "is required"))?;
        let trigger = pb::Trigger::try_from(rule.trigger).unwrap_or(pb::Trigger::Unspecified);
        v.check(
            trigger != pb::Trigger::Unspecified,
            "rule.trigger",
            "must be TRIGGER_ORDER_SHIPPED, _UNPAID_REMINDER, _ORDER_RECEIVED, _REVIEW_REQUEST, _COUPON_EXPIRING or _BIRTHDAY",
        );
        v.check(
            trigger != pb::Trigger::Birthday || rule.delay_minutes == 0,
            "rule.delay_minutes",
            "a birthday greeting goes on the day, inside its send windows",
        );
        v.check(
            (0..=43_200).contains(&rule.delay_minutes),
            "rule.delay_minutes",
            "must be 0-43200 (30 days)",
        );
        v.check(
            !rule.call_task || trigger == pb::Trigger::OrderReceived,
            "rule.call_task",
            "call tasks open only on TRIGGER_ORDER_RECEIVED",
        );
        v.check(
            !rule.template_id.is_empty() || rule.call_task,
            "rule.template_id",
            "is required unless the rule only opens call tasks",
        );
        v.finish()?;
        if !rule.template_id.is_empty() {
            let t = self
                .store
                .load_template(self.store.db.conn(), &caller.shop_id, &rule.template_id)
                .await
                .map_err(|e| match e {
                    NotificationError::TemplateNotFound => {
                        Failure::invalid_field("rule.template_id", "no such template in this shop")
                    }
                    other => other.into(),
                })?;
            let offered = trigger_variables(trigger);
            let unknown: Vec<String> = text::variables(&t.body)
                .unwrap_or_default()
                .into_iter()
                .filter(|u| !offered.contains(&u.as_str()))
                .collect();
            if !unknown.is_empty() {
                return Err(Failure::invalid_field(
                    "rule.template_id",
                    format!(
                        "the template uses {} which this trigger does not supply; it supplies: {}",
                        unknown.join(", "),
                        offered.join(", ")
                    ),
                )
                .into());
            }
        }
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "SetTriggerRule", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let answer = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, rule) = (shop.clone(), rule.clone());
                Box::pin(async move {
                    store.set_trigger_rule(tx, &shop, &rule).await?;
                    Ok(pb::SetTriggerRuleResponse { rule: Some(rule) })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_trigger_rules(
        &self,
        request: Request<pb::ListTriggerRulesRequest>,
    ) -> Result<Response<pb::ListTriggerRulesResponse>, Status> {
        let caller = caller(&request)?;
        let rules = self
            .store
            .trigger_rules(self.store.db.conn(), &caller.shop_id)
            .await?;
        Ok(Response::new(pb::ListTriggerRulesResponse { rules }))
    }

    async fn send_notification(
        &self,
        request: Request<pb::SendNotificationRequest>,
    ) -> Result<Response<pb::SendNotificationResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let now = now_micros();
        let mut v = FieldViolations::new();
        check_request_id(&req.request_id, &mut v);
        id_field(&req.customer_id, "customer_id", &mut v);
        id_field(&req.template_id, "template_id", &mut v);
        let not_before = schedule(req.send_time.as_ref(), "send_time", now, &mut v);
        v.finish()?;
        let t = sendable(&self.store, &caller.shop_id, &req.template_id).await?;
        let given = variables_in(&req.variables);
        let mut v = FieldViolations::new();
        template::check_variables(&t, &given, "variables", &mut v);
        v.check(
            !(req.urgent && is_marketing(&t)),
            "urgent",
            "only transactional messages may skip the send windows",
        );
        v.finish()?;
        let rendered = template::render(&t, &given, "variables")?;
        let key =
            IdempotencyKey::for_request(&caller.shop_id, "SendNotification", &req.request_id, &req);
        let shop = caller.shop_id.clone();
        let customer = req.customer_id.clone();
        let urgent = req.urgent;
        let answer = self
            .store
            .write(key.as_ref(), move |tx, store| {
                let (shop, customer, t, rendered, given) = (
                    shop.clone(),
                    customer.clone(),
                    t.clone(),
                    rendered.clone(),
                    given.clone(),
                );
                Box::pin(async move {
                    let m = NewMessage {
                        customer_id: &customer,
                        template: &t,
                        rendered,
                        variables: &given,
                        not_before,
                        urgent,
                        origin: "api",
                        dedupe_key: String::new(),
                        order_no: "",
                    };
                    let row = store.accept(tx, &shop, &m).await?;
                    let history = store.history(&**tx, &shop, &row.id).await?;
                    Ok(pb::SendNotificationResponse {
                        message: Some(row.to_pb(history)),
                    })
                })
            })
            .await?;
        Ok(Response::new(answer))
    }

    async fn send_batch(
        &self,
        request: Request<Streaming<pb::SendBatchRequest>>,
    ) -> Result<Response<pb::SendBatchResponse>, Status> {
        let caller = caller(&request)?;
        let shop = caller.shop_id.clone();
        let mut stream = request.into_inner();
        let mut head: Option<BatchHead> = None;
        let mut answer = pb::SendBatchResponse::default();
        let mut position = 0usize;
        while let Some(next) = stream.next().await {
            let req = next?;
            let now = now_micros();
            let head = match &mut head {
                Some(h) => {
                    if !req.batch_id.is_empty() && req.batch_id != h.batch_id {
                        return Err(Failure::invalid_field(
                            "batch_id",
                            "every request of a batch carries the first one's batch_id or none",
                        )
                        .into());
                    }
                    h
                }
                None => {
                    let mut v = FieldViolations::new();
                    id_field(&req.batch_id, "batch_id", &mut v);
                    id_field(&req.template_id, "template_id", &mut v);
                    let not_before = schedule(req.send_time.as_ref(), "send_time", now, &mut v);
                    v.finish()?;
                    let t = sendable(&self.store, &shop, &req.template_id).await?;
                    let variables = variables_in(&req.variables);
                    answer.batch_id = req.batch_id.clone();
                    head.insert(BatchHead {
                        batch_id: req.batch_id.clone(),
                        template: t,
                        variables,
                        not_before,
                    })
                }
            };
            if req.recipients.len() > MAX_RECIPIENTS_PER_REQUEST {
                return Err(Failure::invalid_field(
                    "recipients",
                    format!("at most {MAX_RECIPIENTS_PER_REQUEST} per request; send more requests"),
                )
                .into());
            }
            for chunk in req.recipients.chunks(BATCH_CHUNK) {
                let done = self
                    .accept_chunk(&shop, head, chunk, position, &mut answer)
                    .await?;
                position += chunk.len();
                answer.accepted += done.accepted;
                answer.already_in_batch += done.already;
                for (reason, n) in done.suppressed {
                    answer.suppressed += n;
                    *answer.suppressed_by_reason.entry(reason).or_default() += n;
                }
            }
        }
        if head.is_none() {
            return Err(Failure::invalid_field("batch_id", "the batch sent no request").into());
        }
        Ok(Response::new(answer))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        id_field(&req.message_id, "message_id", &mut v);
        v.finish()?;
        let message = self
            .store
            .message_with_history(self.store.db.conn(), &caller.shop_id, &req.message_id)
            .await?;
        Ok(Response::new(pb::GetMessageResponse {
            message: Some(message),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        id_field(&req.customer_id, "customer_id", &mut v);
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let fingerprint = paging::fingerprint(&format!("messages|{}", req.customer_id));
        let before = paging::decode(&req.page_token, &fingerprint)?;
        let mut rows = self
            .store
            .customer_messages(
                &caller.shop_id,
                &req.customer_id,
                before.as_deref(),
                size + 1,
            )
            .await?;
        let next_page_token = paging::next_page(&mut rows, size, &fingerprint, |m| &m.id);
        Ok(Response::new(pb::ListMessagesResponse {
            messages: rows.iter().map(|r| r.to_pb(Vec::new())).collect(),
            next_page_token,
        }))
    }

    async fn get_template_stats(
        &self,
        request: Request<pb::GetTemplateStatsRequest>,
    ) -> Result<Response<pb::GetTemplateStatsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let from = parse_date(&req.from_date);
        let to = parse_date(&req.to_date);
        v.check(from.is_some(), "from_date", "must be a date YYYY-MM-DD");
        v.check(to.is_some(), "to_date", "must be a date YYYY-MM-DD");
        if let (Some(f), Some(t)) = (from, to) {
            v.check(t >= f, "to_date", "must not be before from_date");
            v.check(
                (t - f).num_days() <= 92,
                "to_date",
                "at most 92 days after from_date",
            );
        }
        v.check(
            req.template_id.len() <= 64,
            "template_id",
            "at most 64 characters",
        );
        v.finish()?;
        let number = |d: chrono::NaiveDate| {
            use chrono::Datelike;
            d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32
        };
        let (Some(from), Some(to)) = (from, to) else {
            return Err(Failure::invalid_field("from_date", "is required").into());
        };
        let days = self
            .store
            .template_days(&caller.shop_id, &req.template_id, number(from), number(to))
            .await?;
        Ok(Response::new(pb::GetTemplateStatsResponse { days }))
    }

    async fn record_receipt(
        &self,
        request: Request<pb::RecordReceiptRequest>,
    ) -> Result<Response<pb::RecordReceiptResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        id_field(&req.provider, "provider", &mut v);
        v.check(
            !req.provider_message_id.is_empty() && req.provider_message_id.len() <= 128,
            "provider_message_id",
            "must be 1-128 characters",
        );
        v.check(
            req.detail.chars().count() <= 256,
            "detail",
            "at most 256 characters",
        );
        v.finish()?;
        let shop = caller.shop_id.clone();
        let row = self
            .store
            .transaction(move |tx, store| {
                let (shop, req) = (shop.clone(), req.clone());
                Box::pin(async move {
                    store
                        .receipt(
                            tx,
                            &shop,
                            &req.provider_message_id,
                            req.delivered,
                            &req.detail,
                        )
                        .await
                })
            })
            .await?;
        Ok(Response::new(pb::RecordReceiptResponse {
            message: Some(self.message_out(&caller.shop_id, &row).await?),
        }))
    }

    async fn record_inbound_reply(
        &self,
        request: Request<pb::RecordInboundReplyRequest>,
    ) -> Result<Response<pb::RecordInboundReplyResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let channel = Channel::try_from(req.channel).unwrap_or(Channel::Unspecified);
        let mut v = FieldViolations::new();
        v.check(
            matches!(channel, Channel::Sms | Channel::AppPush),
            "channel",
            "replies are taken on CHANNEL_SMS (from a mobile number) and CHANNEL_APP_PUSH (from a customer id)",
        );
        v.check(
            req.text.chars().count() <= 500,
            "text",
            "at most 500 characters",
        );
        let phone = if channel == Channel::Sms {
            match huitou_privacy::contact::Phone::parse(&req.from) {
                Ok(p) => Some(p),
                Err(why) => {
                    v.add("from", format!("not a mobile number: {why}"));
                    None
                }
            }
        } else {
            id_field(&req.from, "from", &mut v);
            None
        };
        v.finish()?;
        let customer = match phone {
            Some(p) => self
                .contacts
                .find_by_phone(&caller.shop_id, p.as_str())
                .await
                .map_err(|e| Failure::unavailable("CUSTOMER_SERVICE_UNAVAILABLE", e))?,
            None => Some(req.from.clone()),
        };
        let Some(customer_id) = customer else {
            return Ok(Response::new(pb::RecordInboundReplyResponse::default()));
        };
        let opted_out = is_opt_out_reply(&req.text);
        if opted_out {
            let shop = caller.shop_id.clone();
            let customer = customer_id.clone();
            self.store
                .transaction(move |tx, store| {
                    let (shop, customer) = (shop.clone(), customer.clone());
                    Box::pin(async move {
                        store
                            .change_recipient(
                                tx,
                                &shop,
                                &customer,
                                RecipientChange::OptOut(req.channel),
                            )
                            .await
                    })
                })
                .await?;
            tracing::info!(shop = %caller.shop_id, customer = %customer_id, "customer opted out by reply");
            // Written back to the customer's consent record now; if the
            // customer service is away, the housekeeping loop retries.
            if let Err(e) = crate::sync_opt_outs(
                &self.store,
                &*self.contacts,
                Some((&caller.shop_id, &customer_id)),
            )
            .await
            {
                tracing::warn!(error = %e, "opt-out not yet written back");
            }
        }
        Ok(Response::new(pb::RecordInboundReplyResponse {
            customer_id,
            opted_out,
        }))
    }

    async fn get_recipient(
        &self,
        request: Request<pb::GetRecipientRequest>,
    ) -> Result<Response<pb::GetRecipientResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        id_field(&req.customer_id, "customer_id", &mut v);
        v.finish()?;
        Ok(Response::new(
            self.store
                .recipient(&caller.shop_id, &req.customer_id)
                .await?,
        ))
    }

    async fn list_call_tasks(
        &self,
        request: Request<pb::ListCallTasksRequest>,
    ) -> Result<Response<pb::ListCallTasksResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        let size = paging::page_size(req.page_size, &mut v);
        v.finish()?;
        let fingerprint = paging::fingerprint(&format!("calls|{}", req.open_only));
        let after = paging::decode(&req.page_token, &fingerprint)?;
        let mut tasks = self
            .store
            .call_tasks(&caller.shop_id, req.open_only, after.as_deref(), size + 1)
            .await?;
        let next_page_token = paging::next_page(&mut tasks, size, &fingerprint, |t| &t.id);
        Ok(Response::new(pb::ListCallTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn record_call_outcome(
        &self,
        request: Request<pb::RecordCallOutcomeRequest>,
    ) -> Result<Response<pb::RecordCallOutcomeResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        id_field(&req.task_id, "task_id", &mut v);
        let outcome =
            pb::CallOutcome::try_from(req.outcome).unwrap_or(pb::CallOutcome::Unspecified);
        v.check(
            outcome != pb::CallOutcome::Unspecified,
            "outcome",
            "must be CALL_OUTCOME_REACHED, _NO_ANSWER, _COMPLAINT_RAISED or _REVIEW_PROMISED",
        );
        v.check(
            req.note.chars().count() <= 500,
            "note",
            "at most 500 characters",
        );
        v.finish()?;
        let shop = caller.shop_id.clone();
        let task = self
            .store
            .transaction(move |tx, store| {
                let (shop, req) = (shop.clone(), req.clone());
                Box::pin(async move {
                    store
                        .close_call_task(tx, &shop, &req.task_id, outcome, req.note.trim())
                        .await
                })
            })
            .await?;
        Ok(Response::new(pb::RecordCallOutcomeResponse {
            task: Some(task),
        }))
    }

    async fn close_complaint(
        &self,
        request: Request<pb::CloseComplaintRequest>,
    ) -> Result<Response<pb::CloseComplaintResponse>, Status> {
        let caller = caller(&request)?;
        caller.require_settings_access()?;
        let req = request.into_inner();
        let mut v = FieldViolations::new();
        id_field(&req.customer_id, "customer_id", &mut v);
        v.check(
            (2..=256).contains(&req.note.trim().chars().count()),
            "note",
            "must be 2-256 characters saying how it was resolved",
        );
        v.finish()?;
        let shop = caller.shop_id.clone();
        let was_open = self
            .store
            .transaction(move |tx, store| {
                let (shop, customer) = (shop.clone(), req.customer_id.clone());
                Box::pin(async move {
                    let open = store.has_complaint(&**tx, &shop, &customer).await?;
                    if open {
                        store
                            .change_recipient(
                                tx,
                                &shop,
                                &customer,
                                RecipientChange::Complaint(false),
                            )
                            .await?;
                    }
                    Ok(open)
                })
            })
            .await?;
        Ok(Response::new(pb::CloseComplaintResponse { was_open }))
    }
}

impl NotificationApi {
    /// Checks, renders and accepts one chunk of a batch's recipients in one
    /// transaction. A recipient with bad input is counted and named, never
    /// the whole batch refused for it.
    async fn accept_chunk(
        &self,
        shop: &str,
        head: &BatchHead,
        chunk: &[pb::BatchRecipient],
        first_position: usize,
        answer: &mut pb::SendBatchResponse,
    ) -> Result<crate::store::messages::Accepted, NotificationError> {
        let settings = self.store.shop_settings(shop).await?;
        let now = now_micros();
        let ids: Vec<&str> = chunk.iter().map(|r| r.customer_id.as_str()).collect();
        let standings = self
            .store
            .standings(self.store.db.conn(), shop, &ids, head.template.channel)
            .await?;
        let origin = format!("batch:{}", head.batch_id);
        let mut rows = Vec::with_capacity(chunk.len());
        for (i, r) in chunk.iter().enumerate() {
            let field = format!("recipients[{}]", first_position + i);
            let mut v = FieldViolations::new();
            id_field(&r.customer_id, &format!("{field}.customer_id"), &mut v);
            let mut values = head.variables.clone();
            values.extend(r.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
            template::check_variables(
                &head.template,
                &values,
                &format!("{field}.variables"),
                &mut v,
            );
            let rendered = if v.is_empty() {
                template::render(&head.template, &values, &format!("{field}.variables"))
            } else {
                Err(v.into_failure())
            };
            let rendered = match rendered {
                Ok(r) => r,
                Err(f) => {
                    answer.rejected += 1;
                    for violation in f.violations {
                        if answer.problems.len() < MAX_PROBLEMS {
                            answer
                                .problems
                                .push(format!("{}: {}", violation.field, violation.description));
                        }
                    }
                    continue;
                }
            };
            let m = NewMessage {
                customer_id: &r.customer_id,
                template: &head.template,
                rendered,
                variables: &values,
                not_before: head.not_before,
                urgent: false,
                origin: &origin,
                dedupe_key: format!("batch:{}:{}", head.batch_id, r.customer_id),
                order_no: "",
            };
            let standing = standings.get(&r.customer_id).copied();
            rows.push(self.store.new_row(shop, &settings, &m, standing, now));
        }
        let rows = Arc::new(rows);
        let shop = shop.to_owned();
        self.store
            .transaction(move |tx, store| {
                let (rows, shop) = (rows.clone(), shop.clone());
                Box::pin(async move { store.accept_many(tx, &shop, rows.to_vec()).await })
            })
            .await
    }
}
