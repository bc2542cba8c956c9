//! Figures of a deployment of several nodes on this machine (PostgreSQL, Redis and nginx from
//! Debian, `consult serve` nodes behind nginx), for the operator's notes:
//!
//! ```text
//! several_nodes admissions --nodes 3 --rates 100,200,300 [-n 600]
//!     consult-load --signaling-only through nginx at each join rate: admission p50/p99,
//!     failures, and PostgreSQL's time per admission (pg_stat_database.active_time)
//! several_nodes failover [--runs 10]
//!     a native call through nginx, its node SIGKILLed: time until both sides are back, and the
//!     longest gap between video frames on either side, p50 and p95 over the runs
//! ```
//!
//! The nodes run `CONSULT_BIN` (build it with `--release` for figures) and the generator the
//! `consult-load` beside it. Every run stops by itself.

use std::path::PathBuf;
use std::time::Duration;

use consult_e2e::deployment::{consult_binary, Deployment, Failover};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize - 1;
    sorted[rank.min(sorted.len() - 1)]
}

/// PostgreSQL's time spent running statements, in all databases, in milliseconds.
fn postgres_active_ms(deployment: &Deployment) -> f64 {
    let url = std::fs::read_to_string(&deployment.config)
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("database_url = \"")
                    .map(|u| u.trim_end_matches('"').to_owned())
            })
        })
        .expect("database_url in the config");
    let out = std::process::Command::new("psql")
        .arg(&url)
        .args(["-At", "-c", "SELECT sum(active_time) FROM pg_stat_database"])
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

async fn admissions(args: &[String]) {
    let nodes: usize = arg(args, "--nodes").map_or(3, |n| n.parse().expect("--nodes N"));
    let n: usize = arg(args, "-n").map_or(600, |n| n.parse().expect("-n N"));
    let rates: Vec<f64> = arg(args, "--rates")
        .unwrap_or_else(|| "100,200".into())
        .split(',')
        .map(|r| r.parse().expect("--rates R,R"))
        .collect();
    let load: PathBuf = consult_binary().with_file_name("consult-load");
    println!("nodes  rate/s  consultations  failed  admission p50 ms  p99 ms  PostgreSQL ms per admission");
    for rate in rates {
        let deployment = Deployment::start(nodes, n);
        let report = tempfile::tempdir().expect("temp dir");
        let before = postgres_active_ms(&deployment);
        let out = tokio::process::Command::new(&load)
            .arg("--url")
            .arg(&deployment.url)
            .arg("--credentials")
            .arg(deployment.load_credentials())
            .args([
                "-n",
                &n.to_string(),
                "--ramp",
                &rate.to_string(),
                "--duration",
                "5s",
            ])
            .args([
                "--signaling-only",
                "--no-progress",
                "--bind-ip",
                "127.0.0.1",
            ])
            .args(["--max-failures", &n.to_string()])
            .arg("--report")
            .arg(report.path())
            .output()
            .await
            .expect("consult-load runs");
        let after = postgres_active_ms(&deployment);
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(report.path().join("report.json"))
                .unwrap_or_else(|_| panic!("no report: {}", String::from_utf8_lossy(&out.stderr))),
        )
        .expect("report.json");
        let admission = &json["figures"]["admission_ms"];
        let failed = json["counts"]["failed"].as_u64().unwrap_or(0);
        println!(
            "{nodes:>5}  {rate:>6}  {n:>13}  {failed:>6}  {:>16.1}  {:>6.1}  {:>.2}",
            admission["p50"].as_f64().unwrap_or(f64::NAN),
            admission["p99"].as_f64().unwrap_or(f64::NAN),
            (after - before) / n as f64,
        );
    }
}

async fn failover(args: &[String]) {
    let runs: usize = arg(args, "--runs").map_or(10, |n| n.parse().expect("--runs N"));
    let (mut rejoin, mut gap) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let mut deployment = Deployment::start(3, 0);
        let mut call = deployment.call().await;
        let Failover {
            rejoined: took,
            p: p_after,
            d: d_after,
        } = deployment
            .kill_home_mid_call(&mut call, Duration::from_secs(30), 1)
            .await;
        let longest = p_after.longest_video_gap.max(d_after.longest_video_gap);
        println!(
            "run {run}: both back {:.0} ms after the kill; longest video gap {:.0} ms; new peer connection: {}",
            took.as_secs_f64() * 1000.0,
            longest.as_secs_f64() * 1000.0,
            p_after.connected || d_after.connected
        );
        rejoin.push(took.as_secs_f64() * 1000.0);
        gap.push(longest.as_secs_f64() * 1000.0);
    }
    rejoin.sort_by(f64::total_cmp);
    gap.sort_by(f64::total_cmp);
    println!(
        "SIGKILL to both re-joined over {runs} runs: p50 {:.0} ms, p95 {:.0} ms; longest video gap p50 {:.0} ms, p95 {:.0} ms",
        percentile(&rejoin, 50.0),
        percentile(&rejoin, 95.0),
        percentile(&gap, 50.0),
        percentile(&gap, 95.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("admissions") => admissions(&args).await,
        Some("failover") => failover(&args).await,
        _ => {
            eprintln!("usage: several_nodes admissions [--nodes N] [--rates R,R] [-n N] | failover [--runs N]");
            std::process::exit(2);
        }
    }
}
