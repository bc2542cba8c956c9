//! Several nodes, one deployment: the nodes share PostgreSQL (everything durable) and Redis
//! (who is home to which doctor, and the bus between nodes), and nothing in memory that a dead
//! node could take with it.
//!
//! **Homes.** The live state of a doctor's consultations — who waits, who is admitted, the
//! connections, the reconnect grace — is held by one node at a time, the doctor's *home*, so
//! every rule the [`crate::signal::hub::Hub`] enforces (one call at a time per doctor, the
//! waiting order, who may signal whom) is enforced in one place, as on a single node. The home
//! holds a lease in Redis (`{prefix}:home:{doctor}`), renewed three times per lease period while
//! it has rooms; a node also keeps a liveness key (`{prefix}:node:{id}`). A lease whose holder's
//! liveness key has lapsed is taken by the next node that needs it, which restores the doctor's
//! rooms from the database as a restarted single node does (every held place offline, admitted
//! or waiting as it was, with the doctor's stable participant id), so the clients resume where
//! they were and keep their peer connections.
//!
//! **The bus.** Each node subscribes to its own Redis pub/sub channel (`{prefix}:to:{id}`) and
//! to the deployment's (`{prefix}:all`, for ended sessions). A signaling connection that
//! reaches a node other than its doctor's home is relayed there frame by frame
//! ([`pipe`]); a REST request that needs a room (admit, decline, end, the waiting room) is
//! run there as a call ([`rooms`]). Pub/sub rather than streams: the messages are live
//! signaling that is worthless a few seconds later, every node publishes them in order over
//! one connection (so they arrive in order per sender), and a gap — Redis restarted, a node
//! cut off — is healed the way a dropped WebSocket is: the connections it may have touched are
//! closed, the clients reconnect and resume from the home's state. Streams would keep history
//! nobody replays.

pub mod pipe;
pub mod rooms;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ClusterConfig;
use crate::state::AppState;
use wire::{Call, Envelope, Frame, Reply};

/// Why the cluster could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis did not answer, or refused.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The doctor's home did not answer in time.
    #[error("the node holding this consultation did not answer")]
    NoAnswer,
    /// This node is shutting down, or cut off from the bus: it takes no homes.
    #[error("this node cannot take consultations now")]
    Unavailable,
    /// The consultations could not be restored from the database.
    #[error("restoring the consultations: {0}")]
    Restore(String),
}

/// Where a doctor's rooms live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// On this node.
    Here,
    /// On another node, by id.
    There(Uuid),
    /// Not known for a moment: the deployment is settling after Redis lost its data; ask
    /// again shortly.
    Settling,
}

/// This node's membership of a deployment; a single node when Redis is not configured.
#[derive(Clone, Default)]
pub struct Cluster(Option<Arc<Node>>);

/// A doctor homed on this node.
#[derive(Debug, Clone, Copy)]
struct HomeLease {
    /// When a connection or call last needed it.
    seen: Instant,
    /// Until when this node may act as the home without renewing: two thirds of a lease
    /// after the renewal was sent, so that the node stops before the lease can lapse in Redis.
    valid_until: Instant,
}

/// A node of a deployment with Redis.
pub struct Node {
    id: Uuid,
    prefix: String,
    lease: Duration,
    redis: ConnectionManager,
    client: redis::Client,
    /// Published in order by one task over one connection; bounded.
    outbox: mpsc::Sender<(String, String)>,
    next_number: AtomicU64,
    /// Relayed connections this node is the entry of: where the home's frames go.
    entry_pipes: Mutex<HashMap<u64, EntryPipe>>,
    /// Relayed connections this node is the home of: where the entry node's frames go.
    home_pipes: Mutex<HashMap<(Uuid, u64), mpsc::Sender<Frame>>>,
    /// Calls waiting for their reply.
    calls: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Doctors homed here (only once their rooms are restored).
    homes: Mutex<HashMap<Uuid, HomeLease>>,
    /// One claim at a time per doctor on this node (a claim restores the rooms).
    claiming: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Until when this node's liveness holds (two thirds of a lease after the last renewal
    /// that worked was sent).
    alive_until: Mutex<Instant>,
    /// Whether the last exchange with Redis worked.
    redis_ok: AtomicBool,
    /// Whether the bus subscription is up.
    subscribed: AtomicBool,
    /// Set when the node shuts down: it takes no more homes.
    leaving: AtomicBool,
    /// Whether this node has said it is alive before.
    alive_once: AtomicBool,
    /// Stops the node's jobs (after it left, or when it is stopped dead).
    stopped: CancellationToken,
}

