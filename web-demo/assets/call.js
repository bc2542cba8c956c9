// @ts-check
/**
 * The call: one RTCPeerConnection per remote participant (a full mesh in a group call: media goes
 * straight between every pair of participants), each negotiated with the W3C "perfect
 * negotiation" pattern (both sides add their tracks and may offer; the polite side rolls back its
 * own offer on glare; the service says which side of each pair is polite), with ICE restart per
 * connection when it fails. The sending bitrate of each connection's video is cut as the number
 * of connections grows ({@link videoBitrateFor}), so the uplink a sender needs stays about the same,
 * and from three receivers on the camera goes at half size and 15 frames a second
 * (`bestStepFor` in `video-ladder.js`): every receiver costs the sender an encode of its own.
 *
 * `CallController` takes the peer-related signaling messages (`joined`, `admitted`, `peer_joined`,
 * `peer_presence`, `peer_left`, `description`, `candidate`) and keeps the connections; the page
 * handles the rest and shows what the callbacks report.
 *
 * Recording: while the consultation is recorded, the service's recorder (role `recorder`) is one
 * of the participants. It gets a connection of its own (`RecorderLink`): send-only, always offered
 * from here (again when a shared screen's section comes or goes), without data channels, and it
 * never replaces or shows up in the main connections with the others. The page says when its media may go to the recorder
 * (`allowRecorder`: while the service says `recording`), so a recorder that turns up when the
 * consultation is not being recorded gets nothing. A zero-knowledge recording (an end-to-end
 * encrypted consultation) gets SFrame-protected media only, under keys of its own wrapped to the
 * clinician's recording key (`e2ee/recording-protection.js`); an end-to-end encrypted call never
 * sends the recorder anything else.
 *
 * Data channels (`consult-chat`, `consult-file`, see `messaging.js`): the side that makes the first
 * offer of a connection includes them. A connection therefore creates both channels (in-band,
 * reliable, ordered) unless it is started to answer a remote offer that already carries an
 * `m=application` section (then they arrive through `datachannel`). That is the doctor (impolite,
 * offers first) in the usual case, the patient when it offers after its wait, and interoperates
 * with the native media core, which creates both channels in its own first offer and otherwise
 * takes what `datachannel` brings. Every channel, created or announced, goes to `onDataChannel`.
 *
 * End-to-end encryption (`e2ee/call-e2ee.js`), when the consultation has it: the connection also
 * creates `consult-e2ee` (the key schedule's channel) with the others, every sender and receiver
 * gets the SFrame transform the moment it exists, video is limited to VP8 and H.264, the chat and
 * file channels handed to `onDataChannel` are sealed, and a browser that cannot transform frames
 * sends and shows no media at all.
 */

import { applyVideoCodecPreferences, E2eeLink } from "./e2ee/call-e2ee.js";
import { parseRecordingPublicKey, uuidBytes } from "./e2ee/recording-key.js";
import { RecordingProtection } from "./e2ee/recording-protection.js";
import { E2EE_CHANNEL_LABEL } from "./e2ee/schedule.js";
import { AddressWatch, LOOK_FOR_MS, PathWatch, pauseAfterLookMs, SAMPLE_EVERY_MS } from "./path-watch.js";
import { AUDIO_ONLY, bestStepFor, SendLadder, VIDEO_STEPS } from "./video-ladder.js";

/**
 * Most bits per second a connection sends video at, by how many other participants there are: one
 * copy of the video goes to each of them, so the copies share what one would use.
 * @param {number} receivers
 */
export function videoBitrateFor(receivers) {
  const TOTAL_BPS = 1_500_000;
  const FLOOR_BPS = 300_000;
  return Math.max(FLOOR_BPS, Math.floor(TOTAL_BPS / Math.max(1, receivers)));
}

/**
 * The remote SDP with `usedtx=1` on every Opus format: a browser's Opus encoder follows what the
 * remote side's description asks of it, so this turns discontinuous transmission on for what we
 * send (silence is not sent; the other side conceals the gap). Nothing else changes.
 * @param {string} sdp
 */
export function withOpusDtx(sdp) {
  const opus = new Set();
  for (const match of sdp.matchAll(/^a=rtpmap:(\d+) opus\/48000/gim)) opus.add(match[1]);
  return sdp.replace(/^a=fmtp:(\d+) ([^\r\n]*)/gm, (line, pt, params) =>
    opus.has(pt) && !/(^|;)\s*usedtx=/.test(params) ? `a=fmtp:${pt} ${params};usedtx=1` : line,
  );
}

/** The media stream id (`a=msid`) the native peer sends a shared screen under. */
export const SCREEN_STREAM_ID = "consult-screen";

/**
 * Whether a remote SDP's video section `mid` carries a shared screen: its `a=msid` names no
 * stream (`-`: how the pages send a screen) or {@link SCREEN_STREAM_ID} (the native peer's).
 * Cameras always go in a stream of their own. The native peer decides alike.
 * @param {string | undefined} sdp
 * @param {string} mid
 */
export function isScreenSection(sdp, mid) {
  if (!sdp) return false;
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    if (!section.startsWith("video ")) continue;
    const found = /^a=mid:(\S+)/m.exec(section);
    if (!found || found[1] !== mid) continue;
    const msid = /^a=msid:(\S+)/m.exec(section);
    return !!msid && (msid[1] === "-" || msid[1] === SCREEN_STREAM_ID);
  }
  return false;
}

/** Labels of the channels a connection opens when it offers first. */
const DATA_CHANNEL_LABELS = ["consult-chat", "consult-file"];

/** @typedef {import('./protocol.js').ClientMessage} ClientMessage */
/** @typedef {import('./protocol.js').Peer} Peer */
/** @typedef {import('./protocol.js').JoinedMessage} JoinedMessage */
/** @typedef {import('./protocol.js').SessionDescription} SessionDescription */
/** @typedef {import('./protocol.js').IceCandidate} IceCandidate */
/** @typedef {import('./protocol.js').RecordingMessage} RecordingMessage */
/** @typedef {import('./e2ee/recording-protection.js').RecordingTarget} RecordingTarget */
/** @typedef {import('./api.js').IceConfig} IceConfig */
/** @typedef {import('./e2ee/call-e2ee.js').E2eeCall} E2eeCall */
/** @typedef {import('./messaging.js').ChannelLike} ChannelLike */

/**
 * Why a connection cannot get going, for the page to explain:
 * `relay-not-configured`: the service allows relay (TURN) candidates only but gave no TURN server;
 * `relay-unreachable`: relay only, and no relay candidate came (gathering ended without one, or
 * went on for `RELAY_GATHER_TIMEOUT_MS` without one): the TURN server cannot be reached or refused
 * the credentials.
 * @typedef {"relay-not-configured" | "relay-unreachable"} IceProblem
 */

/**
 * The problem an ICE configuration has before any connection is tried, or null.
 * @param {IceConfig} config
 * @returns {IceProblem | null}
 */
export function iceConfigProblem(config) {
  if (config.iceTransportPolicy !== "relay") return null;
  const hasTurn = config.iceServers.some((server) =>
    (Array.isArray(server.urls) ? server.urls : [server.urls]).some((url) => /^turns?:/i.test(url)),
  );
  return hasTurn ? null : "relay-not-configured";
}

/**
 * What the page is told about the media connection.
 * `waiting`: nobody to talk to; `connecting`: negotiating; `connected`: media flows;
 * `reconnecting`: the network dropped, ICE is being restored.
 * @typedef {"waiting" | "connecting" | "connected" | "reconnecting"} MediaState
 */

/** How long "disconnected" may last before an ICE restart is forced. */
const DISCONNECTED_RESTART_MS = 4000;

/** Path samples a second (`SAMPLE_EVERY_MS` apart). */
const SAMPLES_A_SECOND = Math.round(1000 / SAMPLE_EVERY_MS);

/** At most one round of fresh pictures this often per connection (`PeerLink.freshPictures`). */
const FRESH_PICTURES_EVERY_MS = 1000;
/** Seconds of the other side's video under a picture a second (its audio still coming) before
 * the page says their link is too weak for moving pictures. */
const PAUSED_SECONDS = 3;

/** ICE restarts of a connection stuck in "new"/"connecting" before the impolite side makes a new one. */
const STUCK_RESTARTS_BEFORE_REPLACING = 1;

/**
 * How long a connection may stay "new"/"connecting" with both descriptions set before ICE restarts:
 * counted from when they were set, so a slow offer and answer (a starved machine, a busy service)
 * do not eat into it.
 */
const STUCK_RESTART_MS = 8000;

/**
 * Relay only: how long gathering may go on without a single relay candidate before the page is
 * told the TURN server is out of reach (a reachable one answers in well under a second; the
 * browser itself gives up on an allocation only after about 40 s, and the ICE restarts above
 * start it over).
 */
const RELAY_GATHER_TIMEOUT_MS = 10_000;

/**
 * How long the polite side waits for the other side's offer before offering itself. Both sides
 * learn about each other at the same moment; letting the impolite side offer alone avoids a glare
 * (and its rollback) on every call start. Perfect negotiation still copes if both offer.
 */
const POLITE_OFFER_WAIT_MS = 1500;

/**
 * The distinct `a=fingerprint` lines of an SDP: a different set means a different peer connection
 * (the other side reloaded or recreated it), which cannot be renegotiated onto the old one. A set,
 * not a list: the lines repeat once per m-section, and a renegotiation that adds m-sections (the
 * native media core adds its own audio and video sections after answering) keeps the connection.
 * @param {string | undefined} sdp
 * @returns {string}
 */
