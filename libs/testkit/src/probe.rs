//! A subscriber for tests: an `EventConsumerService` that records every
//! event it applies (type, shop, and the order number for order events) in
//! its own SQLite file, through the real inbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use huitou_proto::events::v1::EventEnvelope;
use huitou_proto::events::v1::event_consumer_service_server::EventConsumerServiceServer;
use huitou_proto::events::v1::event_envelope::Payload;
use huitou_runtime::auth::{ApiKeySecret, Authenticator, BoxFuture, KeyVerifier};
use huitou_runtime::config::ServerConfig;
use huitou_runtime::server::GrpcServer;
use huitou_runtime::{Caller, Failure};
use huitou_storage::inbox::{EventHandler, EventInbox, Inboxes};
use huitou_storage::migrate::{KIT_TABLES, OUTBOX_BATCHES, dialect};
use huitou_storage::{Database, DatabaseConfig, WriteTx};
use sea_orm::ConnectionTrait;
use secrecy::SecretString;
use tokio::sync::oneshot;

struct NoKeys;

impl KeyVerifier for NoKeys {
    fn verify<'a>(&'a self, _: &'a ApiKeySecret) -> BoxFuture<'a, Result<Option<Caller>, Failure>> {
        Box::pin(async { Ok(None) })
    }
}

struct Recorder;

fn order_no(event: &EventEnvelope) -> String {
    let snapshot = match &event.payload {
        Some(Payload::OrderCreated(e)) => e.order.as_ref(),
        Some(Payload::OrderPaid(e)) => e.order.as_ref(),
        Some(Payload::OrderShipped(e)) => e.order.as_ref(),
        Some(Payload::OrderRefunded(e)) => e.order.as_ref(),
        Some(Payload::OrderImported(e)) => e.order.as_ref(),
        _ => None,
    };
    snapshot.map(|s| s.order_no.clone()).unwrap_or_default()
}

impl EventHandler for Recorder {
    fn consumer(&self) -> &'static str {
        "probe"
    }

    fn apply<'a>(
        &'a self,
        tx: &'a WriteTx,
        event: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            tx.execute(
                "INSERT INTO seen (event_id, event_type, shop_id, order_no) VALUES ($1, $2, $3, $4)",
                vec![
                    event.event_id.clone().into(),
                    event.event_type().into(),
                    event.shop_id.clone().into(),
                    order_no(event).into(),
                ],
            )
            .await
            .map_err(Failure::from)?;
            Ok(())
        })
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Event id.
    pub event_id: String,
    /// Event type, e.g. `order.paid`.
    pub event_type: String,
    /// Order number for order events, else empty.
    pub order_no: String,
}

/// Creates the kit's own tables (idempotency keys, outbox, inbox) in `db`,
/// as every service's migrations do, for tests of the kit alone.
pub async fn kit_tables(db: &Database) {
    for statement in KIT_TABLES
        .statements
        .iter()
        .chain(OUTBOX_BATCHES.statements)
    {
        db.conn()
            .execute_unprepared(&dialect(db.backend(), statement))
            .await
            .expect("kit tables");
    }
}

/// A recording subscriber.
pub struct Probe {
    /// Its storage.
    pub db: Database,
    /// Where it listens.
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    token: String,
}

impl Probe {
    /// Prepares a probe on a free port (not yet serving).
    pub async fn new(internal_token: &str) -> Probe {
        let dir = crate::temp_dir("probe");
        let db = Database::connect(&DatabaseConfig::sqlite_file(&dir.join("probe.db")))
            .await
            .expect("probe db");
        kit_tables(&db).await;
        db.conn()
            .execute_unprepared(
                "CREATE TABLE seen (n INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT, event_type TEXT, shop_id TEXT, order_no TEXT)",
            )
            .await
            .expect("seen table");
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        Probe {
            db,
            address,
            stop: None,
            task: None,
            token: internal_token.to_owned(),
        }
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Starts serving (again).
    pub async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .expect("bind probe");
        let auth = Authenticator::new(Arc::new(NoKeys), &SecretString::from(self.token.clone()));
        let mut server = GrpcServer::new(ServerConfig::default(), auth);
        let mut inboxes = Inboxes::new();
        inboxes.add(Arc::new(EventInbox::new(
            self.db.clone(),
            Arc::new(Recorder),
        )));
        server.add_service(EventConsumerServiceServer::new(inboxes));
        let (tx, rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            let _ = server
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await;
        }));
    }

    /// Stops serving.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Everything recorded, in order.
    pub async fn seen(&self) -> Vec<Seen> {
        let rows = self
            .db
            .conn()
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.backend(),
                "SELECT event_id, event_type, order_no FROM seen ORDER BY n",
            ))
            .await
            .expect("query");
        rows.iter()
            .map(|r| Seen {
                event_id: r.try_get("", "event_id").expect("id"),
                event_type: r.try_get("", "event_type").expect("type"),
                order_no: r.try_get("", "order_no").expect("order"),
            })
            .collect()
    }

    /// Waits up to `timeout` until `ready` holds for what was recorded.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.seen().await;
            if ready(&seen) || std::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