/// The entry side of a relayed connection.
struct EntryPipe {
    home: Uuid,
    to_client: mpsc::Sender<PipeEvent>,
}

/// What the home says about a relayed connection.
#[derive(Debug)]
enum PipeEvent {
    Opened,
    NotHome,
    Frame(Frame),
}

/// Messages queued for Redis before the node counts the bus as broken.
const OUTBOX: usize = 65_536;

/// Take (or keep) a doctor's lease: already ours, free, or held by a node whose liveness key
/// has lapsed. Returns the holder after the call, or an empty string while the deployment is
/// *settling*: when the claiming node finds its own liveness key gone, Redis has lost its data
/// (restarted) or this node was cut off, so every lease is missing although their homes are
/// alive; for one lease period no free lease is taken, while the homes renew theirs.
const CLAIM: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder ~= false and redis.call('EXISTS', ARGV[3] .. holder) == 1 then
  return holder
end
if redis.call('EXISTS', ARGV[3] .. ARGV[1]) == 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('SET', ARGV[3] .. ARGV[1], '1', 'PX', ARGV[2])
  return ''
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return ''
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"#;

/// Keep every lease in `KEYS` this node holds (or re-take it after Redis lost it). Returns
/// each one's holder, in order.
const RENEW_ALL: &str = r#"
local holders = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == false or holder == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    holder = ARGV[1]
  end
  holders[i] = holder
end
return holders
"#;

/// Say a node is alive for one more lease; if its liveness key was gone although it had been
/// set before (`ARGV[2]` is 1), Redis lost its data or the node was cut off: the deployment
/// settles (see [`CLAIM`]).
const KEEP_ALIVE: &str = r#"
local was = redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'GET')
if was == false and ARGV[2] == '1' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
end
return 0
"#;

/// Give a lease back if it is still ours.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A home is kept this long after the last connection or call that needed it, even without
/// rooms, so that a join on its way is not stranded by a lease given back under it.
const HOME_LINGER: Duration = Duration::from_secs(10);
/// How long a call waits for the home's reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The part of a lease during which a node acts on a renewal (the rest is its margin).
fn acting_part(lease: Duration) -> Duration {
    lease * 2 / 3
}

impl Cluster {
    /// One node, no Redis.
    pub fn single() -> Self {
        Self(None)
    }

    /// Join the deployment `config` names (a single node when it names no Redis).
    pub async fn connect(config: &ClusterConfig) -> anyhow::Result<Self> {
        let Some(url) = &config.redis_url else {
            return Ok(Self::single());
        };
        // The URL may hold a password: errors never repeat it.
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis_url: {:?}", e.kind()))?;
        // A Redis that does not answer within a third of a lease is treated as gone, so that a
        // node notices before its lease can lapse.
        let patience = (config.lease / 3).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(patience)
            .set_response_timeout(patience)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let redis = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to Redis (cluster.redis_url): {e}"))?;
        let (outbox, outgoing) = mpsc::channel(OUTBOX);
        let node = Arc::new(Node {
            id: Uuid::new_v4(),
            prefix: config.key_prefix.clone(),
            lease: config.lease,
            redis,
            client,
            outbox,
            next_number: AtomicU64::new(1),
            entry_pipes: Mutex::default(),
            home_pipes: Mutex::default(),
            calls: Mutex::default(),
            homes: Mutex::default(),
            claiming: Mutex::default(),
            alive_until: Mutex::new(Instant::now()),
            redis_ok: AtomicBool::new(true),
            subscribed: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            alive_once: AtomicBool::new(false),
            stopped: CancellationToken::new(),
        });
        node.settle_after_a_redis_restart().await?;
        node.keep_alive().await?;
        tokio::spawn(node.clone().publish(outgoing));
        Ok(Self(Some(node)))
    }

    /// Whether this node shares its consultations with others.
    pub fn is_clustered(&self) -> bool {
        self.0.is_some()
    }

