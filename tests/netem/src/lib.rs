//! Emulated networks for the tests: each peer in a network namespace of its own, linked by a veth
//! pair to a router namespace, where the service and the relay live (on [`Lab::service_ip`]).
//! Each peer's access link can lose packets (nftables `numgen random` drops on ingress, both
//! ways), be capped in rate (`tbf`, both ways), delay them with jitter (a userspace router on a
//! TUN device, since this kernel has no netem: see [`delay`]), go dark (a flap), block UDP (a
//! firewall that lets only TCP through), or be replaced by a new link with a new address (a
//! phone moving from Wi-Fi to mobile data).
//!
//! Needs Linux, root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), `ip` (iproute2), `nft` and `tc`.
//! Everything is made under names of its own and removed when the [`Lab`] is dropped; labs left
//! by a process that died are removed by the next one.
//!
//! ```no_run
//! use std::time::Duration;
//! use consult_netem::{Impairment, Lab};
//!
//! let lab = Lab::new(&["patient", "doctor"])?;
//! lab.impair("patient", &Impairment { loss_percent: 3.0, ..Impairment::default() })?;
//! let far = lab.address("doctor")?;
//! let answer = lab.namespace("patient")?.spawn(move || {
//!     // Sockets opened here are in the patient's namespace.
//!     std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"hello", (far, 9)))
//! }).join();
//! # Ok::<(), consult_netem::LabError>(())
//! ```

pub mod delay;
mod sys;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use delay::{DelayRouter, Delays, LinkDelay};

/// Why the lab could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command (`ip`, `nft`, `tc`) failed: what ran and what it said.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error, or why it could not run.
        message: String,
    },
    /// A system call failed (entering a namespace, making the TUN device).
    #[error("{what}: {source}")]
    System {
        /// What was being done.
        what: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// No peer of that name in this lab.
    #[error("no peer {0:?} in this lab")]
    NoSuchPeer(String),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

/// A queue's counters since it was made: bytes and packets sent, packets dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Bytes put on the wire.
    pub bytes: u64,
    /// Packets put on the wire.
    pub packets: u64,
    /// Packets dropped (the queue was full).
    pub dropped: u64,
}

impl QueueCounters {
    /// The first ` Sent N bytes M pkt (dropped D, …` line of `tc -s qdisc show`.
    fn parse(out: &str) -> Option<Self> {
        let line = out.lines().find(|l| l.trim_start().starts_with("Sent "))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| {
            words
                .get(i)?
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        };
        Some(Self {
            bytes: number(1)?,
            packets: number(3)?,
            dropped: number(6)?,
        })
    }

    /// What was counted between `earlier` and these.
    pub fn since(&self, earlier: &QueueCounters) -> QueueCounters {
        QueueCounters {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            packets: self.packets.saturating_sub(earlier.packets),
            dropped: self.dropped.saturating_sub(earlier.dropped),
        }
    }
}

/// What a peer's access link does to its packets, both ways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// Packets dropped at random, per cent (0 to 100), each way.
    pub loss_percent: f64,
    /// A rate cap each way, kbit/s (`None`: none).
    pub rate_kbit: Option<u32>,
    /// One-way delay each way (a round trip between two peers crosses it twice per link).
    pub delay: Duration,
    /// How much the delay varies, either way, uniform.
    pub jitter: Duration,
}

/// A network namespace of the lab.
#[derive(Debug, Clone)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Its name under `/run/netns` (for `ip netns exec NAME …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Move the calling thread into this namespace: sockets it opens from now on, and threads
    /// and processes it starts, are in it. Do this before building a runtime whose threads
    /// should all be here.
    ///
    /// # Errors
    /// Not root, or the namespace is gone.
    pub fn enter(&self) -> Result<(), LabError> {
        sys::enter_namespace(&self.name).map_err(|source| LabError::System {
            what: format!("entering namespace {}", self.name),
            source,
        })
    }

    /// Run `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Result<T, LabError>> {
        let namespace = self.clone();
        std::thread::spawn(move || {
            namespace.enter()?;
            Ok(f())
        })
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

/// One peer's current access link and what it does.
#[derive(Debug, Clone)]
struct Link {
    name: String,
    namespace: Namespace,
    /// 1-based; the link's subnets are 10.77.(8 × index + generation).0/24.
    index: u8,
    /// Bumped by [`Lab::move_peer`].
    generation: u8,
    impairment: Impairment,
    down: bool,
    udp_blocked: bool,
}

