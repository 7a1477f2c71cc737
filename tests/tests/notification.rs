//! The notification service as an operator and a storefront use it:
//! templates, sends through the file provider, receipts, consent, caps,
//! opt-out replies, send windows, triggers from order events, call tasks
//! and complaints, batches, and bad input named by field.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::path::PathBuf;
use std::time::Duration;

use chrono::{TimeZone, Timelike};
use huitou_proto::customer::v1 as cpb;
use huitou_proto::customer::v1::Channel;
use huitou_proto::notification::v1 as pb;
use huitou_testkit::TestDatabase;
use huitou_tests::{
    Customers, Notifications, TestSuite, ago, bad_fields, reason, test_settings, with_notification,
};
use tonic::Code;

const QUEUED: i32 = pb::MessageStatus::Queued as i32;
const DEFERRED: i32 = pb::MessageStatus::Deferred as i32;
const SUPPRESSED: i32 = pb::MessageStatus::Suppressed as i32;
const SENT: i32 = pb::MessageStatus::Sent as i32;
const DELIVERED: i32 = pb::MessageStatus::Delivered as i32;

async fn start(label: &str) -> (TestSuite, PathBuf) {
    let database = TestDatabase::new(label).await;
    let notification = TestDatabase::new(&format!("{label}-notification")).await;
    let mut settings = test_settings(&database);
    let sink = huitou_testkit::temp_dir(label).join("messages.jsonl");
    with_notification(&mut settings, &notification, &sink, 2);
    let mut suite = TestSuite::start_with(database, settings).await;
    suite.notification_database = Some(notification);
    (suite, sink)
}

fn all_day() -> pb::SendPolicy {
    pb::SendPolicy {
        time_zone: "Asia/Shanghai".into(),
        windows: vec![pb::SendWindow {
            start_minute: 0,
            end_minute: 1440,
        }],
        caps: vec![
            pb::FrequencyCap {
                days: 3,
                max_messages: 1,
            },
            pb::FrequencyCap {
                days: 30,
                max_messages: 4,
            },
        ],
        duplicate_days: 7,
        max_attempts: 5,
        unpaid_reminder_minutes: 60,
        aim_last_hour: false,
    }
}

/// A policy whose only window starts two hours from now (Shanghai time),
/// so a message sent now waits.
fn closed_now() -> pb::SendPolicy {
    let now = chrono_tz::Asia::Shanghai.from_utc_datetime(&chrono::Utc::now().naive_utc());
    let minute = (now.hour() * 60 + now.minute()) as i32;
    let start = if minute < 1200 { minute + 120 } else { 60 };
    pb::SendPolicy {
        windows: vec![pb::SendWindow {
            start_minute: start,
            end_minute: start + 60,
        }],
        ..all_day()
    }
}

async fn set_policy(ops: &mut Notifications, policy: pb::SendPolicy) -> i64 {
    ops.set_send_policy(pb::SetSendPolicyRequest {
        policy: Some(policy),
        ..Default::default()
    })
    .await
    .expect("set policy")
    .into_inner()
    .replaced_messages
}

fn sms(name: &str, kind: pb::MessageKind, body: &str) -> pb::Template {
    pb::Template {
        name: name.into(),
        channel: Channel::Sms as i32,
        kind: kind as i32,
        body: body.into(),
        signature: "回头客".into(),
        ..Default::default()
    }
}

async fn create(ops: &mut Notifications, t: pb::Template) -> pb::Template {
    ops.create_template(pb::CreateTemplateRequest {
        template: Some(t),
        ..Default::default()
    })
    .await
    .expect("create template")
    .into_inner()
    .template
    .expect("template")
}

async fn customer(customers: &mut Customers, nick: &str, phone: &str, consent: bool) -> String {
    let id = customers
        .upsert_customer(cpb::UpsertCustomerRequest {
            buyer_nick: nick.into(),
            phone: Some(phone.into()),
            ..Default::default()
        })
        .await
        .expect("customer")
        .into_inner()
        .customer
        .expect("customer")
        .id;
    if consent {
        customers
            .set_consent(cpb::SetConsentRequest {
                customer_id: id.clone(),
                channel: Channel::Sms as i32,
                granted: true,
                source: "checkout".into(),
                ..Default::default()
            })
            .await
            .expect("consent");
    }
    id
}

async fn send(
    client: &mut Notifications,
    customer: &str,
    template: &str,
    vars: &[(&str, &str)],
) -> pb::Message {
    client
        .send_notification(pb::SendNotificationRequest {
            customer_id: customer.into(),
            template_id: template.into(),
            variables: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        })
        .await
        .expect("send")
        .into_inner()
        .message
        .expect("message")
}

