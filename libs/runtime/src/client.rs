//! Calls from one Huitou service to another: the internal credential, the
//! shop acted for, and the caller's trace context on every request.

use secrecy::{ExposeSecret, SecretString};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::auth::SHOP_HEADER;
use crate::error::Failure;
use crate::telemetry;

/// Adds the internal credential and trace context to outgoing calls. The
/// shop is set per call with [`for_shop`].
#[derive(Clone)]
pub struct InternalCredential {
    bearer: MetadataValue<tonic::metadata::Ascii>,
}

impl InternalCredential {
    /// From the configured internal token.
    pub fn new(token: &SecretString) -> Result<Self, Failure> {
        let bearer = format!("Bearer {}", token.expose_secret())
            .parse()
            .map_err(|_| Failure::internal("the internal token is not valid metadata"))?;
        Ok(Self { bearer })
    }
}

impl Interceptor for InternalCredential {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        telemetry::inject_current(request.metadata_mut());
        Ok(request)
    }
}

/// Wraps a message in a request acting for `shop_id`.
pub fn for_shop<T>(shop_id: &str, message: T) -> Result<tonic::Request<T>, Failure> {
    let mut request = tonic::Request::new(message);
    let value = shop_id
        .parse()
        .map_err(|_| Failure::internal("shop id is not valid metadata"))?;
    request.metadata_mut().insert(SHOP_HEADER, value);
    Ok(request)
}

/// A lazily connecting channel to a peer service at `uri`
/// (e.g. `http://loyalty:50051`).
pub fn channel(uri: &str, timeout: std::time::Duration) -> Result<Channel, Failure> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(|e| Failure::internal(format!("bad endpoint {uri}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}
