//! The Huitou suite in one process: every service built so far behind one
//! gRPC server, with their relays and housekeeping. The `huitou` command and
//! the cross-service tests both start it through [`Suite`].

pub mod settings;

use std::future::Future;

use huitou_customer::CustomerService;
use huitou_loyalty::LoyaltyService;
use huitou_runtime::auth::Authenticator;
use huitou_runtime::server::GrpcServer;
use huitou_storage::outbox::Subscriber;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    /// The listener has no address.
    #[error("the listener has no address: {0}")]
    Listener(std::io::Error),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] huitou_runtime::server::ServeError),
}

/// The services of one process.
pub struct Suite {
    settings: Settings,
    /// The customer service.
    pub customer: CustomerService,
    /// The loyalty service, when configured.
    pub loyalty: Option<LoyaltyService>,
}

impl Suite {
    /// Opens every service's storage; migrates when `migrate` is set.
    pub async fn open(settings: Settings, migrate: bool) -> Result<Self, SuiteError> {
        let customer = CustomerService::open(&settings.customer, migrate).await?;
        let loyalty = match &settings.loyalty {
            Some(config) => Some(LoyaltyService::open(config, migrate).await?),
            None => None,
        };
        Ok(Self {
            settings,
            customer,
            loyalty,
        })
    }

    /// The services this process runs, by name.
    pub fn service_names(&self) -> Vec<&'static str> {
        let mut names = vec![huitou_customer::SERVICE];
        if self.loyalty.is_some() {
            names.push(huitou_loyalty::SERVICE);
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
        let authenticator = Authenticator::new(self.customer.key_verifier(), &token);
        let mut server = GrpcServer::new(self.settings.server.clone(), authenticator);
        self.customer.register(&mut server);
        if let Some(loyalty) = &self.loyalty {
            loyalty.register(&mut server);
            // Services in one process deliver events to each other through
            // the process's own address.
            let mut own = listener.local_addr().map_err(SuiteError::Listener)?;
            if own.ip().is_unspecified() {
                own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            self.customer.subscribe_if_absent(Subscriber {
                name: huitou_loyalty::SERVICE.into(),
                endpoint: format!("http://{own}"),
                event_types: huitou_loyalty::events::SUBSCRIBED
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            });
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut tasks = vec![tokio::spawn(
            self.customer.relay(&token)?.run(stopped(stop_rx.clone())),
        )];
        let customer = std::sync::Arc::new(self.customer);
        {
            let customer = customer.clone();
            let stop = stopped(stop_rx.clone());
            tasks.push(tokio::spawn(
                async move { customer.housekeeping(stop).await },
            ));
        }
        if let Some(loyalty) = self.loyalty {
            tasks.push(tokio::spawn(
                loyalty.relay(&token)?.run(stopped(stop_rx.clone())),
            ));
            let loyalty = std::sync::Arc::new(loyalty);
            let stop = stopped(stop_rx.clone());
            tasks.push(tokio::spawn(
                async move { loyalty.housekeeping(stop).await },
            ));
        }

        let result = server.serve(listener, shutdown).await;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        result.map_err(SuiteError::from)
    }
}
