//! A deployment of several nodes, as operators run one: PostgreSQL, Redis and nginx from
//! Debian on loopback, and `consult serve` processes behind nginx (WebSocket proxying, no
//! stickiness) sharing the database, Redis and a data directory (keys and vault). Everything
//! stops when the deployment is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consult_client::api::{ApiClient, ClinicianLogin};
use consult_client::session::{Session, SessionEvent};
use consult_client::Credentials;
use consult_proto::api::CreateConsultationRequest;

use crate::{media_both_ways, pump, Seen};

/// A free TCP port on loopback (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `consult` binary the nodes run: `CONSULT_BIN`, else the one built beside the tests.
pub fn consult_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CONSULT_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("consult"))
        .expect("target directory")
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// Wait until `port` on loopback accepts connections.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `consult serve` process.
pub struct NodeProcess {
    /// Its own address (`http://127.0.0.1:port`), for reaching it past the load balancer.
    pub url: String,
    port: u16,
    child: Option<Child>,
}

impl NodeProcess {
    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// PostgreSQL, Redis, nginx and `consult serve` nodes on loopback.
pub struct Deployment {
    /// The load balancer's address: what clients use.
    pub url: String,
    /// The nodes, in start order.
    pub nodes: Vec<NodeProcess>,
    /// The demo clinician (seeded by the first node).
    pub doctor: ClinicianLogin,
    /// The shared configuration file.
    pub config: PathBuf,
    dir: tempfile::TempDir,
    postgres_dir: PathBuf,
    postgres_port: u16,
    redis: Child,
    nginx: Child,
}

impl Deployment {
    /// Start everything: `nodes` service nodes, the first seeding the demo clinician and
    /// `load_clinicians` more for the load generator.
    pub fn start(nodes: usize, load_clinicians: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // PostgreSQL runs as its own user, which must reach its directory.
        set_mode(dir.path(), 0o755);
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");

        let postgres_dir = dir.path().join("postgres");
        let postgres_port = free_port();
        let out = Command::new(scripts().join("postgres.sh"))
            .arg("start")
            .arg(&postgres_dir)
            .arg(postgres_port.to_string())
            .output()
            .expect("scripts/postgres.sh runs");
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let database_url = String::from_utf8_lossy(&out.stdout).trim().to_owned();

        let redis_port = free_port();
        let redis = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package) runs");
        wait_for_port(redis_port, "redis-server");

        let balancer_port = free_port();
        let url = format!("http://127.0.0.1:{balancer_port}");
        let config = dir.path().join("consult.toml");
        std::fs::write(
            &config,
            format!(
                "database_url = \"{database_url}\"\n\
                 public_url = \"{url}\"\n\
                 trusted_proxies = [\"127.0.0.1\"]\n\
                 [cluster]\n\
                 redis_url = \"redis://127.0.0.1:{redis_port}/\"\n\
                 lease = \"1500ms\"\n\
                 [limits]\n\
                 max_connections_per_address = 1000000\n\
                 max_connections = 1000000\n\
                 [signaling]\n\
                 max_unjoined_sockets = 1000000\n"
            ),
        )
        .expect("config file");

