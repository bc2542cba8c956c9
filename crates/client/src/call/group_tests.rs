//! Group calls on a virtual clock: three or four [`Call`]s in a full mesh, a pretend service
//! that admits them as the real one does (`admitted` with everyone in the call, `peer_joined`
//! to the others, each with the politeness of its pair) and routes descriptions and candidates
//! by `to`, and a network that delivers datagrams by address. Real str0m peers, real DTLS,
//! SRTP and end-to-end encryption.

use std::collections::{BTreeMap, HashMap};

use consult_e2ee::E2eeEvent;
use consult_proto::api::ConsultationMode;
use consult_proto::signal::{ConsultationSummary, LeaveReason, Peer as Participant};

use super::*;

fn config() -> CallConfig {
    CallConfig {
        peer: PeerConfig {
            video_codecs: vec![VideoCodec::Vp8],
            ..PeerConfig::default()
        },
        receive: ReceiveMode::Encoded,
        ice_restart_after: Duration::from_secs(5),
        polite_offer_delay: Duration::from_millis(1500),
        e2ee: None,
        e2ee_schedule: ScheduleConfig::default(),
        video_bitrate_bps: 800_000,
    }
}

struct Member {
    id: Uuid,
    role: ParticipantRole,
    addr: SocketAddr,
    call: Call,
    timeout: Instant,
    events: Vec<SessionEvent>,
    /// Encoded frames received, by sender.
    frames: HashMap<Uuid, Vec<EncodedFrame>>,
    /// Session descriptions signalled (an offer or answer: a negotiation or an ICE restart).
    descriptions_sent: usize,
    here: bool,
}

impl Member {
    fn connected_with(&self) -> Vec<Uuid> {
        let mut peers = self.call.connected_peers();
        peers.sort();
        peers
    }

