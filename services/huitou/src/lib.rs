//! The Huitou suite in one process: every service built so far behind one
//! gRPC server, with their relays and housekeeping. The `huitou` command and
//! the cross-service tests both start it through [`Suite`].

pub mod settings;

use std::future::Future;

use huitou_customer::CustomerService;
use huitou_runtime::auth::Authenticator;
use huitou_runtime::server::GrpcServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use settings::Settings;

/// Why the suite could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// A service could not start.
    #[error(transparent)]
    Customer(#[from] huitou_customer::StartError),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] huitou_runtime::server::ServeError),
}

/// The services of one process.
pub struct Suite {
    settings: Settings,
    /// The customer service.
    pub customer: CustomerService,
}

impl Suite {
    /// Opens every service's storage; migrates when `migrate` is set.
    pub async fn open(settings: Settings, migrate: bool) -> Result<Self, SuiteError> {
        let customer = CustomerService::open(&settings.customer, migrate).await?;
        Ok(Self { settings, customer })
    }

    /// Serves on `listener` until `shutdown` completes: gRPC, outbox relays
    /// and housekeeping. Returns after the server drained.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SuiteError> {
        let token = self.settings.auth.token();
        let authenticator = Authenticator::new(self.customer.key_verifier(), &token);
        let mut server = GrpcServer::new(self.settings.server.clone(), authenticator);
        self.customer.register(&mut server);

        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let relay = self.customer.relay(&token)?;
        let relay_task = tokio::spawn(relay.run(stopped(stop_rx.clone())));
        let customer = std::sync::Arc::new(self.customer);
        let housekeeping = {
            let customer = customer.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { customer.housekeeping(stop).await })
        };

        let result = server.serve(listener, shutdown).await;
        let _ = stop_tx.send(true);
        let _ = relay_task.await;
        let _ = housekeeping.await;
        result.map_err(SuiteError::from)
    }
}
