//! Who is in which consultation right now: connected, waiting, admitted, or away within the
//! reconnect grace period. Every rule about who may talk to whom is enforced here, under one lock
//! held only for in-memory work (sends are non-blocking), so one consultation never waits on
//! another.
//!
//! The hub knows nothing of the database: callers pass in what a room needs and act on what it
//! returns (a [`Departure`] to release and audit).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use consult_policy::{Consent, Participant, Role};
use consult_proto::api::{ConsultationMode, WaitingPatient};
use consult_proto::signal::{
    ConsultationSummary, LeaveReason, ParticipantRole, Peer, ServerMessage, SignalErrorCode,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics::Metrics;

/// What a connection's writer task is told to do.
#[derive(Debug)]
pub enum Outbound {
    /// Send this message.
    Message(ServerMessage),
    /// Close the socket (after what was queued before).
    Close,
    /// Close the socket with 1001 (going away): the service is shutting down.
    GoingAway,
}

/// A connection's sending side, as the hub holds it.
#[derive(Debug, Clone)]
pub struct Connection {
    id: u64,
    tx: mpsc::Sender<Outbound>,
}

impl Connection {
    /// The connection's id, to tell an old connection from its replacement.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queue a message for this connection; false if its queue is full or it is closed.
    pub fn send(&self, message: ServerMessage) -> bool {
        self.tx.try_send(Outbound::Message(message)).is_ok()
    }

    /// Ask the writer to close the socket after what is queued.
    pub fn close(&self) {
        let _ = self.tx.try_send(Outbound::Close);
    }

    /// Ask the writer to close the socket with 1001 (going away) after what is queued.
    pub fn going_away(&self) {
        let _ = self.tx.try_send(Outbound::GoingAway);
    }
}

/// What a room needs to know about its consultation.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    /// The consultation.
    pub consultation_id: Uuid,
    /// Its doctor's account.
    pub doctor_user_id: Uuid,
    /// "Dr Ada Lovelace".
    pub doctor_name: String,
    /// Live-only or recorded.
    pub mode: ConsultationMode,
    /// End-to-end encrypted.
    pub e2ee: bool,
    /// The doctor's participant id (stored with the consultation, so the same after a restart).
    pub doctor_participant_id: Uuid,
    /// How many may be admitted at once, the doctor included (the recorder not counted).
    pub max_participants: usize,
    /// The doctor lets everyone else share a screen (clinicians always may).
    pub guests_share_screen: bool,
}

/// A place the previous run left held, as the database keeps it: an invite's holder, or a
/// colleague the doctor had admitted.
#[derive(Debug, Clone)]
pub struct RestoredPlace {
    /// The participant.
    pub participant_id: Uuid,
    /// Patient, interpreter, companion or clinician.
    pub role: ParticipantRole,
    /// The name they entered.
    pub name: String,
    /// Whether the doctor had admitted them.
    pub admitted: bool,
    /// Their answer to the recording question, if they gave one.
    pub consent: Option<Consent>,
    /// When they took the place (the waiting room's order).
    pub since: OffsetDateTime,
}

/// Who is joining.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The consultation's doctor (the caller checked the session and ownership).
    Doctor,
    /// Someone who came through an invite: a patient, an interpreter or a companion (the caller
    /// checked the participant token).
    Guest {
        /// From the participant record.
        participant_id: Uuid,
        /// The name they entered, or the one their invite carries.
        name: String,
        /// Their invite's kind.
        role: ParticipantRole,
    },
    /// A colleague the doctor added (the caller checked the session and that they are still
    /// one); waits to be admitted like a guest.
    Clinician {
        /// Their participant id in this consultation.
        participant_id: Uuid,
        /// Their account's display name.
        name: String,
    },
    /// The service's recorder (started by the recording orchestrator); admitted by right.
    Recorder {
        /// Its participant id.
        participant_id: Uuid,
    },
}

/// Why a consent message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// Clinicians are not asked: only patients, interpreters and companions answer.
    #[error(
        "only a patient, an interpreter or a companion gives or withdraws consent to recording"
    )]
    NotAsked,
    /// The patient already refused or withdrew; that stands for this consultation.
    #[error("you already refused recording; that stands for this consultation")]
    Final,
}

/// Someone who left a consultation for good; the caller releases and audits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// The consultation.
    pub consultation_id: Uuid,
    /// Who.
    pub participant_id: Uuid,
    /// Their role.
    pub role: ParticipantRole,
    /// Why.
    pub reason: LeaveReason,
}

/// Why an admit or decline was refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum AdmissionError {
    /// No such person is waiting in that consultation.
    #[error("that person is not in the waiting room")]
    NotWaiting,
    /// The doctor has someone admitted in another consultation.
    #[error("you are already in a call in another consultation; end or leave it first")]
    DoctorBusy,
    /// As many as the organisation allows are in the call already.
    #[error("the call is full: remove someone before admitting another person")]
    Full,
}

impl AdmissionError {
    /// The signaling error code for it.
    pub fn code(self) -> SignalErrorCode {
        match self {
            Self::NotWaiting => SignalErrorCode::OutsideConsultation,
            Self::DoctorBusy => SignalErrorCode::DoctorBusy,
            Self::Full => SignalErrorCode::ConsultationFull,
        }
    }
}

#[derive(Debug)]
struct Member {
    id: Uuid,
    role: ParticipantRole,
    name: String,
    admitted: bool,
    waiting_since: OffsetDateTime,
    conn: Option<Connection>,
    /// Id of the last connection that held this place.
    conn_id: u64,
    /// Moves on every connect and disconnect, so a stale grace timer does nothing.
    generation: u64,
}

/// Order of politeness: in every pair, the side that comes first is impolite (it keeps its offer
/// on glare). The doctor comes first, then colleagues, interpreters, companions and patients; the
/// participant id settles a pair of the same role. The recorder never offers.
fn politeness_rank(role: ParticipantRole) -> u8 {
    match role {
        ParticipantRole::Doctor => 0,
        ParticipantRole::Clinician => 1,
        ParticipantRole::Interpreter => 2,
        ParticipantRole::Companion => 3,
        ParticipantRole::Patient => 4,
        ParticipantRole::Recorder => 5,
    }
}

/// Whether `me` is the polite side of its pair with `other`.
fn polite(me: (ParticipantRole, Uuid), other: (ParticipantRole, Uuid)) -> bool {
    (politeness_rank(me.0), me.1) > (politeness_rank(other.0), other.1)
}

/// Who the recording policy asks: everyone but clinicians, and not the recorder.
fn policy_role(role: ParticipantRole) -> Option<Role> {
    match role {
        ParticipantRole::Doctor | ParticipantRole::Clinician => Some(Role::Clinician),
        ParticipantRole::Patient => Some(Role::Patient),
        ParticipantRole::Interpreter => Some(Role::Interpreter),
        ParticipantRole::Companion => Some(Role::Companion),
        ParticipantRole::Recorder => None,
    }
}