function fingerprints(sdp) {
  if (!sdp) return "";
  const lines = sdp
    .split(/\r?\n/)
    .filter((line) => line.startsWith("a=fingerprint:"))
    .map((line) => line.trim());
  return [...new Set(lines)].sort().join("\n");
}

/**
 * A new RTCPeerConnection with the service's ICE servers and transport policy.
 * @param {IceConfig} iceConfig
 * @param {object} [extra] More of the configuration (the E2EE transform's encoded insertable streams).
 */
function newPeerConnection(iceConfig, extra = {}) {
  return new RTCPeerConnection(
    /** @type {RTCConfiguration} */ ({
      iceServers: iceConfig.iceServers,
      iceTransportPolicy: iceConfig.iceTransportPolicy,
      bundlePolicy: "max-bundle",
      ...extra,
    }),
  );
}

/**
 * Renewed ICE servers (fresh TURN credentials) for a running connection. They take effect at its
 * next gathering (an ICE restart); allocations it holds keep theirs. The transport policy it was
 * made with stays. Chromium marks new servers as needing an ICE restart, so the next offer on
 * this connection restarts ICE (make before break: it allocates afresh while media goes on).
 * @param {RTCPeerConnection} pc
 * @param {IceConfig} config
 */
function renewIceServers(pc, config) {
  if (pc.signalingState === "closed") return;
  try {
    pc.setConfiguration({ ...pc.getConfiguration(), iceServers: config.iceServers });
  } catch (err) {
    console.warn("Could not renew the connection's ICE servers", err);
  }
}

/**
 * A local candidate as it travels (`null`: end of candidates).
 * @param {RTCIceCandidate | null} candidate
 * @returns {IceCandidate | null}
 */
function wireCandidate(candidate) {
  if (!candidate) return null;
  const json = candidate.toJSON();
  /** @type {IceCandidate} */
  const wire = { candidate: json.candidate ?? "" };
  if (json.sdpMid != null) wire.sdpMid = json.sdpMid;
  if (json.sdpMLineIndex != null) wire.sdpMLineIndex = json.sdpMLineIndex;
  if (json.usernameFragment != null) wire.usernameFragment = json.usernameFragment;
  return wire;
}

/**
 * A local description as it travels.
 * @param {RTCSessionDescription} description
 * @returns {SessionDescription}
 */
function wireDescription(description) {
  return { type: /** @type {SessionDescription["type"]} */ (description.type), sdp: description.sdp };
}

/**
 * A fresh picture from a sender that no ladder steps (a shared screen): its encoding switched off
 * and on again, which Chromium starts with a key frame.
 * @param {RTCRtpSender} sender
 * @param {() => boolean} closed
 */
async function freshPicture(sender, closed) {
  try {
    for (const active of [false, true]) {
      const parameters = sender.getParameters();
      if (!parameters.encodings?.length || closed()) return;
      for (const encoding of parameters.encodings) encoding.active = active;
      await sender.setParameters(parameters);
    }
  } catch (err) {
    if (!closed()) console.warn("Could not ask for a fresh picture", err);
  }
}

/**
 * Restarts ICE on a connection that failed, or that stayed disconnected for
 * `DISCONNECTED_RESTART_MS` (the restart's offer goes out through `negotiationneeded`).
 */
class IceRestarter {
  /** @param {RTCPeerConnection} pc */
  constructor(pc) {
    this.pc = pc;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.disconnectTimer = undefined;
  }

  /** Call on every connection and ICE connection state change. */
  check() {
    const pc = this.pc;
    const state = pc.connectionState;
    const ice = pc.iceConnectionState;
    if (state === "failed" || ice === "failed") {
      console.warn("Connection failed; restarting ICE");
      pc.restartIce();
    }
    if (state === "disconnected" || ice === "disconnected") {
      if (this.disconnectTimer === undefined) {
        this.disconnectTimer = setTimeout(() => {
          this.disconnectTimer = undefined;
          if (pc.iceConnectionState === "disconnected" || pc.connectionState === "disconnected") {
            console.warn("Still disconnected; restarting ICE");
            pc.restartIce();
          }
        }, DISCONNECTED_RESTART_MS);
      }
    } else {
      this.stop();
    }
  }

  stop() {
    if (this.disconnectTimer !== undefined) clearTimeout(this.disconnectTimer);
    this.disconnectTimer = undefined;
  }
}

/**
 * One RTCPeerConnection to one remote participant.
 */
