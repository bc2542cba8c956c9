//! Garage (crates.io `garage`, a self-hosted, zone-aware replicated S3 store) on loopback, through
//! `scripts/garage.sh`: the test command builds it once (`scripts/garage.sh install`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use consult_vault::object::ObjectStorageConfig;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/garage.sh")
}

/// Garage nodes, each in its own zone, with one bucket and one key; stopped when dropped.
pub struct Garage {
    dir: tempfile::TempDir,
    vars: HashMap<String, String>,
}

impl Garage {
    /// `nodes` nodes in as many zones, replication factor min(nodes, 3).
    pub fn start(nodes: usize) -> Self {
        // Made first, so that whatever fails below, dropping it stops the nodes started.
        let mut garage = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            vars: HashMap::new(),
        };
        let out = Command::new(script())
            .arg("start")
            .arg(garage.dir.path())
            .arg(nodes.to_string())
            .output()
            .expect("scripts/garage.sh runs");
        assert!(
            out.status.success(),
            "Garage did not start (the test command builds it: scripts/garage.sh install): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        garage.vars = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        garage
    }

    /// The vault's configuration for the bucket, through node 1, under a prefix of its own.
    pub fn config(&self) -> ObjectStorageConfig {
        ObjectStorageConfig {
            endpoint: Some(self.vars["GARAGE_ENDPOINT"].clone()),
            bucket: self.vars["GARAGE_BUCKET"].clone(),
            region: self.vars["GARAGE_REGION"].clone(),
            access_key_id: self.vars["GARAGE_KEY_ID"].clone(),
            secret_access_key: self.vars["GARAGE_SECRET"].clone(),
            prefix: format!("test-{}/", uuid::Uuid::new_v4()),
            allow_http: true,
            timeout: Duration::from_secs(5),
        }
    }

    /// The service's configuration for the same bucket.
    pub fn service_config(&self) -> consult_signaling::config::ObjectStorageConfig {
        let c = self.config();
        consult_signaling::config::ObjectStorageConfig {
            endpoint: c.endpoint,
            bucket: c.bucket,
            region: c.region,
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            prefix: c.prefix,
            allow_http: true,
            timeout: c.timeout,
        }
    }

    /// Stop node `node` (1-based).
    pub fn stop(&self, node: usize) {
        self.run(&["stop", &node.to_string()]);
    }

    /// Kill node `node` at once (SIGKILL): its zone is lost.
    pub fn kill(&self, node: usize) {
        self.run(&["kill", &node.to_string()]);
    }

    /// Freeze node `node` (SIGSTOP): it accepts connections and answers nothing.
    pub fn pause(&self, node: usize) {
        self.run(&["pause", &node.to_string()]);
    }

    /// Let a frozen node go on.
    pub fn resume(&self, node: usize) {
        self.run(&["resume", &node.to_string()]);
    }

    /// Cap the bucket's size (`"1MiB"`, or `"none"`): a full store.
    pub fn set_quota(&self, size: &str) {
        self.run(&["quota", size]);
    }

    /// Start node `node` again.
    pub fn restart(&self, node: usize) {
        self.run(&["restart", &node.to_string()]);
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new(script())
            .arg(args[0])
            .arg(self.dir.path())
            .args(&args[1..])
            .status()
            .expect("scripts/garage.sh runs");
        assert!(status.success(), "scripts/garage.sh {args:?} failed");
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
