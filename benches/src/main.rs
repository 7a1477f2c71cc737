//! `huitou-bench`: measures Huitou against the physical limits it is judged
//! by, in one run, and prints a Markdown report (see docs/benchmarks.md).
//!
//! The servers run on their own runtime and the load on another, both in
//! this process, for the limit and for Huitou alike.

mod coupon;
mod fixture;
mod import;
mod load;
mod loyalty;
mod notification;
mod orders;
mod report;
mod rpc;
mod startup;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use fixture::Backend;
use report::Report;

#[derive(Parser)]
#[command(
    name = "huitou-bench",
    about = "Huitou benchmarks, each beside its limit"
)]
struct Cli {
    /// A PostgreSQL server for the database benchmarks (a fresh database per
    /// measurement); without it, SQLite files.
    #[arg(long, env = "HUITOU_BENCH_DATABASE_URL")]
    database_url: Option<String>,
    /// Redis for the cache (empty: in-process).
    #[arg(long, default_value = "")]
    redis_url: String,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Clone)]
enum What {
    /// GetCustomer against bare tonic echo.
    Rpc {
        /// Concurrent callers.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Connections they share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// RecordOrder against raw single-row inserts.
    Orders {
        /// Concurrent writers.
        #[arg(long, default_value_t = 16)]
        workers: usize,
    },
    /// ImportOrders against COPY.
    Import {
        /// Orders to import.
        #[arg(long, default_value_t = 200_000)]
        orders: usize,
        /// Give each row a buyer drawn at random instead of in rounds
        /// (where every 1,000-row batch holds the same buyers as the batches
        /// one round before it).
        #[arg(long)]
        scattered: bool,
    },
    /// Order events applied to loyalty ledgers against raw inserts.
    LoyaltyEvents {
        /// Concurrent deliveries.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Events per delivery (the relay's batch).
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// GetMemberPrice (20-SKU cart) against bare tonic echo.
    MemberPrice {
        /// Concurrent callers.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Connections they share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// The loyalty review run (tiers, expiry, warnings) over many members.
    LoyaltyReview {
        /// Members, all due.
        #[arg(long, default_value_t = 1_000_000)]
        members: u64,
    },
    /// RedeemCoupon on distinct coupons against raw single-row UPDATEs.
    CouponRedeem {
        /// Concurrent callers (and raw writers).
        #[arg(long, default_value_t = 64)]
        workers: usize,
    },
    /// Many clients issuing from one template's stock.
    CouponContended {
        /// Concurrent callers.
        #[arg(long, default_value_t = 64)]
        workers: usize,
    },
    /// ValidateCoupon against bare tonic echo.
    CouponValidate {
        /// Concurrent callers.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Connections they share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// A marketing batch through SendBatch, placed into windows, against raw
    /// inserts of the same rows.
    NotifyBatch {
        /// Customers in the batch.
        #[arg(long, default_value_t = 1_000_000)]
        recipients: usize,
    },
    /// Two dispatchers sending queued messages to a file sink, against raw
    /// Redis INCR+EXPIRE.
    NotifyDispatch {
        /// Messages queued.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
    },
    /// `huitou up` start-up and idle memory.
    Startup {
        /// The huitou binary (default: next to this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Everything above with defaults.
    All,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()?;
    let backend = match &cli.database_url {
        Some(url) if !url.is_empty() => Backend::Postgres(url.clone()),
        _ => Backend::Sqlite,
    };
    let duration = Duration::from_secs(cli.seconds);
    let handle = servers.handle().clone();
    let mut report = Report::default();
    load.block_on(async {
        let what = cli.what.clone();
        let all = matches!(what, What::All);
        if let What::Rpc {
            workers,
            connections,
        } = what
        {
            rpc_bench(
                workers,
                connections,
                duration,
                &backend,
                &cli.redis_url,
                &handle,
                &mut report,
            )
            .await?;
        } else if all {
            rpc_bench(
                64,
                4,
                duration,
                &backend,
                &cli.redis_url,
                &handle,
                &mut report,
            )
            .await?;
        }
        if let What::Orders { workers } = what {
            orders::run(workers, duration, &backend, &handle, &mut report).await?;
        } else if all {
            orders::run(16, duration, &backend, &handle, &mut report).await?;
        }
        // `all` imports both ways: buyers in rounds (never shared by batches
        // side by side) and scattered, as a real history has them.
        let imports: Vec<(usize, import::Buyers)> = match what {
            What::Import { orders, scattered } => vec![(
                orders,
                if scattered {
                    import::Buyers::Scattered
                } else {
                    import::Buyers::InRounds
                },
            )],
            _ if all => vec![
                (200_000, import::Buyers::InRounds),
                (200_000, import::Buyers::Scattered),
            ],
            _ => Vec::new(),
        };
        for (orders, buyers) in imports {
            let redis = &cli.redis_url;
            import::run(orders, buyers, &backend, redis, &handle, &mut report).await?;
        }
        if let What::LoyaltyEvents { workers, batch } = what {
            loyalty::events(workers, batch, duration, &backend, &mut report).await?;
        } else if all {
            loyalty::events(4, 100, duration, &backend, &mut report).await?;
        }
        if let What::MemberPrice {
            workers,
            connections,
        } = what
        {
            loyalty::member_price(
                workers,
                connections,
                duration,
                &backend,
                &handle,
                &mut report,
            )
            .await?;
        } else if all {
            loyalty::member_price(64, 4, duration, &backend, &handle, &mut report).await?;
        }
        if let What::LoyaltyReview { members } = what {
            loyalty::review(members, &backend, &mut report).await?;
        } else if all {
            loyalty::review(1_000_000, &backend, &mut report).await?;
        }
        if let What::CouponRedeem { workers } = what {
            coupon::redeem(workers, duration, &backend, &handle, &mut report).await?;
        } else if all {
            coupon::redeem(64, duration, &backend, &handle, &mut report).await?;
        }
        if let What::CouponContended { workers } = what {
            coupon::contended(
                workers,
                duration,
                &backend,
                &cli.redis_url,
                &handle,
                &mut report,
            )
            .await?;
        } else if all {
            coupon::contended(64, duration, &backend, &cli.redis_url, &handle, &mut report).await?;
        }
        if let What::CouponValidate {
            workers,
            connections,
        } = what
        {
            coupon::validate(
                workers,
                connections,
                duration,
                &backend,
                &handle,
                &mut report,
            )
            .await?;
        } else if all {
            coupon::validate(64, 4, duration, &backend, &handle, &mut report).await?;
        }
        if let What::NotifyBatch { recipients } = what {
            notification::batch(recipients, &backend, &handle, &mut report).await?;
        } else if all {
            notification::batch(1_000_000, &backend, &handle, &mut report).await?;
        }
        if let What::NotifyDispatch { messages } = what {
            notification::dispatch(messages, &backend, &cli.redis_url, &mut report).await?;
        } else if all {
            notification::dispatch(100_000, &backend, &cli.redis_url, &mut report).await?;
        }
        let binary = match &what {
            What::Startup { binary } => Some(binary.clone()),
            What::All => Some(None),
            _ => None,
        };
        if let Some(binary) = binary {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe()?.with_file_name("huitou"),
            };
            startup::run(&binary, 5, &mut report).await?;
        }
        backend.drop_created().await;
        anyhow::Ok(())
    })?;
    println!("{}", report.render());
    drop(servers);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn rpc_bench(
    workers: usize,
    connections: usize,
    duration: Duration,
    backend: &Backend,
    redis_url: &str,
    servers: &tokio::runtime::Handle,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bench = rpc::RpcBench {
        workers,
        connections,
        duration,
        customers: 2_000,
    };
    rpc::run(&bench, backend, redis_url, servers, report).await
}

// The same allocator as the `huitou` binary (decision 0019): the servers
// measured here are the ones it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