    /// The node, when there is a deployment.
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.0.as_ref()
    }

    /// The deployment's Redis and key prefix, for state every node shares (the sign-in
    /// throttle per address).
    pub fn redis(&self) -> Option<(ConnectionManager, String)> {
        self.0.as_ref().map(|n| (n.redis.clone(), n.prefix.clone()))
    }

    /// Whether Redis answered at the last exchange and the bus is subscribed (always true
    /// alone).
    pub fn is_healthy(&self) -> bool {
        self.0.as_ref().is_none_or(|n| {
            n.redis_ok.load(Ordering::Relaxed) && n.subscribed.load(Ordering::Relaxed)
        })
    }

    /// Start the bus listener and the lease, liveness and adoption jobs. Alone: nothing.
    pub fn start(&self, state: &AppState) {
        let Some(node) = &self.0 else {
            return;
        };
        let (revocations, mut revoked) = mpsc::unbounded_channel();
        state.revocations.forward_to(revocations);
        let announcer = node.clone();
        tokio::spawn(async move {
            while let Some(revoked) = revoked.recv().await {
                announcer.broadcast(&Envelope::Revoked {
                    from: announcer.id,
                    revoked,
                });
            }
        });
        tokio::spawn(node.clone().listen(state.clone()));
        tokio::spawn(node.clone().renew(state.clone()));
        tokio::spawn(node.clone().adopt(state.clone()));
    }

    /// Wait (up to one lease) until the bus is subscribed, so that the node is ready for
    /// relayed connections when it starts taking requests.
    pub async fn ready(&self) {
        let Some(node) = &self.0 else {
            return;
        };
        let deadline = Instant::now() + node.lease;
        while !node.subscribed.load(Ordering::Relaxed) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Where `doctor`'s rooms live, making this node their home if no live node holds them
    /// (their rooms restored from the database before anyone may join them here).
    pub async fn claim(&self, state: &AppState, doctor: Uuid) -> Result<Home, ClusterError> {
        match &self.0 {
            None => Ok(Home::Here),
            Some(node) => node.claim(state, doctor).await,
        }
    }

    /// Whether this node may hold `doctor`'s rooms now: alone, always; in a deployment, when it
    /// is their home and its lease holds. Checked again at every join.
    pub fn serves(&self, doctor: Uuid) -> bool {
        match &self.0 {
            None => true,
            Some(node) => node.is_home(doctor),
        }
    }

    /// On shutdown, once the recorders have sealed: give back every lease this node holds, so
    /// that the clients it tells to go away find a new home at once; stop saying this node is
    /// alive; stop its jobs.
    pub async fn leave(&self) {
        let Some(node) = &self.0 else {
            return;
        };
        node.leaving.store(true, Ordering::Relaxed);
        let doctors: Vec<Uuid> = lock(&node.homes).drain().map(|(d, _)| d).collect();
        let mut redis = node.redis.clone();
        for doctor in doctors {
            let _: Result<i64, _> = redis::Script::new(RELEASE)
                .key(node.home_key(doctor))
                .arg(node.id.to_string())
                .invoke_async(&mut redis)
                .await;
        }
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(node.alive_key(node.id))
            .query_async(&mut redis)
            .await;
        node.stopped.cancel();
    }

    /// Stop at once, as a killed process does: no lease given back, no more renewals (the
    /// other nodes take this node's consultations when its leases lapse).
    pub fn halt(&self) {
        if let Some(node) = &self.0 {
            node.leaving.store(true, Ordering::Relaxed);
            node.stopped.cancel();
        }
    }
}

/// Lock a std mutex, whatever a panicking holder left.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Let go of a doctor's consultations another node holds now (or may): everyone connected
/// here is told to reconnect, and recorders running here stop (the new home records on, in a
/// new recording). In the background: never in the way of the lease renewals.
fn abandon(state: &AppState, doctor: Uuid) {
    let consultations = state.hub.abandon(doctor);
    if consultations.is_empty() {
        return;
    }
    tracing::warn!(%doctor, consultations = consultations.len(), "another node holds this doctor's consultations now");
    let state = state.clone();
    tokio::spawn(async move {
        for consultation in consultations {
            crate::recording::reconcile(&state, consultation).await;
        }
    });
}

impl Node {
    fn channel(&self, node: Uuid) -> String {
        format!("{}:to:{node}", self.prefix)
    }

    fn all_channel(&self) -> String {
        format!("{}:all", self.prefix)
    }

    fn home_key(&self, doctor: Uuid) -> String {
        format!("{}:home:{doctor}", self.prefix)
    }

    fn alive_key(&self, node: Uuid) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn settling_key(&self) -> String {
        format!("{}:settling", self.prefix)
    }