export class PeerLink {
  /**
   * @param {object} options
   * @param {string} options.peerId
   * @param {boolean} options.polite
   * @param {IceConfig} options.iceConfig Servers and transport policy.
   * @param {MediaStream | null} options.localStream
   * @param {(message: ClientMessage) => boolean} options.send
   * @param {(stream: MediaStream) => void} options.onRemoteStream
   * @param {(stream: MediaStream | null) => void} [options.onRemoteScreen] The screen the other
   *   side shares (a video section after its camera's), or null once it stopped.
   * @param {MediaStream | null} [options.screenStream] This side's shared screen, if it shares one.
   * @param {(link: PeerLink) => void} options.onStateChange
   * @param {boolean} [options.createChannels] Create the chat and file channels (this side offers first).
   * @param {(channel: ChannelLike) => void} [options.onDataChannel] Chat and file channels (sealed with E2EE).
   * @param {E2eeCall | null} [options.e2ee] The call's end-to-end encryption, if it has it.
   * @param {(problem: IceProblem) => void} [options.onIceProblem] Relay only, and no relay
   *   candidate came (gathering ended without one, or went on too long without one).
   * @param {() => void} [options.onSilent] A connected connection received nothing at all (not a
   *   packet) for `SILENT_MS`: time to look whether this device's addresses changed.
   * @param {() => void} [options.onQuiet] A connected connection received nothing at all for
   *   `QUIET_MS`: the path may be gone (our address changed) well before the browser calls it
   *   disconnected.
   * @param {() => void} [options.onStuck] Impolite side: the connection stayed new or connecting
   *   through ICE restarts; make a new one.
   * @param {(step: import('./video-ladder.js').VideoStep) => void} [options.onVideoStep] The camera's
   *   video on this connection stepped down or up (`video-ladder.js`).
   * @param {(paused: boolean) => void} [options.onRemoteVideoPaused] The other side's video came
   *   at under one picture a second for `PAUSED_SECONDS` while its audio still arrived (their
   *   link is too weak for moving pictures), or moves again.
   */
  constructor({ peerId, polite, iceConfig, localStream, send, onRemoteStream, onRemoteScreen, screenStream = null, onStateChange, createChannels = true, onDataChannel, onIceProblem, onSilent, onQuiet, onStuck, onVideoStep, onRemoteVideoPaused, e2ee = null }) {
    this.peerId = peerId;
    this.onRemoteScreen = onRemoteScreen ?? (() => {});
    /** @type {RTCRtpTransceiver | null} The section this side's screen goes in (kept once made). */
    this.screenTransceiver = null;
    /** @type {MediaStream | null} The screen the other side shares, while it does. */
    this.remoteScreen = null;
    this.polite = polite;
    this.send = send;
    this.onRemoteStream = onRemoteStream;
    this.onStateChange = onStateChange;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.isSettingRemoteAnswerPending = false;
    this.closed = false;
    this.remoteStream = new MediaStream();
    this.pc = newPeerConnection(iceConfig, e2ee ? E2eeLink.configuration() : {});
    const pc = this.pc;
    this.iceRestarter = new IceRestarter(pc);
    /** @type {E2eeLink | null} */
    this.e2ee = e2ee ? e2ee.newLink(pc, peerId) : null;
    // With E2EE on but no way to protect frames here, no media may leave or be shown.
    const mediaAllowed = !this.e2ee || this.e2ee.canTransform;
    /** Relay only with a TURN server: gathering without any candidate means it is out of reach. */
    const expectRelay = iceConfig.iceTransportPolicy === "relay" && iceConfigProblem(iceConfig) === null;
    /** Local candidates of this connection so far (ICE restarts included). */
    this.candidatesGathered = 0;
    /** @type {number | null} When gathering first started. */
    this.gatheringSince = null;
    this.relayProblemReported = false;
    const reportRelayProblem = () => {
      if (this.relayProblemReported || this.closed) return;
      this.relayProblemReported = true;
      console.warn("Relay only, and no relay candidate could be gathered: is the TURN server reachable?");
      onIceProblem?.("relay-unreachable");
    };

    const sending = mediaAllowed ? localStream : null;
    if (sending) {
      for (const track of sending.getTracks()) pc.addTrack(track, sending);
    }
    this.mediaAllowed = mediaAllowed;
    /** The connection's own video limit (its share of the uplink), set by `limitVideo`. */
    this.videoLimitBps = videoBitrateFor(1);
    /** The best step the camera goes at on this connection (`bestStepFor` the receivers), set by `limitVideo`. */
    this.videoBestStep = 0;
    const camera = sending?.getVideoTracks()[0] ?? null;
    /** Steps the camera's video down on a weak link and back up (none without a camera). */
    this.ladder = camera
      ? new SendLadder(
          pc,
          () => pc.getSenders().find((s) => s.track === camera) ?? null,
          () => this.videoLimitBps,
          (step) => onVideoStep?.(step),
          () => this.videoBestStep,
        )
      : null;
    /** Recent seconds' decoded pictures and audio packets from the other side. */
    this.remoteVideo = {
      frames: /** @type {number | null} */ (null),
      audio: /** @type {number | null} */ (null),
      /** @type {number[]} */ recent: [],
      paused: false,
    };
    // Without a camera or microphone, still ask for the other side's audio and video (this also
    // makes sure this side starts negotiating when it is the one to offer).
    for (const kind of ["audio", "video"]) {
      if (!sending || sending.getTracks().every((t) => t.kind !== kind)) {
        pc.addTransceiver(kind, { direction: "recvonly" });
      }
    }
    for (const transceiver of pc.getTransceivers()) {
      if (transceiver.receiver.track.kind === "video") applyVideoCodecPreferences(transceiver, !!this.e2ee);
    }
    // Before any frame flows: every sender and receiver protects and opens frames.
    this.e2ee?.attachAll();
    // A screen shared before this connection was made goes in a section after the camera's.
    const screenTrack = screenStream?.getVideoTracks()[0];
    if (screenStream && screenTrack && screenTrack.readyState === "live") this.setScreen(screenTrack);

    const e2eeLink = this.e2ee;
    const giveChannel = onDataChannel ?? ((/** @type {ChannelLike} */ channel) => channel.close());
    /** @param {RTCDataChannel} channel */
    const takeChannel = (channel) => {
      if (e2eeLink && channel.label === E2EE_CHANNEL_LABEL) e2eeLink.takeKeyChannel(channel);
      else if (e2eeLink && DATA_CHANNEL_LABELS.includes(channel.label)) giveChannel(e2eeLink.seal(channel));
      else giveChannel(channel);
    };
    pc.ondatachannel = ({ channel }) => {
      if (!this.closed) takeChannel(channel);
    };
    if (createChannels) {
      const labels = e2eeLink ? [...DATA_CHANNEL_LABELS, E2EE_CHANNEL_LABEL] : DATA_CHANNEL_LABELS;
      for (const label of labels) takeChannel(pc.createDataChannel(label, { ordered: true }));
    }

    pc.ontrack = ({ track, streams, receiver, transceiver }) => {
      // The transform goes on before the first frame is decoded.
      this.e2ee?.attach(receiver, "receive", track.kind === "audio" ? "audio" : "video");
      if (!mediaAllowed) return;
      if (track.kind === "video" && transceiver.mid !== null && isScreenSection(pc.remoteDescription?.sdp, transceiver.mid)) {
        this.takeRemoteScreen(track, streams[0] ?? null);
        return;
      }
      const stream = streams[0];
      if (stream && this.remoteStream !== stream) {
        this.remoteStream = stream;
      } else if (!this.remoteStream.getTracks().includes(track)) {
        this.remoteStream.addTrack(track);
      }
      this.onRemoteStream(this.remoteStream);
    };

    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        if (this.closed || !pc.localDescription) return;
        this.sendDescription(pc.localDescription);
      } catch (err) {
        console.error("Could not create an offer", err);
      } finally {
        this.makingOffer = false;
      }
    };

    pc.onicecandidate = ({ candidate }) => {
      if (this.closed) return;
      if (candidate) this.candidatesGathered += 1;
      this.send({ type: "candidate", to: this.peerId, candidate: wireCandidate(candidate) });
    };

    pc.onicegatheringstatechange = () => {
      if (this.closed || !expectRelay) return;
      if (pc.iceGatheringState === "gathering" && this.gatheringSince === null) this.gatheringSince = Date.now();
      if (pc.iceGatheringState === "complete" && this.candidatesGathered === 0) reportRelayProblem();
    };
    pc.onicecandidateerror = (event) => {
      if (!this.closed) console.warn(`ICE server ${event.url}: ${event.errorCode} ${event.errorText}`);
    };
    pc.onconnectionstatechange = () => this.checkState();
    pc.oniceconnectionstatechange = () => this.checkState();

    // A connection that never gets going (lost candidates, a browser stuck gathering after a
    // rollback) is restarted rather than left hanging.
    this.notConnectedSince = Date.now();
    /** What this connection received lately, a few samples a second (`path-watch.js`). */
    this.path = new PathWatch(Date.now());
    /** When this connection last asked its senders for a fresh picture. */
    this.freshPicturesAt = 0;
    /** Samples taken while connected (every `SAMPLES_A_SECOND`th also watches the remote video). */
    this.samples = 0;
    this.pathSampler = setInterval(() => {
      if (this.closed) return;
      if (pc.connectionState !== "connected") {
        this.path.reset();
        return;
      }
      void pc
        .getStats()
        .then((report) => {
          if (this.closed) return;
          let bytes = 0;
          report.forEach((/** @type {any} */ s) => {
            if (s.type === "transport") bytes += s.bytesReceived ?? 0;
          });
          const event = this.path.update(Date.now(), bytes);
          if (event === "silent") onSilent?.();
          else if (event === "quiet") onQuiet?.();
          else if (event === "back") this.freshPictures("the path is back");
          // Once a second the same report tells how the other side's video comes.
          this.samples += 1;
          if (this.samples % SAMPLES_A_SECOND === 0) this.watchRemoteVideo(report, onRemoteVideoPaused);
        })
        .catch(() => {});
      this.watchPathChanges();
    }, SAMPLE_EVERY_MS);
    /** @type {RTCIceTransport | null} The ICE transport whose selected pair is watched. */
    this.watchedIce = null;
    /** ICE restarts for a connection that stayed new or connecting. */
    this.stuckRestarts = 0;
    this.watchdog = setInterval(() => {
      if (this.closed) return;
      if (pc.connectionState === "connected") void this.ladder?.tick();
      if (
        expectRelay &&
        this.candidatesGathered === 0 &&
        this.gatheringSince !== null &&
        Date.now() - this.gatheringSince > RELAY_GATHER_TIMEOUT_MS
      ) {
        reportRelayProblem();
      }
      const state = pc.connectionState;
      if (state === "connected") {
        this.notConnectedSince = Date.now();
        this.stuckRestarts = 0;
        return;
      }
      const negotiated = pc.signalingState === "stable" && !!pc.remoteDescription && !!pc.localDescription;
      if (!negotiated) {
        this.notConnectedSince = Date.now();
        return;
      }
      if ((state === "new" || state === "connecting") && Date.now() - this.notConnectedSince > STUCK_RESTART_MS) {
        this.notConnectedSince = Date.now();
        this.stuckRestarts += 1;
        // An ICE restart did not help either: the browser's connection itself may be stuck (its
        // gathering after a rollback, say). The impolite side makes a new one (the other side
        // follows a new connection's offer); the polite side keeps restarting ICE, so the two
        // never replace theirs at once.
        if (this.stuckRestarts > STUCK_RESTARTS_BEFORE_REPLACING && !this.polite && onStuck) {
          console.warn(`Connection still ${state} after ${this.stuckRestarts} tries; making a new one`);
          onStuck();
          return;
        }
        console.warn(`Connection still ${state} after ${STUCK_RESTART_MS} ms; restarting ICE`);
        pc.restartIce();
      }
    }, 1000);
  }

  /**
   * Whether the other side's video has all but stopped while its audio goes on (see
   * `onRemoteVideoPaused`).
   * @private
   * @param {RTCStatsReport} report
   * @param {((paused: boolean) => void) | undefined} onPaused
   */
  watchRemoteVideo(report, onPaused) {
    let frames = 0;
    let audio = 0;
    let videoSeen = false;
    report.forEach((/** @type {any} */ s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "video" && !(this.remoteScreen && s.trackIdentifier === this.remoteScreen.getVideoTracks()[0]?.id)) {
        frames += s.framesDecoded ?? 0;
        videoSeen ||= (s.framesDecoded ?? 0) > 0;
      }
      if (s.kind === "audio") audio += s.packetsReceived ?? 0;
    });
    const seen = this.remoteVideo;
    // Pictures in each of the last seconds while audio came (a second without audio says
    // nothing about their video).
    if (videoSeen && seen.frames !== null && seen.audio !== null && audio > seen.audio) {
      seen.recent.push(frames - seen.frames);
      if (seen.recent.length > PAUSED_SECONDS) seen.recent.shift();
    }
    seen.frames = frames;
    seen.audio = audio;
    // Paused: under a picture a second over the last seconds; moving again: three a second over
    // the last two. In between the note stays as it is (a still's few frames do not flap it).
    const total = seen.recent.reduce((a, b) => a + b, 0);
    const lastTwo = seen.recent.slice(-2).reduce((a, b) => a + b, 0);
    const paused =
      seen.recent.length === PAUSED_SECONDS && total < PAUSED_SECONDS ? true : lastTwo >= 6 ? false : seen.paused;
    if (paused !== seen.paused) {
      seen.paused = paused;
      if (!this.closed) onPaused?.(paused);
    }
  }

  /** @private */
  checkState() {
    if (this.closed) return;
    this.iceRestarter.check();
    this.onStateChange(this);
  }

  /** Connected, but nothing received for a while (see `onQuiet`). */
  get quiet() {
    return this.path.isQuiet(Date.now());
  }

  /**
   * Watch the connection's selected candidate pair: when it changes (an ICE restart found a new
   * path, or ICE moved to a better one), pictures sent on the old path may be lost and the other
   * side's decoder waiting for a fresh one.
   * @private
   */
  watchPathChanges() {
    const pc = this.pc;
    const ice =
      pc.getTransceivers().find((t) => t.sender.transport)?.sender.transport?.iceTransport ??
      pc.sctp?.transport.iceTransport ??
      null;
    if (!ice || ice === this.watchedIce) return;
    this.watchedIce = ice;
    let selected = ice.getSelectedCandidatePair();
    ice.addEventListener("selectedcandidatepairchange", () => {
      const before = selected;
      selected = ice.getSelectedCandidatePair();
      // The first pair of a connection starts with a fresh picture anyway.
      if (before && !this.closed && this.watchedIce === ice) this.freshPictures("a new path");
    });
  }

  /**
   * Ask every video this side sends on this connection for a fresh picture, at most once a
   * second (a path back or changed: the other side's decoder may be waiting for one).
   * @private
   * @param {string} why
   */
  freshPictures(why) {
    const now = Date.now();
    if (this.closed || now - this.freshPicturesAt < FRESH_PICTURES_EVERY_MS) return;
    this.freshPicturesAt = now;
    console.info(`Sending fresh pictures: ${why}`);
    void this.ladder?.freshPicture();
    const screen = this.screenTransceiver?.sender;
    if (screen?.track && screen.track.readyState === "live") void freshPicture(screen, () => this.closed);
  }

  /** @returns {MediaState} */
  get mediaState() {
    const pc = this.pc;
    const state = pc.connectionState;
    if (state === "connected") return "connected";
    if (state === "disconnected" || state === "failed") return "reconnecting";
    const ice = pc.iceConnectionState;
    if (ice === "disconnected" || ice === "failed") return "reconnecting";
    return "connecting";
  }

  /**
   * @private
   * @param {RTCSessionDescription} description
   */
  sendDescription(description) {
    this.send({ type: "description", to: this.peerId, description: wireDescription(description) });
  }

  /**
   * Whether a remote offer comes from a different RTCPeerConnection than the one negotiated so far.
   * @param {SessionDescription} description
   */
  isFromNewPeerConnection(description) {
    const current = this.pc.currentRemoteDescription ?? this.pc.remoteDescription;
    if (!current || description.type !== "offer") return false;
    return fingerprints(current.sdp) !== fingerprints(description.sdp);
  }

  /**
   * A remote description (perfect negotiation).
   * @param {SessionDescription} description
   */
  async handleDescription(description) {
    const pc = this.pc;
    if (description.type === "rollback") return;
    // An answer with no offer of ours outstanding: a second answer to an offer sent again (see
    // `resendPendingOffer`), the first one having arrived after all.
    if (description.type === "answer" && pc.signalingState !== "have-local-offer") return;
    const readyForOffer =
      !this.makingOffer && (pc.signalingState === "stable" || this.isSettingRemoteAnswerPending);
    const offerCollision = description.type === "offer" && !readyForOffer;
    this.ignoreOffer = !this.polite && offerCollision;
    if (this.ignoreOffer) return;
    this.isSettingRemoteAnswerPending = description.type === "answer";
    try {
      await pc.setRemoteDescription({ type: description.type, sdp: withOpusDtx(description.sdp) });
    } finally {
      this.isSettingRemoteAnswerPending = false;
    }
    if (description.type === "offer") {
      await pc.setLocalDescription();
      if (!this.closed && pc.localDescription) this.sendDescription(pc.localDescription);
    }
  }

  /**
   * A trickled remote candidate; `null` (end of candidates) needs nothing.
   * @param {IceCandidate | null} candidate
   */
  async handleCandidate(candidate) {
    if (!candidate) return;
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      if (!this.ignoreOffer) console.warn("Could not add a remote candidate", err);
    }
  }

  /**
   * Restart ICE (after a network change); negotiationneeded sends the new offer. While an offer
   * of ours is still unanswered (it may have been lost while the other side was away), that
   * offer is sent again instead: a restart would wait for an answer that may never come.
   */
  restartIce() {
    if (this.closed) return;
    this.resendPendingOffer();
    // Either way ICE restarts: now, or once that offer is answered (a network change needs it).
    this.pc.restartIce();
  }

  /**
   * Send our unanswered offer again, if there is one: signaling dropped on one side or the other
   * (a socket replaced, a peer back), and what was said meanwhile may be lost. The other side
   * answers it again if it had answered already; the second answer is ignored here.
   * @returns {boolean} Whether an offer was outstanding.
   */
  resendPendingOffer() {
    const pc = this.pc;
    if (this.closed || pc.signalingState !== "have-local-offer" || !pc.localDescription || this.makingOffer) return false;
    this.sendDescription(pc.localDescription);
    return true;
  }

  /**
   * Share a screen on this connection (in a video section of its own, after the camera's), or stop
   * (null). The section stays once made and is reused for the next share; renegotiation is
   * started by `negotiationneeded` when its direction changes.
   * @param {MediaStreamTrack | null} track
   */
  setScreen(track) {
    if (this.closed || !this.mediaAllowed) return;
    const transceiver = this.screenTransceiver;
    if (!track) {
      if (!transceiver || transceiver.currentDirection === "stopped") return;
      void transceiver.sender.replaceTrack(null).catch(() => {});
      transceiver.direction = "inactive";
      return;
    }
    if (transceiver && transceiver.currentDirection !== "stopped") {
      void transceiver.sender.replaceTrack(track).catch((err) => console.warn("Could not share the screen", err));
      transceiver.direction = "sendonly";
      return;
    }
    // In no stream (`a=msid:- …`): that is how the others tell it from the camera.
    const added = this.pc.addTransceiver(track, { direction: "sendonly", streams: [] });
    applyVideoCodecPreferences(added, !!this.e2ee);
    // Before the first frame: the screen is protected like the camera.
    this.e2ee?.attach(added.sender, "send", "video");
    this.screenTransceiver = added;
  }

  /**
   * The other side's screen arrived: shown while its track has frames and stays in its stream.
   * @private
   * @param {MediaStreamTrack} track
   * @param {MediaStream | null} stream
   */
  takeRemoteScreen(track, stream) {
    const screen = new MediaStream([track]);
    this.remoteScreen = screen;
    const stopped = () => {
      if (this.remoteScreen !== screen || this.closed) return;
      this.remoteScreen = null;
      this.onRemoteScreen(null);
    };
    const shown = () => {
      if (this.closed || track.readyState !== "live") return;
      this.remoteScreen = screen;
      this.onRemoteScreen(screen);
    };
    track.addEventListener("ended", stopped);
    track.addEventListener("mute", stopped);
    track.addEventListener("unmute", shown);
    stream?.addEventListener("removetrack", (event) => {
      if (event.track === track) stopped();
    });
    if (!track.muted) shown();
  }

  /**
   * Send video as a call with this many receivers of it allows: at most `videoBitrateFor` them
   * bits per second, and the camera at most at `bestStepFor` them (no renegotiation: the
   * encoder's parameters).
   * @param {number} receivers
   */
  async limitVideo(receivers) {
    if (this.closed) return;
    let bps = videoBitrateFor(receivers);
    this.videoLimitBps = bps;
    this.videoBestStep = bestStepFor(receivers);
    // The ladder owns the camera's parameters (its step and this limit, one change at a time).
    if (this.ladder) {
      await this.ladder.reapply();
      bps = Math.min(bps, this.ladder.step.maxBps);
    }
    for (const sender of this.pc.getSenders()) {
      if (this.ladder && sender === this.ladder.cameraSender()) continue;
      if (!sender.track || sender.track.kind !== "video") continue;
      // A shared screen keeps what it needs to stay legible.
      if (this.screenTransceiver && sender === this.screenTransceiver.sender) continue;
      const parameters = sender.getParameters();
      if (!parameters.encodings || parameters.encodings.length === 0) continue;
      if (parameters.encodings.every((e) => e.maxBitrate === bps)) continue;
      for (const encoding of parameters.encodings) encoding.maxBitrate = bps;
      try {
        await sender.setParameters(parameters);
      } catch (err) {
        if (!this.closed) console.warn("Could not limit the video bitrate", err);
      }
    }
  }

  /**
   * Renewed ICE servers, for the next ICE restart.
   * @param {IceConfig} config
   */
  renewIceConfig(config) {
    if (!this.closed) renewIceServers(this.pc, config);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.e2ee?.close();
    this.ladder?.stop();
    this.iceRestarter.stop();
    clearInterval(this.watchdog);
    clearInterval(this.pathSampler);
    this.pc.ontrack = null;
    this.pc.ondatachannel = null;
    this.pc.onnegotiationneeded = null;
    this.pc.onicecandidate = null;
    this.pc.onicegatheringstatechange = null;
    this.pc.onicecandidateerror = null;
    this.pc.onconnectionstatechange = null;
    this.pc.oniceconnectionstatechange = null;
    this.pc.close();
  }
}