/// Whether someone in this role waits to be admitted (everyone but the doctor and the recorder).
fn waits(role: ParticipantRole) -> bool {
    !matches!(role, ParticipantRole::Doctor | ParticipantRole::Recorder)
}

impl Member {
    /// This member as `recipient` sees it.
    fn peer_for(&self, recipient: (ParticipantRole, Uuid)) -> Peer {
        Peer {
            participant_id: self.id,
            role: self.role,
            name: self.name.clone(),
            polite: polite(recipient, (self.role, self.id)),
        }
    }

    fn online(&self) -> bool {
        self.conn.is_some()
    }

    /// Queue a message; a connection whose queue is full is too slow and is dropped (its writer
    /// closes the socket; the client reconnects and resumes).
    fn send(&mut self, message: ServerMessage) {
        if let Some(conn) = &self.conn
            && conn.tx.try_send(Outbound::Message(message)).is_err()
        {
            tracing::warn!(participant = %self.id, "dropping a connection that does not keep up");
            self.conn = None;
        }
    }

    fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.tx.try_send(Outbound::Close);
        }
    }
}

#[derive(Debug)]
struct Room {
    info: RoomInfo,
    doctor_participant_id: Uuid,
    members: HashMap<Uuid, Member>,
    /// Each patient's answer to the recording question (by participant id; kept while the
    /// room lives, so a reconnect does not ask again).
    consents: HashMap<Uuid, Consent>,
    /// The last `recording` message, sent to everyone who joins.
    recording: Option<ServerMessage>,
}

impl Room {
    fn new(info: RoomInfo) -> Self {
        Self {
            doctor_participant_id: info.doctor_participant_id,
            members: HashMap::new(),
            consents: HashMap::new(),
            recording: None,
            info,
        }
    }

    /// Everyone admitted but `id`, as `id` (in `role`) sees them.
    fn admitted_peers_except(&self, id: Uuid, role: ParticipantRole) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .members
            .values()
            .filter(|m| m.admitted && m.id != id)
            .map(|m| m.peer_for((role, id)))
            .collect();
        peers.sort_by_key(|p| p.participant_id);
        peers
    }

    /// Tell everyone admitted but `id` that `id` joined the call.
    fn announce_joined(&mut self, id: Uuid) {
        let Some(joined) = self.members.get(&id) else {
            return;
        };
        let (role, name) = (joined.role, joined.name.clone());
        for member in self.members.values_mut() {
            if member.admitted && member.id != id {
                let peer = Peer {
                    participant_id: id,
                    role,
                    name: name.clone(),
                    polite: polite((member.role, member.id), (role, id)),
                };
                member.send(ServerMessage::PeerJoined { peer });
            }
        }
    }

    /// How many take part now: the doctor, and everyone else admitted but the recorder.
    fn taking_part(&self) -> usize {
        1 + self
            .members
            .values()
            .filter(|m| m.admitted && waits(m.role))
            .count()
    }

    fn broadcast_all(&mut self, message: &ServerMessage) {
        for member in self.members.values_mut() {
            if member.role != ParticipantRole::Recorder {
                member.send(message.clone());
            }
        }
    }

    fn broadcast_admitted(&mut self, except: Uuid, message: &ServerMessage) {
        for member in self.members.values_mut() {
            if member.admitted && member.id != except {
                member.send(message.clone());
            }
        }
    }

    fn waiting(&self) -> Vec<WaitingPatient> {
        let mut entries: Vec<WaitingPatient> = self
            .members
            .values()
            .filter(|m| !m.admitted)
            .map(|m| WaitingPatient {
                participant_id: m.id,
                consultation_id: self.info.consultation_id,
                name: m.name.clone(),
                waiting_since: m.waiting_since,
                connected: m.online(),
                role: m.role,
            })
            .collect();
        entries.sort_by_key(|e| (e.waiting_since, e.participant_id));
        entries
    }

    fn notify_waiting_room(&mut self) {
        let entries = self.waiting();
        if let Some(doctor) = self.members.get_mut(&self.doctor_participant_id) {
            doctor.send(ServerMessage::WaitingRoom { entries });
        }
    }

    /// Whether anyone besides the doctor (and the recorder) is admitted: a call is going on.
    fn has_admitted_guest(&self) -> bool {
        self.members.values().any(|m| m.admitted && waits(m.role))
    }

    fn summary(&self) -> ConsultationSummary {
        ConsultationSummary {
            id: self.info.consultation_id,
            doctor_name: self.info.doctor_name.clone(),
            mode: self.info.mode,
            e2ee: self.info.e2ee,
            guests_share_screen: self.info.guests_share_screen,
        }
    }
}

/// Every room, and which rooms are each doctor's: a doctor's rooms are found (to admit, to list
/// their waiting room) without walking every room under the hub's lock.
#[derive(Default)]
struct Rooms {
    by_id: HashMap<Uuid, Room>,
    /// The consultation ids of each doctor's rooms (a room's doctor never changes).
    by_doctor: HashMap<Uuid, HashSet<Uuid>>,
}

impl Rooms {
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn get(&self, consultation_id: &Uuid) -> Option<&Room> {
        self.by_id.get(consultation_id)
    }

    fn get_mut(&mut self, consultation_id: &Uuid) -> Option<&mut Room> {
        self.by_id.get_mut(consultation_id)
    }

    /// The consultation's room, made from `info` if it has none.
    fn get_or_insert(&mut self, info: RoomInfo) -> &mut Room {
        let (id, doctor) = (info.consultation_id, info.doctor_user_id);
        self.by_id.entry(id).or_insert_with(|| {
            self.by_doctor.entry(doctor).or_default().insert(id);
            Room::new(info)
        })
    }

    fn remove(&mut self, consultation_id: &Uuid) -> Option<Room> {
        let room = self.by_id.remove(consultation_id)?;
        let doctor = room.info.doctor_user_id;
        if let Some(ids) = self.by_doctor.get_mut(&doctor) {
            ids.remove(consultation_id);
            if ids.is_empty() {
                self.by_doctor.remove(&doctor);
            }
        }
        Some(room)
    }

    /// The ids of one doctor's rooms.
    fn ids_of(&self, doctor_user_id: Uuid) -> impl Iterator<Item = Uuid> + '_ {
        self.by_doctor
            .get(&doctor_user_id)
            .into_iter()
            .flatten()
            .copied()
    }

    /// One doctor's rooms.
    fn of(&self, doctor_user_id: Uuid) -> impl Iterator<Item = &Room> + '_ {
        self.ids_of(doctor_user_id)
            .filter_map(|id| self.by_id.get(&id))
    }
}