    fn alive_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }

    fn number(&self) -> u64 {
        self.next_number.fetch_add(1, Ordering::Relaxed)
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    fn note<T>(&self, result: &Result<T, redis::RedisError>) {
        self.redis_ok.store(result.is_ok(), Ordering::Relaxed);
    }

    /// Send an envelope to one node (in order with everything else this node sends).
    fn send(&self, node: Uuid, envelope: &Envelope) {
        if let Ok(payload) = serde_json::to_string(envelope) {
            self.enqueue(self.channel(node), payload);
        }
    }

    /// Send an envelope to every node.
    fn broadcast(&self, envelope: &Envelope) {
        if let Ok(payload) = serde_json::to_string(envelope) {
            self.enqueue(self.all_channel(), payload);
        }
    }

    fn enqueue(&self, channel: String, payload: String) {
        if self.outbox.try_send((channel, payload)).is_err() {
            // Redis does not keep up (or is gone): what is queued may never arrive, so every
            // relayed connection starts over, as after any gap on the bus.
            tracing::warn!("the bus to the other nodes is full; relayed connections start over");
            self.drop_all_pipes();
        }
    }

    /// The publishing task: one connection, in order, pipelining whatever is queued. A batch
    /// that fails may have been lost in part: every relayed connection starts over.
    async fn publish(self: Arc<Self>, mut outgoing: mpsc::Receiver<(String, String)>) {
        let mut redis = self.redis.clone();
        let mut batch = Vec::new();
        while outgoing.recv_many(&mut batch, 256).await > 0 {
            let mut pipeline = redis::pipe();
            for (channel, payload) in batch.drain(..) {
                pipeline.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
            let result: Result<(), _> = pipeline.query_async(&mut redis).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "could not publish to the other nodes; relayed connections start over");
                self.drop_all_pipes();
            }
            self.note(&result);
        }
    }

    /// A node starting against a Redis that itself started less than two leases ago cannot
    /// tell a new deployment from one whose Redis just lost every lease while its homes live
    /// on: the deployment settles for one lease (see [`CLAIM`]), so the live homes re-take
    /// their leases before this node takes any.
    async fn settle_after_a_redis_restart(&self) -> Result<(), ClusterError> {
        let mut redis = self.redis.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut redis)
            .await?;
        let uptime = info
            .lines()
            .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if Duration::from_secs(uptime) < self.lease * 2 {
            let _: Option<String> = redis::cmd("SET")
                .arg(self.settling_key())
                .arg("1")
                .arg("PX")
                .arg(self.lease_ms())
                .arg("NX")
                .query_async(&mut redis)
                .await?;
        }
        Ok(())
    }

    /// Say this node is alive for one more lease period; on success, it may act on it for two
    /// thirds of one from when the renewal was sent.
    async fn keep_alive(&self) -> Result<(), ClusterError> {
        let sent = Instant::now();
        let mut redis = self.redis.clone();
        let renewing = self.alive_once.swap(true, Ordering::Relaxed);
        let result: Result<i64, _> = redis::Script::new(KEEP_ALIVE)
            .key(self.alive_key(self.id))
            .key(self.settling_key())
            .arg(self.lease_ms())
            .arg(if renewing { "1" } else { "0" })
            .invoke_async(&mut redis)
            .await;
        self.note(&result);
        result?;
        *lock(&self.alive_until) = sent + acting_part(self.lease);
        Ok(())
    }

    /// Whether this node is `doctor`'s home now (restored, its lease and liveness holding,
    /// the bus up), marking the home as needed.
    fn is_home(&self, doctor: Uuid) -> bool {
        let now = Instant::now();
        if !self.subscribed.load(Ordering::Relaxed) || *lock(&self.alive_until) <= now {
            return false;
        }
        match lock(&self.homes).get_mut(&doctor) {
            Some(home) if home.valid_until > now => {
                home.seen = now;
                true
            }
            _ => false,
        }
    }

    async fn claim(self: &Arc<Self>, state: &AppState, doctor: Uuid) -> Result<Home, ClusterError> {
        if self.is_home(doctor) {
            return Ok(Home::Here);
        }
        if self.leaving.load(Ordering::Relaxed) || !self.subscribed.load(Ordering::Relaxed) {
            return Err(ClusterError::Unavailable);
        }
        let claiming = lock(&self.claiming).entry(doctor).or_default().clone();
        let _one_at_a_time = claiming.lock().await;
        if self.is_home(doctor) {
            return Ok(Home::Here);
        }
        let holder = self.take_lease(doctor).await?;
        if holder.is_empty() {
            return Ok(Home::Settling);
        }
        if holder != self.id.to_string() {
            return Ok(Home::There(Uuid::parse_str(&holder).unwrap_or_default()));
        }
        // Ours: the rooms come back from the database before anyone may join them here.
        state.hub.serve(doctor);
        match crate::invites::restore_places(state, Some(doctor)).await {
            Ok(0) => {}
            Ok(restored) => {
                tracing::info!(restored, %doctor, "a doctor's consultations moved to this node")
            }
            Err(e) => {
                abandon(state, doctor);
                self.release(doctor).await;
                return Err(ClusterError::Restore(format!("{e:#}")));
            }
        }
        // Still ours after the restore (it may have taken longer than the lease)?
        let sent = Instant::now();
        let holder = self.renew_leases(&[doctor]).await?;
        match holder.first() {
            Some(h) if *h == self.id.to_string() => {
                lock(&self.homes).insert(
                    doctor,
                    HomeLease {
                        seen: sent,
                        valid_until: sent + acting_part(self.lease),
                    },
                );
                state
                    .metrics
                    .cluster_homes
                    .set(lock(&self.homes).len() as i64);
                Ok(Home::Here)
            }
            other => {
                abandon(state, doctor);
                let holder = other
                    .and_then(|h| Uuid::parse_str(h).ok())
                    .unwrap_or_default();
                Ok(Home::There(holder))
            }
        }
    }

    /// Run [`CLAIM`] for one doctor: the holder after it ("" while settling).
    async fn take_lease(&self, doctor: Uuid) -> Result<String, ClusterError> {
        let mut redis = self.redis.clone();
        let result: Result<String, _> = redis::Script::new(CLAIM)
            .key(self.home_key(doctor))
            .key(self.settling_key())
            .arg(self.id.to_string())
            .arg(self.lease_ms())
            .arg(self.alive_prefix())
            .invoke_async(&mut redis)
            .await;
        self.note(&result);
        Ok(result?)
    }

    /// Run [`RENEW_ALL`]: each doctor's holder after it, in order.
    async fn renew_leases(&self, doctors: &[Uuid]) -> Result<Vec<String>, ClusterError> {
        let renew_all = redis::Script::new(RENEW_ALL);
        let mut script = renew_all.prepare_invoke();
        for doctor in doctors {
            script.key(self.home_key(*doctor));
        }
        script.arg(self.id.to_string()).arg(self.lease_ms());
        let mut redis = self.redis.clone();
        let result: Result<Vec<String>, _> = script.invoke_async(&mut redis).await;
        self.note(&result);
        Ok(result?)
    }

    async fn release(&self, doctor: Uuid) {
        let mut redis = self.redis.clone();
        let _: Result<i64, _> = redis::Script::new(RELEASE)
            .key(self.home_key(doctor))
            .arg(self.id.to_string())
            .invoke_async(&mut redis)
            .await;
    }

    /// Run a call at `doctor`'s home `home` and wait for the reply.
    async fn call(&self, home: Uuid, doctor: Uuid, call: Call) -> Result<Reply, ClusterError> {
        let id = self.number();
        let (tx, rx) = oneshot::channel();
        lock(&self.calls).insert(id, tx);
        self.send(
            home,
            &Envelope::Call {
                from: self.id,
                id,
                doctor,
                call,
            },
        );
        let reply = tokio::time::timeout(CALL_TIMEOUT, rx).await;
        lock(&self.calls).remove(&id);
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(ClusterError::NoAnswer),
        }
    }

    /// Let go of every home (this node cannot be sure it still holds them).
    fn abandon_all(&self, state: &AppState) {
        let doctors: Vec<Uuid> = lock(&self.homes).drain().map(|(d, _)| d).collect();
        for doctor in doctors {
            abandon(state, doctor);
        }
        state.metrics.cluster_homes.set(0);
    }

    /// Renew this node's liveness and its leases (all in one exchange); give back leases
    /// nobody needs; let go of doctors another node has taken, and of every doctor when Redis
    /// or the bus has been out of reach too long to be sure; watch the nodes at the other end
    /// of relayed connections. Runs until the node has left.
    async fn renew(self: Arc<Self>, state: AppState) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unsubscribed_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stopped.cancelled() => return,
            }
            let now = Instant::now();
            if self.subscribed.load(Ordering::Relaxed) {
                unsubscribed_since = None;
            } else if unsubscribed_since.get_or_insert(now).elapsed() >= acting_part(self.lease) {
                // Cut off from the bus: relayed connections and calls cannot reach this node.
                self.abandon_all(&state);
            }
            if self.keep_alive().await.is_err() {
                if *lock(&self.alive_until) <= Instant::now() {
                    self.abandon_all(&state);
                }
                continue;
            }
            // Leases nobody needs any more are given back; the others renewed at once.
            let mut keep = Vec::new();
            let mut give_back = Vec::new();
            {
                let mut homes = lock(&self.homes);
                homes.retain(|doctor, home| {
                    let idle =
                        home.seen.elapsed() > HOME_LINGER && !state.hub.has_rooms_of(*doctor);
                    if idle {
                        give_back.push(*doctor);
                    } else {
                        keep.push(*doctor);
                    }
                    !idle
                });
            }
            for doctor in give_back {
                abandon(&state, doctor);
                self.release(doctor).await;
            }
            if !keep.is_empty() {
                let sent = Instant::now();
                if let Ok(holders) = self.renew_leases(&keep).await {
                    let mut homes = lock(&self.homes);
                    for (doctor, holder) in keep.iter().zip(holders) {
                        if holder == self.id.to_string() {
                            if let Some(home) = homes.get_mut(doctor) {
                                home.valid_until = sent + acting_part(self.lease);
                            }
                        } else if homes.remove(doctor).is_some() {
                            abandon(&state, *doctor);
                        }
                    }
                }
            }
            state
                .metrics
                .cluster_homes
                .set(lock(&self.homes).len() as i64);
            self.check_pipes().await;
        }
    }

    /// Close relayed connections whose other end's node is gone.
    async fn check_pipes(&self) {
        let mut nodes: Vec<Uuid> = lock(&self.entry_pipes).values().map(|p| p.home).collect();
        nodes.extend(lock(&self.home_pipes).keys().map(|(n, _)| *n));
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            if let Ok(false) = self.is_alive(node).await {
                self.drop_pipes_of(node);
            }
        }
    }

    async fn is_alive(&self, node: Uuid) -> Result<bool, ClusterError> {
        let mut redis = self.redis.clone();
        let result: Result<bool, _> = redis::cmd("EXISTS")
            .arg(self.alive_key(node))
            .query_async(&mut redis)
            .await;
        self.note(&result);
        Ok(result?)
    }

    /// Every relayed connection with `node` at its other end ends: clients of this node are
    /// told to reconnect; connections homed here lose their client (the reconnect grace runs).
    fn drop_pipes_of(&self, node: Uuid) {
        let gone_home = Frame::Close {
            code: Some(pipe::SERVICE_RESTART),
            reason: "the node holding this consultation stopped; reconnect".into(),
        };
        lock(&self.entry_pipes).retain(|_, p| {
            if p.home == node {
                let _ = p.to_client.try_send(PipeEvent::Frame(gone_home.clone()));
                false
            } else {
                true
            }
        });
        lock(&self.home_pipes).retain(|(n, _), _| *n != node);
    }

    /// Every relayed connection ends and every call waiting fails (the bus lost messages).
    fn drop_all_pipes(&self) {
        let restart = Frame::Close {
            code: Some(pipe::SERVICE_RESTART),
            reason: "the service's nodes lost touch; reconnect".into(),
        };
        for (_, p) in lock(&self.entry_pipes).drain() {
            let _ = p.to_client.try_send(PipeEvent::Frame(restart.clone()));
        }
        lock(&self.home_pipes).clear();
        lock(&self.calls).clear();
    }

    /// Take the home of doctors whose places are held but whose home is gone (its node died
    /// and nobody has reconnected yet), so that their reconnect grace runs and places nobody
    /// reclaims are released.
    async fn adopt(self: Arc<Self>, state: AppState) {
        let mut tick = tokio::time::interval(self.lease);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stopped.cancelled() => return,
            }
            let doctors =
                match crate::consultations::rows::doctors_with_held_places(&state.pool).await {
                    Ok(doctors) => doctors,
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "could not look for orphaned consultations"
                        );
                        continue;
                    }
                };
            for doctor in doctors {
                if !self.is_home(doctor)
                    && let Err(e) = self.claim(&state, doctor).await
                {
                    tracing::debug!(error = %e, %doctor, "could not adopt a doctor's consultations");
                }
            }
        }
    }

    /// The bus listener: this node's channel and the deployment's. When the subscription
    /// breaks (Redis restarted), messages may have been lost: every relayed connection is
    /// closed so that its client reconnects and resumes, and the subscription is made again.
    async fn listen(self: Arc<Self>, state: AppState) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.stopped.is_cancelled() {
                return;
            }
            match tokio::time::timeout(self.lease, self.subscribe()).await {
                Ok(Ok(mut messages)) => {
                    backoff = Duration::from_millis(100);
                    self.subscribed.store(true, Ordering::Relaxed);
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => {
                                    let Ok(payload) = message.get_payload::<String>() else { continue };
                                    match serde_json::from_str::<Envelope>(&payload) {
                                        Ok(envelope) => self.clone().receive(&state, envelope),
                                        Err(e) => tracing::warn!(error = %e, "a malformed message on the bus"),
                                    }
                                }
                                None => break,
                            },
                            _ = self.stopped.cancelled() => return,
                        }
                    }
                    tracing::warn!("lost the bus subscription; reconnecting");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to the bus"),
                Err(_) => tracing::warn!("subscribing to the bus timed out"),
            }
            self.subscribed.store(false, Ordering::Relaxed);
            self.drop_all_pipes();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSubStream, redis::RedisError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel(self.id)).await?;
        pubsub.subscribe(self.all_channel()).await?;
        Ok(pubsub.into_on_message())
    }

    /// One message from the bus; never waits (calls run in their own task).
    fn receive(self: Arc<Self>, state: &AppState, envelope: Envelope) {
        match envelope {
            Envelope::Open {
                from,
                pipe,
                doctor,
                cookie,
                first,
            } => {
                if !state.shutdown.is_cancelled() && self.is_home(doctor) {
                    pipe::open_here(state, &self, from, pipe, cookie, first);
                } else {
                    self.send(from, &Envelope::NotHome { pipe });
                }
            }
            Envelope::Opened { pipe } => self.to_entry_pipe(pipe, PipeEvent::Opened),
            Envelope::NotHome { pipe } => self.to_entry_pipe(pipe, PipeEvent::NotHome),
            Envelope::ToClient { pipe, frame } => self.to_entry_pipe(pipe, PipeEvent::Frame(frame)),
            Envelope::ToHome { from, pipe, frame } => {
                let sender = lock(&self.home_pipes).get(&(from, pipe)).cloned();
                if let Some(sender) = sender
                    && sender.try_send(frame).is_err()
                {
                    // A client flooding faster than its connection is served: cut it off, as
                    // a direct connection's rate limit would.
                    lock(&self.home_pipes).remove(&(from, pipe));
                }
            }
            Envelope::Call {
                from,
                id,
                doctor,
                call,
            } => {
                let state = state.clone();
                tokio::spawn(async move {
                    let reply = if self.is_home(doctor) {
                        rooms::run_here(&state, doctor, call).await
                    } else {
                        Reply::NotHome
                    };
                    self.send(from, &Envelope::Reply { id, reply });
                });
            }
            Envelope::Reply { id, reply } => {
                if let Some(waiting) = lock(&self.calls).remove(&id) {
                    let _ = waiting.send(reply);
                }
            }
            Envelope::Revoked { from, revoked } => {
                if from != self.id {
                    state.revocations.announce_here(revoked);
                }
            }
        }
    }

    fn to_entry_pipe(&self, pipe: u64, event: PipeEvent) {
        let sender = lock(&self.entry_pipes)
            .get(&pipe)
            .map(|p| p.to_client.clone());
        if let Some(sender) = sender
            && sender.try_send(event).is_err()
        {
            // The client does not keep up: its connection ends, as a direct one's would.
            lock(&self.entry_pipes).remove(&pipe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_redis_that_cannot_be_reached_is_named_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for url in [
            format!("redis://:hunter2-secret@127.0.0.1:{port}/"),
            "redis://:hunter2-secret@[::1".to_owned(),
        ] {
            let config = ClusterConfig {
                redis_url: Some(url),
                ..ClusterConfig::default()
            };
            let Err(e) = Cluster::connect(&config).await else {
                panic!("nothing listens there")
            };
            let said = format!("{e:#}");
            assert!(said.contains("redis_url"), "{said}");
            assert!(!said.contains("hunter2"), "the password leaked: {said}");
        }
    }
}