/**
 * A send-only connection to the service's recorder (the participant with role `recorder`). This
 * side always offers — the recorder only answers — with one `sendonly` audio and one `sendonly`
 * video section (the local tracks; a section without a track for a kind there is none of) and no
 * data channels, and a third `sendonly` video section while a screen is shared. Nothing comes back, so
 * nothing is shown. VP8 is offered first: the exporter writes VP8 and Opus as WebM.
 *
 * With a `target` (zero-knowledge recording) every frame goes through a
 * {@link RecordingProtection} before it leaves, and none leaves without a key: the recorder stores
 * ciphertext only the clinician's recording key opens. Without one, media goes as it is (only for
 * consultations without end-to-end encryption).
 */
export class RecorderLink {
  /**
   * Throws when a `target` is given and this browser cannot protect frames (nothing is sent then).
   * @param {object} options
   * @param {string} options.peerId The recorder's participant id.
   * @param {IceConfig} options.iceConfig Servers and transport policy.
   * @param {MediaStream | null} options.localStream
   * @param {(message: ClientMessage) => boolean} options.send
   * @param {RecordingTarget | null} [options.target] Zero-knowledge: where the keys are wrapped to.
   * @param {ReadonlySet<number>} [options.avoidTags] Zero-knowledge: KID tags earlier connections
   *   of this participant used in the same recording.
   * @param {string} [options.permitKey] What the page allowed ({@link permitKeyOf}), to tell when it changes.
   * @param {MediaStream | null} [options.screenStream] A screen this page shares: recorded too, as a
   *   track of its own.
   */
  constructor({ peerId, iceConfig, localStream, send, target = null, avoidTags, permitKey = "", screenStream = null }) {
    this.peerId = peerId;
    /** @type {RTCRtpTransceiver | null} The shared screen's section (kept once made). */
    this.screenTransceiver = null;
    this.send = send;
    this.permitKey = permitKey;
    this.closed = false;
    // Made before any track is added: it refuses to exist in a browser that cannot protect frames.
    /** @type {RecordingProtection | null} */
    this.protection = target ? new RecordingProtection({ target, send, ...(avoidTags ? { avoidTags } : {}) }) : null;
    this.pc = newPeerConnection(iceConfig, this.protection ? RecordingProtection.configuration() : {});
    const pc = this.pc;
    this.iceRestarter = new IceRestarter(pc);
    for (const kind of ["audio", "video"]) {
      const track = localStream?.getTracks().find((t) => t.kind === kind) ?? null;
      const transceiver = pc.addTransceiver(track ?? kind, { direction: "sendonly", streams: localStream ? [localStream] : [] });
      if (kind === "video") applyVideoCodecPreferences(transceiver, !!this.protection, "vp8");
    }
    const screenTrack = screenStream?.getVideoTracks()[0];
    if (screenStream && screenTrack && screenTrack.readyState === "live") this.setScreen(screenTrack);
    // Before negotiation, so before any frame: every sender protects, and drops frames until its
    // first key is installed.
    this.protection?.attach(pc);
    // The first offer, and the one of every ICE restart.
    pc.onnegotiationneeded = async () => {
      try {
        await pc.setLocalDescription();
        if (!this.closed && pc.localDescription) {
          this.send({ type: "description", to: this.peerId, description: wireDescription(pc.localDescription) });
        }
      } catch (err) {
        if (!this.closed) console.error("Could not create an offer for the recorder", err);
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!this.closed) this.send({ type: "candidate", to: this.peerId, candidate: wireCandidate(candidate) });
    };
    pc.onconnectionstatechange = () => {
      if (!this.closed) this.iceRestarter.check();
    };
  }