impl Link {
    fn subnet(&self) -> u8 {
        self.index * 8 + self.generation
    }
    fn peer_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet(), 2)
    }
    fn router_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet(), 1)
    }
    /// The veth end in the router namespace.
    fn router_side(&self) -> String {
        format!("p{}g{}", self.index, self.generation)
    }
    /// The veth end in the peer's namespace.
    fn peer_side(&self) -> String {
        format!("eth{}", self.generation)
    }
}

/// A lab: a router namespace and a namespace per peer. Dropped, it removes them all.
pub struct Lab {
    router: Namespace,
    links: Mutex<Vec<Link>>,
    delays: Delays,
    delay_router: Option<DelayRouter>,
}

/// The router's own address: the service and the relay listen here.
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The routing table whose default route is the delay device.
const DELAY_TABLE: &str = "100";
/// Namespace names start with this, then the owning process id.
const PREFIX: &str = "cnlab";

static LABS: AtomicU32 = AtomicU32::new(0);

fn run(command: &mut Command) -> Result<String, LabError> {
    let line = format!("{command:?}").replace('"', "");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            command: line.clone(),
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: line,
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}

/// `nft -f -` with `ruleset` inside `namespace`.
fn nft(namespace: &str, ruleset: &str) -> Result<(), LabError> {
    use std::io::Write;
    let line = format!("ip netns exec {namespace} nft -f -");
    let fail = |message: String| LabError::Command {
        command: line.clone(),
        message,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "{}\n{ruleset}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn sysctl(namespace: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", namespace, "sysctl", "-qw"]);
    command.args(settings);
    run(&mut command).map(drop)
}

