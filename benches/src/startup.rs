//! `huitou up`: time to SERVING and idle resident memory, of the real binary.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::report::Report;

async fn serving(address: &str) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map(|e| e.connect_lazy())
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| {
            r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
        .unwrap_or(false)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

/// Starts `binary` `runs` times (first start and restarts of one data folder).
pub async fn run(binary: &Path, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!(
        "huitou-bench-startup-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut first = None;
    let mut restarts = Vec::new();
    let mut rss = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        let mut child = std::process::Command::new(binary)
            .args(["up", "--data-dir"])
            .arg(&data)
            .args(["--listen", &address])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        while !serving(&address).await {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                anyhow::bail!("huitou up did not serve within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = started.elapsed();
        if run == 0 {
            first = Some(ready);
        } else {
            restarts.push(ready);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        if let Some(kib) = rss_kib(child.id()) {
            rss.push(kib);
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
    }
    restarts.sort();
    rss.sort();
    let first = first.unwrap_or_default();
    let restart = restarts
        .get(restarts.len() / 2)
        .copied()
        .unwrap_or_default();
    let idle_mib = rss.get(rss.len() / 2).copied().unwrap_or(0) as f64 / 1024.0;
    report.line("### `huitou up`: start-up and idle memory (release binary)".into());
    report.line(format!(
        "- first start (creates databases, runs migrations, creates the demo shop) to SERVING: {:.0} ms",
        first.as_secs_f64() * 1000.0
    ));
    report.line(format!(
        "- restart to SERVING, median of {}: {:.0} ms",
        restarts.len(),
        restart.as_secs_f64() * 1000.0
    ));
    report.line(format!(
        "- idle resident memory 3 s after start, median: {idle_mib:.1} MiB"
    ));
    report.line(String::new());
    report.check(
        "serving in < 2 s",
        first < Duration::from_secs(2) && restart < Duration::from_secs(2),
    );
    report.check("idle RSS < 60 MB", idle_mib * 1.048_576 < 60.0);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