  /**
   * The recorder's answer. It never offers: anything else is ignored.
   * @param {SessionDescription} description
   */
  async handleDescription(description) {
    if (description.type !== "answer") {
      if (description.type !== "rollback") console.warn(`Ignored a description of type ${description.type} from the recorder: it only answers`);
      return;
    }
    if (this.closed || this.pc.signalingState !== "have-local-offer") return; // Stale: an offer was replaced.
    try {
      await this.pc.setRemoteDescription(description);
    } catch (err) {
      if (!this.closed) throw err;
    }
  }

  /**
   * A trickled candidate of the recorder; `null` (end of candidates) needs nothing.
   * @param {IceCandidate | null} candidate
   */
  async handleCandidate(candidate) {
    if (!candidate || this.closed) return;
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      if (!this.closed) console.warn("Could not add a candidate of the recorder", err);
    }
  }

  /** Restart ICE (after a network change); negotiationneeded sends the new offer. */
  restartIce() {
    if (!this.closed) this.pc.restartIce();
  }

  /**
   * Record a shared screen too (a send-only section after the camera's, protected like the rest),
   * or stop (null: the section goes inactive). The offer goes out through `negotiationneeded`.
   * @param {MediaStreamTrack | null} track
   */
  setScreen(track) {
    if (this.closed) return;
    const transceiver = this.screenTransceiver;
    if (!track) {
      if (!transceiver) return;
      void transceiver.sender.replaceTrack(null).catch(() => {});
      transceiver.direction = "inactive";
      return;
    }
    if (transceiver) {
      void transceiver.sender.replaceTrack(track).catch((err) => console.warn("Could not record the screen", err));
      transceiver.direction = "sendonly";
      return;
    }
    const added = this.pc.addTransceiver(track, { direction: "sendonly", streams: [] });
    applyVideoCodecPreferences(added, !!this.protection, "vp8");
    // Protected before its first frame (before `attach`, `attach` covers it).
    this.protection?.protectNewSenders();
    this.screenTransceiver = added;
  }

  /**
   * Signaling is back after a drop: a key message may have been lost with the old socket, so a
   * zero-knowledge link starts a new epoch (whose key message goes on the new one).
   */
  signalingResumed() {
    if (!this.closed) void this.protection?.rotate();
  }

  /**
   * Renewed ICE servers, for the next ICE restart.
   * @param {IceConfig} config
   */
  renewIceConfig(config) {
    if (!this.closed) renewIceServers(this.pc, config);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.protection?.close();
    this.iceRestarter.stop();
    this.pc.onnegotiationneeded = null;
    this.pc.onicecandidate = null;
    this.pc.onconnectionstatechange = null;
    this.pc.close();
  }
}

/** Whether a participant is the service's recorder (which never takes part in the main connection). */
const isRecorder = (/** @type {Peer} */ peer) => peer.role === "recorder";

/**
 * What a page lets go to the recorder while the service says `recording`: its media as it is
 * (`zeroKnowledge: null`), or only media protected under keys wrapped to the clinician's
 * recording key, for this recording.
 * @typedef {object} RecorderPermit
 * @property {string} recordingId The recording being made (each recorder makes its own).
 * @property {{ recordingId: string, recordingKey: string } | null} zeroKnowledge
 */

/**
 * The permit a `recording` message (state `recording`) gives.
 * @param {RecordingMessage} m
 * @returns {RecorderPermit}
 */
export function recorderPermit(m) {
  const zeroKnowledge = m.zero_knowledge === true || m.recording_key != null;
  return { recordingId: m.recording_id ?? "", zeroKnowledge: zeroKnowledge ? { recordingId: m.recording_id ?? "", recordingKey: m.recording_key ?? "" } : null };
}

/**
 * A permit as a string, to tell when it changed: a new recording or key needs a new connection.
 * @param {RecorderPermit} permit
 */
function permitKeyOf(permit) {
  const zk = permit.zeroKnowledge;
  return zk ? `zero-knowledge ${zk.recordingId} ${zk.recordingKey}` : `plain ${permit.recordingId}`;
}

/**
 * Keeps the peer connections of a call in step with the signaling messages: one main connection
 * with each other participant, and, while the consultation is recorded, the recorder's.
 */
