//! Ended sessions, told at once to whatever holds them open — the signaling WebSockets — so that
//! signing out, a password change or a disabled account closes them within moments instead of
//! at the next heartbeat. Several nodes carry it over their shared bus (`crate::cluster`).

use tokio::sync::broadcast;
use uuid::Uuid;

/// What ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Revoked {
    /// One session (sign-out).
    Session(Uuid),
    /// Every session of an account, except perhaps the one that asked (a password change keeps
    /// the session it was made from; disabling an account keeps none).
    User {
        /// The account.
        user_id: Uuid,
        /// The session that stays.
        except: Option<Uuid>,
    },
}

impl Revoked {
    /// Whether this ends the session `session_id` of `user_id`.
    ///
    /// ```
    /// use consult_signaling::auth::revocations::Revoked;
    /// use uuid::Uuid;
    /// let (user, session, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    /// assert!(Revoked::Session(session).ends(user, session));
    /// assert!(!Revoked::Session(other).ends(user, session));
    /// assert!(Revoked::User { user_id: user, except: Some(other) }.ends(user, session));
    /// assert!(!Revoked::User { user_id: user, except: Some(session) }.ends(user, session));
    /// ```
    pub fn ends(&self, user_id: Uuid, session_id: Uuid) -> bool {
        match *self {
            Revoked::Session(id) => id == session_id,
            Revoked::User { user_id: u, except } => u == user_id && except != Some(session_id),
        }
    }
}

/// The channel revocations go out on: this node's sockets, and, with several nodes, every
/// other node's (over the deployment's bus).
pub struct Revocations {
    here: broadcast::Sender<Revoked>,
    /// To the other nodes; set once the bus is up.
    elsewhere: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Revoked>>,
}

/// Revocations a slow listener may fall behind by before it must re-check its session.
const BACKLOG: usize = 1024;

impl Default for Revocations {
    fn default() -> Self {
        Self {
            here: broadcast::channel(BACKLOG).0,
            elsewhere: std::sync::OnceLock::new(),
        }
    }
}

impl Revocations {
    /// Tell every listener, on every node (none listening is fine).
    pub fn announce(&self, revoked: Revoked) {
        let _ = self.here.send(revoked);
        if let Some(elsewhere) = self.elsewhere.get() {
            let _ = elsewhere.send(revoked);
        }
    }

    /// Tell this node's listeners of a revocation another node announced.
    pub fn announce_here(&self, revoked: Revoked) {
        let _ = self.here.send(revoked);
    }

    /// From now on, also send every revocation announced here to `elsewhere` (the bus).
    pub fn forward_to(&self, elsewhere: tokio::sync::mpsc::UnboundedSender<Revoked>) {
        let _ = self.elsewhere.set(elsewhere);
    }

    /// Listen from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Revoked> {
        self.here.subscribe()
    }
}