/// The live state of every consultation with someone in it.
pub struct Hub {
    rooms: Mutex<Rooms>,
    /// With several nodes, the doctors whose rooms this node may hold (it is their home); `None`
    /// alone (every doctor). Read and changed under the rooms' lock, so that no room is made
    /// for a doctor this node has just let go of.
    served: Mutex<Option<HashSet<Uuid>>>,
    next_connection: AtomicU64,
    /// Generations of restored places: unique in the hub's life, so that a grace timer of an
    /// earlier restore never matches a later one.
    next_generation: AtomicU64,
    metrics: Metrics,
}

/// This node does not hold that doctor's rooms (another node of the deployment does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("another node holds this consultation")]
pub struct NotServedHere;

impl Hub {
    /// An empty hub of a single node: it holds every consultation.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            rooms: Mutex::new(Rooms::default()),
            served: Mutex::new(None),
            next_connection: AtomicU64::new(1),
            next_generation: AtomicU64::new(1 << 32),
            metrics,
        }
    }

    /// An empty hub of a node of a deployment: it holds only the rooms of the doctors it is
    /// told to serve ([`Hub::serve`]).
    pub fn for_cluster(metrics: Metrics) -> Self {
        let hub = Self::new(metrics);
        *hub.served.lock().unwrap_or_else(|p| p.into_inner()) = Some(HashSet::new());
        hub
    }

    /// From now on this node holds `doctor`'s rooms (it became their home).
    pub fn serve(&self, doctor_user_id: Uuid) {
        self.with_rooms(|_| {
            if let Some(served) = self
                .served
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                served.insert(doctor_user_id);
            }
        });
    }

    fn serves(&self, doctor_user_id: Uuid) -> bool {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|served| served.contains(&doctor_user_id))
    }

    /// A new connection handle and the receiving end its writer task drains.
    pub fn connection(&self, queue: usize) -> (Connection, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        (Connection { id, tx }, rx)
    }

    fn with_rooms<T>(&self, f: impl FnOnce(&mut Rooms) -> T) -> T {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&mut rooms);
        self.metrics.active_consultations.set(rooms.len() as i64);
        result
    }

    /// At start-up: a consultation's room as the previous run left it. Every place still held
    /// comes back offline — admitted or waiting, with its recording answer — and so does the
    /// doctor when a patient was admitted, so whoever reconnects first finds the other in the
    /// call and keeps the peer connection. Returns each restored place's participant id and
    /// generation, for the caller to give [`Hub::expire`] after the reconnect grace.
    pub fn restore(
        &self,
        info: RoomInfo,
        places: Vec<RestoredPlace>,
        now: OffsetDateTime,
    ) -> Vec<(Uuid, u64)> {
        self.with_rooms(|rooms| {
            if !self.serves(info.doctor_user_id) {
                return Vec::new();
            }
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            let room = rooms.get_or_insert(info.clone());
            let offline = |id, role, name, admitted, since| Member {
                id,
                role,
                name,
                admitted,
                waiting_since: since,
                conn: None,
                conn_id: 0,
                generation,
            };
            let mut restored = Vec::new();
            if places.iter().any(|p| p.admitted) {
                let doctor = room.doctor_participant_id;
                room.members.entry(doctor).or_insert_with(|| {
                    restored.push((doctor, generation));
                    offline(
                        doctor,
                        ParticipantRole::Doctor,
                        info.doctor_name.clone(),
                        true,
                        now,
                    )
                });
            }
            for place in places {
                if let Some(consent) = place.consent {
                    room.consents.insert(place.participant_id, consent);
                }
                room.members.entry(place.participant_id).or_insert_with(|| {
                    restored.push((place.participant_id, generation));
                    offline(
                        place.participant_id,
                        place.role,
                        place.name,
                        place.admitted,
                        place.since,
                    )
                });
            }
            restored
        })
    }

    /// Put `conn` in its place in the consultation and send it `joined` (and a doctor the waiting
    /// room). Returns the participant id. A connection already holding that place is told
    /// `replaced` and closed. Refused, with nothing changed, on a node of a deployment that does
    /// not hold the doctor's rooms.
    pub fn join(
        &self,
        info: RoomInfo,
        identity: Identity,
        conn: Connection,
        now: OffsetDateTime,
        heartbeat_interval_ms: u64,
    ) -> Result<Uuid, NotServedHere> {
        self.with_rooms(|rooms| {
            if !self.serves(info.doctor_user_id) {
                return Err(NotServedHere);
            }
            let room = rooms.get_or_insert(info);
            let (id, role, name) = match identity {
                Identity::Doctor => (
                    room.doctor_participant_id,
                    ParticipantRole::Doctor,
                    room.info.doctor_name.clone(),
                ),
                Identity::Guest {
                    participant_id,
                    name,
                    role,
                } => (participant_id, role, name),
                Identity::Clinician {
                    participant_id,
                    name,
                } => (participant_id, ParticipantRole::Clinician, name),
                Identity::Recorder { participant_id } => (
                    participant_id,
                    ParticipantRole::Recorder,
                    "Recorder".to_owned(),
                ),
            };
            let conn_id = conn.id;
            let resumed = match room.members.get_mut(&id) {
                Some(member) => {
                    if let Some(old) = member.conn.take() {
                        let _ = old
                            .tx
                            .try_send(Outbound::Message(ServerMessage::Replaced {}));
                        let _ = old.tx.try_send(Outbound::Close);
                    }
                    member.conn = Some(conn);
                    member.conn_id = conn_id;
                    member.generation += 1;
                    let admitted = member.admitted;
                    // Back, or a new socket in place of one not yet noticed closed (a page that
                    // heard nothing for a while replaces its socket at once): either way what
                    // was sent to the old one may be lost, so the others are told, and resend
                    // what they still wait on an answer for.
                    if admitted {
                        room.broadcast_admitted(
                            id,
                            &ServerMessage::PeerPresence {
                                participant_id: id,
                                online: true,
                            },
                        );
                    }
                    true
                }
                None => {
                    let admitted = !waits(role);
                    let member = Member {
                        id,
                        role,
                        name,
                        admitted,
                        waiting_since: now,
                        conn: Some(conn),
                        conn_id,
                        generation: 0,
                    };
                    room.members.insert(id, member);
                    if admitted {
                        room.announce_joined(id);
                    }
                    false
                }
            };
            let summary = room.summary();
            let peers_for = |room: &Room, admitted: bool| {
                if admitted {
                    room.admitted_peers_except(id, role)
                } else {
                    Vec::new()
                }
            };
            let admitted = room.members.get(&id).is_some_and(|m| m.admitted);
            let joined = ServerMessage::Joined {
                participant_id: id,
                role,
                consultation: summary,
                admitted,
                resumed,
                polite: role != ParticipantRole::Doctor,
                heartbeat_interval_ms,
                peers: peers_for(room, admitted),
            };
            let recording = room.recording.clone();
            if let Some(member) = room.members.get_mut(&id) {
                member.send(joined);
                if let Some(recording) = recording {
                    member.send(recording);
                }
            }
            // The doctor learns of a newly waiting (or reconnected) patient; a joining doctor
            // gets the current list.
            room.notify_waiting_room();
            Ok(id)
        })
    }

    /// The connection `conn_id` of a participant closed. Returns the generation to pass to
    /// [`Hub::expire`] when the grace period is over, or `None` if a newer connection already
    /// holds the place.
    pub fn disconnect(
        &self,
        consultation_id: Uuid,
        participant_id: Uuid,
        conn_id: u64,
    ) -> Option<u64> {
        self.with_rooms(|rooms| {
            let room = rooms.get_mut(&consultation_id)?;
            let member = room.members.get_mut(&participant_id)?;
            if member.conn_id != conn_id {
                return None;
            }
            member.conn = None;
            member.generation += 1;
            let generation = member.generation;
            if member.admitted {
                room.broadcast_admitted(
                    participant_id,
                    &ServerMessage::PeerPresence {
                        participant_id,
                        online: false,
                    },
                );
            } else {
                room.notify_waiting_room();
            }
            Some(generation)
        })
    }

    /// The grace period after a disconnect is over: if the participant did not come back,
    /// remove them.
    pub fn expire(
        &self,
        consultation_id: Uuid,
        participant_id: Uuid,
        generation: u64,
    ) -> Option<Departure> {
        self.with_rooms(|rooms| {
            let room = rooms.get_mut(&consultation_id)?;
            let member = room.members.get(&participant_id)?;
            if member.generation != generation || member.online() {
                return None;
            }
            Some(remove_member(
                rooms,
                consultation_id,
                participant_id,
                LeaveReason::ConnectionLost,
            ))
        })
        .flatten()
    }

    /// A participant hung up: remove them and close their connection.
    pub fn leave(&self, consultation_id: Uuid, participant_id: Uuid) -> Option<Departure> {
        self.with_rooms(|rooms| {
            remove_member(rooms, consultation_id, participant_id, LeaveReason::Left)
        })
    }

    /// Remove a participant with a last message to them (invite revoked).
    pub fn remove(
        &self,
        consultation_id: Uuid,
        participant_id: Uuid,
        last_words: ServerMessage,
    ) -> Option<Departure> {
        self.with_rooms(|rooms| {
            let member = rooms
                .get_mut(&consultation_id)?
                .members
                .get_mut(&participant_id)?;
            member.send(last_words);
            remove_member(rooms, consultation_id, participant_id, LeaveReason::Removed)
        })
    }

    /// Doctor `doctor_user_id` admits someone waiting in consultation `consultation_id`, unless
    /// the call is full.
    pub fn admit(
        &self,
        consultation_id: Uuid,
        doctor_user_id: Uuid,
        participant_id: Uuid,
    ) -> Result<(), AdmissionError> {
        self.with_rooms(|rooms| {
            let busy = rooms.of(doctor_user_id).any(|room| {
                room.info.consultation_id != consultation_id && room.has_admitted_guest()
            });
            let room = rooms
                .get_mut(&consultation_id)
                .filter(|room| room.info.doctor_user_id == doctor_user_id)
                .ok_or(AdmissionError::NotWaiting)?;
            let Some(role) = room
                .members
                .get(&participant_id)
                .filter(|m| waits(m.role) && !m.admitted)
                .map(|m| m.role)
            else {
                return Err(AdmissionError::NotWaiting);
            };
            if busy {
                return Err(AdmissionError::DoctorBusy);
            }
            if room.taking_part() >= room.info.max_participants {
                return Err(AdmissionError::Full);
            }
            let peers = room.admitted_peers_except(participant_id, role);
            let Some(member) = room.members.get_mut(&participant_id) else {
                return Err(AdmissionError::NotWaiting);
            };
            member.admitted = true;
            member.send(ServerMessage::Admitted { peers });
            room.announce_joined(participant_id);
            room.notify_waiting_room();
            Ok(())
        })
    }

    /// Doctor `doctor_user_id` turns someone waiting away.
    pub fn decline(
        &self,
        consultation_id: Uuid,
        doctor_user_id: Uuid,
        participant_id: Uuid,
    ) -> Result<Departure, AdmissionError> {
        self.with_rooms(|rooms| {
            let member = rooms
                .get_mut(&consultation_id)
                .filter(|room| room.info.doctor_user_id == doctor_user_id)
                .and_then(|room| room.members.get_mut(&participant_id))
                .filter(|m| waits(m.role) && !m.admitted)
                .ok_or(AdmissionError::NotWaiting)?;
            member.send(ServerMessage::Declined {});
            Ok(remove_member(
                rooms,
                consultation_id,
                participant_id,
                LeaveReason::Removed,
            ))
        })
        .and_then(|d| d.ok_or(AdmissionError::NotWaiting))
    }

    /// Pass `message` from one admitted participant to another admitted participant of the same
    /// consultation. Anything else is refused and nothing is sent.
    pub fn relay(
        &self,
        consultation_id: Uuid,
        from: Uuid,
        to: Uuid,
        message: ServerMessage,
    ) -> Result<(), SignalErrorCode> {
        self.with_rooms(|rooms| {
            let room = rooms
                .get_mut(&consultation_id)
                .ok_or(SignalErrorCode::ConsultationEnded)?;
            let Some(sender_role) = room
                .members
                .get(&from)
                .filter(|m| m.admitted)
                .map(|m| m.role)
            else {
                return Err(SignalErrorCode::NotAdmitted);
            };
            // Nothing of someone the policy asks reaches the recorder before they consented
            // (one admitted while a recording runs is asked first; the recording pauses).
            let to_recorder = room
                .members
                .get(&to)
                .is_some_and(|m| m.role == ParticipantRole::Recorder);
            let asked = policy_role(sender_role).is_some_and(Role::must_consent);
            if to_recorder && asked && room.consents.get(&from) != Some(&Consent::Given) {
                return Err(SignalErrorCode::Forbidden);
            }
            match room.members.get_mut(&to) {
                Some(recipient) if recipient.admitted && to != from => {
                    // A recipient within its grace period misses this; it renegotiates on return.
                    recipient.send(message);
                    Ok(())
                }
                _ => Err(SignalErrorCode::OutsideConsultation),
            }
        })
    }

    /// The consultation ended: tell everyone, close every connection, forget the room.
    pub fn end(&self, consultation_id: Uuid) -> Vec<Departure> {
        self.with_rooms(|rooms| {
            let Some(mut room) = rooms.remove(&consultation_id) else {
                return Vec::new();
            };
            room.members
                .values_mut()
                .map(|member| {
                    member.send(ServerMessage::ConsultationEnded {});
                    member.close();
                    Departure {
                        consultation_id,
                        participant_id: member.id,
                        role: member.role,
                        reason: LeaveReason::Removed,
                    }
                })
                .collect()
        })
    }

    /// Someone the policy asks (a patient, an interpreter, a companion) answers the recording
    /// question for themselves (`true`: consent; `false`: refuse, or withdraw a consent given).
    /// Refusing and withdrawing are final for the consultation.
    pub fn set_consent(
        &self,
        consultation_id: Uuid,
        participant_id: Uuid,
        recording: bool,
    ) -> Result<Consent, ConsentError> {
        self.with_rooms(|rooms| {
            let room = rooms
                .get_mut(&consultation_id)
                .ok_or(ConsentError::NotAsked)?;
            let asked = room
                .members
                .get(&participant_id)
                .and_then(|m| policy_role(m.role))
                .is_some_and(Role::must_consent);
            if !asked {
                return Err(ConsentError::NotAsked);
            }
            let current = room
                .consents
                .get(&participant_id)
                .copied()
                .unwrap_or(Consent::NotAsked);
            let next = match (current, recording) {
                (Consent::Declined | Consent::Withdrawn, true) => return Err(ConsentError::Final),
                (Consent::Declined | Consent::Withdrawn, false) => current,
                (_, true) => Consent::Given,
                (Consent::Given, false) => Consent::Withdrawn,
                (_, false) => Consent::Declined,
            };
            room.consents.insert(participant_id, next);
            Ok(next)
        })
    }

    /// What the recording policy needs of a live consultation: its facts, and every admitted
    /// doctor and patient with their consent. `None` if nobody is in it.
    pub fn recording_facts(&self, consultation_id: Uuid) -> Option<(RoomInfo, Vec<Participant>)> {
        self.with_rooms(|rooms| {
            let room = rooms.get(&consultation_id)?;
            let participants = room
                .members
                .values()
                .filter(|m| m.admitted)
                .filter_map(|m| {
                    let role = policy_role(m.role)?;
                    // Everyone the policy asks (all but clinicians) answers for themselves.
                    let consent = if role.must_consent() {
                        room.consents
                            .get(&m.id)
                            .copied()
                            .unwrap_or(Consent::NotAsked)
                    } else {
                        Consent::NotAsked
                    };
                    Some(Participant { role, consent })
                })
                .collect();
            Some((room.info.clone(), participants))
        })
    }

    /// Tell everyone in the consultation (waiting patients too) whether it is recorded, and
    /// remember it for whoever joins later. Nothing is sent if it did not change.
    pub fn announce_recording(&self, consultation_id: Uuid, message: ServerMessage) {
        self.with_rooms(|rooms| {
            if let Some(room) = rooms.get_mut(&consultation_id)
                && room.recording.as_ref() != Some(&message)
            {
                room.broadcast_all(&message);
                room.recording = Some(message);
            }
        });
    }

    /// The doctor let everyone else share a screen, or took it back: remembered for whoever
    /// joins later, and told to everyone there (waiting patients too). Nothing is sent if it did
    /// not change.
    pub fn set_guests_share_screen(&self, consultation_id: Uuid, allowed: bool) {
        self.with_rooms(|rooms| {
            if let Some(room) = rooms.get_mut(&consultation_id)
                && room.info.guests_share_screen != allowed
            {
                room.info.guests_share_screen = allowed;
                // The recorder too: it keeps a guest's screen only while it is allowed.
                let message = ServerMessage::ScreenSharing {
                    guests_allowed: allowed,
                };
                for member in room.members.values_mut() {
                    member.send(message.clone());
                }
            }
        });
    }

    /// Everyone waiting for one doctor, across their consultations, longest-waiting first.
    pub fn waiting_for(&self, doctor_user_id: Uuid) -> Vec<WaitingPatient> {
        self.with_rooms(|rooms| {
            let mut entries: Vec<WaitingPatient> =
                rooms.of(doctor_user_id).flat_map(Room::waiting).collect();
            entries.sort_by_key(|e| (e.waiting_since, e.participant_id));
            entries
        })
    }

    /// Whether the participant holds a place (connected, or away within the grace period).
    pub fn is_present(&self, consultation_id: Uuid, participant_id: Uuid) -> bool {
        self.with_rooms(|rooms| {
            rooms
                .get(&consultation_id)
                .is_some_and(|room| room.members.contains_key(&participant_id))
        })
    }

    /// Whether a call is going on in the consultation: someone besides the doctor is admitted
    /// (connected, or away within the grace period). A doctor's heartbeats count as activity
    /// then.
    pub fn in_call(&self, consultation_id: Uuid) -> bool {
        self.with_rooms(|rooms| {
            rooms
                .get(&consultation_id)
                .is_some_and(Room::has_admitted_guest)
        })
    }

    /// Whether any consultation of this doctor has someone in it.
    pub fn has_rooms_of(&self, doctor_user_id: Uuid) -> bool {
        self.with_rooms(|rooms| rooms.ids_of(doctor_user_id).next().is_some())
    }

    /// Another node has become this doctor's home: forget their rooms here without anyone
    /// leaving (the places stay held in the database, and the new home restores them), and
    /// tell every connection to go away (1001) so that it reconnects and reaches the new home.
    /// Returns the consultations forgotten.
    pub fn abandon(&self, doctor_user_id: Uuid) -> Vec<Uuid> {
        self.with_rooms(|rooms| {
            if let Some(served) = self
                .served
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                served.remove(&doctor_user_id);
            }
            let ids: Vec<Uuid> = rooms.ids_of(doctor_user_id).collect();
            for id in &ids {
                if let Some(room) = rooms.remove(id) {
                    for member in room.members.values() {
                        if let Some(conn) = &member.conn {
                            conn.going_away();
                        }
                    }
                }
            }
            ids
        })
    }

    /// Whether the participant is admitted.
    pub fn is_admitted(&self, consultation_id: Uuid, participant_id: Uuid) -> bool {
        self.with_rooms(|rooms| {
            rooms
                .get(&consultation_id)
                .and_then(|room| room.members.get(&participant_id))
                .is_some_and(|m| m.admitted)
        })
    }
}