export class CallController {
  /**
   * @param {object} options
   * @param {(message: ClientMessage) => boolean} options.send Send a signaling message.
   * @param {(onRenewed: (config: IceConfig) => void) => () => void} [options.keepIceFresh] Calls
   *   `onRenewed` with each renewed ICE configuration while the call runs, until the function it
   *   returns is called (`IceServerCache.keepFresh`).
   * @param {() => Promise<IceConfig>} options.getIceConfig ICE servers and transport policy, asked
   *   for before every new connection.
   * @param {MediaStream | null} options.localStream
   * @param {(stream: MediaStream | null, peer: Peer) => void} options.onRemoteStream A
   *   participant's media (null: their connection is gone).
   * @param {(stream: MediaStream | null, peer: Peer) => void} [options.onRemoteScreen] The screen a
   *   participant shares (null: they stopped, or their connection is gone).
   * @param {(state: MediaState, peer: Peer | null) => void} options.onMediaState The call's state
   *   over all connections: reconnecting if any is, else connected if any is, else connecting if
   *   any is being made, else waiting; with the participant it is about.
   * @param {(peer: Peer, online: boolean) => void} [options.onPeerPresence]
   * @param {(peer: Peer, reason: string) => void} [options.onPeerLeft]
   * @param {(channel: ChannelLike, peer: Peer) => void} [options.onDataChannel] A chat or file
   *   channel of the connection with a participant (created here or announced by the other side;
   *   sealed with E2EE).
   * @param {(peer: Peer) => void} [options.onConnectionClosed] The connection with a participant
   *   was closed or replaced (its data channels are gone).
   * @param {(problem: IceProblem | null) => void} [options.onIceProblem] The connection cannot work
   *   with the ICE configuration (show it: otherwise the call just never connects), or null once
   *   that is over.
   * @param {(recorder: Peer | null) => void} [options.onRecorder] The service's recorder joined the
   *   call (it is recorded), or left it.
   * @param {() => void} [options.onMediaTrouble] A connection went disconnected or failed: our
   *   network may have changed (check the signaling connection at once; once it is back, ICE
   *   restarts on every connection that is down).
   * @param {() => void} [options.onNetworkChange] This device's addresses changed under a silent
   *   connection: reconnect signaling now (its socket is gone with the old address); once joined
   *   again, ICE restarts on every connection. Without it, ICE restarts at once.
   * @param {(step: import('./video-ladder.js').VideoStep["name"], audioOnly: boolean) => void} [options.onVideoStep]
   *   Our camera's video stepped down or up on the connection where it is worst ("full" again
   *   when every connection is back to full).
   * @param {(peer: Peer, paused: boolean) => void} [options.onRemoteVideoPaused] Someone's video
   *   all but stopped while their audio goes on (their link is too weak), or moves again.
   */
  constructor({ send, getIceConfig, keepIceFresh, localStream, onRemoteStream, onRemoteScreen, onMediaState, onPeerPresence, onPeerLeft, onDataChannel, onConnectionClosed, onIceProblem, onRecorder, onMediaTrouble, onNetworkChange, onVideoStep, onRemoteVideoPaused }) {
    this.send = send;
    this.getIceConfig = getIceConfig;
    /** Stops renewing the ICE servers of running connections. */
    this.stopIceRenewal = keepIceFresh ? keepIceFresh((config) => this.renewIceConfig(config)) : () => {};
    this.localStream = localStream;
    this.onRemoteStream = onRemoteStream;
    this.onRemoteScreen = onRemoteScreen ?? (() => {});
    /** @type {MediaStream | null} The screen this page shares, while it does. */
    this.screenStream = null;
    this.onMediaState = onMediaState;
    this.onPeerPresence = onPeerPresence ?? (() => {});
    this.onPeerLeft = onPeerLeft ?? (() => {});
    this.onDataChannel = onDataChannel;
    this.onConnectionClosed = onConnectionClosed ?? (() => {});
    this.onIceProblem = onIceProblem ?? (() => {});
    this.onRecorder = onRecorder ?? (() => {});
    this.onMediaTrouble = onMediaTrouble ?? (() => {});
    this.onNetworkChange = onNetworkChange ?? (() => void this.restartIce());
    /** This device's addresses, looked at when a connection falls silent. */
    this.addressWatch = new AddressWatch();
    /** Whether the addresses were looked at once while media flowed. */
    this.addressesSeen = false;
    /** Whether `checkAddresses` is looking (one loop for every silent connection). */
    this.lookingAtAddresses = false;
    /** The network changed: restart ICE on every connection once signaling is joined again. */
    this.restartOnRejoin = false;
    this.onVideoStep = onVideoStep ?? (() => {});
    /** The worst step reported so far (an index into `VIDEO_STEPS`). */
    this.videoStep = 0;
    this.onRemoteVideoPaused = onRemoteVideoPaused ?? (() => {});
    /** @type {IceProblem | null} */
    this.iceProblem = null;
    this.polite = false;
    /** @type {Map<string, PeerLink>} The connection with each other participant. */
    this.links = new Map();
    /** @type {Map<string, Peer>} */
    this.peers = new Map();
    /** @type {Promise<void>} Serializes everything that touches the peer connection. */
    this.queue = Promise.resolve();
    /** @type {E2eeCall | null} End-to-end encryption of the call's connections, once known. */
    this.e2ee = null;
    this.closed = false;
    /** @type {MediaState} */
    this.lastState = "waiting";
    /** @type {Map<string, ReturnType<typeof setTimeout>>} Participants whose offer is awaited (polite side). */
    this.awaiting = new Map();
    /** Whether this participant is admitted (connections only start then). */
    this.isAdmitted = false;
    /** @type {Peer | null} The service's recorder, while it is in the call. */
    this.recorder = null;
    /** @type {Set<string>} Every recorder id seen: their messages never reach the main connection. */
    this.recorderIds = new Set();
    /** @type {RecorderLink | null} */
    this.recorderLink = null;
    /** @type {RecorderPermit | null} Whether and how this page's media may go to the recorder now (`allowRecorder`). */
    this.recorderPermit = null;
    /** @type {string | null} {@link permitKeyOf} the permit. */
    this.recorderPermitKey = null;
    /** @type {string | null} The key of a permit whose recorder is gone: its recording is over. */
    this.expiredPermitKey = null;
    /** Counts `allowRecorder` calls: a queued permit older than the latest call is void. */
    this.permitGeneration = 0;
    /** @type {string | null} The last reason logged for sending the recorder nothing (logged once). */
    this.recorderRefusal = null;
    /** @type {string | null} This participant's id, from `joined` (bound into recording keys). */
    this.localId = null;
    /** @type {Map<string, Set<number>>} Per recording, the KID tags this page's recorder connections used. */
    this.recorderTags = new Map();
  }

  /**
   * Protect the media and messages of every connection made from now on (the consultation has
   * end-to-end encryption; set it before the first connection, from `joined`).
   * @param {E2eeCall | null} e2ee
   */
  setE2ee(e2ee) {
    this.e2ee = e2ee;
  }

  /**
   * Whether and how this page's media may go to the recorder: the page allows it while the
   * service says the consultation is being recorded ({@link recorderPermit} of that message), and
   * refuses it (null) as soon as that ends (the patient's page: the moment the patient
   * withdraws). Refusing closes the recorder's connection at once; a permit for another recording
   * or key replaces it.
   * @param {RecorderPermit | null} permit
   */
  allowRecorder(permit) {
    const generation = ++this.permitGeneration;
    if (!permit) {
      // A refusal acts at once (and cancels any permit still queued).
      this.recorderPermit = null;
      this.recorderPermitKey = null;
      this.dropRecorderLink();
      return;
    }
    const key = permitKeyOf(permit);
    // A permit takes effect in the order of the messages, after the `joined` and `peer_joined`
    // queued before it: each permit belongs to the recorder in the call when it came.
    void this.enqueue(async () => {
      if (generation !== this.permitGeneration || this.recorderPermitKey === key) return;
      // The page says again what it last heard (after `joined`), but that recording ended with
      // its recorder: the next `recording` message names the one being made now.
      if (key === this.expiredPermitKey) return;
      this.expiredPermitKey = null;
      this.recorderPermit = permit;
      this.recorderPermitKey = key;
      await this.syncRecorder();
    });
  }

  /** The recorder's live RTCPeerConnection, if any. */
  get recorderPc() {
    return this.recorderLink ? this.recorderLink.pc : null;
  }

  /** The participant the first connection is with, if any. */
  get currentPeer() {
    const first = this.links.keys().next();
    return first.done ? null : this.peerOf(first.value);
  }

  /** The participants whose connection carries media now, in the order the connections were made. */
  get connectedPeers() {
    return [...this.links.values()].filter((l) => l.mediaState === "connected").map((l) => this.peerOf(l.peerId));
  }

  /** The first live RTCPeerConnection, if any (a 1:1 call has just that one). */
  get pc() {
    const first = this.links.values().next();
    return first.done ? null : first.value.pc;
  }

  /**
   * @private
   * @param {() => Promise<void> | void} task
   */
  enqueue(task) {
    this.queue = this.queue.then(task).catch((err) => console.error("Call error", err));
    return this.queue;
  }

  /**
   * @private
   * @param {string} peerId
   */
  peerOf(peerId) {
    return this.peers.get(peerId) ?? { participant_id: peerId, role: "patient", name: "" };
  }

  /**
   * @private
   * @param {IceProblem | null} problem
   */
  setIceProblem(problem) {
    if (this.iceProblem === problem) return;
    this.iceProblem = problem;
    this.onIceProblem(problem);
  }

  /**
   * Tell the page the call's state over all connections (see `onMediaState`).
   * @private
   */
  report() {
    const links = [...this.links.values()];
    const reconnecting = links.find((l) => l.mediaState === "reconnecting");
    const connected = links.find((l) => l.mediaState === "connected");
    const connecting = links.find((l) => l.mediaState === "connecting");
    /** @type {MediaState} */
    let state = "waiting";
    /** @type {string | null} */
    let about = null;
    if (reconnecting) [state, about] = ["reconnecting", reconnecting.peerId];
    else if (connected) [state, about] = ["connected", connected.peerId];
    else if (connecting) [state, about] = ["connecting", connecting.peerId];
    else if (this.awaiting.size > 0) [state, about] = ["connecting", this.awaiting.keys().next().value ?? null];
    this.lastState = state;
    this.onMediaState(state, about ? this.peerOf(about) : null);
  }

  /**
   * Tell the page the worst step any connection's video is at (the one to explain).
   * @private
   */
  reportVideoStep() {
    let worst = 0;
    for (const link of this.links.values()) worst = Math.max(worst, link.ladder ? VIDEO_STEPS.indexOf(link.ladder.step) : 0);
    if (worst === this.videoStep) return;
    this.videoStep = worst;
    this.onVideoStep(VIDEO_STEPS[worst].name, worst === AUDIO_ONLY);
  }

  /**
   * Every connection sends video at the rate its share of the uplink allows, and at the size a
   * call of this many allows.
   * @private
   */
  limitVideo() {
    for (const link of this.links.values()) void link.limitVideo(this.links.size);
  }

  /**
   * The test hooks: `window.consultPc` (the first connection, as in a 1:1 call) and
   * `window.consultPcs` (every connection, by participant id).
   * @private
   */
  expose() {
    const w = /** @type {any} */ (window);
    w.consultPc = this.pc;
    w.consultPcs = Object.freeze(Object.fromEntries([...this.links].map(([peerId, link]) => [peerId, link.pc])));
  }

  /**
   * Which side of perfect negotiation this page is with a participant (the service says, per pair;
   * `joined.polite` for a service that does not).
   * @private
   * @param {string} peerId
   */
  politeTowards(peerId) {
    const polite = this.peers.get(peerId)?.polite;
    return typeof polite === "boolean" ? polite : this.polite;
  }

