//! Where a customer is reached, asked of the customer service at the moment
//! of sending: the notification service keeps no phone numbers or
//! addresses (decision 0016).

use std::collections::HashMap;
use std::time::Duration;

use huitou_proto::customer::v1 as customer;
use huitou_proto::customer::v1::customer_service_client::CustomerServiceClient;
use huitou_runtime::auth::BoxFuture;
use huitou_runtime::client::{InternalCredential, channel, for_shop};
use secrecy::SecretString;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Looks up customers' addresses on a channel.
pub trait ContactBook: Send + Sync + 'static {
    /// The address of each customer who has one on `channel`.
    fn addresses<'a>(
        &'a self,
        shop_id: &'a str,
        channel: i32,
        customer_ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, String>>;

    /// The customer with this normalised phone, if any.
    fn find_by_phone<'a>(
        &'a self,
        shop_id: &'a str,
        phone: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;

    /// Writes an opt-out (a reply) back to the customer's consent record.
    /// An unknown or erased customer counts as done.
    fn withdraw_consent<'a>(
        &'a self,
        shop_id: &'a str,
        customer_id: &'a str,
        channel: i32,
        at: i64,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// Asks the customer service (`ResolveContacts`), with the internal
/// credential.
pub struct CustomerContacts {
    client: CustomerServiceClient<InterceptedService<Channel, InternalCredential>>,
}

impl CustomerContacts {
    /// A book over the customer service at `endpoint`.
    pub fn new(endpoint: &str, token: &SecretString) -> Result<Self, String> {
        let channel = channel(endpoint, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let credential = InternalCredential::new(token).map_err(|e| e.to_string())?;
        Ok(Self {
            client: CustomerServiceClient::with_interceptor(channel, credential),
        })
    }
}

impl ContactBook for CustomerContacts {
    fn addresses<'a>(
        &'a self,
        shop_id: &'a str,
        channel: i32,
        customer_ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, String>> {
        Box::pin(async move {
            let mut found = HashMap::with_capacity(customer_ids.len());
            for chunk in customer_ids.chunks(1000) {
                let request = for_shop(
                    shop_id,
                    customer::ResolveContactsRequest {
                        customer_ids: chunk.to_vec(),
                        channel,
                        reason: "notification delivery".into(),
                    },
                )
                .map_err(|e| e.to_string())?;
                let answer = self
                    .client
                    .clone()
                    .resolve_contacts(request)
                    .await
                    .map_err(|s| format!("customer service: {}", s.message()))?
                    .into_inner();
                for a in answer.addresses {
                    if !a.address.is_empty() {
                        found.insert(a.customer_id, a.address);
                    }
                }
            }
            Ok(found)
        })
    }

    fn find_by_phone<'a>(
        &'a self,
        shop_id: &'a str,
        phone: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            let request = for_shop(
                shop_id,
                customer::FindCustomerByPhoneRequest {
                    phone: phone.to_owned(),
                },
            )
            .map_err(|e| e.to_string())?;
            match self.client.clone().find_customer_by_phone(request).await {
                Ok(answer) => Ok(answer.into_inner().customer.map(|c| c.id)),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                Err(s) => Err(format!("customer service: {}", s.message())),
            }
        })
    }

    fn withdraw_consent<'a>(
        &'a self,
        shop_id: &'a str,
        customer_id: &'a str,
        channel: i32,
        at: i64,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let request = for_shop(
                shop_id,
                customer::SetConsentRequest {
                    customer_id: customer_id.to_owned(),
                    channel,
                    granted: false,
                    source: "reply T (notification service)".into(),
                    decide_time: Some(huitou_proto::timestamp_from_micros(at)),
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            match self.client.clone().set_consent(request).await {
                Ok(_) => Ok(()),
                // Nothing left to withdraw.
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::NotFound | tonic::Code::FailedPrecondition
                    ) =>
                {
                    Ok(())
                }
                Err(s) => Err(format!("customer service: {}", s.message())),
            }
        })
    }
}