/// Remove labs whose process is gone.
fn remove_stale_labs() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Lab {
    /// Make a router namespace and one namespace per peer, each peer linked to the router by a
    /// veth pair with an address of its own (10.77.8.2 for the first, 10.77.16.2 for the second,
    /// …) and a default route through it; the router forwards between them through the delay
    /// device.
    ///
    /// # Errors
    /// Not root, or a tool missing (`ip`, `nft`, `tc`).
    pub fn new(peers: &[&str]) -> Result<Self, LabError> {
        if peers.is_empty() || peers.len() > 30 {
            return Err(LabError::Invalid("a lab has 1 to 30 peers".into()));
        }
        remove_stale_labs();
        let id = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let router = Namespace {
            name: format!("{id}r"),
        };
        let mut lab = Self {
            router,
            links: Mutex::new(Vec::new()),
            delays: Arc::new(Mutex::new(vec![LinkDelay::default(); peers.len()])),
            delay_router: None,
        };
        // From here on, dropping `lab` removes whatever was made.
        let r = lab.router.name.clone();
        ip(&["netns", "add", &r])?;
        sysctl(
            &r,
            &[
                "net.ipv4.ip_forward=1",
                // Early demux ties a packet for one of the router's own sockets to it on arrival,
                // and a packet with a socket is never forwarded: it would be dropped on its way
                // through the delay device (a TCP handshake's last ACK, for one).
                "net.ipv4.tcp_early_demux=0",
                "net.ipv4.udp_early_demux=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        ip(&["-n", &r, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("{SERVICE_IP}/32"),
            "dev",
            "lo",
        ])?;
        // Every packet entering from a peer, and every packet the router sends to one, goes
        // through the delay device first; the local table comes after those rules.
        ip(&["-n", &r, "rule", "add", "pref", "100", "lookup", "local"])?;
        ip(&["-n", &r, "rule", "del", "pref", "0"])?;
        let device = {
            let router = lab.router.clone();
            router
                .spawn(|| sys::open_tun("delay0"))
                .join()
                .map_err(|_| LabError::Invalid("the TUN thread panicked".into()))??
                .map_err(|source| LabError::System {
                    what: "making the delay device".into(),
                    source,
                })?
        };
        sysctl(
            &r,
            &[
                "net.ipv4.conf.delay0.accept_local=1",
                "net.ipv4.conf.delay0.rp_filter=0",
            ],
        )?;
        ip(&["-n", &r, "link", "set", "delay0", "up"])?;
        ip(&[
            "-n",
            &r,
            "route",
            "add",
            "default",
            "dev",
            "delay0",
            "src",
            &SERVICE_IP.to_string(),
            "table",
            DELAY_TABLE,
        ])?;
        lab.delay_router = Some(DelayRouter::start(
            device,
            lab.delays.clone(),
            Arc::new(|address: Ipv4Addr| {
                let [a, b, c, _] = address.octets();
                (a == 10 && b == 77 && c >= 8).then(|| usize::from(c / 8) - 1)
            }),
        ));
        for (i, name) in peers.iter().enumerate() {
            let namespace = Namespace {
                name: format!("{id}p{}", i + 1),
            };
            let link = Link {
                name: (*name).to_owned(),
                namespace,
                index: u8::try_from(i + 1).map_err(|_| LabError::Invalid("too many".into()))?,
                generation: 0,
                impairment: Impairment::default(),
                down: false,
                udp_blocked: false,
            };
            // Kept first, so that a failure below still removes this namespace.
            lab.links_mut()?.push(link.clone());
            ip(&["netns", "add", &link.namespace.name])?;
            sysctl(
                &link.namespace.name,
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
            ip(&["-n", &link.namespace.name, "link", "set", "lo", "up"])?;
            lab.add_link(&link)?;
            ip(&[
                "-n",
                &link.namespace.name,
                "route",
                "add",
                "default",
                "via",
                &link.router_ip().to_string(),
            ])?;
        }
        lab.apply_filters()?;
        Ok(lab)
    }

    fn links_mut(&self) -> Result<std::sync::MutexGuard<'_, Vec<Link>>, LabError> {
        self.links
            .lock()
            .map_err(|_| LabError::Invalid("the lab's state is poisoned".into()))
    }

    /// The veth pair of `link`, its addresses, and the router's rules for it.
    fn add_link(&self, link: &Link) -> Result<(), LabError> {
        let r = &self.router.name;
        let p = &link.namespace.name;
        let (router_side, peer_side) = (link.router_side(), link.peer_side());
        ip(&[
            "link",
            "add",
            &peer_side,
            "netns",
            p,
            "type",
            "veth",
            "peer",
            "name",
            &router_side,
            "netns",
            r,
        ])?;
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{}/24", link.peer_ip()),
            "dev",
            &peer_side,
        ])?;
        ip(&[
            "-n",
            r,
            "addr",
            "add",
            &format!("{}/24", link.router_ip()),
            "dev",
            &router_side,
        ])?;
        sysctl(r, &[&format!("net.ipv4.conf.{router_side}.rp_filter=0")])?;
        ip(&["-n", p, "link", "set", &peer_side, "up"])?;
        ip(&["-n", r, "link", "set", &router_side, "up"])?;
        for rule in self.router_rules(link) {
            let mut args = vec!["-n", r, "rule", "add"];
            args.extend(rule.iter().map(String::as_str));
            ip(&args)?;
        }
        Ok(())
    }

    /// The router's policy rules that send a link's traffic through the delay device. Its own
    /// address on the link stays local first: ARP asks the routing rules whether an address is
    /// ours, and would otherwise never answer for the peer's gateway.
    fn router_rules(&self, link: &Link) -> [Vec<String>; 3] {
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        [
            words(&format!("pref 5 to {} lookup local", link.router_ip())),
            words(&format!(
                "pref 10 iif {} lookup {DELAY_TABLE}",
                link.router_side()
            )),
            words(&format!(
                "pref 20 iif lo to 10.77.{}.0/24 lookup {DELAY_TABLE}",
                link.subnet()
            )),
        ]
    }

    /// The router's namespace: run the service and the relay here (on [`Lab::service_ip`]).
    pub fn router(&self) -> &Namespace {
        &self.router
    }

    /// The router's own address.
    pub fn service_ip(&self) -> Ipv4Addr {
        SERVICE_IP
    }

    /// A peer's namespace.
    ///
    /// # Errors
    /// No such peer.
    pub fn namespace(&self, peer: &str) -> Result<Namespace, LabError> {
        self.with_link(peer, |link| Ok(link.namespace.clone()))
    }

    /// A peer's current address.
    ///
    /// # Errors
    /// No such peer.
    pub fn address(&self, peer: &str) -> Result<Ipv4Addr, LabError> {
        self.with_link(peer, |link| Ok(link.peer_ip()))
    }

    fn with_link<T>(
        &self,
        peer: &str,
        f: impl FnOnce(&mut Link) -> Result<T, LabError>,
    ) -> Result<T, LabError> {
        let mut links = self.links_mut()?;
        let link = links
            .iter_mut()
            .find(|l| l.name == peer)
            .ok_or_else(|| LabError::NoSuchPeer(peer.to_owned()))?;
        f(link)
    }

    /// Set what a peer's link does (replacing what it did).
    ///
    /// # Errors
    /// No such peer, a loss outside 0–100 %, or a command failed.
    pub fn impair(&self, peer: &str, impairment: &Impairment) -> Result<(), LabError> {
        if !(0.0..=100.0).contains(&impairment.loss_percent) {
            return Err(LabError::Invalid(format!(
                "loss {}% is not 0–100",
                impairment.loss_percent
            )));
        }
        if impairment.rate_kbit == Some(0) {
            return Err(LabError::Invalid("a rate cap of 0 kbit/s".into()));
        }
        let index = self.with_link(peer, |link| {
            link.impairment = impairment.clone();
            Ok(usize::from(link.index) - 1)
        })?;
        if let Ok(mut delays) = self.delays.lock()
            && let Some(slot) = delays.get_mut(index)
        {
            *slot = LinkDelay {
                base: impairment.delay,
                jitter: impairment.jitter,
            };
        }
        self.apply_rate(peer)?;
        self.apply_filters()
    }

    /// What each end of a peer's link has put on the wire and dropped so far, from its queue's
    /// counters (`tc -s qdisc`): the peer's side (its uplink) first, then the router's (its
    /// downlink). With a rate cap, the cap's drops (its queue full) count; without one, the
    /// default queue's.
    ///
    /// # Errors
    /// No such peer, or tc failed or printed no counters.
    pub fn link_counters(&self, peer: &str) -> Result<[QueueCounters; 2], LabError> {
        let link = self.with_link(peer, |link| Ok(link.clone()))?;
        let read = |namespace: &str, device: &str| -> Result<QueueCounters, LabError> {
            let out =
                run(Command::new("tc")
                    .args(["-n", namespace, "-s", "qdisc", "show", "dev", device]))?;
            QueueCounters::parse(&out).ok_or_else(|| LabError::Command {
                command: format!("tc -n {namespace} -s qdisc show dev {device}"),
                message: format!("no counters in: {out}"),
            })
        };
        Ok([
            read(&link.namespace.name, &link.peer_side())?,
            read(&self.router.name, &link.router_side())?,
        ])
    }

    /// Take a peer's link down (every packet dropped both ways, the interface still up, as when
    /// a radio loses its signal) or bring it back.
    ///
    /// # Errors
    /// No such peer, or nft failed.
    pub fn set_down(&self, peer: &str, down: bool) -> Result<(), LabError> {
        self.with_link(peer, |link| {
            link.down = down;
            Ok(())
        })?;
        self.apply_filters()
    }

    /// A firewall in front of a peer that drops all UDP both ways (only TCP gets through).
    ///
    /// # Errors
    /// No such peer, or nft failed.
    pub fn block_udp(&self, peer: &str, blocked: bool) -> Result<(), LabError> {
        self.with_link(peer, |link| {
            link.udp_blocked = blocked;
            Ok(())
        })?;
        self.apply_filters()
    }

    /// Give a peer a new link with a new address, then remove its old one (its old address goes
    /// with it), as a phone moving from Wi-Fi to mobile data. The impairments carry over.
    /// Returns the new address.
    ///
    /// # Errors
    /// No such peer, more than 7 moves, or a command failed.
    pub fn move_peer(&self, peer: &str) -> Result<Ipv4Addr, LabError> {
        let old = self.with_link(peer, |link| Ok(link.clone()))?;
        if old.generation >= 7 {
            return Err(LabError::Invalid("a peer moves at most 7 times".into()));
        }
        let new = Link {
            generation: old.generation + 1,
            ..old.clone()
        };
        self.add_link(&new)?;
        let p = &new.namespace.name;
        ip(&[
            "-n",
            p,
            "route",
            "replace",
            "default",
            "via",
            &new.router_ip().to_string(),
            "dev",
            &new.peer_side(),
        ])?;
        // Deleting one end of a veth pair deletes both, and the old address with them.
        ip(&["-n", p, "link", "del", &old.peer_side()])?;
        for rule in self.router_rules(&old) {
            let mut args = vec!["-n", &self.router.name, "rule", "del"];
            args.extend(rule.iter().map(String::as_str));
            ip(&args)?;
        }
        self.with_link(peer, |link| {
            link.generation = new.generation;
            Ok(())
        })?;
        self.apply_rate(peer)?;
        self.apply_filters()?;
        Ok(new.peer_ip())
    }

    /// The rate cap of a peer's link, on both veth ends' egress.
    fn apply_rate(&self, peer: &str) -> Result<(), LabError> {
        let link = self.with_link(peer, |link| Ok(link.clone()))?;
        for (namespace, device) in [
            (&self.router.name, link.router_side()),
            (&link.namespace.name, link.peer_side()),
        ] {
            match link.impairment.rate_kbit {
                Some(kbit) => {
                    // A burst of about 20 ms at the rate (at least two full packets), and a
                    // queue of at most 200 ms, as a mobile link's buffer.
                    let burst = (kbit as usize * 1000 / 8 / 50).max(3200);
                    run(Command::new("tc").args([
                        "-n",
                        namespace,
                        "qdisc",
                        "replace",
                        "dev",
                        &device,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{kbit}kbit"),
                        "burst",
                        &burst.to_string(),
                        "latency",
                        "200ms",
                    ]))?;
                }
                None => {
                    // Nothing to remove is fine.
                    let _ = run(Command::new("tc")
                        .args(["-n", namespace, "qdisc", "del", "dev", &device, "root"]));
                }
            }
        }
        Ok(())
    }

    /// Write the router's and every peer's nftables rules from the links' state: drops on
    /// ingress only (a drop on output would tell the sender, which a real network does not).
    fn apply_filters(&self) -> Result<(), LabError> {
        let links = self.links_mut()?.clone();
        let mut router_rules = String::new();
        for link in &links {
            let rules = link_rules(link);
            let iif = link.router_side();
            for rule in &rules {
                router_rules.push_str(&format!("    iifname \"{iif}\" {rule}\n"));
            }
            let peer_rules: String = rules
                .iter()
                .map(|rule| format!("    iifname != \"lo\" {rule}\n"))
                .collect();
            nft(&link.namespace.name, &ruleset(&peer_rules))?;
        }
        nft(&self.router.name, &ruleset(&router_rules))
    }
}