  /**
   * Start a fresh connection to a participant, replacing any earlier one with them.
   * @private
   * @param {string} peerId
   * @param {SessionDescription} [answering] The remote offer this connection is started for.
   */
  async connect(peerId, answering) {
    this.cancelAwaitingOffer(peerId);
    const iceConfig = await this.getIceConfig();
    if (this.closed) return;
    this.dropLink(peerId);
    const problem = iceConfigProblem(iceConfig);
    if (problem) console.error("Relay only, but no TURN server is configured: the call cannot connect");
    this.setIceProblem(problem);
    // The first offer carries the data channels: create them unless the offer being answered has.
    const channelsComing = !!answering && answering.type === "offer" && /^m=application /m.test(answering.sdp ?? "");
    const onDataChannel = this.onDataChannel;
    const link = new PeerLink({
      peerId,
      polite: this.politeTowards(peerId),
      iceConfig,
      localStream: this.localStream,
      send: this.send,
      createChannels: !channelsComing && !!onDataChannel,
      e2ee: this.e2ee,
      ...(onDataChannel ? { onDataChannel: (/** @type {ChannelLike} */ channel) => onDataChannel(channel, this.peerOf(peerId)) } : {}),
      onRemoteStream: (stream) => {
        if (this.links.get(peerId) === link) this.onRemoteStream(stream, this.peerOf(peerId));
      },
      onRemoteScreen: (stream) => {
        if (this.links.get(peerId) === link) this.onRemoteScreen(stream, this.peerOf(peerId));
      },
      screenStream: this.screenStream,
      onStateChange: (l) => {
        if (this.links.get(peerId) !== l) return;
        if (l.mediaState === "connected") {
          this.setIceProblem(null);
          void l.limitVideo(this.links.size);
          // The addresses this device has while media flows: what a silence is compared with.
          if (!this.addressesSeen) {
            this.addressesSeen = true;
            void this.addressWatch.check();
          }
        }
        const troubled = ["disconnected", "failed"];
        if (troubled.includes(l.pc.iceConnectionState) || troubled.includes(l.pc.connectionState)) this.onMediaTrouble();
        this.report();
      },
      onIceProblem: (p) => {
        if (this.links.get(peerId) === link) this.setIceProblem(p);
      },
      onSilent: () => {
        if (this.links.get(peerId) === link) void this.checkAddresses();
      },
      onQuiet: () => {
        if (this.links.get(peerId) !== link) return;
        this.onMediaTrouble();
        // Also when no sample fell between silent and quiet (a throttled timer): the look is
        // shared, and runs only while a connection is silent.
        void this.checkAddresses();
      },
      onVideoStep: () => {
        if (this.links.get(peerId) === link) this.reportVideoStep();
      },
      onRemoteVideoPaused: (paused) => {
        if (this.links.get(peerId) === link) this.onRemoteVideoPaused(this.peerOf(peerId), paused);
      },
      onStuck: () => {
        void this.enqueue(async () => {
          if (this.links.get(peerId) === link && !this.closed) await this.connect(peerId);
        });
      },
    });
    this.links.set(peerId, link);
    this.expose();
    this.limitVideo();
    this.report();
  }

  /**
   * Begin talking to a participant both sides just learnt about: the impolite side connects (and
   * offers) at once; the polite side waits a moment for that offer, then connects anyway.
   * @private
   * @param {string} peerId
   */
  async begin(peerId) {
    this.cancelAwaitingOffer(peerId);
    if (!this.politeTowards(peerId)) {
      await this.connect(peerId);
      return;
    }
    this.dropLink(peerId);
    void this.getIceConfig(); // Warm the cache meanwhile.
    const timer = setTimeout(() => {
      this.enqueue(async () => {
        if (this.awaiting.get(peerId) === timer) {
          this.awaiting.delete(peerId);
          await this.connect(peerId);
        }
      });
    }, POLITE_OFFER_WAIT_MS);
    this.awaiting.set(peerId, timer);
    this.report();
  }

  /**
   * @private
   * @param {string} peerId
   */
  cancelAwaitingOffer(peerId) {
    const timer = this.awaiting.get(peerId);
    if (timer !== undefined) clearTimeout(timer);
    this.awaiting.delete(peerId);
  }

  /**
   * @private
   * @param {string} peerId
   */
  dropLink(peerId) {
    const old = this.links.get(peerId);
    if (!old) return;
    this.links.delete(peerId);
    old.close();
    this.reportVideoStep();
    if (this.links.size === 0) this.setIceProblem(null);
    this.expose();
    this.limitVideo();
    const peer = this.peerOf(peerId);
    this.onConnectionClosed(peer);
    if (old.remoteScreen) this.onRemoteScreen(null, peer);
    this.onRemoteStream(null, peer);
  }

  /**
   * Share a screen with everyone in the call (every connection, and every one made while it is
   * shared), or stop sharing (null). The page stops it too when the browser's own control ends
   * the capture (the track ends).
   * @param {MediaStream | null} stream From `getDisplayMedia`.
   */
  shareScreen(stream) {
    this.screenStream = stream;
    const track = stream?.getVideoTracks()[0] ?? null;
    if (track) track.contentHint = "detail";
    return this.enqueue(() => {
      if (this.screenStream !== stream) return;
      for (const link of this.links.values()) link.setScreen(track);
      this.recorderLink?.setScreen(track);
    });
  }

  /**
   * `joined` (first time or after a signaling reconnect).
   * @param {JoinedMessage} joined
   */
  joined(joined) {
    return this.enqueue(async () => {
      this.polite = joined.polite;
      this.localId = joined.participant_id;
      for (const peer of joined.peers) this.peers.set(peer.participant_id, peer);
      this.isAdmitted = joined.admitted;
      const recorder = joined.peers.find(isRecorder) ?? null;
      // Back after a signaling drop with a recorder connection that suffered meanwhile: what was
      // sent during the drop is lost, so offer it a fresh one.
      if (recorder && this.recorderLink && this.recorderLink.pc.connectionState !== "connected") this.dropRecorderLink();
      // Kept: its keys go on under a new epoch announced on this socket.
      if (recorder) this.recorderLink?.signalingResumed();
      // This device's network changed: the recorder's path went with the others.
      if (recorder && this.restartOnRejoin) this.recorderLink?.restartIce();
      this.setRecorder(recorder);
      await this.joinedMain(joined);
      await this.syncRecorder();
    });
  }

  /**
   * The main connections' part of `joined`: one with everyone present, none with anyone else.
   * @private
   * @param {JoinedMessage} joined
   */
  async joinedMain(joined) {
    if (!joined.admitted) return;
    const networkChanged = this.restartOnRejoin;
    this.restartOnRejoin = false;
    const present = joined.peers.filter((p) => p.participant_id !== joined.participant_id && !isRecorder(p));
    const presentIds = new Set(present.map((p) => p.participant_id));
    // Whoever left while signaling was away.
    for (const peerId of [...this.links.keys(), ...this.awaiting.keys()]) {
      if (!presentIds.has(peerId)) this.forget(peerId);
    }
    for (const peer of present) {
      const peerId = peer.participant_id;
      const link = this.links.get(peerId);
      if (link) {
        // Signaling came back and the peer is still here: keep the media connection, and restart
        // ICE if it suffered meanwhile (down, or connected but hearing nothing: our address may
        // have changed, which is also why signaling went).
        if (link.mediaState !== "connected" || link.quiet || networkChanged) link.restartIce();
        // Up and well, but an offer of ours (a screen's section, say) may have gone with the
        // old socket.
        else link.resendPendingOffer();
        continue;
      }
      if (this.awaiting.has(peerId)) continue;
      if (joined.resumed) {
        // This page took back a place it held (a reload): the others still have their old
        // connections and will not start anew by themselves, so offer fresh ones right away.
        await this.connect(peerId);
      } else {
        await this.begin(peerId);
      }
    }
    this.report();
  }

  /**
   * `admitted`: connections with everyone already in the call.
   * @param {Peer[]} peers
   */
  admitted(peers) {
    return this.enqueue(async () => {
      for (const peer of peers) this.peers.set(peer.participant_id, peer);
      this.isAdmitted = true;
      this.setRecorder(peers.find(isRecorder) ?? null);
      for (const peer of peers) {
        if (!isRecorder(peer) && peer.participant_id !== this.localId) await this.begin(peer.participant_id);
      }
      await this.syncRecorder();
    });
  }

  /**
   * `peer_joined`: a new participant, or one back after the grace period: always a fresh connection.
   * @param {Peer} peer
   */
  peerJoined(peer) {
    return this.enqueue(async () => {
      this.peers.set(peer.participant_id, peer);
      if (isRecorder(peer)) {
        this.dropRecorderLink();
        this.setRecorder(peer);
        await this.syncRecorder();
        return;
      }
      // Keys agreed with an earlier stay are not carried over: a new connection, a new code.
      this.e2ee?.forgetPeer(peer.participant_id);
      this.e2ee?.newEpochWithEveryoneBut(peer.participant_id);
      await this.begin(peer.participant_id);
    });
  }

