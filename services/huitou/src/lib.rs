//! The Huitou suite in one process: every service built so far behind one
//! gRPC server, with their relays and housekeeping. The `huitou` command and
//! the cross-service tests both start it through [`Suite`].

pub mod settings;

use std::future::Future;

use std::sync::Arc;

use huitou_coupon::CouponService;
use huitou_customer::CustomerService;
use huitou_loyalty::LoyaltyService;
use huitou_notification::NotificationService;
use huitou_proto::events::v1::event_consumer_service_server::EventConsumerServiceServer;
use huitou_runtime::auth::Authenticator;
use huitou_runtime::server::GrpcServer;
use huitou_storage::inbox::Inboxes;
use huitou_storage::outbox::Subscriber;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;

pub use settings::Settings;

/// Why the suite could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A service could not start.
    #[error(transparent)]
    Customer(#[from] huitou_customer::StartError),
    /// The loyalty service could not start.
    #[error(transparent)]
    Loyalty(#[from] huitou_loyalty::StartError),
    /// The coupon service could not start.
    #[error(transparent)]
    Coupon(#[from] huitou_coupon::StartError),
    /// The notification service could not start.
    #[error(transparent)]
    Notification(#[from] huitou_notification::StartError),
    /// The listener has no address.
    #[error("the listener has no address: {0}")]
    Listener(std::io::Error),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] huitou_runtime::server::ServeError),
    /// The settings do not describe the services asked for.
    #[error("invalid settings:\n  {}", .0.join("\n  "))]
    Settings(Vec<String>),
    /// A service this process does not run was asked for.
    #[error("the {0} service does not run in this process")]
    NotHere(&'static str),
    /// API keys cannot be checked.
    #[error("cannot reach the customer service for API keys: {0}")]
    Keys(String),
}

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// Every configured service (the one-process suite).
    All,
    /// The customer service alone.
    Customer,
    /// The loyalty service alone; API keys are checked by the customer
    /// service at `auth.key_service`.
    Loyalty,
    /// The coupon service alone; API keys are checked as for loyalty.
    Coupon,
    /// The notification service alone; API keys are checked as for loyalty.
    Notification,
}

/// The services of one process.
pub struct Suite {
    settings: Settings,
    /// The customer service, when it runs here.
    customer: Option<CustomerService>,
    /// The loyalty service, when it runs here.
    pub loyalty: Option<LoyaltyService>,
    /// The coupon service, when it runs here.
    pub coupon: Option<CouponService>,
    /// The notification service, when it runs here.
    pub notification: Option<NotificationService>,
}

impl Suite {
    /// Opens every configured service's storage; migrates when `migrate`.
    pub async fn open(settings: Settings, migrate: bool) -> Result<Self, SuiteError> {
        Self::open_services(settings, Services::All, migrate).await
    }

    /// Opens the storage of `which` services; migrates when `migrate`.
    pub async fn open_services(
        mut settings: Settings,
        which: Services,
        migrate: bool,
    ) -> Result<Self, SuiteError> {
        let mut problems = Vec::new();
        let run_customer = matches!(which, Services::All | Services::Customer);
        if which != Services::All && which != Services::Loyalty {
            settings.loyalty = None;
        }
        if which != Services::All && which != Services::Coupon {
            settings.coupon = None;
        }
        if which != Services::All && which != Services::Notification {
            settings.notification = None;
        }
        if run_customer {
            problems.extend(settings.customer.problems("customer"));
        }
        match &settings.loyalty {
            Some(loyalty) => problems.extend(loyalty.problems("loyalty")),
            None if which == Services::Loyalty => {
                problems.push("loyalty: the [loyalty] section is required".into())
            }
            None => {}
        }
        match &settings.coupon {
            Some(coupon) => problems.extend(coupon.problems("coupon")),
            None if which == Services::Coupon => {
                problems.push("coupon: the [coupon] section is required".into())
            }
            None => {}
        }
        match &settings.notification {
            Some(n) => problems.extend(n.problems("notification")),
            None if which == Services::Notification => {
                problems.push("notification: the [notification] section is required".into())
            }
            None => {}
        }
        if !run_customer && settings.auth.key_service.is_empty() {
            problems.push(
                "auth.key_service: required to run a service without the customer service \
                 (e.g. http://customer:50051)"
                    .into(),
            );
        }
        if !problems.is_empty() {
            return Err(SuiteError::Settings(problems));
        }
        let customer = match run_customer {
            true => Some(CustomerService::open(&settings.customer, migrate).await?),
            false => None,
        };
        let loyalty = match &settings.loyalty {
            Some(config) => Some(LoyaltyService::open(config, migrate).await?),
            None => None,
        };
        let coupon = match &settings.coupon {
            Some(config) => Some(CouponService::open(config, migrate).await?),
            None => None,
        };
        let notification = match &settings.notification {
            Some(config) => {
                Some(NotificationService::open(config, migrate, &settings.auth.token()).await?)
            }
            None => None,
        };
        Ok(Self {
            settings,
            customer,
            loyalty,
            coupon,
            notification,
        })
    }

    /// The customer service (shops and keys live there).
    pub fn customer(&self) -> Result<&CustomerService, SuiteError> {
        self.customer
            .as_ref()
            .ok_or(SuiteError::NotHere(huitou_customer::SERVICE))
    }

    /// The services this process runs, by name.
    pub fn service_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.customer.is_some() {
            names.push(huitou_customer::SERVICE);
        }
        if self.loyalty.is_some() {
            names.push(huitou_loyalty::SERVICE);
        }
        if self.coupon.is_some() {
            names.push(huitou_coupon::SERVICE);
        }
        if self.notification.is_some() {
            names.push(huitou_notification::SERVICE);
        }
        names
    }

    /// Serves on `listener` until `shutdown` completes: gRPC, outbox relays
    /// and housekeeping. Returns after the server drained.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SuiteError> {
        let token = self.settings.auth.token();
        let keys: Arc<dyn huitou_runtime::auth::KeyVerifier> = match &self.customer {
            Some(customer) => customer.key_verifier(),
            None => Arc::new(
                huitou_customer::client::RemoteKeys::new(&self.settings.auth.key_service, &token)
                    .map_err(|f| SuiteError::Keys(f.message))?,
            ),
        };
        let authenticator = Authenticator::new(keys, &token);
        let mut server = GrpcServer::new(self.settings.server.clone(), authenticator);
        let mut inboxes = Inboxes::new();
        self.subscribe_each_other(&listener)?;
        if let Some(customer) = &self.customer {
            customer.register(&mut server);
        }
        if let Some(loyalty) = &self.loyalty {
            loyalty.register(&mut server);
            inboxes.add(loyalty.inbox());
        }
        if let Some(coupon) = &self.coupon {
            coupon.register(&mut server);
            inboxes.add(coupon.inbox());
        }
        if let Some(notification) = &self.notification {
            notification.register(&mut server);
            inboxes.add(notification.inbox());
        }
        if !inboxes.is_empty() {
            let limit = server.config().max_message_bytes;
            server.add_service(
                EventConsumerServiceServer::new(inboxes)
                    .max_decoding_message_size(limit)
                    .accept_compressed(CompressionEncoding::Gzip),
            );
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        if let Some(customer) = self.customer {
            tasks.push(tokio::spawn(
                customer.relay(&token)?.run(stopped(stop_rx.clone())),
            ));
            let customer = Arc::new(customer);
            let stop = stopped(stop_rx.clone());
            tasks.push(tokio::spawn(
                async move { customer.housekeeping(stop).await },
            ));
        }
        if let Some(loyalty) = self.loyalty {
            tasks.push(tokio::spawn(
                loyalty.relay(&token)?.run(stopped(stop_rx.clone())),
            ));
            let loyalty = Arc::new(loyalty);
            let stop = stopped(stop_rx.clone());
            tasks.push(tokio::spawn(
                async move { loyalty.housekeeping(stop).await },
            ));
        }
        if let Some(coupon) = self.coupon {
            tasks.push(tokio::spawn(
                coupon.relay(&token)?.run(stopped(stop_rx.clone())),
            ));
            let coupon = Arc::new(coupon);
            let stop = stopped(stop_rx.clone());
            tasks.push(tokio::spawn(async move { coupon.housekeeping(stop).await }));
        }
        if let Some(notification) = self.notification {
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move { notification.run(stop).await }));
        }

        let result = server.serve(listener, shutdown).await;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        result.map_err(SuiteError::from)
    }

    /// Services in one process deliver events to each other through the
    /// process's own address: customer events to loyalty and coupon,
    /// loyalty's tier changes to coupon. Subscriptions already in the
    /// settings are kept.
    fn subscribe_each_other(&mut self, listener: &TcpListener) -> Result<(), SuiteError> {
        let mut own = listener.local_addr().map_err(SuiteError::Listener)?;
        if own.ip().is_unspecified() {
            own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let endpoint = format!("http://{own}");
        let subscriber = |name: &str, types: &[&str], source: &str| Subscriber {
            name: name.into(),
            endpoint: endpoint.clone(),
            event_types: types
                .iter()
                .filter(|t| t.starts_with(source))
                .map(|s| (*s).to_owned())
                .collect(),
        };
        if let Some(customer) = &mut self.customer {
            if self.loyalty.is_some() {
                // Customer-service events are the customer.* and order.* ones.
                let mut s = subscriber(
                    huitou_loyalty::SERVICE,
                    huitou_loyalty::events::SUBSCRIBED,
                    "",
                );
                s.event_types.retain(|t| !t.starts_with("coupon."));
                customer.subscribe_if_absent(s);
            }
            if self.coupon.is_some() {
                // Customer-service events are the customer.* and order.* ones.
                let mut s = subscriber(
                    huitou_coupon::SERVICE,
                    huitou_coupon::events::SUBSCRIBED,
                    "",
                );
                s.event_types
                    .retain(|t| t.starts_with("customer.") || t.starts_with("order."));
                customer.subscribe_if_absent(s);
            }
        }
        if self.notification.is_some() {
            let s = subscriber(
                huitou_notification::SERVICE,
                huitou_notification::events::SUBSCRIBED,
                "",
            );
            if let Some(customer) = &mut self.customer {
                let mut from_customer = s.clone();
                from_customer
                    .event_types
                    .retain(|t| t.starts_with("customer.") || t.starts_with("order."));
                customer.subscribe_if_absent(from_customer);
            }
            if let Some(coupon) = &mut self.coupon {
                let mut from_coupon = s;
                from_coupon.event_types.retain(|t| t.starts_with("coupon."));
                coupon.subscribe_if_absent(from_coupon);
            }
        }
        if let (Some(notification), true) = (&mut self.notification, self.customer.is_some()) {
            // The customer service is in this process: addresses come from
            // its own address.
            notification
                .use_customer_endpoint(&endpoint, &self.settings.auth.token())
                .map_err(|e| SuiteError::Settings(vec![e.to_string()]))?;
        }
        if let (Some(coupon), Some(_)) = (&mut self.coupon, &self.loyalty) {
            // A coupon bought with points that could not be issued.
            coupon.subscribe_if_absent(subscriber(
                huitou_loyalty::SERVICE,
                huitou_loyalty::events::SUBSCRIBED,
                "coupon.",
            ));
        }
        if let (Some(loyalty), Some(_)) = (&mut self.loyalty, &self.coupon) {
            loyalty.subscribe_if_absent(subscriber(
                huitou_coupon::SERVICE,
                huitou_coupon::events::SUBSCRIBED,
                "loyalty.",
            ));
        }
        Ok(())
    }
}