/// The drops of one link, as nft rule bodies.
fn link_rules(link: &Link) -> Vec<String> {
    let mut rules = Vec::new();
    if link.down {
        rules.push("drop".to_owned());
    }
    if link.udp_blocked {
        rules.push("meta l4proto udp drop".to_owned());
    }
    // In hundredths of a per cent.
    let loss = (link.impairment.loss_percent * 100.0).round() as u32;
    if loss > 0 {
        rules.push(format!("numgen random mod 10000 < {loss} drop"));
    }
    rules
}

fn ruleset(rules: &str) -> String {
    format!(
        "flush ruleset\ntable ip consult_lab {{\n  chain ingress {{\n    type filter hook prerouting priority -300; policy accept;\n{rules}  }}\n}}\n"
    )
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The delay thread first (it holds the TUN device in the router namespace).
        self.delay_router = None;
        let names: Vec<String> = self
            .links
            .get_mut()
            .map(|links| links.iter().map(|l| l.namespace.name.clone()).collect())
            .unwrap_or_default();
        for name in names {
            let _ = ip(&["netns", "del", &name]);
        }
        let _ = ip(&["netns", "del", &self.router.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::QueueCounters;

    #[test]
    fn queue_counters_are_read_from_tc() {
        let out = "qdisc tbf 8001: root refcnt 2 rate 80Kbit burst 3200b lat 200ms \n Sent 123456 bytes 789 pkt (dropped 12, overlimits 34 requeues 0) \n backlog 0b 0p requeues 0\n";
        let counters = QueueCounters::parse(out).unwrap();
        assert_eq!(
            counters,
            QueueCounters {
                bytes: 123_456,
                packets: 789,
                dropped: 12
            }
        );
        let later = QueueCounters {
            bytes: 200_000,
            packets: 1000,
            dropped: 20,
        };
        assert_eq!(
            later.since(&counters),
            QueueCounters {
                bytes: 76_544,
                packets: 211,
                dropped: 8
            }
        );
        assert_eq!(QueueCounters::parse("qdisc noqueue 0: root"), None);
    }
}