  /**
   * @param {string} peerId
   * @param {boolean} online
   */
  peerPresence(peerId, online) {
    return this.enqueue(() => {
      if (this.recorderIds.has(peerId)) return;
      this.onPeerPresence(this.peerOf(peerId), online);
      const link = this.links.get(peerId);
      // Back online (or its socket replaced): whatever was said to it while it was away (an
      // offer, an answer, candidates) may be lost, so a connection that is not up yet starts its
      // negotiation over, and one that is up sends its unanswered offer again.
      if (!online || !link) return;
      if (link.mediaState !== "connected") link.restartIce();
      else link.resendPendingOffer();
    });
  }

  /**
   * @param {string} peerId
   * @param {string} reason
   */
  peerLeft(peerId, reason) {
    return this.enqueue(() => {
      if (this.recorderIds.has(peerId)) {
        if (this.recorderLink && this.recorderLink.peerId === peerId) this.dropRecorderLink();
        if (this.recorder && this.recorder.participant_id === peerId) this.setRecorder(null);
        this.peers.delete(peerId);
        return;
      }
      const peer = this.peerOf(peerId);
      this.forget(peerId);
      this.peers.delete(peerId);
      this.onPeerLeft(peer, reason);
      this.report();
    });
  }

  /**
   * End everything with one participant: their connection, a wait for their offer, their keys.
   * @private
   * @param {string} peerId
   */
  forget(peerId) {
    this.cancelAwaitingOffer(peerId);
    this.dropLink(peerId);
    this.e2ee?.forgetPeer(peerId);
    this.e2ee?.newEpochWithEveryoneBut(peerId);
  }

  /**
   * @param {string} from
   * @param {SessionDescription} description
   */
  description(from, description) {
    return this.enqueue(async () => {
      if (this.recorderIds.has(from)) {
        if (this.recorderLink && this.recorderLink.peerId === from) await this.recorderLink.handleDescription(description);
        return;
      }
      if (!this.isAdmitted || from === this.localId) return;
      const current = this.links.get(from);
      if (!current || current.isFromNewPeerConnection(description)) {
        // The other side (re)created its connection: follow with a fresh one.
        await this.connect(from, description);
      }
      const link = this.links.get(from);
      if (!link) return;
      try {
        await link.handleDescription(description);
      } catch (err) {
        if (description.type === "offer") {
          // An offer the current connection cannot take: start afresh and answer it there.
          console.warn("Remote offer refused; starting a fresh connection", err);
          await this.connect(from, description);
          const fresh = this.links.get(from);
          if (fresh) await fresh.handleDescription(description);
        } else {
          // An answer that does not fit (the other side changed connections meanwhile): start
          // afresh; the new connection offers again.
          console.warn("Remote answer refused; starting a fresh connection", err);
          await this.connect(from);
        }
      }
    });
  }

  /**
   * @param {string} from
   * @param {IceCandidate | null} candidate
   */
  candidate(from, candidate) {
    return this.enqueue(async () => {
      const link = this.links.get(from);
      if (link) await link.handleCandidate(candidate);
      else if (this.recorderLink && this.recorderLink.peerId === from) await this.recorderLink.handleCandidate(candidate);
    });
  }

  /**
   * A connection fell silent: look at this device's addresses, again every `LOOK_EVERY_MS` (further
   * apart when looks are slow: `pauseAfterLookMs`) while any connection stays silent (at most
   * `LOOK_FOR_MS`). Once an address shows up that the last look did not have (a phone off Wi-Fi
   * onto mobile data, and the browser knows the new network), signaling reconnects now (its
   * socket went with the old address) and every connection restarts ICE once joined again,
   * without waiting for the browser to call anything disconnected.
   * @private
   */
  async checkAddresses() {
    if (this.closed || this.lookingAtAddresses) return;
    this.lookingAtAddresses = true;
    try {
      const until = Date.now() + LOOK_FOR_MS;
      let gone = false;
      while (!this.closed && Date.now() < until) {
        const now = Date.now();
        if (![...this.links.values()].some((l) => l.path.isSilent(now))) return;
        const change = await this.addressWatch.check();
        gone ||= change.gone;
        if (change.added && !this.closed) {
          console.warn(`This device's network changed${gone ? "" : " (an address was added)"}; reconnecting at once`);
          this.restartOnRejoin = true;
          this.onNetworkChange();
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, pauseAfterLookMs(Date.now() - now)));
      }
    } finally {
      this.lookingAtAddresses = false;
    }
  }

  /** Restart ICE now on every connection (for example when the browser reports it is online again). */
  restartIce() {
    return this.enqueue(() => {
      for (const link of this.links.values()) link.restartIce();
      if (this.recorderLink) this.recorderLink.restartIce();
    });
  }

  /**
   * Renewed ICE servers (fresh TURN credentials, from `keepIceFresh`) for every
   * running connection: an ICE restart after the first credentials expired allocates with these.
   * @param {IceConfig} config
   */
  renewIceConfig(config) {
    for (const link of this.links.values()) link.renewIceConfig(config);
    this.recorderLink?.renewIceConfig(config);
  }

  /** Close every connection (hang up, ended). */
  close() {
    this.closed = true;
    this.stopIceRenewal();
    for (const peerId of [...this.awaiting.keys()]) this.cancelAwaitingOffer(peerId);
    for (const peerId of [...this.links.keys()]) this.dropLink(peerId);
    this.dropRecorderLink();
  }

  /**
   * The recorder now in the call (or none), told to the page when it changes.
   * @private
   * @param {Peer | null} recorder
   */
  setRecorder(recorder) {
    if (recorder) this.recorderIds.add(recorder.participant_id);
    const before = this.recorder ? this.recorder.participant_id : null;
    if (before !== null && before !== (recorder ? recorder.participant_id : null) && this.recorderPermitKey !== null) {
      // The recorder left or was replaced (its node died and another node's recorder took
      // over): its recording is over, and a connection offered for it would send keys for a
      // recording the service no longer takes, and take an answer meant for the next one.
      this.expiredPermitKey = this.recorderPermitKey;
      this.recorderPermit = null;
      this.recorderPermitKey = null;
      this.dropRecorderLink();
    }
    this.recorder = recorder;
    if (before !== (recorder ? recorder.participant_id : null)) this.onRecorder(recorder);
  }

  /**
   * Make the recorder's connection match what should be: one to the recorder while there is one,
   * this participant is admitted and the page allows it; none otherwise.
   * @private
   */
  async syncRecorder() {
    const permitKey = this.recorderPermitKey;
    const wanted = () =>
      this.recorder && this.isAdmitted && this.recorderPermit && this.recorderPermitKey === permitKey && !this.closed ? this.recorder.participant_id : null;
    let peerId = wanted();
    /** @type {RecordingTarget | null} */
    let target = null;
    if (peerId && this.recorderPermit) {
      const decided = this.recordingTarget(this.recorderPermit);
      if (decided.refusal !== null) {
        if (this.recorderRefusal !== decided.refusal) console.warn(`Nothing goes to the recorder: ${decided.refusal}`);
        this.recorderRefusal = decided.refusal;
        peerId = null;
      }
      target = decided.target;
    }
    if (this.recorderLink && (this.recorderLink.peerId !== peerId || this.recorderLink.permitKey !== permitKey)) this.dropRecorderLink();
    if (!peerId || this.recorderLink) return;
    const iceConfig = await this.getIceConfig();
    // allowRecorder(null) and close() act at once, outside the queue: look again.
    if (wanted() !== peerId || this.recorderLink) return;
    const usedTags = target ? this.recorderTags.get(target.recordingId) ?? new Set() : undefined;
    const link = new RecorderLink({
      peerId,
      iceConfig,
      localStream: this.localStream,
      send: this.send,
      target,
      avoidTags: usedTags,
      permitKey: permitKey ?? "",
      screenStream: this.screenStream,
    });
    this.recorderLink = link;
    if (target && usedTags && link.protection) this.recorderTags.set(target.recordingId, usedTags.add(link.protection.tag));
    const w = /** @type {any} */ (window);
    w.consultRecorderPc = link.pc;
    const protection = link.protection;
    w.consultRecorderE2ee = protection ? Object.freeze({ snapshot: () => protection.snapshot() }) : null;
  }

  /**
   * Where the recorder's keys go under a permit (null: media goes as it is), or why nothing may go
   * to the recorder at all.
   * @private
   * @param {RecorderPermit} permit
   * @returns {{ target: RecordingTarget | null, refusal: string | null }}
   */
  recordingTarget(permit) {
    const zk = permit.zeroKnowledge;
    if (!zk) {
      // An unprotected copy of an end-to-end encrypted call would defeat it.
      return this.e2ee
        ? { target: null, refusal: "the service records this end-to-end encrypted consultation without a recording key" }
        : { target: null, refusal: null };
    }
    if (!RecordingProtection.supported) return { target: null, refusal: "this browser cannot protect frames for a zero-knowledge recording" };
    if (!this.localId) return { target: null, refusal: "this participant's id is not known yet" };
    try {
      uuidBytes(zk.recordingId);
      return { target: { recordingId: zk.recordingId, participantId: this.localId, recordingKey: parseRecordingPublicKey(zk.recordingKey) }, refusal: null };
    } catch (err) {
      return { target: null, refusal: `the recording id or key from the service cannot be used (${err instanceof Error ? err.message : err})` };
    }
  }

  /** @private */
  dropRecorderLink() {
    const old = this.recorderLink;
    if (!old) return;
    this.recorderLink = null;
    old.close();
    const w = /** @type {any} */ (window);
    if (w.consultRecorderPc === old.pc) w.consultRecorderPc = null;
    if (old.protection) w.consultRecorderE2ee = null;
  }
}
