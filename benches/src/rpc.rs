//! GetCustomer against a bare tonic echo server, same client, same run.

use std::sync::Arc;
use std::time::Duration;

use huitou_proto::bench::v1::echo_service_client::EchoServiceClient;
use huitou_proto::bench::v1::echo_service_server::{EchoService, EchoServiceServer};
use huitou_proto::bench::v1::{EchoRequest, EchoResponse};
use huitou_proto::customer::v1 as pb;
use tonic::{Request, Response, Status};

use crate::fixture::{Backend, Running, channel};
use crate::load::{Measured, closed_loop, open_loop};
use crate::report::Report;

struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

/// Settings of the RPC benchmark.
pub struct RpcBench {
    /// Concurrent callers.
    pub workers: usize,
    /// HTTP/2 connections they share.
    pub connections: usize,
    /// Measured seconds per run.
    pub duration: Duration,
    /// Customers to read at random.
    pub customers: usize,
}

/// Starts a bare tonic echo server on `servers`; its address.
pub fn start_echo(servers: &tokio::runtime::Handle) -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let echo_address = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    servers.spawn(async move {
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let _ = tonic::transport::Server::builder()
            .add_service(EchoServiceServer::new(Echo))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    Ok(echo_address)
}

/// Echo at full speed from `workers` callers over `connections`.
pub async fn echo_peak(
    address: std::net::SocketAddr,
    workers: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(Measured, Arc<Vec<EchoClient>>)> {
    let clients: Arc<Vec<EchoClient>> = Arc::new(
        (0..connections)
            .map(|_| channel(address).map(EchoServiceClient::new))
            .collect::<Result<_, _>>()?,
    );
    let c2 = clients.clone();
    let measured = closed_loop(workers, Duration::from_secs(2), duration, move |w, _| {
        let mut c = c2[w % c2.len()].clone();
        async move {
            c.echo(EchoRequest {
                payload: vec![7u8; 64],
            })
            .await
            .is_ok()
        }
    })
    .await;
    Ok((measured, clients))
}

/// Echo paced at `rate` per second, open loop.
pub async fn echo_paced(clients: Arc<Vec<EchoClient>>, rate: f64, duration: Duration) -> Measured {
    open_loop(rate, duration, move |i| {
        let mut c = clients[i as usize % clients.len()].clone();
        async move {
            c.echo(EchoRequest {
                payload: vec![7u8; 64],
            })
            .await
            .is_ok()
        }
    })
    .await
}

/// An echo client.
pub type EchoClient = EchoServiceClient<tonic::transport::Channel>;

/// Runs it on `backend` with the cache at `redis_url`; servers run on
/// `servers` (another runtime), the load here.
pub async fn run(
    bench: &RpcBench,
    backend: &Backend,
    redis_url: &str,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    // The baseline: tonic with nothing but the echo service.
    let echo_address = start_echo(servers)?;
    let database = backend.fresh("rpc").await?;
    let redis = redis_url.to_owned();
    let suite = servers
        .spawn(async move { Running::start(database, &redis).await })
        .await??;

    // Seed customers.
    let clients = suite.clients(bench.connections)?;
    let mut ids = Vec::with_capacity(bench.customers);
    let mut seed = clients[0].clone();
    for i in 0..bench.customers {
        let c = seed
            .upsert_customer(pb::UpsertCustomerRequest {
                buyer_nick: format!("bench_{i:06}"),
                name: Some("测试".into()),
                phone: Some(format!("138{:08}", i)),
                region: Some("浙江 杭州".into()),
                ..Default::default()
            })
            .await?
            .into_inner()
            .customer
            .ok_or_else(|| anyhow::anyhow!("no customer"))?;
        ids.push(c.id);
    }
    let ids = Arc::new(ids);

    let warm = Duration::from_secs(2);
    let (echo, echo_clients) = echo_peak(
        echo_address,
        bench.workers,
        bench.connections,
        bench.duration,
    )
    .await?;
    let get = |clients: Arc<Vec<crate::fixture::Customers>>, ids: Arc<Vec<String>>| {
        move |w: usize, i: u64| {
            let mut c = clients[w % clients.len()].clone();
            let id = ids[((w as u64 * 7919 + i * 104_729) % ids.len() as u64) as usize].clone();
            async move {
                c.get_customer(pb::GetCustomerRequest {
                    customer_id: id,
                    ..Default::default()
                })
                .await
                .is_ok()
            }
        }
    };
    let clients = Arc::new(clients);
    let customer = closed_loop(
        bench.workers,
        warm,
        bench.duration,
        get(clients.clone(), ids.clone()),
    )
    .await;
    let half = customer.per_second() / 2.0;
    let paced_calls = get(clients.clone(), ids.clone());
    let paced = open_loop(half, bench.duration, move |i| {
        paced_calls(i as usize % 64, i)
    })
    .await;
    let echo_paced = echo_paced(echo_clients, half, bench.duration).await;

    let cache = if redis_url.is_empty() {
        "in-process cache"
    } else {
        "Redis"
    };
    report.line(format!(
        "### GetCustomer vs bare tonic echo ({}, {cache}, {} callers over {} connections, {} s)",
        backend.name(),
        bench.workers,
        bench.connections,
        bench.duration.as_secs()
    ));
    report.row("bare tonic echo (limit)", &echo, None);
    report.row("GetCustomer", &customer, Some(&echo));
    report.line(format!(
        "- at half of GetCustomer's peak ({half:.0}/s, open loop): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} failed",
        paced.quantile_ms(0.5),
        paced.quantile_ms(0.99),
        paced.quantile_ms(0.999),
        paced.failed
    ));
    report.line(format!(
        "- bare echo at the same rate, same generator (the harness's own floor): p50 {:.2} ms, p99 {:.2} ms",
        echo_paced.quantile_ms(0.5),
        echo_paced.quantile_ms(0.99)
    ));
    report.check(
        "GetCustomer ≥ 0.5x echo",
        customer.per_second() >= 0.5 * echo.per_second(),
    );
    report.check("p99 ≤ 5 ms at half load", paced.quantile_ms(0.99) <= 5.0);
    let _: &Measured = &paced;
    Ok(())
}