/// Polls a message until `done` holds (15 s at most).
async fn until(
    client: &mut Notifications,
    id: &str,
    done: impl Fn(&pb::Message) -> bool,
) -> pb::Message {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = client
            .get_message(pb::GetMessageRequest {
                message_id: id.into(),
            })
            .await
            .expect("get message")
            .into_inner()
            .message
            .expect("message");
        if done(&m) {
            return m;
        }
        if std::time::Instant::now() > deadline {
            panic!("message never reached the expected state: {m:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_final(m: &pb::Message) -> bool {
    matches!(m.status, 3 | 5 | 6 | 7)
}

/// Waits until the notification service has heard of the customer's SMS
/// consent (the customer service's events arrive through the outbox).
async fn until_consented(client: &mut Notifications, customer: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = client
            .get_recipient(pb::GetRecipientRequest {
                customer_id: customer.into(),
            })
            .await
            .expect("recipient")
            .into_inner();
        if r.consented_channels.iter().any(|c| c == "sms") {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("consent never arrived: {r:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_message_goes_out_through_the_file_provider_and_its_receipt_is_recorded() {
    let (suite, sink) = start("notify-flow").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    let mut front = suite.notifications(&suite.shop.storefront);
    let mut customers = suite.customers(&suite.shop.operator);
    set_policy(&mut ops, all_day()).await;
    let shipped = create(
        &mut ops,
        sms(
            "发货通知",
            pb::MessageKind::Transactional,
            "亲，您的订单{{order_no}}已由{{carrier}}发出，单号{{tracking_number}}。",
        ),
    )
    .await;
    let wang = customer(&mut customers, "tb_wang", "13812345678", false).await;

    let m = send(
        &mut front,
        &wang,
        &shipped.id,
        &[
            ("order_no", "E1"),
            ("carrier", "顺丰"),
            ("tracking_number", "SF100"),
        ],
    )
    .await;
    assert_eq!(m.status, QUEUED, "{m:#?}");
    assert_eq!(m.text, "【回头客】亲，您的订单E1已由顺丰发出，单号SF100。");
    assert_eq!(m.segments, 1);
    assert_eq!(m.cost_millifen, 4_500);

    let sent = until(&mut front, &m.id, |m| m.status == SENT).await;
    assert_eq!(sent.provider, "log");
    assert_eq!(sent.attempts, 1);
    let lines = std::fs::read_to_string(&sink).expect("sink");
    let line = lines
        .lines()
        .find(|l| l.contains(&m.id))
        .expect("the message reached the sink");
    assert!(
        line.contains("138****5678"),
        "the address is masked: {line}"
    );
    assert!(!line.contains("13812345678"));
    assert!(line.contains("SF100"));

    let delivered = front
        .record_receipt(pb::RecordReceiptRequest {
            provider: "log".into(),
            provider_message_id: sent.provider_message_id.clone(),
            delivered: true,
            detail: "DELIVRD".into(),
        })
        .await
        .expect("receipt")
        .into_inner()
        .message
        .unwrap();
    assert_eq!(delivered.status, DELIVERED);
    let steps: Vec<i32> = delivered.history.iter().map(|h| h.status).collect();
    assert_eq!(steps, vec![QUEUED, 4, SENT, DELIVERED], "{delivered:#?}");

    // Reading the address for sending is in the customer's audit log, and
    // only Huitou's own services may do it.
    let audit = customers
        .list_audit_entries(cpb::ListAuditEntriesRequest {
            customer_id: wang.clone(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    assert!(
        audit.iter().any(|e| e.reason == "notification delivery"),
        "{audit:?}"
    );
    let err = customers
        .resolve_contacts(cpb::ResolveContactsRequest {
            customer_ids: vec![wang.clone()],
            channel: Channel::Sms as i32,
            reason: "curious operator".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Another shop sees none of it.
    let mut other = suite.notifications(&suite.other_shop.operator);
    let err = other
        .get_message(pb::GetMessageRequest {
            message_id: m.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let listed = front
        .list_messages(pb::ListMessagesRequest {
            customer_id: wang.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.messages.len(), 1);

    let today = chrono_tz::Asia::Shanghai
        .from_utc_datetime(&chrono::Utc::now().naive_utc())
        .format("%Y-%m-%d")
        .to_string();
    let stats = ops
        .get_template_stats(pb::GetTemplateStatsRequest {
            from_date: today.clone(),
            to_date: today,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.days.len(), 1);
    assert_eq!(
        (
            stats.days[0].accepted,
            stats.days[0].sent,
            stats.days[0].delivered
        ),
        (1, 1, 1)
    );
    assert_eq!(stats.days[0].cost_millifen, 4_500);
    suite.stop().await;
}

#[tokio::test]
async fn marketing_needs_consent_holds_the_caps_and_stops_at_an_opt_out() {
    let (suite, _sink) = start("notify-rules").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    let mut customers = suite.customers(&suite.shop.operator);
    set_policy(&mut ops, all_day()).await;
    let sale = create(
        &mut ops,
        sms(
            "双11",
            pb::MessageKind::Marketing,
            "双11全场满299减30，回T退订",
        ),
    )
    .await;
    let arrivals = create(
        &mut ops,
        sms("上新", pb::MessageKind::Marketing, "冬装上新，回T退订"),
    )
    .await;
    let care = create(
        &mut ops,
        sms("关怀", pb::MessageKind::Transactional, "天冷了，注意保暖。"),
    )
    .await;
    let silent = customer(&mut customers, "tb_silent", "13900000001", false).await;
    let fan = customer(&mut customers, "tb_fan", "13900000002", true).await;
    until_consented(&mut ops, &fan).await;

    // No consent: never sent.
    let known = ops
        .get_recipient(pb::GetRecipientRequest {
            customer_id: silent.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(known.consented_channels.is_empty());
    let m = send(&mut ops, &silent, &sale.id, &[]).await;
    let m = until(&mut ops, &m.id, is_final).await;
    assert_eq!(
        (m.status, m.status_reason.as_str()),
        (SUPPRESSED, "NO_CONSENT")
    );

    // Consent: the first goes, the second within 3 days is capped, the
    // same template again is a duplicate.
    let first = send(&mut ops, &fan, &sale.id, &[]).await;
    let first = until(&mut ops, &first.id, is_final).await;
    assert_eq!(first.status, SENT, "{first:#?}");
    let second = send(&mut ops, &fan, &arrivals.id, &[]).await;
    let second = until(&mut ops, &second.id, is_final).await;
    assert_eq!(
        (second.status, second.status_reason.as_str()),
        (SUPPRESSED, "FREQUENCY_CAP")
    );
    let again = send(&mut ops, &fan, &sale.id, &[]).await;
    let again = until(&mut ops, &again.id, is_final).await;
    assert_eq!(
        (again.status, again.status_reason.as_str()),
        (SUPPRESSED, "DUPLICATE")
    );

    // "T" from the fan's phone: marketing stops, transactional still goes.
    let reply = ops
        .record_inbound_reply(pb::RecordInboundReplyRequest {
            channel: Channel::Sms as i32,
            from: "139 0000 0002".into(),
            text: "T".into(),
        })
        .await
        .expect("reply")
        .into_inner();
    assert_eq!(reply.customer_id, fan);
    assert!(reply.opted_out);
    // The reply is written back to the customer's consent record.
    let consent = customers
        .get_customer(cpb::GetCustomerRequest {
            customer_id: fan.clone(),
            ..Default::default()
        })
        .await
        .expect("customer")
        .into_inner()
        .customer
        .expect("customer")
        .consents
        .into_iter()
        .find(|c| c.channel == Channel::Sms as i32)
        .expect("an SMS consent");
    assert!(!consent.granted, "{consent:?}");
    assert!(consent.source.contains("reply T"), "{consent:?}");
    set_policy(
        &mut ops,
        pb::SendPolicy {
            caps: vec![],
            duplicate_days: 0,
            ..all_day()
        },
    )
    .await;
    let after = send(&mut ops, &fan, &arrivals.id, &[]).await;
    let after = until(&mut ops, &after.id, is_final).await;
    assert_eq!(
        (after.status, after.status_reason.as_str()),
        (SUPPRESSED, "OPTED_OUT")
    );
    let tips = send(&mut ops, &fan, &care.id, &[]).await;
    assert_eq!(until(&mut ops, &tips.id, is_final).await.status, SENT);
    suite.stop().await;
}

#[tokio::test]
async fn outside_the_windows_a_message_waits_and_is_released_when_the_windows_change() {
    let (suite, sink) = start("notify-window").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    let mut customers = suite.customers(&suite.shop.operator);
    set_policy(&mut ops, closed_now()).await;
    let care = create(
        &mut ops,
        sms("关怀", pb::MessageKind::Transactional, "天冷了，注意保暖。"),
    )
    .await;
    let wang = customer(&mut customers, "tb_wang", "13812345678", false).await;
    let m = send(&mut ops, &wang, &care.id, &[]).await;
    assert_eq!(m.status, DEFERRED, "{m:#?}");
    let after = m.deliver_after_time.unwrap();
    assert!(after.seconds > chrono::Utc::now().timestamp() + 3_600);
    assert!(m.history[0].detail.contains("next send window"), "{m:#?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = until(&mut ops, &m.id, |_| true).await;
    assert_eq!(still.status, DEFERRED);
    assert!(
        !std::fs::read_to_string(&sink)
            .unwrap_or_default()
            .contains(&m.id)
    );

    // An urgent transactional message does not wait.
    let urgent = ops
        .send_notification(pb::SendNotificationRequest {
            customer_id: wang.clone(),
            template_id: care.id.clone(),
            urgent: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(until(&mut ops, &urgent.id, is_final).await.status, SENT);

    let moved = set_policy(&mut ops, all_day()).await;
    assert_eq!(moved, 1);
    let released = until(&mut ops, &m.id, is_final).await;
    assert_eq!(released.status, SENT);
    suite.stop().await;
}

#[tokio::test]
async fn order_events_send_shipping_notices_drop_paid_reminders_and_open_call_tasks() {
    let (suite, _sink) = start("notify-triggers").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    let mut orders = suite.customers(&suite.shop.storefront);
    set_policy(&mut ops, all_day()).await;
    let shipped = create(&mut ops, shipping_notice()).await;
    let reminder = create(
        &mut ops,
        sms(
            "催付",
            pb::MessageKind::Transactional,
            "订单{{order_no}}还未付款（{{amount_yuan}}元）",
        ),
    )
    .await;
    let sale = create(
        &mut ops,
        sms(
            "双11",
            pb::MessageKind::Marketing,
            "双11全场满299减30，回T退订",
        ),
    )
    .await;
    for (trigger, template, call_task) in [
        (pb::Trigger::OrderShipped, shipped.id.clone(), false),
        (pb::Trigger::UnpaidReminder, reminder.id.clone(), false),
        (pb::Trigger::OrderReceived, String::new(), true),
    ] {
        ops.set_trigger_rule(pb::SetTriggerRuleRequest {
            rule: Some(pb::TriggerRule {
                trigger: trigger as i32,
                template_id: template,
                call_task,
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("rule");
    }
    // A rule whose template needs what the event cannot give is refused.
    let err = ops
        .set_trigger_rule(pb::SetTriggerRuleRequest {
            rule: Some(pb::TriggerRule {
                trigger: pb::Trigger::OrderReceived as i32,
                template_id: shipped.id.clone(),
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), vec!["rule.template_id"]);

    let order = |no: &str| cpb::RecordOrderRequest {
        order_no: no.into(),
        buyer_nick: "tb_wang".into(),
        status: cpb::OrderStatus::Created as i32,
        items: vec![cpb::OrderItem {
            sku: "SKU-1".into(),
            category: "童装".into(),
            quantity: 1,
            unit_price_fen: 29_900,
            title: String::new(),
        }],
        payable_fen: 29_900,
        create_time: Some(ago(60)),
        receiver: Some(cpb::ContactDetails {
            phone: "13812345678".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let recorded = orders
        .record_order(order("E-100"))
        .await
        .expect("order")
        .into_inner()
        .order
        .unwrap();
    let wang = recorded.customer_id.clone();
    // The 催付 reminder waits an hour...
    let reminder_msg = list_until(&mut ops, &wang, |ms| ms.len() == 1)
        .await
        .remove(0);
    assert_eq!(reminder_msg.template_id, reminder.id);
    assert_eq!(reminder_msg.origin, "event:unpaid_reminder");
    assert!(matches!(reminder_msg.status, QUEUED | DEFERRED));
    assert!(reminder_msg.text.contains("299元"), "{reminder_msg:#?}");
    // ...and is dropped when the order is paid first.
    orders
        .pay_order(cpb::PayOrderRequest {
            order_no: "E-100".into(),
            ..Default::default()
        })
        .await
        .expect("pay");
    let dropped = until(&mut ops, &reminder_msg.id, is_final).await;
    assert_eq!(
        (dropped.status, dropped.status_reason.as_str()),
        (SUPPRESSED, "ORDER_PAID")
    );

    orders
        .ship_order(cpb::ShipOrderRequest {
            order_no: "E-100".into(),
            shipment: Some(cpb::Shipment {
                carrier: "顺丰".into(),
                tracking_number: "SF777".into(),
            }),
            ..Default::default()
        })
        .await
        .expect("ship");
    let notices = list_until(&mut ops, &wang, |ms| ms.len() == 2).await;
    let notice = until(&mut ops, &notices[0].id, is_final).await;
    assert_eq!(notice.status, SENT);
    assert_eq!(notice.text, "【回头客】订单E-100已由顺丰发出，单号SF777");

    orders
        .confirm_order_received(cpb::ConfirmOrderReceivedRequest {
            order_no: "E-100".into(),
            ..Default::default()
        })
        .await
        .expect("received");
    let task = tasks_until(&mut ops).await;
    assert_eq!(task.customer_id, wang);
    assert_eq!(task.order_no, "E-100");
    let closed = ops
        .record_call_outcome(pb::RecordCallOutcomeRequest {
            task_id: task.id.clone(),
            outcome: pb::CallOutcome::ComplaintRaised as i32,
            note: "包裹破损".into(),
        })
        .await
        .expect("outcome")
        .into_inner()
        .task
        .unwrap();
    assert!(closed.close_time.is_some());
    let twice = ops
        .record_call_outcome(pb::RecordCallOutcomeRequest {
            task_id: task.id.clone(),
            outcome: pb::CallOutcome::Reached as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&twice), "CALL_TASK_CLOSED");

    // An open complaint stops marketing, even with consent.
    let mut customers = suite.customers(&suite.shop.operator);
    customers
        .set_consent(cpb::SetConsentRequest {
            customer_id: wang.clone(),
            channel: Channel::Sms as i32,
            granted: true,
            source: "checkout".into(),
            ..Default::default()
        })
        .await
        .expect("consent");
    until_consented(&mut ops, &wang).await;
    let m = send(&mut ops, &wang, &sale.id, &[]).await;
    let m = until(&mut ops, &m.id, is_final).await;
    assert_eq!(
        (m.status, m.status_reason.as_str()),
        (SUPPRESSED, "OPEN_COMPLAINT")
    );
    let closed = ops
        .close_complaint(pb::CloseComplaintRequest {
            customer_id: wang.clone(),
            note: "已补发".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(closed.was_open);
    let m = send(&mut ops, &wang, &sale.id, &[]).await;
    assert_eq!(until(&mut ops, &m.id, is_final).await.status, SENT);
    suite.stop().await;
}

/// Events the relay delivers late, after later ones (a failed delivery
/// waits for its retry): a payment that arrives before the order's
/// `order.created` leaves no 催付 reminder to a buyer who has paid, and a
/// consent granted then withdrawn, delivered the other way round, stays
/// withdrawn.
#[tokio::test]
async fn late_events_neither_remind_of_a_paid_order_nor_bring_back_a_withdrawn_consent() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{
        CustomerCreated, CustomerUpdated, OrderClosed, OrderCreated, OrderPaid, OrderSnapshot,
    };

    let (suite, _sink) = start("notify-late").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    set_policy(&mut ops, all_day()).await;
    let reminder = create(
        &mut ops,
        sms(
            "催付",
            pb::MessageKind::Transactional,
            "订单{{order_no}}还未付款",
        ),
    )
    .await;
    set_rule(&mut ops, pb::Trigger::UnpaidReminder, &reminder.id).await;
    let sale = create(
        &mut ops,
        sms("上新", pb::MessageKind::Marketing, "新品上市，回T退订"),
    )
    .await;
    let inbox = huitou_tests::Inbox::of(&suite, "notification");
    let snapshot = |order_no: &str, paid: bool| OrderSnapshot {
        order_id: format!("id-{order_no}"),
        order_no: order_no.into(),
        customer_id: "cust-late".into(),
        status: if paid { "PAID" } else { "CREATED" }.into(),
        payable_fen: 9_900,
        create_time: Some(ago(120)),
        pay_time: paid.then(|| ago(60)),
        ..Default::default()
    };
    let created = |order_no: &str| {
        inbox.envelope_at(
            120,
            Payload::OrderCreated(OrderCreated {
                order: Some(snapshot(order_no, false)),
            }),
        )
    };
    inbox
        .deliver(vec![inbox.envelope_at(
            300,
            Payload::CustomerCreated(CustomerCreated {
                customer_id: "cust-late".into(),
                buyer_nick: "tb_late".into(),
            }),
        )])
        .await;
    // L-1 paid and L-2 closed, each delivered before its creation; L-3
    // created in order, and still unpaid.
    let settled = inbox
        .deliver(vec![
            inbox.envelope_at(
                60,
                Payload::OrderPaid(OrderPaid {
                    order: Some(snapshot("L-1", true)),
                }),
            ),
            inbox.envelope_at(
                30,
                Payload::OrderClosed(OrderClosed {
                    order: Some(snapshot("L-2", false)),
                }),
            ),
        ])
        .await;
    assert_eq!(settled.applied_count, 2);
    let late = inbox
        .deliver(vec![created("L-1"), created("L-2"), created("L-3")])
        .await;
    assert_eq!(late.applied_count, 3);
    let messages = list_until(&mut ops, "cust-late", |ms| !ms.is_empty()).await;
    let reminded: Vec<&str> = messages
        .iter()
        .filter(|m| m.origin == "event:unpaid_reminder")
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(reminded, vec!["【回头客】订单L-3还未付款"], "{messages:#?}");

    // Consent granted 20 s ago and withdrawn 10 s ago, delivered the other
    // way round.
    let profile = |seconds_ago: i64, consented: &[&str]| {
        inbox.envelope_at(
            seconds_ago,
            Payload::CustomerUpdated(CustomerUpdated {
                customer_id: "cust-late".into(),
                changed_fields: vec!["consent.sms".into()],
                consented_channels: consented.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            }),
        )
    };
    inbox.deliver(vec![profile(10, &[])]).await;
    inbox.deliver(vec![profile(20, &["sms"])]).await;
    let m = send(&mut ops, "cust-late", &sale.id, &[]).await;
    let m = until(&mut ops, &m.id, is_final).await;
    assert_eq!(
        (m.status, m.status_reason.as_str()),
        (SUPPRESSED, "NO_CONSENT")
    );
    suite.stop().await;
}

/// A receipt delivered before the order's `order.shipped` (which waits for
/// its retry) leaves no shipping notice for a parcel already there, and a
/// notice still waiting for its send window when the receipt comes is
/// dropped.
#[tokio::test]
async fn a_receipt_before_the_shipment_notice_goes_out_stops_the_notice() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{OrderReceived, OrderShipped, OrderSnapshot};

    let (suite, _sink) = start("notify-late-ship").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    let mut customers = suite.customers(&suite.shop.operator);
    set_policy(&mut ops, closed_now()).await;
    let notice = create(&mut ops, shipping_notice()).await;
    set_rule(&mut ops, pb::Trigger::OrderShipped, &notice.id).await;
    let buyer = customer(&mut customers, "tb_parcel", "13812345678", false).await;
    let inbox = huitou_tests::Inbox::of(&suite, "notification");
    let snapshot = |order_no: &str, status: &str| OrderSnapshot {
        order_id: format!("id-{order_no}"),
        order_no: order_no.into(),
        customer_id: buyer.clone(),
        status: status.into(),
        payable_fen: 9_900,
        create_time: Some(ago(600)),
        pay_time: Some(ago(500)),
        ..Default::default()
    };
    let shipped = |order_no: &str| {
        inbox.envelope_at(
            300,
            Payload::OrderShipped(OrderShipped {
                order: Some(snapshot(order_no, "SHIPPED")),
                carrier: "顺丰".into(),
                tracking_number: format!("SF-{order_no}"),
            }),
        )
    };
    let received = |order_no: &str| {
        inbox.envelope_at(
            60,
            Payload::OrderReceived(OrderReceived {
                order: Some(snapshot(order_no, "RECEIVED")),
            }),
        )
    };
    // P-1 in order: its notice waits for the send window, then the buyer
    // confirms receipt.
    inbox.deliver(vec![shipped("P-1")]).await;
    let waiting = list_until(&mut ops, &buyer, |ms| !ms.is_empty()).await;
    assert_eq!(waiting[0].status, DEFERRED, "{waiting:#?}");
    inbox.deliver(vec![received("P-1")]).await;
    // P-2's receipt arrives before its shipment; P-3 only ships.
    inbox.deliver(vec![received("P-2")]).await;
    let late = inbox.deliver(vec![shipped("P-2"), shipped("P-3")]).await;
    assert_eq!(late.applied_count, 2);
    let messages = list_until(&mut ops, &buyer, |ms| ms.len() >= 2).await;
    let mut notices: Vec<(String, i32, String)> = messages
        .iter()
        .filter(|m| m.origin == "event:order_shipped")
        .map(|m| (m.text.clone(), m.status, m.status_reason.clone()))
        .collect();
    notices.sort();
    assert_eq!(
        notices,
        vec![
            (
                "【回头客】订单P-1已由顺丰发出，单号SF-P-1".to_owned(),
                SUPPRESSED,
                "ORDER_RECEIVED".to_owned()
            ),
            (
                "【回头客】订单P-3已由顺丰发出，单号SF-P-3".to_owned(),
                DEFERRED,
                String::new()
            ),
        ],
        "{messages:#?}"
    );
    suite.stop().await;
}

/// A shipping notice (发货通知).
fn shipping_notice() -> pb::Template {
    sms(
        "发货",
        pb::MessageKind::Transactional,
        "订单{{order_no}}已由{{carrier}}发出，单号{{tracking_number}}",
    )
}

/// Makes `template_id` the shop's message for `trigger`.
async fn set_rule(ops: &mut Notifications, trigger: pb::Trigger, template_id: &str) {
    ops.set_trigger_rule(pb::SetTriggerRuleRequest {
        rule: Some(pb::TriggerRule {
            trigger: trigger as i32,
            template_id: template_id.to_owned(),
            enabled: true,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("rule");
}

async fn list_until(
    client: &mut Notifications,
    customer: &str,
    done: impl Fn(&[pb::Message]) -> bool,
) -> Vec<pb::Message> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ms = client
            .list_messages(pb::ListMessagesRequest {
                customer_id: customer.into(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .messages;
        if done(&ms) {
            return ms;
        }
        if std::time::Instant::now() > deadline {
            panic!("messages never arrived: {ms:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tasks_until(client: &mut Notifications) -> pb::CallTask {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let tasks = client
            .list_call_tasks(pb::ListCallTasksRequest {
                open_only: true,
                ..Default::default()
            })
            .await
            .expect("tasks")
            .into_inner()
            .tasks;
        if let Some(t) = tasks.into_iter().next() {
            return t;
        }
        if std::time::Instant::now() > deadline {
            panic!("no call task opened");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_batch_reaches_each_customer_once() {
    let (suite, _sink) = start("notify-batch").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    let mut customers = suite.customers(&suite.shop.operator);
    set_policy(&mut ops, all_day()).await;
    let greeting = create(
        &mut ops,
        sms(
            "生日",
            pb::MessageKind::Transactional,
            "{{customer_name}}，生日快乐！",
        ),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            customer(
                &mut customers,
                &format!("tb_{i}"),
                &format!("1390000001{i}"),
                false,
            )
            .await,
        );
    }
    let request = |recipients: Vec<pb::BatchRecipient>| pb::SendBatchRequest {
        batch_id: "birthday-2026-11".into(),
        template_id: greeting.id.clone(),
        variables: [("customer_name".to_owned(), "亲".to_owned())].into(),
        recipients,
        ..Default::default()
    };
    let recipients: Vec<pb::BatchRecipient> = ids
        .iter()
        .map(|id| pb::BatchRecipient {
            customer_id: id.clone(),
            ..Default::default()
        })
        .chain([pb::BatchRecipient {
            customer_id: ids[0].clone(),
            variables: [("coupon_code".to_owned(), "X".to_owned())].into(),
        }])
        .collect();
    let first = ops
        .send_batch(tokio_stream::iter(vec![request(recipients.clone())]))
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(first.accepted, 3, "{first:#?}");
    assert_eq!(first.rejected, 1);
    assert_eq!(
        first.problems,
        vec![
            "recipients[3].variables.coupon_code: the template does not use it; it uses: customer_name"
        ]
    );
    let again = ops
        .send_batch(tokio_stream::iter(vec![request(recipients)]))
        .await
        .expect("batch again")
        .into_inner();
    assert_eq!(
        (again.accepted, again.already_in_batch),
        (0, 3),
        "{again:#?}"
    );
    for id in &ids {
        let ms = list_until(&mut ops, id, |ms| ms.len() == 1).await;
        assert_eq!(ms[0].origin, "batch:birthday-2026-11");
        assert_eq!(until(&mut ops, &ms[0].id, is_final).await.status, SENT);
    }
    suite.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let (suite, _sink) = start("notify-bad").await;
    let mut ops = suite.notifications(&suite.shop.operator);
    let mut front = suite.notifications(&suite.shop.storefront);
    let bad = |s: tonic::Status| (s.code(), bad_fields(&s));

    let unknown = ops
        .create_template(pb::CreateTemplateRequest {
            template: Some(sms("x", pb::MessageKind::Transactional, "{{nickname}}你好")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(unknown),
        (Code::InvalidArgument, vec!["template.body".to_owned()])
    );
    let no_opt_out = ops
        .create_template(pb::CreateTemplateRequest {
            template: Some(sms("x", pb::MessageKind::Marketing, "双11大促")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(no_opt_out),
        (Code::InvalidArgument, vec!["template.body".to_owned()])
    );
    let listed = ops
        .list_templates(pb::ListTemplatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.templates.is_empty(),
        "a refused template is not stored"
    );

    let mut overlapping = all_day();
    overlapping.windows = vec![
        pb::SendWindow {
            start_minute: 570,
            end_minute: 720,
        },
        pb::SendWindow {
            start_minute: 700,
            end_minute: 800,
        },
    ];
    let err = ops
        .set_send_policy(pb::SetSendPolicyRequest {
            policy: Some(overlapping),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(err),
        (Code::InvalidArgument, vec!["policy.windows[1]".to_owned()])
    );
    let empty = pb::SendPolicy {
        windows: vec![],
        ..all_day()
    };
    let err = ops
        .set_send_policy(pb::SetSendPolicyRequest {
            policy: Some(empty),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(err),
        (Code::InvalidArgument, vec!["policy.windows".to_owned()])
    );
    let policy = ops
        .get_send_policy(pb::GetSendPolicyRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(policy.windows.len(), 3, "the defaults still hold");

    let care = create(
        &mut ops,
        sms(
            "关怀",
            pb::MessageKind::Transactional,
            "订单{{order_no}}已签收",
        ),
    )
    .await;
    let past = front
        .send_notification(pb::SendNotificationRequest {
            customer_id: "c1".into(),
            template_id: care.id.clone(),
            variables: [("order_no".to_owned(), "E1".to_owned())].into(),
            send_time: Some(ago(3_600)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(past),
        (Code::InvalidArgument, vec!["send_time".to_owned()])
    );
    let extra = front
        .send_notification(pb::SendNotificationRequest {
            customer_id: "c1".into(),
            template_id: care.id.clone(),
            variables: [
                ("order_no".to_owned(), "E1".to_owned()),
                ("points".to_owned(), "9".to_owned()),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(extra),
        (Code::InvalidArgument, vec!["variables.points".to_owned()])
    );
    let missing = front
        .send_notification(pb::SendNotificationRequest {
            customer_id: "c1".into(),
            template_id: care.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(missing),
        (Code::InvalidArgument, vec!["variables.order_no".to_owned()])
    );
    let not_mobile = front
        .record_inbound_reply(pb::RecordInboundReplyRequest {
            channel: Channel::Sms as i32,
            from: "12345".into(),
            text: "T".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad(not_mobile),
        (Code::InvalidArgument, vec!["from".to_owned()])
    );
    let storefront_settings = front
        .set_send_policy(pb::SetSendPolicyRequest {
            policy: Some(all_day()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(storefront_settings.code(), Code::PermissionDenied);
    let listed = front
        .list_messages(pb::ListMessagesRequest {
            customer_id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.messages.is_empty(), "nothing was accepted");
    // Another shop's template is not there.
    let mut other = suite.notifications(&suite.other_shop.operator);
    let err = other
        .get_template(pb::GetTemplateRequest {
            template_id: care.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    suite.stop().await;
}

/// The customer service's replicas deliver at once; two deliveries that
/// change the same customers, or settle the same orders, in opposite orders
/// must not deadlock (decision 0014).
#[tokio::test]
async fn deliveries_that_meet_the_same_customers_in_opposite_orders_do_not_deadlock() {
    use huitou_proto::events::v1::event_envelope::Payload;
    use huitou_proto::events::v1::{
        CustomerCreated, CustomerUpdated, OrderPaid, OrderReceived, OrderSnapshot,
    };
    let (suite, _sink) = start("notify-lock-order").await;
    let inbox = huitou_tests::Inbox::of(&suite, "notification");
    for round in 0..huitou_tests::race_rounds(10) {
        let customers: Vec<String> = (0..40).map(|i| format!("c-{round}-{i:02}")).collect();
        let created: Vec<_> = customers
            .iter()
            .map(|c| {
                inbox.envelope(Payload::CustomerCreated(CustomerCreated {
                    customer_id: c.clone(),
                    buyer_nick: format!("nick-{c}"),
                }))
            })
            .collect();
        assert_eq!(inbox.deliver(created).await.applied_count, 40);
        let profile = |c: &String, channels: &[&str]| {
            inbox.envelope(Payload::CustomerUpdated(CustomerUpdated {
                customer_id: c.clone(),
                changed_fields: vec!["consent.sms".into()],
                consented_channels: channels.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            }))
        };
        let order = |c: &String| OrderSnapshot {
            order_id: format!("id-{c}"),
            order_no: format!("no-{c}"),
            customer_id: c.clone(),
            status: "PAID".into(),
            payable_fen: 100,
            goods_fen: 100,
            pay_time: Some(ago(5)),
            ..Default::default()
        };
        // One delivery pays each customer's order and then changes the
        // customer; the other changes the customers in the opposite order
        // and then reports the orders received, also in opposite order.
        let mut one = Vec::new();
        for c in &customers {
            one.push(inbox.envelope(Payload::OrderPaid(OrderPaid {
                order: Some(order(c)),
            })));
            one.push(profile(c, &["sms"]));
        }
        let mut other = Vec::new();
        for c in customers.iter().rev() {
            other.push(profile(c, &[]));
            other.push(inbox.envelope(Payload::OrderReceived(OrderReceived {
                order: Some(order(c)),
            })));
        }
        let (a, b) = tokio::join!(inbox.deliver(one), inbox.deliver(other));
        assert_eq!(
            (a.applied_count, b.applied_count),
            (80, 80),
            "round {round}"
        );
    }
    suite.stop().await;
}