fn remove_member(
    rooms: &mut Rooms,
    consultation_id: Uuid,
    participant_id: Uuid,
    reason: LeaveReason,
) -> Option<Departure> {
    let room = rooms.get_mut(&consultation_id)?;
    let mut member = room.members.remove(&participant_id)?;
    member.close();
    if member.admitted {
        room.broadcast_admitted(
            participant_id,
            &ServerMessage::PeerLeft {
                participant_id,
                reason,
            },
        );
    } else {
        room.notify_waiting_room();
    }
    if room.members.is_empty() {
        rooms.remove(&consultation_id);
    }
    Some(Departure {
        consultation_id,
        participant_id,
        role: member.role,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        hub: Hub,
        info: RoomInfo,
        doctor: Uuid,
    }

    fn fixture() -> Fixture {
        let doctor = Uuid::new_v4();
        Fixture {
            hub: Hub::new(Metrics::new()),
            info: RoomInfo {
                consultation_id: Uuid::new_v4(),
                doctor_user_id: doctor,
                doctor_name: "Dr Who".into(),
                mode: ConsultationMode::LiveOnly,
                e2ee: false,
                doctor_participant_id: Uuid::new_v4(),
                max_participants: 4,
                guests_share_screen: false,
            },
            doctor,
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            if let Outbound::Message(m) = o {
                out.push(m);
            }
        }
        out
    }

    fn join_patient(f: &Fixture, info: &RoomInfo) -> (Uuid, mpsc::Receiver<Outbound>) {
        let (conn, rx) = f.hub.connection(64);
        let id = Uuid::new_v4();
        let identity = Identity::Guest {
            participant_id: id,
            name: "Pat".into(),
            role: ParticipantRole::Patient,
        };
        f.hub
            .join(
                info.clone(),
                identity,
                conn,
                OffsetDateTime::now_utc(),
                15_000,
            )
            .unwrap();
        (id, rx)
    }

    fn join_as(f: &Fixture, role: ParticipantRole, name: &str) -> (Uuid, mpsc::Receiver<Outbound>) {
        let (conn, rx) = f.hub.connection(64);
        let id = Uuid::new_v4();
        let identity = if role == ParticipantRole::Clinician {
            Identity::Clinician {
                participant_id: id,
                name: name.into(),
            }
        } else {
            Identity::Guest {
                participant_id: id,
                name: name.into(),
                role,
            }
        };
        f.hub
            .join(
                f.info.clone(),
                identity,
                conn,
                OffsetDateTime::now_utc(),
                15_000,
            )
            .unwrap();
        (id, rx)
    }

    fn join_doctor(f: &Fixture, info: &RoomInfo) -> (Uuid, mpsc::Receiver<Outbound>) {
        let (conn, rx) = f.hub.connection(64);
        let id = f
            .hub
            .join(
                info.clone(),
                Identity::Doctor,
                conn,
                OffsetDateTime::now_utc(),
                15_000,
            )
            .unwrap();
        (id, rx)
    }

    fn candidate(from: Uuid) -> ServerMessage {
        ServerMessage::Candidate {
            from,
            candidate: None,
        }
    }

    #[test]
    fn nothing_is_relayed_before_admission_in_either_direction() {
        let f = fixture();
        let (doctor_id, mut doctor_rx) = join_doctor(&f, &f.info);
        let (patient_id, mut patient_rx) = join_patient(&f, &f.info);
        let cid = f.info.consultation_id;
        assert_eq!(
            f.hub
                .relay(cid, patient_id, doctor_id, candidate(patient_id)),
            Err(SignalErrorCode::NotAdmitted)
        );
        assert_eq!(
            f.hub
                .relay(cid, doctor_id, patient_id, candidate(doctor_id)),
            Err(SignalErrorCode::OutsideConsultation)
        );
        let doctor_saw = drain(&mut doctor_rx);
        assert!(doctor_saw
            .iter()
            .all(|m| !matches!(m, ServerMessage::Candidate { .. })));
        assert!(matches!(
            doctor_saw.last(),
            Some(ServerMessage::WaitingRoom { entries }) if entries.len() == 1
        ));
        let patient_saw = drain(&mut patient_rx);
        assert!(matches!(
            patient_saw.as_slice(),
            [ServerMessage::Joined { admitted: false, peers, .. }] if peers.is_empty()
        ));

        f.hub.admit(cid, f.doctor, patient_id).unwrap();
        assert!(matches!(
            drain(&mut patient_rx).as_slice(),
            [ServerMessage::Admitted { peers }] if peers[0].participant_id == doctor_id
        ));
        f.hub
            .relay(cid, patient_id, doctor_id, candidate(patient_id))
            .unwrap();
        assert!(drain(&mut doctor_rx).contains(&candidate(patient_id)));
    }

    /// Who each participant was told about, with its politeness toward them.
    fn politeness_seen(rx: &mut mpsc::Receiver<Outbound>) -> Vec<(Uuid, bool)> {
        drain(rx)
            .into_iter()
            .flat_map(|m| match m {
                ServerMessage::Joined { peers, .. } | ServerMessage::Admitted { peers } => peers,
                ServerMessage::PeerJoined { peer } => vec![peer],
                _ => Vec::new(),
            })
            .map(|p| (p.participant_id, p.polite))
            .collect()
    }

    #[test]
    fn four_take_part_each_admitted_separately_and_a_fifth_is_refused() {
        let f = fixture();
        let cid = f.info.consultation_id;
        let (doctor_id, mut doctor_rx) = join_doctor(&f, &f.info);
        let mut everyone = vec![(doctor_id, ParticipantRole::Doctor)];
        let mut receivers = Vec::new();
        for (role, name) in [
            (ParticipantRole::Patient, "Pat"),
            (ParticipantRole::Interpreter, "Ines"),
            (ParticipantRole::Companion, "Carl"),
        ] {
            let (id, rx) = join_as(&f, role, name);
            // Waiting, in the doctor's waiting room with their role, until admitted.
            assert!(!f.hub.is_admitted(cid, id));
            assert!(f
                .hub
                .waiting_for(f.doctor)
                .iter()
                .any(|w| w.participant_id == id && w.role == role));
            f.hub.admit(cid, f.doctor, id).unwrap();
            everyone.push((id, role));
            receivers.push(rx);
        }
        let (colleague, _rx) = join_as(&f, ParticipantRole::Clinician, "Dr Two");
        assert_eq!(
            f.hub.admit(cid, f.doctor, colleague),
            Err(AdmissionError::Full)
        );
        assert!(!f.hub.is_admitted(cid, colleague));
        // Relays run between any two admitted participants, never to the one still waiting.
        let (interpreter, companion) = (everyone[2].0, everyone[3].0);
        f.hub
            .relay(cid, interpreter, companion, candidate(interpreter))
            .unwrap();
        assert_eq!(
            f.hub
                .relay(cid, interpreter, colleague, candidate(interpreter)),
            Err(SignalErrorCode::OutsideConsultation)
        );
        // Someone leaves: the colleague can be admitted in their place.
        f.hub.leave(cid, companion).unwrap();
        f.hub.admit(cid, f.doctor, colleague).unwrap();
        drain(&mut doctor_rx);
    }

    #[test]
    fn in_every_pair_exactly_one_side_is_polite_and_never_the_doctor() {
        let f = fixture();
        let cid = f.info.consultation_id;
        let (doctor_id, mut doctor_rx) = join_doctor(&f, &f.info);
        let mut joined = vec![(doctor_id, ParticipantRole::Doctor)];
        let mut seen: HashMap<Uuid, Vec<(Uuid, bool)>> = HashMap::new();
        let mut receivers = Vec::new();
        for (role, name) in [
            (ParticipantRole::Patient, "Pat"),
            (ParticipantRole::Clinician, "Dr Two"),
            (ParticipantRole::Patient, "Pam"),
        ] {
            let (id, rx) = join_as(&f, role, name);
            f.hub.admit(cid, f.doctor, id).unwrap();
            joined.push((id, role));
            receivers.push((id, rx));
        }
        seen.insert(doctor_id, politeness_seen(&mut doctor_rx));
        for (id, rx) in &mut receivers {
            seen.insert(*id, politeness_seen(rx));
        }
        for (a, role_a) in &joined {
            for (b, _) in &joined {
                if a == b {
                    continue;
                }
                let a_toward_b = seen[a].iter().find(|(p, _)| p == b).map(|(_, x)| *x);
                let b_toward_a = seen[b].iter().find(|(p, _)| p == a).map(|(_, x)| *x);
                let (Some(a_polite), Some(b_polite)) = (a_toward_b, b_toward_a) else {
                    panic!("{a} and {b} were not both told of each other");
                };
                assert_ne!(a_polite, b_polite, "exactly one of a pair is polite");
                if *role_a == ParticipantRole::Doctor {
                    assert!(!a_polite, "the doctor is never polite");
                }
            }
        }
    }

    #[test]
    fn everyone_but_clinicians_answers_the_recording_question_for_themselves() {
        let f = fixture();
        let cid = f.info.consultation_id;
        let (_doctor, _d) = join_doctor(&f, &f.info);
        let (interpreter, _i) = join_as(&f, ParticipantRole::Interpreter, "Ines");
        let (colleague, _c) = join_as(&f, ParticipantRole::Clinician, "Dr Two");
        let (companion, _o) = join_as(&f, ParticipantRole::Companion, "Carl");
        for id in [interpreter, colleague, companion] {
            f.hub.admit(cid, f.doctor, id).unwrap();
        }
        assert_eq!(
            f.hub.set_consent(cid, colleague, true),
            Err(ConsentError::NotAsked)
        );
        assert_eq!(
            f.hub.set_consent(cid, interpreter, true),
            Ok(Consent::Given)
        );
        assert_eq!(
            f.hub.set_consent(cid, companion, false),
            Ok(Consent::Declined)
        );
        let (_, facts) = f.hub.recording_facts(cid).unwrap();
        let consent_of = |role| {
            facts
                .iter()
                .filter(|p| p.role == role)
                .map(|p| p.consent)
                .collect::<Vec<_>>()
        };
        assert_eq!(consent_of(Role::Interpreter), vec![Consent::Given]);
        assert_eq!(consent_of(Role::Companion), vec![Consent::Declined]);
        assert_eq!(
            consent_of(Role::Clinician),
            vec![Consent::NotAsked, Consent::NotAsked]
        );
    }

    #[test]
    fn nothing_reaches_the_recorder_from_someone_who_has_not_consented() {
        let f = fixture();
        let cid = f.info.consultation_id;
        let (doctor, _d) = join_doctor(&f, &f.info);
        let (interpreter, _i) = join_as(&f, ParticipantRole::Interpreter, "Ines");
        f.hub.admit(cid, f.doctor, interpreter).unwrap();
        let (conn, mut recorder_rx) = f.hub.connection(64);
        let recorder = Uuid::new_v4();
        f.hub
            .join(
                f.info.clone(),
                Identity::Recorder {
                    participant_id: recorder,
                },
                conn,
                OffsetDateTime::now_utc(),
                15_000,
            )
            .unwrap();
        drain(&mut recorder_rx);
        assert_eq!(
            f.hub
                .relay(cid, interpreter, recorder, candidate(interpreter)),
            Err(SignalErrorCode::Forbidden)
        );
        // The doctor is not asked; the interpreter once they consented, and not after
        // withdrawing.
        f.hub
            .relay(cid, doctor, recorder, candidate(doctor))
            .unwrap();
        f.hub.set_consent(cid, interpreter, true).unwrap();
        f.hub
            .relay(cid, interpreter, recorder, candidate(interpreter))
            .unwrap();
        f.hub.set_consent(cid, interpreter, false).unwrap();
        assert_eq!(
            f.hub
                .relay(cid, interpreter, recorder, candidate(interpreter)),
            Err(SignalErrorCode::Forbidden)
        );
        assert_eq!(drain(&mut recorder_rx).len(), 2);
    }

    #[test]
    fn consultations_are_isolated() {
        let f = fixture();
        let other = RoomInfo {
            consultation_id: Uuid::new_v4(),
            doctor_user_id: Uuid::new_v4(),
            doctor_participant_id: Uuid::new_v4(),
            ..f.info.clone()
        };
        let (doctor_a, _a) = join_doctor(&f, &f.info);
        let (doctor_b, mut b_rx) = join_doctor(&f, &other);
        let (patient_a, _pa) = join_patient(&f, &f.info);
        f.hub
            .admit(f.info.consultation_id, f.doctor, patient_a)
            .unwrap();
        drain(&mut b_rx);
        for (from, to) in [(doctor_a, doctor_b), (patient_a, doctor_b)] {
            assert_eq!(
                f.hub
                    .relay(f.info.consultation_id, from, to, candidate(from)),
                Err(SignalErrorCode::OutsideConsultation)
            );
        }
        assert!(drain(&mut b_rx).is_empty());
        // Another doctor cannot admit or decline in a consultation that is not theirs.
        let (patient_b, _pb) = join_patient(&f, &f.info);
        assert_eq!(
            f.hub
                .admit(f.info.consultation_id, other.doctor_user_id, patient_b),
            Err(AdmissionError::NotWaiting)
        );
    }

    #[test]
    fn a_doctor_admits_one_patient_at_a_time() {
        let f = fixture();
        let second = RoomInfo {
            consultation_id: Uuid::new_v4(),
            doctor_participant_id: Uuid::new_v4(),
            ..f.info.clone()
        };
        let (p1, _r1) = join_patient(&f, &f.info);
        let (p2, _r2) = join_patient(&f, &second);
        assert_eq!(f.hub.waiting_for(f.doctor).len(), 2);
        f.hub.admit(f.info.consultation_id, f.doctor, p1).unwrap();
        assert_eq!(
            f.hub.admit(second.consultation_id, f.doctor, p2),
            Err(AdmissionError::DoctorBusy)
        );
        f.hub.leave(f.info.consultation_id, p1).unwrap();
        f.hub.admit(second.consultation_id, f.doctor, p2).unwrap();
    }

    #[test]
    fn a_doctors_rooms_are_theirs_alone_and_forgotten_with_their_last_member() {
        let f = fixture();
        let room = |doctor_user_id| RoomInfo {
            consultation_id: Uuid::new_v4(),
            doctor_user_id,
            doctor_participant_id: Uuid::new_v4(),
            ..f.info.clone()
        };
        let other_doctor = Uuid::new_v4();
        let (first, second, others) = (room(f.doctor), room(f.doctor), room(other_doctor));
        let (p1, _r1) = join_patient(&f, &first);
        let (p2, _r2) = join_patient(&f, &second);
        let (p3, _r3) = join_patient(&f, &others);
        // Another doctor in a call does not make this one busy, nor the reverse.
        f.hub
            .admit(others.consultation_id, other_doctor, p3)
            .unwrap();
        f.hub.admit(first.consultation_id, f.doctor, p1).unwrap();
        let waiting = |doctor| {
            let mut ids: Vec<Uuid> = f
                .hub
                .waiting_for(doctor)
                .iter()
                .map(|w| w.participant_id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(waiting(f.doctor), vec![p2]);
        assert!(waiting(other_doctor).is_empty());
        assert_eq!(
            f.hub.admit(second.consultation_id, f.doctor, p2),
            Err(AdmissionError::DoctorBusy)
        );
        // A room goes with its last member; the doctor's other room stays theirs.
        f.hub.leave(first.consultation_id, p1).unwrap();
        assert!(f.hub.has_rooms_of(f.doctor));
        f.hub.admit(second.consultation_id, f.doctor, p2).unwrap();
        f.hub.leave(second.consultation_id, p2).unwrap();
        assert!(!f.hub.has_rooms_of(f.doctor));
        assert!(waiting(f.doctor).is_empty());
        // A room made again after it went is found again.
        let (p4, _r4) = join_patient(&f, &first);
        assert_eq!(waiting(f.doctor), vec![p4]);
        f.hub.admit(first.consultation_id, f.doctor, p4).unwrap();
        // Letting a doctor go forgets exactly their rooms.
        assert_eq!(f.hub.abandon(other_doctor), vec![others.consultation_id]);
        assert!(!f.hub.has_rooms_of(other_doctor));
        assert!(f.hub.has_rooms_of(f.doctor));
        assert!(f.hub.is_admitted(first.consultation_id, p4));
    }

    #[test]
    fn reconnect_within_grace_resumes_and_a_stale_timer_does_nothing() {
        let f = fixture();
        let cid = f.info.consultation_id;
        let (doctor_id, mut doctor_rx) = join_doctor(&f, &f.info);
        let (patient_id, _rx) = join_patient(&f, &f.info);
        f.hub.admit(cid, f.doctor, patient_id).unwrap();
        drain(&mut doctor_rx);

        let (conn, mut rx2) = f.hub.connection(64);
        let conn2 = conn.id();
        // The patient's new connection arrives before the old one is noticed as closed.
        let identity = Identity::Guest {
            participant_id: patient_id,
            name: "Pat".into(),
            role: ParticipantRole::Patient,
        };
        f.hub
            .join(
                f.info.clone(),
                identity,
                conn,
                OffsetDateTime::now_utc(),
                15_000,
            )
            .unwrap();
        assert!(matches!(
            drain(&mut rx2).as_slice(),
            [ServerMessage::Joined {
                admitted: true,
                resumed: true,
                ..
            }]
        ));
        // The doctor is told, though the patient never looked offline: what was sent to the old
        // connection may be lost.
        assert!(
            drain(&mut doctor_rx).contains(&ServerMessage::PeerPresence {
                participant_id: patient_id,
                online: true
            })
        );
        // The old connection's close must not take the place from the new one.
        assert_eq!(f.hub.disconnect(cid, patient_id, conn2 - 1), None);
        let generation = f.hub.disconnect(cid, patient_id, conn2).unwrap();
        assert!(
            drain(&mut doctor_rx).contains(&ServerMessage::PeerPresence {
                participant_id: patient_id,
                online: false
            })
        );
        assert_eq!(f.hub.expire(cid, patient_id, generation - 1), None);
        let departure = f.hub.expire(cid, patient_id, generation).unwrap();
        assert_eq!(departure.reason, LeaveReason::ConnectionLost);
        assert!(drain(&mut doctor_rx).contains(&ServerMessage::PeerLeft {
            participant_id: patient_id,
            reason: LeaveReason::ConnectionLost
        }));
        assert!(!f.hub.is_admitted(cid, patient_id));
        let _ = doctor_id;
    }

    #[test]
    fn ending_closes_everyone() {
        let f = fixture();
        let (_d, mut doctor_rx) = join_doctor(&f, &f.info);
        let (_p, mut patient_rx) = join_patient(&f, &f.info);
        assert_eq!(f.hub.end(f.info.consultation_id).len(), 2);
        for rx in [&mut doctor_rx, &mut patient_rx] {
            let mut saw_end = false;
            let mut closed = false;
            while let Ok(o) = rx.try_recv() {
                match o {
                    Outbound::Message(ServerMessage::ConsultationEnded {}) => saw_end = true,
                    Outbound::Close => closed = true,
                    _ => {}
                }
            }
            assert!(saw_end && closed);
        }
        assert!(f.hub.waiting_for(f.doctor).is_empty());
    }

    #[test]
    fn a_node_of_a_deployment_makes_rooms_only_for_the_doctors_it_serves() {
        let f = fixture();
        let hub = Hub::for_cluster(Metrics::new());
        let join = |hub: &Hub| {
            let (conn, _rx) = hub.connection(8);
            hub.join(
                f.info.clone(),
                Identity::Doctor,
                conn,
                OffsetDateTime::now_utc(),
                15_000,
            )
        };
        assert_eq!(join(&hub), Err(NotServedHere));
        assert!(!hub.has_rooms_of(f.doctor));
        let restored = RestoredPlace {
            participant_id: Uuid::new_v4(),
            role: ParticipantRole::Patient,
            name: "Pat".into(),
            admitted: true,
            consent: None,
            since: OffsetDateTime::now_utc(),
        };
        assert!(hub
            .restore(
                f.info.clone(),
                vec![restored.clone()],
                OffsetDateTime::now_utc()
            )
            .is_empty());
        hub.serve(f.doctor);
        assert!(join(&hub).is_ok());
        assert_eq!(hub.abandon(f.doctor), vec![f.info.consultation_id]);
        // Let go of: nothing is made for that doctor again, not even by a late restore.
        assert_eq!(join(&hub), Err(NotServedHere));
        assert!(hub
            .restore(f.info.clone(), vec![restored], OffsetDateTime::now_utc())
            .is_empty());
        assert!(!hub.has_rooms_of(f.doctor));
    }
}