        let node_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let nginx = start_nginx(dir.path(), balancer_port, &node_ports);
        let mut deployment = Self {
            url,
            nodes: Vec::new(),
            doctor: ClinicianLogin {
                email: String::new(),
                password: String::new(),
                totp_secret: String::new(),
            },
            config,
            dir,
            postgres_dir,
            postgres_port,
            redis,
            nginx,
        };
        for (i, port) in node_ports.into_iter().enumerate() {
            let seed = if i == 0 {
                vec![
                    "--demo".to_owned(),
                    "--seed-load-clinicians".to_owned(),
                    load_clinicians.to_string(),
                ]
            } else {
                Vec::new()
            };
            let node = deployment.spawn_node(port, &seed);
            deployment.nodes.push(node);
            if i == 0 {
                // The first node seeds the clinicians (and makes the keys the others share)
                // before the others start.
                let data_dir = deployment.data_dir();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !(data_dir.join("demo-credentials.json").exists()
                    && data_dir.join("load-credentials.json").exists())
                {
                    assert!(Instant::now() < deadline, "the first node seeded nothing");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        deployment.doctor = serde_json::from_slice(
            &std::fs::read(deployment.data_dir().join("demo-credentials.json"))
                .expect("demo credentials"),
        )
        .expect("demo credentials parse");
        deployment
    }

    /// The data directory every node shares.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn_node(&self, port: u16, extra: &[String]) -> NodeProcess {
        let log = std::fs::File::create(self.dir.path().join(format!("node-{port}.log")))
            .expect("node log");
        let child = Command::new(consult_binary())
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("CONSULT_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("consult serve starts");
        wait_for_port(port, "consult serve");
        NodeProcess {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child: Some(child),
        }
    }

    /// Kill node `i` at once (SIGKILL): no draining, no goodbye.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Ask node `i` to stop (SIGTERM) and wait for it to exit; its exit status.
    pub fn terminate_node(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let mut child = self.nodes[i].child.take().expect("a running node");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {i} did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start node `i` again (on its port), after it was killed or stopped.
    pub fn restart_node(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "node {i} is running");
        let node = self.spawn_node(self.nodes[i].port, &[]);
        self.nodes[i] = node;
    }

    /// Stop PostgreSQL (fast shutdown: connections are cut).
    pub fn stop_postgres(&self) {
        let status = Command::new(scripts().join("postgres.sh"))
            .arg("stop")
            .arg(&self.postgres_dir)
            .status()
            .expect("scripts/postgres.sh runs");
        assert!(status.success(), "PostgreSQL did not stop");
    }

    /// Start PostgreSQL again on its port and data.
    pub fn start_postgres(&self) {
        let out = Command::new(scripts().join("postgres.sh"))
            .arg("start")
            .arg(&self.postgres_dir)
            .arg(self.postgres_port.to_string())
            .output()
            .expect("scripts/postgres.sh runs");
        assert!(
            out.status.success(),
            "PostgreSQL did not start again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The metrics token every node shares (it lives in the shared data directory).
    pub fn metrics_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("keys/metrics.token"))
            .expect("metrics token")
            .trim()
            .to_owned()
    }

    /// The clinicians seeded for the load generator, as the file it reads.
    pub fn load_credentials(&self) -> PathBuf {
        self.data_dir().join("load-credentials.json")
    }

    /// Run the `consult` command line against the deployment (its configuration and data
    /// directory) with `args` after the subcommand's words (`words`); its output.
    pub fn consult(&self, words: &[&str], args: &[&std::ffi::OsStr]) -> std::process::Output {
        Command::new(consult_binary())
            .args(words)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("the consult command runs")
    }

    /// A typed client of the load balancer.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(&self.url).expect("http client")
    }

    /// What the logs of the nodes said, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let path = self.dir.path().join(format!("node-{}.log", node.port));
            let text = std::fs::read_to_string(path).unwrap_or_default();
            out.push_str(&format!("--- node {} ---\n{text}\n", node.port));
        }
        out
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        let _ = self.nginx.kill();
        let _ = self.nginx.wait();
        let _ = self.redis.kill();
        let _ = self.redis.wait();
        let _ = Command::new(scripts().join("postgres.sh"))
            .arg("stop")
            .arg(&self.postgres_dir)
            .status();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// nginx in front of the nodes: round robin, WebSocket upgrades passed through, the client's
/// address forwarded, a node that refuses connections skipped.
fn start_nginx(dir: &Path, port: u16, nodes: &[u16]) -> Child {
    let root = dir.join("nginx");
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(root.join(sub)).expect("nginx dirs");
        set_mode(&root.join(sub), 0o777);
    }
    let servers: String = nodes
        .iter()
        .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    let r = root.display();
    let conf = format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {r}/nginx.pid;\n\
         error_log {r}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {r}/body;\n\
           proxy_temp_path {r}/proxy;\n\
           fastcgi_temp_path {r}/fastcgi;\n\
           uwsgi_temp_path {r}/uwsgi;\n\
           scgi_temp_path {r}/scgi;\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
           upstream consult {{\n{servers}  }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
               proxy_pass http://consult;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n\
               proxy_set_header Host $host;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n\
               proxy_connect_timeout 1s;\n\
               proxy_read_timeout 1h;\n\
               proxy_next_upstream error timeout http_502;\n\
             }}\n\
           }}\n\
         }}\n"
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nginx");
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (Debian's nginx-light package) runs");
    wait_for_port(port, "nginx");
    child
}

