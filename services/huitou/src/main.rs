//! `huitou`: run the suite on a laptop, one service in a cluster, migrations
//! and shop administration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use huitou::settings::{self, Settings, write_private};
use huitou::{Services, Suite};
use huitou_customer::store::shops::{DEFAULT_TIME_ZONE, check_shop_name, check_time_zone};
use huitou_runtime::Role;
use huitou_runtime::server::shutdown_signal;
use huitou_runtime::telemetry;

#[derive(Parser)]
#[command(
    name = "huitou",
    version,
    about = "Huitou (回头客): keep the customers you already have"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every service in one process on the embedded default (SQLite
    /// files and secrets under the data folder); creates a demo shop on
    /// first start and prints its operator key.
    Up {
        /// Folder for the databases and generated secrets.
        #[arg(long, env = "HUITOU_DATA_DIR", default_value = "huitou-data")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// A settings file layered over the defaults.
        #[arg(long, env = "HUITOU_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Runs one service from configuration (file and HUITOU__… variables),
    /// as in Kubernetes. Migrations are a separate step (`huitou migrate`).
    Serve {
        /// The service.
        service: ServiceName,
        /// The settings file.
        #[arg(long, env = "HUITOU_CONFIG")]
        config: Option<PathBuf>,
        /// Also apply pending migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Applies pending database migrations and exits.
    Migrate {
        /// The service, or all.
        #[arg(default_value = "all")]
        service: MigrateTarget,
        /// The settings file; without it and without --data-dir the
        /// embedded default folder is used.
        #[arg(long, env = "HUITOU_CONFIG")]
        config: Option<PathBuf>,
        /// An embedded data folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Shops and API keys.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Creates a shop and prints `{"shop_id": "...", "api_key": "..."}` with
    /// an operator key.
    CreateShop {
        /// The shop's name (used in SMS signatures).
        #[arg(long)]
        name: String,
        /// IANA time zone.
        #[arg(long, default_value = DEFAULT_TIME_ZONE)]
        time_zone: String,
        #[command(flatten)]
        target: Target,
    },
    /// Creates an API key for a shop and prints it as JSON.
    CreateKey {
        /// The shop id.
        #[arg(long)]
        shop: String,
        /// What the key may do.
        #[arg(long)]
        role: KeyRole,
        /// A label for people.
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        target: Target,
    },
    /// After a personal-data key rotation: seals every field still under an
    /// old key again under the active key and prints what it did as JSON.
    /// When it reports 0 fields, the old key can leave the settings.
    ResealPersonalData {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Args)]
struct Target {
    /// An embedded data folder (default: huitou-data, unless --config or
    /// HUITOU__CUSTOMER__DATABASE__URL points elsewhere).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A settings file.
    #[arg(long, env = "HUITOU_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ServiceName {
    Customer,
    Loyalty,
    Coupon,
    Notification,
}

#[derive(Clone, Copy, ValueEnum)]
enum MigrateTarget {
    All,
    Customer,
    Loyalty,
    Coupon,
    Notification,
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyRole {
    Storefront,
    Operator,
    Admin,
}

// glibc's allocator spent about a quarter of the machine in an import
// (decision 0019).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            data_dir,
            listen,
            config,
        } => up(&data_dir, listen, config.as_deref()).await,
        Command::Serve {
            service,
            config,
            migrate,
        } => {
            let settings = settings::cluster(config.as_deref())?;
            let (name, which) = match service {
                ServiceName::Customer => ("customer", Services::Customer),
                ServiceName::Loyalty => ("loyalty", Services::Loyalty),
                ServiceName::Coupon => ("coupon", Services::Coupon),
                ServiceName::Notification => ("notification", Services::Notification),
            };
            let _telemetry = telemetry::init(&format!("huitou-{name}"), &settings.telemetry)?;
            let listen = settings.server.listen;
            let suite = Suite::open_services(settings, which, migrate).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(address = %listen, service = name, "serving");
            suite.serve(listener, shutdown_signal()).await?;
            Ok(())
        }
        Command::Migrate {
            service,
            config,
            data_dir,
        } => {
            let settings = target_settings(data_dir.as_deref(), config.as_deref())?;
            if matches!(service, MigrateTarget::All | MigrateTarget::Customer) {
                let db = huitou_storage::Database::connect(&settings.customer.database).await?;
                huitou_customer::migrate(&db).await?;
                println!("customer: migrations applied");
            }
            if matches!(service, MigrateTarget::All | MigrateTarget::Loyalty) {
                match &settings.loyalty {
                    Some(loyalty) => {
                        let db = huitou_storage::Database::connect(&loyalty.database).await?;
                        huitou_loyalty::migrate(&db).await?;
                        println!("loyalty: migrations applied");
                    }
                    None if matches!(service, MigrateTarget::Loyalty) => {
                        bail!("loyalty is not configured (no [loyalty] section)")
                    }
                    None => {}
                }
            }
            if matches!(service, MigrateTarget::All | MigrateTarget::Coupon) {
                match &settings.coupon {
                    Some(coupon) => {
                        let db = huitou_storage::Database::connect(&coupon.database).await?;
                        huitou_coupon::migrate(&db).await?;
                        println!("coupon: migrations applied");
                    }
                    None if matches!(service, MigrateTarget::Coupon) => {
                        bail!("coupon is not configured (no [coupon] section)")
                    }
                    None => {}
                }
            }
            if matches!(service, MigrateTarget::All | MigrateTarget::Notification) {
                match &settings.notification {
                    Some(n) => {
                        let db = huitou_storage::Database::connect(&n.database).await?;
                        huitou_notification::migrate(&db).await?;
                        println!("notification: migrations applied");
                    }
                    None if matches!(service, MigrateTarget::Notification) => {
                        bail!("notification is not configured (no [notification] section)")
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Command::Admin { command } => admin(command).await,
    }
}

fn target_settings(data_dir: Option<&Path>, config: Option<&Path>) -> anyhow::Result<Settings> {
    // A settings file or any service's database URL in the environment
    // means a cluster; otherwise the embedded data folder.
    let external = config.is_some()
        || std::env::vars_os().any(|(k, _)| {
            k.to_str()
                .is_some_and(|k| k.starts_with("HUITOU__") && k.ends_with("__DATABASE__URL"))
        });
    Ok(match (data_dir, external) {
        (Some(dir), _) => settings::embedded(dir, config)?,
        (None, true) => settings::cluster(config)?,
        (None, false) => settings::embedded(&settings::default_data_dir(), None)?,
    })
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::ResealPersonalData { target } => {
            let settings = target_settings(target.data_dir.as_deref(), target.config.as_deref())?;
            let suite = Suite::open_services(settings, Services::Customer, true).await?;
            let done = suite
                .customer()?
                .store
                .reseal_personal_data()
                .await
                .map_err(|e| anyhow::anyhow!("{}", huitou_runtime::Failure::from(e).message))?;
            println!(
                "{}",
                serde_json::json!({"customers": done.customers, "fields_resealed": done.fields})
            );
            Ok(())
        }
        AdminCommand::CreateShop {
            name,
            time_zone,
            target,
        } => {
            if let Err(why) = check_shop_name(&name) {
                bail!("--name {why}");
            }
            if let Err(why) = check_time_zone(&time_zone) {
                bail!("--time-zone {why}");
            }
            let settings = target_settings(target.data_dir.as_deref(), target.config.as_deref())?;
            let suite = Suite::open(settings, true).await?;
            let shop = suite
                .customer()?
                .store
                .create_shop(&name, &time_zone)
                .await?;
            let (_, api_key) = suite
                .customer()?
                .store
                .create_api_key(&shop.id, Role::Operator, "created with the shop")
                .await?;
            println!(
                "{}",
                serde_json::json!({"shop_id": shop.id, "api_key": api_key})
            );
            Ok(())
        }
        AdminCommand::CreateKey {
            shop,
            role,
            label,
            target,
        } => {
            let settings = target_settings(target.data_dir.as_deref(), target.config.as_deref())?;
            let suite = Suite::open(settings, true).await?;
            let role = match role {
                KeyRole::Storefront => Role::Storefront,
                KeyRole::Operator => Role::Operator,
                KeyRole::Admin => Role::Admin,
            };
            let (record, api_key) = suite
                .customer()?
                .store
                .create_api_key(&shop, role, &label)
                .await
                .map_err(|e| anyhow::anyhow!("{}", huitou_runtime::Failure::from(e).message))?;
            println!(
                "{}",
                serde_json::json!({"shop_id": shop, "key_id": record.id, "role": record.role, "api_key": api_key})
            );
            Ok(())
        }
    }
}

const DEMO_FILE: &str = "demo-shop.json";

async fn up(data_dir: &Path, listen: SocketAddr, config: Option<&Path>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut settings = settings::embedded(data_dir, config)?;
    settings.server.listen = listen;
    let _telemetry = telemetry::init("huitou", &settings.telemetry)?;
    let suite = Suite::open(settings, true).await?;
    let demo = demo_shop(&suite, data_dir).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    println!(
        "Huitou is serving on {address} (services: {}), data in {}",
        suite.service_names().join(", "),
        data_dir.display()
    );
    println!("demo shop {}  operator key: {}", demo.0, demo.1);
    println!(
        "try: grpcurl -plaintext -H 'authorization: Bearer {}' {address} huitou.customer.v1.ShopService/GetShop",
        demo.1
    );
    tracing::info!(%address, startup_ms = started.elapsed().as_millis() as u64, "ready");
    suite.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// The demo shop and its operator key, created on first start and kept in
/// the data folder so every start can print the key again.
async fn demo_shop(suite: &Suite, data_dir: &Path) -> anyhow::Result<(String, String)> {
    let path = data_dir.join(DEMO_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        if let (Some(shop), Some(key)) = (value["shop_id"].as_str(), value["api_key"].as_str()) {
            return Ok((shop.to_owned(), key.to_owned()));
        }
        bail!(
            "{} is damaged; delete it to create a new demo shop",
            path.display()
        );
    }
    let store = &suite.customer()?.store;
    let shop = store
        .create_shop("演示店铺 Demo Shop", DEFAULT_TIME_ZONE)
        .await?;
    let (_, key) = store
        .create_api_key(&shop.id, Role::Operator, "demo operator")
        .await?;
    write_private(
        &path,
        &serde_json::json!({"shop_id": shop.id, "api_key": key}).to_string(),
    )?;
    Ok((shop.id, key))
}
