//! One trace across services: a storefront's RecordOrder in the customer
//! service and the work its events cause in loyalty, coupon and
//! notification — and, one outbox hop further, the tier-upgrade coupon
//! loyalty's tier change makes the coupon service issue — arrive at an
//! OTLP receiver under the same trace id, with RPC spans named and
//! attributed after the OpenTelemetry RPC conventions; RPC duration and
//! outbox backlog metrics arrive at the same receiver.
//!
//! Its own test binary: telemetry is process-global.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code fails loudly

use std::sync::{Arc, Mutex};
use std::time::Duration;

use huitou_proto::coupon::v1 as kpb;
use huitou_proto::customer::v1 as cpb;
use huitou_proto::loyalty::v1 as pb;
use huitou_testkit::TestDatabase;
use huitou_tests::{TestSuite, ago, test_settings, with_coupon, with_loyalty, with_notification};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    _ => String::new(),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[derive(Clone, Default)]
struct MetricsReceiver(Arc<Mutex<Vec<Metric>>>);

#[tonic::async_trait]
impl MetricsService for MetricsReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.0.lock().unwrap();
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                metrics.extend(scope.metrics);
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_and_the_work_it_causes_in_every_service_are_one_trace() {
    let receiver = Receiver::default();
    let metrics = MetricsReceiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    {
        let (receiver, metrics) = (receiver.clone(), metrics.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .add_service(MetricsServiceServer::new(metrics))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("receiver");
        });
    }

    let database = TestDatabase::new("trace").await;
    let loyalty_db = TestDatabase::new("trace-loyalty").await;
    let coupon_db = TestDatabase::new("trace-coupon").await;
    let notification_db = TestDatabase::new("trace-notification").await;
    let sink = huitou_testkit::temp_dir("trace-sink").join("sent.jsonl");
    let mut settings = test_settings(&database);
    with_loyalty(&mut settings, &loyalty_db);
    with_coupon(&mut settings, &coupon_db, None);
    with_notification(&mut settings, &notification_db, &sink, 1);
    settings.telemetry.otlp_endpoint = format!("http://{collector}");
    settings.telemetry.log_filter = "info".into();
    settings.telemetry.metrics_interval_ms = 200;
    let telemetry =
        huitou_runtime::telemetry::init("huitou", &settings.telemetry).expect("telemetry");
    let mut suite = TestSuite::start_with(database, settings).await;
    suite.loyalty_database = Some(loyalty_db);
    suite.coupon_database = Some(coupon_db);
    suite.notification_database = Some(notification_db);

    // A tier upgrade earns a coupon: loyalty's tier change, itself caused
    // by the order's event, makes the coupon service issue it.
    let mut ops = suite.coupons(&suite.shop.operator);
    let template = ops
        .create_template(kpb::CreateTemplateRequest {
            template: Some(kpb::CouponTemplate {
                name: "升级礼券".into(),
                benefit: Some(kpb::coupon_template::Benefit::AmountOff(kpb::AmountOff {
                    amount_fen: 1_000,
                })),
                validity: Some(kpb::coupon_template::Validity::ValidDaysAfterIssue(30)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("template")
        .into_inner()
        .template
        .expect("template");
    ops.set_issue_rule(kpb::SetIssueRuleRequest {
        rule: Some(kpb::IssueRule {
            trigger: kpb::IssueTrigger::TierUpgrade as i32,
            template_id: template.template_id,
            active: true,
            positive_reviews_only: false,
        }),
    })
    .await
    .expect("rule");

    let mut orders = suite.customers(&suite.shop.storefront);
    let mut members = suite.loyalty(&suite.shop.storefront);
    let mut coupons = suite.coupons(&suite.shop.storefront);
    // 600 yuan paid lifts a new member past the default program's SENIOR tier.
    let customer_id = orders
        .record_order(cpb::RecordOrderRequest {
            order_no: "TR-1".into(),
            buyer_nick: "tb_traced".into(),
            status: cpb::OrderStatus::Paid as i32,
            items: vec![cpb::OrderItem {
                sku: "SKU-1".into(),
                category: "童装".into(),
                quantity: 2,
                unit_price_fen: 30_000,
                title: String::new(),
            }],
            payable_fen: 60_000,
            create_time: Some(ago(60)),
            pay_time: Some(ago(50)),
            ..Default::default()
        })
        .await
        .expect("order")
        .into_inner()
        .order
        .expect("order")
        .customer_id;
    let mut applied = false;
    for _ in 0..400 {
        if let Ok(r) = members
            .get_member(pb::GetMemberRequest {
                buyer_nick: "tb_traced".into(),
                ..Default::default()
            })
            .await
            && r.into_inner().member.is_some_and(|m| m.balance_points > 0)
        {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(applied, "loyalty applied the order");
    let mut issued = false;
    for _ in 0..400 {
        let listed = coupons
            .list_coupons(kpb::ListCouponsRequest {
                customer_id: customer_id.clone(),
                ..Default::default()
            })
            .await
            .expect("coupons")
            .into_inner()
            .coupons;
        if listed.iter().any(|c| c.issue_reason == "tier upgrade") {
            issued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(issued, "the tier upgrade earned its coupon");
    // The notification service has applied the order's events too (it
    // makes no message here to wait for, so its inbox is read).
    use sea_orm::ConnectionTrait;
    let notification_db = huitou_storage::Database::connect(
        &suite
            .notification_database
            .as_ref()
            .expect("notification runs")
            .config,
    )
    .await
    .expect("notification database");
    let mut consumed = false;
    for _ in 0..400 {
        let rows = notification_db
            .conn()
            .query_all_raw(sea_orm::Statement::from_string(
                notification_db.backend(),
                "SELECT event_id FROM consumed_events WHERE consumer = 'notification'",
            ))
            .await
            .expect("inbox");
        if !rows.is_empty() {
            consumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(consumed, "notification applied the order's events");
    notification_db.close().await;
    suite.stop().await;
    // Let the relays measure their backlog once more, then flush every
    // span and metric still batched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(telemetry);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let spans = receiver.0.lock().unwrap().clone();
    let record = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| attribute(s, "rpc.method").as_deref() == Some("RecordOrder"))
        .expect("a RecordOrder span");
    // OpenTelemetry RPC conventions: "package.Service/Method", server kind.
    assert_eq!(
        record.name,
        "huitou.customer.v1.CustomerService/RecordOrder"
    );
    assert_eq!(attribute(record, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(record, "rpc.service").as_deref(),
        Some("huitou.customer.v1.CustomerService")
    );
    assert_eq!(
        attribute(record, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(record.kind, 2, "SPAN_KIND_SERVER");
    let same_trace: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.trace_id == record.trace_id)
        .collect();
    let names: Vec<&str> = same_trace.iter().map(|s| s.name.as_str()).collect();
    // Each consumer's application of events it was delivered, by consumer.
    let applied_by = |consumer: &str| {
        same_trace
            .iter()
            .filter(|s| s.name == "events.apply" || s.name == "event.apply")
            .filter(|s| attribute(s, "consumer").as_deref() == Some(consumer))
            .count()
    };
    for consumer in ["loyalty", "coupon", "notification"] {
        assert!(
            applied_by(consumer) > 0,
            "{consumer}'s application of the order's events joins the order's trace: {names:?}"
        );
    }
    // The coupon service applies twice in this trace: the order's events
    // from the customer service, then loyalty's tier change, which loyalty
    // wrote while applying the order and its relay delivered.
    assert!(
        applied_by("coupon") >= 2,
        "the second outbox hop (loyalty to coupon) joins the trace too: {names:?}"
    );
    let deliveries = same_trace
        .iter()
        .filter(|s| s.name == "outbox.deliver")
        .count();
    assert!(
        deliveries >= 4,
        "outbox deliveries to loyalty, coupon, notification, then loyalty's to coupon: {names:?}"
    );

    // Metrics: RPC durations after the RPC conventions, and the outbox backlog.
    let metrics = metrics.0.lock().unwrap().clone();
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    // Exports come every 200 ms; the first may precede the RecordOrder
    // call, so any export of the histogram may carry its point.
    let durations: Vec<_> = metrics
        .iter()
        .filter(|m| m.name == "rpc.server.call.duration")
        .collect();
    assert!(!durations.is_empty(), "no RPC duration metric in {names:?}");
    let record_order_timed = durations.iter().any(|duration| {
        assert_eq!(duration.unit, "s");
        let Some(Data::Histogram(histogram)) = &duration.data else {
            panic!("RPC duration is not a histogram");
        };
        histogram.data_points.iter().any(|p| {
            p.attributes.iter().any(|a| {
                a.key == "rpc.method"
                    && a.value.as_ref().and_then(|v| v.value.as_ref())
                        == Some(&Value::StringValue("RecordOrder".into()))
            }) && p.count > 0
        })
    });
    assert!(record_order_timed, "RecordOrder's duration was exported");
    assert!(
        names.contains(&"huitou.outbox.pending") && names.contains(&"huitou.outbox.lag"),
        "outbox backlog metrics: {names:?}"
    );
}