/// A metric's value summed over its series (those whose labels contain `labels`), from a
/// Prometheus text page.
pub fn metric(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Deployment {
    /// Each node's metrics page, asked directly (past the load balancer); `None` for a node that
    /// is not running.
    pub async fn node_metrics(&self) -> Vec<Option<String>> {
        let token = self.metrics_token();
        let client = reqwest::Client::new();
        let mut pages = Vec::new();
        for node in &self.nodes {
            if !node.is_running() {
                pages.push(None);
                continue;
            }
            let page = client
                .get(format!("{}/metrics", node.url))
                .bearer_auth(&token)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            pages.push(match page {
                Ok(page) => Some(page.text().await.unwrap_or_default()),
                Err(_) => None,
            });
        }
        pages
    }

    /// The node holding the doctor's consultations (its home).
    pub async fn home_node(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pages = self.node_metrics().await;
            let homes: Vec<usize> = pages
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.as_deref()
                        .is_some_and(|p| metric(p, "consult_cluster_homes", "") >= 1.0)
                })
                .map(|(i, _)| i)
                .collect();
            if homes.len() == 1 {
                return homes[0];
            }
            assert!(Instant::now() < deadline, "no single home: {homes:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A patient and the demo doctor in an admitted, connected call through the load balancer,
    /// with a second of media both ways.
    pub async fn call(&self) -> Call {
        self.call_with(CreateConsultationRequest {
            title: Some("several nodes".into()),
            ..Default::default()
        })
        .await
    }

    /// [`Deployment::call`] in a consultation created with `request`.
    pub async fn call_with(&self, request: CreateConsultationRequest) -> Call {
        let api = self.api();
        let token = api
            .sign_in(&self.doctor)
            .await
            .expect("the demo doctor signs in");
        let created = api
            .create_consultation(&token, &request)
            .await
            .expect("a consultation");
        let mut patient = Session::start(crate::config(Credentials::Patient {
            invite_url: created.invite_url.clone().expect("an invite link"),
            name: "Kiosk 3".into(),
        }))
        .await
        .expect("the patient's session");
        let mut doctor = Session::start(crate::config(Credentials::Clinician {
            base_url: self.url.clone(),
            token: token.clone(),
            consultation_id: created.id,
        }))
        .await
        .expect("the doctor's session");
        let participant = loop {
            match tokio::time::timeout(Duration::from_secs(10), patient.next_event()).await {
                Ok(Some(SessionEvent::Joined { participant_id, .. })) => break participant_id,
                Ok(Some(_)) => {}
                other => panic!("patient never waited: {other:?}\n{}", self.logs()),
            }
        };
        api.admit(&token, created.id, participant)
            .await
            .expect("admitted");
        let (mut p, mut d) = (Seen::default(), Seen::default());
        let started = Instant::now();
        while !(p.connected && d.connected) {
            assert!(started.elapsed() < Duration::from_secs(20), "no connection");
            pump(&mut patient, &mut p, Duration::from_millis(20)).await;
            pump(&mut doctor, &mut d, Duration::from_millis(20)).await;
        }
        media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 1).await;
        assert!(p.video > 0 && d.video > 0, "video before the fault");
        Call {
            patient,
            doctor,
            p,
            d,
            token,
            consultation: created.id,
        }
    }
}

/// What a node's death did to a call.
pub struct Failover {
    /// From the kill until both sides had rejoined.
    pub rejoined: Duration,
    /// What the patient saw from the kill on (video gaps measured across it).
    pub p: Seen,
    /// What the doctor saw from the kill on.
    pub d: Seen,
}

impl Deployment {
    /// Kill (SIGKILL) the node holding `call`'s consultation, send media both ways until both
    /// sides have rejoined (within `limit`), then for `after` more seconds.
    pub async fn kill_home_mid_call(
        &mut self,
        call: &mut Call,
        limit: Duration,
        after: u64,
    ) -> Failover {
        let home = self.home_node().await;
        self.kill_node(home);
        let (mut p, mut d) = (Seen::default(), Seen::default());
        // Frames already counted: the gap is measured across the kill.
        p.last_video_at = call.p.last_video_at;
        d.last_video_at = call.d.last_video_at;
        let rejoined =
            until_both_rejoined(&mut call.patient, &mut call.doctor, &mut p, &mut d, limit).await;
        media_both_ways(&mut call.patient, &mut call.doctor, &mut p, &mut d, after).await;
        Failover { rejoined, p, d }
    }
}

/// A call in progress: both sessions, what each has seen, the doctor's token.
pub struct Call {
    /// The patient's session.
    pub patient: Session,
    /// The doctor's session.
    pub doctor: Session,
    /// What the patient has seen.
    pub p: Seen,
    /// What the doctor has seen.
    pub d: Seen,
    /// The doctor's bearer token.
    pub token: String,
    /// The consultation.
    pub consultation: uuid::Uuid,
}

/// A node's `/readyz` status code (0 when it does not answer).
pub async fn readyz(url: &str) -> u16 {
    reqwest::get(format!("{url}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Send media both ways until both sessions have rejoined (or `limit` passes); the time it took.
pub async fn until_both_rejoined(
    patient: &mut Session,
    doctor: &mut Session,
    p: &mut Seen,
    d: &mut Seen,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    while !(p.joined && d.joined) {
        assert!(
            started.elapsed() < limit,
            "not rejoined within {limit:?}: {:?} / {:?}",
            p.warnings,
            d.warnings
        );
        // Short bursts: the time is measured to about 50 ms.
        crate::media_both_ways_for(patient, doctor, p, d, Duration::from_millis(50)).await;
    }
    started.elapsed()
}