    /// The epoch of the key we send to `peer` with, once one is in use (0 before).
    fn send_epoch_with(&self, peer: Uuid) -> u64 {
        self.events
            .iter()
            .filter_map(|e| match e {
                SessionEvent::E2ee {
                    peer: with,
                    event: E2eeEvent::SendKeyActive { epoch },
                } if *with == peer => Some(*epoch),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn sas_with(&self, peer: Uuid) -> Option<String> {
        self.events.iter().rev().find_map(|e| match e {
            SessionEvent::E2ee {
                peer: with,
                event: E2eeEvent::SasReady(sas),
            } if *with == peer => Some(sas.to_string()),
            _ => None,
        })
    }
}

/// A consultation of several participants and the service between them.
struct Group {
    now: Instant,
    members: Vec<Member>,
    in_flight: BTreeMap<(Instant, u64), (Uuid, Delivery)>,
    seq: u64,
    e2ee: bool,
}

enum Delivery {
    Datagram {
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    Signal(ServerMessage),
}

/// The order of politeness the service uses: the doctor first, then by role, then by id.
fn rank(role: ParticipantRole) -> u8 {
    match role {
        ParticipantRole::Doctor => 0,
        ParticipantRole::Clinician => 1,
        ParticipantRole::Interpreter => 2,
        ParticipantRole::Companion => 3,
        ParticipantRole::Patient => 4,
        ParticipantRole::Recorder => 5,
    }
}

impl Group {
    fn new(e2ee: bool) -> Self {
        Self {
            now: Instant::now(),
            members: Vec::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            e2ee,
        }
    }

    fn index(&self, id: Uuid) -> usize {
        self.members.iter().position(|m| m.id == id).unwrap()
    }

    /// `other` as `me` is told of it.
    fn participant(&self, me: usize, other: usize) -> Participant {
        let (me, other) = (&self.members[me], &self.members[other]);
        Participant {
            participant_id: other.id,
            role: other.role,
            name: format!("{:?} {}", other.role, other.id.as_u128()),
            polite: (rank(me.role), me.id) > (rank(other.role), other.id),
        }
    }

    /// Someone joins and is admitted at once (the doctor by right): they get everyone in the
    /// call, and everyone else hears of them.
    fn join(&mut self, id: Uuid, role: ParticipantRole) {
        let host = u8::try_from(self.members.len() + 1).unwrap();
        let now = self.now;
        self.members.push(Member {
            id,
            role,
            addr: SocketAddr::from(([127, 0, 0, host], 10_000)),
            call: Call::new(
                config(),
                LocalCandidates {
                    host: vec![SocketAddr::from(([127, 0, 0, host], 10_000))],
                    ..LocalCandidates::default()
                },
                now,
            ),
            timeout: now,
            events: Vec::new(),
            frames: HashMap::new(),
            descriptions_sent: 0,
            here: true,
        });
        let me = self.members.len() - 1;
        let others: Vec<usize> = (0..me).filter(|&i| self.members[i].here).collect();
        let peers: Vec<Participant> = others.iter().map(|&o| self.participant(me, o)).collect();
        let joined = ServerMessage::Joined {
            participant_id: id,
            role,
            consultation: ConsultationSummary {
                id: Uuid::from_u128(1),
                doctor_name: "Dr Ada Lovelace".into(),
                mode: ConsultationMode::LiveOnly,
                e2ee: self.e2ee,
                guests_share_screen: false,
            },
            admitted: role == ParticipantRole::Doctor,
            resumed: false,
            polite: role != ParticipantRole::Doctor,
            heartbeat_interval_ms: 20_000,
            peers: if role == ParticipantRole::Doctor {
                peers.clone()
            } else {
                Vec::new()
            },
        };
        self.tell(me, joined);
        if role != ParticipantRole::Doctor {
            self.tell(me, ServerMessage::Admitted { peers });
        }
        for o in others {
            let peer = self.participant(o, me);
            self.tell(o, ServerMessage::PeerJoined { peer });
        }
    }

    /// Someone hangs up: gone from the network, and everyone else hears it.
    fn leave(&mut self, id: Uuid) {
        let gone = self.index(id);
        self.members[gone].here = false;
        for o in 0..self.members.len() {
            if self.members[o].here {
                self.tell(
                    o,
                    ServerMessage::PeerLeft {
                        participant_id: id,
                        reason: LeaveReason::Left,
                    },
                );
            }
        }
    }

    fn tell(&mut self, i: usize, message: ServerMessage) {
        let now = self.now;
        self.members[i].call.handle_signal(now, message).unwrap();
        self.drain();
    }

    fn push(&mut self, at: Instant, to: Uuid, delivery: Delivery) {
        self.seq += 1;
        self.in_flight.insert((at, self.seq), (to, delivery));
    }

    fn drain(&mut self) {
        for i in 0..self.members.len() {
            if !self.members[i].here {
                continue;
            }
            loop {
                let now = self.now;
                let from = self.members[i].id;
                match self.members[i].call.poll_output().unwrap() {
                    CallOutput::Timeout(at) => {
                        self.members[i].timeout = at;
                        break;
                    }
                    CallOutput::Event(event) => self.members[i].events.push(event),
                    CallOutput::Frame { from, frame } => {
                        self.members[i].frames.entry(from).or_default().push(frame)
                    }
                    CallOutput::Bitrate(_) => {}
                    CallOutput::Signal(ClientMessage::Description { to, description }) => {
                        self.members[i].descriptions_sent += 1;
                        let message = ServerMessage::Description { from, description };
                        self.push(
                            now + Duration::from_millis(10),
                            to,
                            Delivery::Signal(message),
                        );
                    }
                    CallOutput::Signal(ClientMessage::Candidate { to, candidate }) => {
                        let message = ServerMessage::Candidate { from, candidate };
                        self.push(
                            now + Duration::from_millis(10),
                            to,
                            Delivery::Signal(message),
                        );
                    }
                    CallOutput::Signal(_) => {}
                    // Sent from an address we no longer have: it goes nowhere.
                    CallOutput::Transmit(transmit) if transmit.source != self.members[i].addr => {}
                    CallOutput::Transmit(transmit) => {
                        let to = self
                            .members
                            .iter()
                            .find(|m| m.addr == transmit.destination)
                            .map(|m| m.id);
                        if let Some(to) = to {
                            self.push(
                                now + Duration::from_millis(5),
                                to,
                                Delivery::Datagram {
                                    source: transmit.source,
                                    destination: transmit.destination,
                                    contents: transmit.contents,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    fn step(&mut self) {
        let next = self
            .members
            .iter()
            .filter(|m| m.here)
            .map(|m| m.timeout)
            .chain(self.in_flight.keys().next().map(|(at, _)| *at))
            .min()
            .unwrap_or(self.now);
        self.now = next.max(self.now + Duration::from_micros(100));
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let ((at, _), (to, delivery)) = entry.remove_entry();
            let i = self.index(to);
            if !self.members[i].here {
                continue;
            }
            match delivery {
                Delivery::Datagram {
                    source,
                    destination,
                    contents,
                } => self.members[i]
                    .call
                    .handle_receive(at, source, destination, &contents),
                Delivery::Signal(message) => {
                    let now = self.now;
                    self.members[i].call.handle_signal(now, message).unwrap();
                }
            }
        }
        let now = self.now;
        for member in self.members.iter_mut().filter(|m| m.here) {
            if member.timeout <= now {
                member.call.handle_timeout(now).unwrap();
            }
        }
        self.drain();
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Member `i`'s addresses are now `candidates`; what it says about it goes out.
    fn set_local_candidates(&mut self, i: usize, candidates: LocalCandidates) {
        let now = self.now;
        self.members[i]
            .call
            .set_local_candidates(now, candidates)
            .unwrap();
        self.drain();
    }

    /// `rounds` times: everyone sends a keyframe, then 40 ms pass.
    fn send_keyframes_for(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.everyone_sends(true);
            self.run_until(Duration::from_millis(40), |_| false);
        }
    }

    /// Everyone here sends a video frame and an audio packet now.
    fn everyone_sends(&mut self, keyframe: bool) {
        let now = self.now;
        let mut frame = vec![0x5a; 1200];
        frame[0] = if keyframe { 0x10 } else { 0x11 };
        for member in self.members.iter_mut().filter(|m| m.here) {
            member
                .call
                .write_video(now, VideoCodec::Vp8, &frame)
                .unwrap();
            member.call.write_audio(now, &[0xfc, 1, 2, 3]).unwrap();
        }
        self.drain();
    }

    /// Whether every pair of participants here is connected.
    fn mesh_is_up(&self) -> bool {
        let here: Vec<&Member> = self.members.iter().filter(|m| m.here).collect();
        here.iter().all(|m| {
            let mut others: Vec<Uuid> = here.iter().map(|o| o.id).filter(|o| *o != m.id).collect();
            others.sort();
            m.connected_with() == others
        })
    }
}

const DOCTOR: Uuid = Uuid::from_u128(0xd0c);
const PATIENT: Uuid = Uuid::from_u128(0xba7);
const INTERPRETER: Uuid = Uuid::from_u128(0x1a7);
const COMPANION: Uuid = Uuid::from_u128(0xc0);

#[test]
fn three_participants_connect_in_a_full_mesh_and_each_receives_both_others() {
    let mut group = Group::new(true);
    group.join(DOCTOR, ParticipantRole::Doctor);
    group.join(PATIENT, ParticipantRole::Patient);
    group.join(INTERPRETER, ParticipantRole::Interpreter);
    assert!(
        group.run_until(Duration::from_secs(15), Group::mesh_is_up),
        "the mesh did not come up"
    );
    // Keys are agreed per pair: each pair shows the same SAS on both sides, and no two pairs
    // share one.
    let mut seen_sas = Vec::new();
    for (a, b) in [
        (DOCTOR, PATIENT),
        (DOCTOR, INTERPRETER),
        (PATIENT, INTERPRETER),
    ] {
        assert!(group.run_until(Duration::from_secs(5), |g| {
            g.members[g.index(a)].sas_with(b).is_some()
                && g.members[g.index(b)].sas_with(a).is_some()
        }));
        let sas = group.members[group.index(a)].sas_with(b).unwrap();
        assert_eq!(
            Some(&sas),
            group.members[group.index(b)].sas_with(a).as_ref()
        );
        assert!(!seen_sas.contains(&sas));
        seen_sas.push(sas);
    }
    // Glare-free: in every pair, one side offered first and only the impolite one.
    group.send_keyframes_for(20);
    for member in &group.members {
        for other in [DOCTOR, PATIENT, INTERPRETER] {
            if other == member.id {
                continue;
            }
            let frames = member.frames.get(&other).map_or(0, Vec::len);
            assert!(
                frames >= 20,
                "{:?} got {frames} frames from {other}",
                member.role
            );
        }
        assert_eq!(
            member.frames.get(&member.id).map_or(0, Vec::len),
            0,
            "nobody receives themselves"
        );
    }
}

#[test]
fn four_connect_and_one_who_leaves_takes_only_their_own_connections() {
    let mut group = Group::new(true);
    for (id, role) in [
        (DOCTOR, ParticipantRole::Doctor),
        (PATIENT, ParticipantRole::Patient),
        (INTERPRETER, ParticipantRole::Interpreter),
        (COMPANION, ParticipantRole::Companion),
    ] {
        group.join(id, role);
    }
    assert!(
        group.run_until(Duration::from_secs(20), Group::mesh_is_up),
        "the mesh of four did not come up"
    );
    let (doctor, patient) = (group.index(DOCTOR), group.index(PATIENT));
    group.leave(COMPANION);
    // The others forget the companion and keep their connections with each other, unbroken.
    let connected_before: Vec<usize> = group
        .members
        .iter()
        .map(|m| {
            m.events
                .iter()
                .filter(|e| matches!(e, SessionEvent::Connected { .. }))
                .count()
        })
        .collect();
    assert!(group.run_until(Duration::from_secs(2), Group::mesh_is_up));
    group.send_keyframes_for(10);
    for (i, member) in group.members.iter().enumerate().filter(|(_, m)| m.here) {
        assert!(member.events.iter().any(
            |e| matches!(e, SessionEvent::PeerLeft { participant_id } if *participant_id == COMPANION)
        ));
        assert_eq!(member.connected_with().len(), 2);
        let connected_now = member
            .events
            .iter()
            .filter(|e| matches!(e, SessionEvent::Connected { .. }))
            .count();
        assert_eq!(
            connected_now, connected_before[i],
            "no connection was redone"
        );
    }
    let before = group.members[doctor].frames[&PATIENT].len();
    group.everyone_sends(false);
    group.run_until(Duration::from_millis(100), |_| false);
    assert!(group.members[doctor].frames[&PATIENT].len() > before);
    assert!(group.members[patient].frames.contains_key(&INTERPRETER));
}

/// Every ordered pair among `ids`, and the epoch each side sends to the other with.
fn send_epochs(group: &Group, ids: &[Uuid]) -> Vec<((Uuid, Uuid), u64)> {
    ids.iter()
        .flat_map(|a| ids.iter().filter(move |b| *b != a).map(move |b| (*a, *b)))
        .map(|(a, b)| ((a, b), group.members[group.index(a)].send_epoch_with(b)))
        .collect()
}

/// Whether every sender among those pairs now sends with a newer key than it did then.
fn all_moved_on(group: &Group, then: &[((Uuid, Uuid), u64)]) -> bool {
    then.iter()
        .all(|((a, b), before)| group.members[group.index(*a)].send_epoch_with(*b) > *before)
}

#[test]
fn someone_joining_or_leaving_starts_a_new_epoch_on_every_other_pair() {
    let mut group = Group::new(true);
    let three = [DOCTOR, PATIENT, INTERPRETER];
    group.join(DOCTOR, ParticipantRole::Doctor);
    group.join(PATIENT, ParticipantRole::Patient);
    group.join(INTERPRETER, ParticipantRole::Interpreter);
    assert!(group.run_until(Duration::from_secs(15), |g| {
        g.mesh_is_up() && send_epochs(g, &three).iter().all(|(_, e)| *e >= 1)
    }));
    let before_join = send_epochs(&group, &three);

    group.join(COMPANION, ParticipantRole::Companion);
    assert!(
        group.run_until(Duration::from_secs(2), |g| all_moved_on(g, &before_join)),
        "a join moves the pairs already there to a new epoch: {:?}",
        send_epochs(&group, &three)
    );
    let four = [DOCTOR, PATIENT, INTERPRETER, COMPANION];
    assert!(group.run_until(Duration::from_secs(15), |g| {
        g.mesh_is_up() && send_epochs(g, &four).iter().all(|(_, e)| *e >= 1)
    }));

    let before_leave = send_epochs(&group, &three);
    group.leave(COMPANION);
    assert!(
        group.run_until(Duration::from_secs(2), |g| all_moved_on(g, &before_leave)),
        "a leave moves every remaining pair to a new epoch: {:?}",
        send_epochs(&group, &three)
    );
    // And media goes on under the new keys.
    let doctor = group.index(DOCTOR);
    let before = group.members[doctor]
        .frames
        .get(&PATIENT)
        .map_or(0, Vec::len);
    group.send_keyframes_for(5);
    assert!(group.members[doctor].frames[&PATIENT].len() > before);
}

#[test]
fn junk_from_a_stranger_is_kept_a_moment_bounded_then_dropped_and_the_mesh_stays_up() {
    let mut group = Group::new(false);
    group.join(DOCTOR, ParticipantRole::Doctor);
    group.join(PATIENT, ParticipantRole::Patient);
    group.join(INTERPRETER, ParticipantRole::Interpreter);
    assert!(group.run_until(Duration::from_secs(15), Group::mesh_is_up));
    let doctor = group.index(DOCTOR);
    let now = group.now;
    let addr = group.members[doctor].addr;
    // Junk from an address nobody negotiated: kept a moment in case a connection claims it
    // (a DTLS first flight can come before its address is known), then dropped; the call goes
    // on, and at most 64 such datagrams are ever kept.
    for n in 0..100u8 {
        group.members[doctor].call.handle_receive(
            now,
            SocketAddr::from(([10, 9, 9, n], 4444)),
            addr,
            &[0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, n],
        );
    }
    assert_eq!(group.members[doctor].call.unclaimed.len(), UNCLAIMED_MAX);
    group.everyone_sends(true);
    group.run_until(Duration::from_millis(200), |_| false);
    assert!(group.mesh_is_up());
    assert_eq!(
        group.members[doctor].call.unclaimed.len(),
        UNCLAIMED_MAX,
        "kept for now"
    );
    for _ in 0..10 {
        group.everyone_sends(false);
        group.run_until(Duration::from_millis(300), |_| false);
    }
    assert!(
        group.members[doctor].call.unclaimed.is_empty(),
        "forgotten after {UNCLAIMED_KEEP:?}"
    );
    assert!(group.mesh_is_up());
}

#[test]
fn a_relay_lost_that_no_path_uses_restarts_nothing_and_media_goes_on() {
    let mut group = Group::new(true);
    group.join(DOCTOR, ParticipantRole::Doctor);
    group.join(PATIENT, ParticipantRole::Patient);
    assert!(group.run_until(Duration::from_secs(15), Group::mesh_is_up));
    // Media flowing on the path (host to host).
    group.send_keyframes_for(50);
    let patient = group.index(PATIENT);
    let host = group.members[patient].addr;
    // A relay is allocated (trickled), then its TURN connection ends under a weak link.
    let relay = (SocketAddr::from(([127, 0, 0, 77], 30_000)), host);
    let descriptions = group.members[patient].descriptions_sent;
    for relayed in [vec![relay], vec![]] {
        group.set_local_candidates(
            patient,
            LocalCandidates {
                host: vec![host],
                relayed,
                ..LocalCandidates::default()
            },
        );
    }
    let frames = |group: &Group| {
        group.members[group.index(DOCTOR)]
            .frames
            .get(&PATIENT)
            .map_or(0, Vec::len)
    };
    let before = frames(&group);
    group.send_keyframes_for(25);
    assert_eq!(
        group.members[patient].descriptions_sent, descriptions,
        "no ICE restart: the path never used the relay"
    );
    assert!(group.mesh_is_up());
    assert!(
        frames(&group) >= before + 20,
        "media went on: {before} -> {}",
        frames(&group)
    );
}

#[test]
fn a_participant_whose_address_changes_restarts_ice_at_once_and_media_resumes() {
    let mut group = Group::new(true);
    group.join(DOCTOR, ParticipantRole::Doctor);
    group.join(PATIENT, ParticipantRole::Patient);
    group.join(INTERPRETER, ParticipantRole::Interpreter);
    assert!(group.run_until(Duration::from_secs(15), Group::mesh_is_up));
    group.send_keyframes_for(5);
    // The patient's phone moves to another network: a new address, the old one gone.
    let patient = group.index(PATIENT);
    let moved = SocketAddr::from(([127, 0, 0, 99], 20_000));
    group.members[patient].addr = moved;
    group.set_local_candidates(
        patient,
        LocalCandidates {
            host: vec![moved],
            ..LocalCandidates::default()
        },
    );
    let frames_before: Vec<usize> = [DOCTOR, INTERPRETER]
        .iter()
        .map(|id| {
            group.members[group.index(*id)]
                .frames
                .get(&PATIENT)
                .map_or(0, Vec::len)
        })
        .collect();
    // Media from the patient's new address reaches both others well before an ICE restart
    // timer (5 s here) would have fired: the restart was at once.
    let start = group.now;
    let mut resumed_after = None;
    while group.now - start < Duration::from_secs(3) {
        group.everyone_sends(true);
        group.run_until(Duration::from_millis(40), |_| false);
        let all = [DOCTOR, INTERPRETER]
            .iter()
            .zip(&frames_before)
            .all(|(id, before)| {
                group.members[group.index(*id)]
                    .frames
                    .get(&PATIENT)
                    .map_or(0, Vec::len)
                    > *before
            });
        if all {
            resumed_after = Some(group.now - start);
            break;
        }
    }
    let resumed_after = resumed_after.expect("the patient's media resumed from the new address");
    assert!(group.mesh_is_up());
    // And the others' media reaches the patient at the new address.
    let from_doctor = group.members[patient]
        .frames
        .get(&DOCTOR)
        .map_or(0, Vec::len);
    let start = group.now;
    let mut back_after = None;
    while group.now - start < Duration::from_secs(3) {
        group.everyone_sends(true);
        group.run_until(Duration::from_millis(40), |_| false);
        if group.members[patient]
            .frames
            .get(&DOCTOR)
            .map_or(0, Vec::len)
            > from_doctor
        {
            back_after = Some(group.now - start);
            break;
        }
    }
    println!(
        "patient's media back after {resumed_after:?}, the doctor's to the patient {back_after:?} more"
    );
    let back_after = back_after.expect("the doctor's media reaches the patient's new address");
    // No timer was waited for: both ways within a second (ICE would restart by itself after 5 s).
    assert!(resumed_after + back_after < Duration::from_secs(1));
}
