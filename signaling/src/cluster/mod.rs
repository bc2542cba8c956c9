//! Several nodes, one deployment: the nodes share PostgreSQL (everything durable) and Redis
//! (who is home to which doctor, and the bus between nodes), and nothing in memory that a dead
//! node could take with it.
//!
//! **Homes.** The live state of a doctor's consultations — who waits, who is admitted, the
//! connections, the reconnect grace — is held by one node at a time, the doctor's *home*, so
//! every rule the [`crate::signal::hub::Hub`] enforces (one admitted patient per doctor, the
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
    /// This node is shutting down.
    #[error("this node is shutting down")]
    Leaving,
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

/// A node of a deployment with Redis.
pub struct Node {
    id: Uuid,
    prefix: String,
    lease: Duration,
    redis: ConnectionManager,
    client: redis::Client,
    /// Published in order by one task over one connection.
    outbox: mpsc::UnboundedSender<(String, String)>,
    next_number: AtomicU64,
    /// Relayed connections this node is the entry of: where the home's frames go.
    entry_pipes: Mutex<HashMap<u64, EntryPipe>>,
    /// Relayed connections this node is the home of: where the entry node's frames go.
    home_pipes: Mutex<HashMap<(Uuid, u64), mpsc::Sender<Frame>>>,
    /// Calls waiting for their reply.
    calls: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Doctors homed here, with when a connection or call last needed the home.
    homes: tokio::sync::Mutex<HashMap<Uuid, Instant>>,
    /// Whether the last exchange with Redis worked (for `/readyz`).
    redis_ok: AtomicBool,
    /// Set when the node shuts down: it takes no more homes.
    leaving: AtomicBool,
    /// Whether this node has said it is alive before.
    alive_once: AtomicBool,
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

/// Keep a lease this node holds (or re-take it after Redis lost it). Returns the holder.
const RENEW: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return holder
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
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let redis = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to Redis (cluster.redis_url): {e}"))?;
        let (outbox, outgoing) = mpsc::unbounded_channel();
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
            homes: tokio::sync::Mutex::default(),
            redis_ok: AtomicBool::new(true),
            leaving: AtomicBool::new(false),
            alive_once: AtomicBool::new(false),
        });
        node.clone().keep_alive().await?;
        tokio::spawn(node.clone().publish(outgoing));
        Ok(Self(Some(node)))
    }

    /// Whether this node shares its consultations with others.
    pub fn is_clustered(&self) -> bool {
        self.0.is_some()
    }

    /// This node's id (`None` alone).
    pub fn node_id(&self) -> Option<Uuid> {
        self.0.as_ref().map(|n| n.id)
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

    /// Whether Redis answered at the last exchange (always true alone).
    pub fn is_healthy(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|n| n.redis_ok.load(Ordering::Relaxed))
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

    /// Where `doctor`'s rooms live, making this node their home if none is alive (and
    /// restoring their rooms from the database when this node was not their home before).
    pub async fn claim(&self, state: &AppState, doctor: Uuid) -> Result<Home, ClusterError> {
        match &self.0 {
            None => Ok(Home::Here),
            Some(node) => node.claim(state, doctor).await,
        }
    }

    /// Whether this node may hold `doctor`'s rooms now: alone, always; in a deployment, when it
    /// is their home. Checked again at every join, so that no room is ever made on a node that
    /// is not its home.
    pub async fn serves(&self, doctor: Uuid) -> bool {
        match &self.0 {
            None => true,
            Some(node) => node.is_home(doctor).await,
        }
    }

    /// Where `doctor`'s rooms live now, without taking them: `Here` when no live node holds
    /// them (nobody is in them, or their home just died and the next claim restores them).
    pub async fn locate(&self, doctor: Uuid) -> Result<Home, ClusterError> {
        match &self.0 {
            None => Ok(Home::Here),
            Some(node) => node.locate(doctor).await,
        }
    }

    /// On shutdown: give back every lease this node holds, so that the clients it tells to go
    /// away find a new home at once; stop saying this node is alive.
    pub async fn leave(&self) {
        let Some(node) = &self.0 else {
            return;
        };
        node.leaving.store(true, Ordering::Relaxed);
        let doctors: Vec<Uuid> = node.homes.lock().await.drain().map(|(d, _)| d).collect();
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
    }
}

/// Let go of a doctor's consultations another node holds now (or may): everyone connected
/// here is told to reconnect, and recorders running here stop (the new home records on, in a
/// new recording).
async fn abandon(state: &AppState, doctor: Uuid) {
    let consultations = state.hub.abandon(doctor);
    tracing::warn!(%doctor, consultations = consultations.len(), "another node holds this doctor's consultations now");
    for consultation in consultations {
        crate::recording::reconcile(state, consultation).await;
    }
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
            let _ = self.outbox.send((self.channel(node), payload));
        }
    }

    /// Send an envelope to every node.
    fn broadcast(&self, envelope: &Envelope) {
        if let Ok(payload) = serde_json::to_string(envelope) {
            let _ = self.outbox.send((self.all_channel(), payload));
        }
    }

    /// The publishing task: one connection, in order, pipelining whatever is queued.
    async fn publish(self: Arc<Self>, mut outgoing: mpsc::UnboundedReceiver<(String, String)>) {
        let mut redis = self.redis.clone();
        let mut batch = Vec::new();
        while outgoing.recv_many(&mut batch, 256).await > 0 {
            let mut pipeline = redis::pipe();
            for (channel, payload) in batch.drain(..) {
                pipeline.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
            let result: Result<(), _> = pipeline.query_async(&mut redis).await;
            if let Err(e) = &result {
                tracing::warn!(error = %e, "could not publish to the other nodes");
            }
            self.note(&result);
        }
    }

    /// Say this node is alive for one more lease period.
    async fn keep_alive(self: Arc<Self>) -> Result<(), ClusterError> {
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
        Ok(())
    }

    async fn claim(self: &Arc<Self>, state: &AppState, doctor: Uuid) -> Result<Home, ClusterError> {
        if self.leaving.load(Ordering::Relaxed) {
            return Err(ClusterError::Leaving);
        }
        let mut homes = self.homes.lock().await;
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
        let holder = result?;
        if holder.is_empty() {
            return Ok(Home::Settling);
        }
        if holder != self.id.to_string() {
            homes.remove(&doctor);
            return Ok(Home::There(Uuid::parse_str(&holder).unwrap_or_default()));
        }
        let new = homes.insert(doctor, Instant::now()).is_none();
        state.metrics.cluster_homes.set(homes.len() as i64);
        drop(homes);
        if new {
            match crate::invites::restore_places(state, Some(doctor)).await {
                Ok(0) => {}
                Ok(restored) => {
                    tracing::info!(restored, %doctor, "a doctor's consultations moved to this node")
                }
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "could not restore a doctor's rooms"
                    )
                }
            }
        }
        Ok(Home::Here)
    }

    async fn locate(&self, doctor: Uuid) -> Result<Home, ClusterError> {
        if let Some(seen) = self.homes.lock().await.get_mut(&doctor) {
            *seen = Instant::now();
            return Ok(Home::Here);
        }
        let mut redis = self.redis.clone();
        let result: Result<Option<String>, _> = redis::cmd("GET")
            .arg(self.home_key(doctor))
            .query_async(&mut redis)
            .await;
        self.note(&result);
        let Some(holder) = result?.and_then(|h| Uuid::parse_str(&h).ok()) else {
            return Ok(Home::Here);
        };
        if holder == self.id || !self.is_alive(holder).await? {
            return Ok(Home::Here);
        }
        Ok(Home::There(holder))
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

    /// Whether this node is `doctor`'s home (and marks the home as needed).
    async fn is_home(&self, doctor: Uuid) -> bool {
        match self.homes.lock().await.get_mut(&doctor) {
            Some(seen) => {
                *seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Run a call at `doctor`'s home `home` and wait for the reply.
    async fn call(&self, home: Uuid, doctor: Uuid, call: Call) -> Result<Reply, ClusterError> {
        let id = self.number();
        let (tx, rx) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
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
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(ClusterError::NoAnswer),
        }
    }

    /// Renew this node's liveness and its leases; give back leases nobody needs; let go of
    /// doctors another node has taken; and watch the nodes at the other end of relayed
    /// connections.
    async fn renew(self: Arc<Self>, state: AppState) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = state.shutdown.cancelled() => return,
            }
            if self.clone().keep_alive().await.is_ok() {
                last_renewed = Instant::now();
            } else if last_renewed.elapsed() >= self.lease {
                // Cut off from Redis for a whole lease: another node may hold these doctors
                // now. Let go, so that no consultation has two homes.
                let doctors: Vec<Uuid> = self.homes.lock().await.drain().map(|(d, _)| d).collect();
                for doctor in doctors {
                    abandon(&state, doctor).await;
                }
                continue;
            }
            let doctors: Vec<(Uuid, Instant)> = self
                .homes
                .lock()
                .await
                .iter()
                .map(|(d, seen)| (*d, *seen))
                .collect();
            let mut redis = self.redis.clone();
            for (doctor, seen) in doctors {
                if !state.hub.has_rooms_of(doctor) && seen.elapsed() > HOME_LINGER {
                    let mut homes = self.homes.lock().await;
                    if homes
                        .get(&doctor)
                        .is_some_and(|s| s.elapsed() > HOME_LINGER)
                        && !state.hub.has_rooms_of(doctor)
                    {
                        homes.remove(&doctor);
                        let _: Result<i64, _> = redis::Script::new(RELEASE)
                            .key(self.home_key(doctor))
                            .arg(self.id.to_string())
                            .invoke_async(&mut redis)
                            .await;
                    }
                    continue;
                }
                let result: Result<String, _> = redis::Script::new(RENEW)
                    .key(self.home_key(doctor))
                    .arg(self.id.to_string())
                    .arg(self.lease_ms())
                    .invoke_async(&mut redis)
                    .await;
                self.note(&result);
                if let Ok(holder) = result
                    && holder != self.id.to_string()
                {
                    self.homes.lock().await.remove(&doctor);
                    abandon(&state, doctor).await;
                }
            }
            let held = self.homes.lock().await.len();
            state.metrics.cluster_homes.set(held as i64);
            self.check_pipes().await;
        }
    }

    /// Close relayed connections whose other end's node is gone.
    async fn check_pipes(&self) {
        let mut nodes: Vec<Uuid> = self
            .entry_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| p.home)
            .collect();
        nodes.extend(
            self.home_pipes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .map(|(n, _)| *n),
        );
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            if let Ok(false) = self.is_alive(node).await {
                self.drop_pipes_of(node);
            }
        }
    }

    /// Every relayed connection with `node` at its other end ends: clients of this node are
    /// told to reconnect; connections homed here lose their client (the reconnect grace runs).
    fn drop_pipes_of(&self, node: Uuid) {
        let gone_home = Frame::Close {
            code: Some(pipe::SERVICE_RESTART),
            reason: "the node holding this consultation stopped; reconnect".into(),
        };
        self.entry_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, p| {
                if p.home == node {
                    let _ = p.to_client.try_send(PipeEvent::Frame(gone_home.clone()));
                    false
                } else {
                    true
                }
            });
        self.home_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _), _| *n != node);
    }

    /// Every relayed connection ends (the bus lost messages, or this node is leaving).
    fn drop_all_pipes(&self) {
        let restart = Frame::Close {
            code: Some(pipe::SERVICE_RESTART),
            reason: "the service's nodes lost touch; reconnect".into(),
        };
        for (_, p) in self
            .entry_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            let _ = p.to_client.try_send(PipeEvent::Frame(restart.clone()));
        }
        self.home_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
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
                _ = state.shutdown.cancelled() => return,
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
                if self.homes.lock().await.contains_key(&doctor) {
                    continue;
                }
                if let Ok(Home::Here) = self.locate(doctor).await {
                    let _ = self.claim(&state, doctor).await;
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
            if state.shutdown.is_cancelled() {
                return;
            }
            match self.subscribe().await {
                Ok(mut messages) => {
                    backoff = Duration::from_millis(100);
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => {
                                    let Ok(payload) = message.get_payload::<String>() else { continue };
                                    match serde_json::from_str::<Envelope>(&payload) {
                                        Ok(envelope) => self.clone().receive(&state, envelope).await,
                                        Err(e) => tracing::warn!(error = %e, "a malformed message on the bus"),
                                    }
                                }
                                None => break,
                            },
                            _ = state.shutdown.cancelled() => return,
                        }
                    }
                    tracing::warn!("lost the bus subscription; reconnecting");
                    self.redis_ok.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    self.redis_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot subscribe to the bus");
                }
            }
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

    async fn receive(self: Arc<Self>, state: &AppState, envelope: Envelope) {
        match envelope {
            Envelope::Open {
                from,
                pipe,
                doctor,
                cookie,
                first,
            } => {
                if !state.shutdown.is_cancelled() && self.is_home(doctor).await {
                    pipe::open_here(state, &self, from, pipe, cookie, first);
                } else {
                    self.send(from, &Envelope::NotHome { pipe });
                }
            }
            Envelope::Opened { pipe } => self.to_entry_pipe(pipe, PipeEvent::Opened),
            Envelope::NotHome { pipe } => self.to_entry_pipe(pipe, PipeEvent::NotHome),
            Envelope::ToClient { pipe, frame } => self.to_entry_pipe(pipe, PipeEvent::Frame(frame)),
            Envelope::ToHome { from, pipe, frame } => {
                let sender = self
                    .home_pipes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(from, pipe))
                    .cloned();
                if let Some(sender) = sender
                    && sender.try_send(frame).is_err()
                {
                    // A client flooding faster than its connection is served: cut it off, as
                    // a direct connection's rate limit would.
                    self.home_pipes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(from, pipe));
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
                    let reply = if self.is_home(doctor).await {
                        rooms::run_here(&state, doctor, call).await
                    } else {
                        Reply::NotHome
                    };
                    self.send(from, &Envelope::Reply { id, reply });
                });
            }
            Envelope::Reply { id, reply } => {
                let waiting = self
                    .calls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(waiting) = waiting {
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
        let sender = self
            .entry_pipes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pipe)
            .map(|p| p.to_client.clone());
        if let Some(sender) = sender
            && sender.try_send(event).is_err()
        {
            // The client does not keep up: its connection ends, as a direct one's would.
            self.entry_pipes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&pipe);
        }
    }
}
