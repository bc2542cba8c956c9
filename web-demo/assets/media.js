// @ts-check
/**
 * Camera and microphone: opening them, readable errors, device lists and a microphone level meter.
 */

/**
 * @typedef {object} DeviceChoice
 * @property {string} [audioDeviceId]
 * @property {string} [videoDeviceId]
 */

/** A failure to open the camera or microphone, with a sentence for people. */
export class MediaAccessError extends Error {
  /**
   * @param {string} kind The DOMException name (`NotAllowedError`, `NotFoundError`, ...).
   * @param {string} message
   */
  constructor(kind, message) {
    super(message);
    this.name = "MediaAccessError";
    this.kind = kind;
  }
}

/**
 * A readable sentence for a getUserMedia failure.
 * @param {unknown} err
 * @returns {MediaAccessError}
 */
export function describeMediaError(err) {
  const name = err instanceof DOMException || err instanceof Error ? err.name : "Error";
  switch (name) {
    case "NotAllowedError":
    case "PermissionDeniedError":
    case "SecurityError":
      return new MediaAccessError(
        "NotAllowedError",
        "Camera or microphone access was denied. Allow access for this site in your browser " +
          "(the camera icon in the address bar or the site settings), then select “Try again”.",
      );
    case "NotFoundError":
    case "DevicesNotFoundError":
    case "OverconstrainedError":
      return new MediaAccessError(
        "NotFoundError",
        "No camera or microphone was found. Connect one (or check that it is switched on), then select “Try again”.",
      );
    case "NotReadableError":
    case "TrackStartError":
    case "AbortError":
      return new MediaAccessError(
        "NotReadableError",
        "Your camera or microphone is being used by another application. Close it there, then select “Try again”.",
      );
    default:
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        return new MediaAccessError(
          "Unsupported",
          "This browser cannot use a camera here. Open the link in a current version of Chrome, Edge, Firefox or Safari.",
        );
      }
      return new MediaAccessError(name, `The camera or microphone could not be started (${name}).`);
  }
}

/**
 * @param {DeviceChoice} choice
 * @param {boolean} audio
 * @param {boolean} video
 * @returns {MediaStreamConstraints}
 */
function constraints(choice, audio, video) {
  return {
    audio: audio
      ? {
          echoCancellation: true,
          noiseSuppression: true,
          autoGainControl: true,
          ...(choice.audioDeviceId ? { deviceId: { exact: choice.audioDeviceId } } : {}),
        }
      : false,
    video: video
      ? {
          width: { ideal: 640 },
          height: { ideal: 480 },
          frameRate: { ideal: 30 },
          ...(choice.videoDeviceId ? { deviceId: { exact: choice.videoDeviceId } } : {}),
        }
      : false,
  };
}

/**
 * Open the camera and microphone. When one of them is missing, settle for the other; when both
 * fail, throw a `MediaAccessError` with a readable message.
 * @param {DeviceChoice} [choice]
 * @returns {Promise<MediaStream>}
 */
export async function openMedia(choice = {}) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw describeMediaError(new Error());
  try {
    return await navigator.mediaDevices.getUserMedia(constraints(choice, true, true));
  } catch (err) {
    const described = describeMediaError(err);
    if (described.kind !== "NotFoundError") throw described;
    // One of the two devices is missing: try each alone.
    for (const [audio, video] of [
      [true, false],
      [false, true],
    ]) {
      try {
        return await navigator.mediaDevices.getUserMedia(constraints(choice, audio, video));
      } catch {
        // Try the next.
      }
    }
    throw described;
  }
}

/**
 * Stop every track of a stream.
 * @param {MediaStream | null | undefined} stream
 */
export function stopStream(stream) {
  if (!stream) return;
  for (const track of stream.getTracks()) track.stop();
}

/**
 * Cameras and microphones (labels are only known once access was granted).
 * @returns {Promise<{ cameras: MediaDeviceInfo[], microphones: MediaDeviceInfo[] }>}
 */
export async function listDevices() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return { cameras: [], microphones: [] };
  const devices = await navigator.mediaDevices.enumerateDevices();
  return {
    cameras: devices.filter((d) => d.kind === "videoinput" && d.deviceId),
    microphones: devices.filter((d) => d.kind === "audioinput" && d.deviceId),
  };
}

/**
 * Fill a <select> with devices, selecting the one in use.
 * @param {HTMLSelectElement} select
 * @param {MediaDeviceInfo[]} devices
 * @param {string | undefined} currentId
 * @param {string} noun "Camera" or "Microphone", for unnamed devices.
 */
export function fillDeviceSelect(select, devices, currentId, noun) {
  select.replaceChildren();
  if (devices.length === 0) {
    const option = document.createElement("option");
    option.value = "";
    option.textContent = `No ${noun.toLowerCase()} available`;
    select.append(option);
  }
  devices.forEach((device, i) => {
    const option = document.createElement("option");
    option.value = device.deviceId;
    option.textContent = device.label || `${noun} ${i + 1}`;
    if (device.deviceId === currentId) option.selected = true;
    select.append(option);
  });
  select.disabled = devices.length === 0;
}

/**
 * The device id a stream's track of a kind uses.
 * @param {MediaStream | null} stream
 * @param {"audio" | "video"} kind
 * @returns {string | undefined}
 */
export function deviceIdOf(stream, kind) {
  const track = stream ? (kind === "audio" ? stream.getAudioTracks() : stream.getVideoTracks())[0] : undefined;
  return track ? track.getSettings().deviceId : undefined;
}

/**
 * A live microphone level (WebAudio AnalyserNode), drawn as the width of a bar.
 */
export class LevelMeter {
  /**
   * @param {MediaStream} stream
   * @param {HTMLElement} bar The element whose width shows the level (CSSOM, allowed by the CSP).
   * @param {HTMLElement} [meter] The `role="meter"` element to keep `aria-valuenow` on.
   */
  constructor(stream, bar, meter) {
    this.bar = bar;
    this.meter = meter;
    this.frame = 0;
    this.lastAria = 0;
    /** @type {AudioContext | null} */
    this.context = null;
    if (stream.getAudioTracks().length === 0) {
      bar.style.width = "0%";
      return;
    }
    const context = new AudioContext();
    this.context = context;
    const source = context.createMediaStreamSource(stream);
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    let level = 0;
    const draw = () => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      const rms = Math.sqrt(sum / samples.length);
      // Roughly -60 dBFS .. 0 dBFS onto 0..1, with a quick attack and a slower release.
      const db = 20 * Math.log10(rms + 1e-8);
      const target = Math.min(1, Math.max(0, (db + 60) / 60));
      level = target > level ? target : level * 0.9 + target * 0.1;
      this.bar.style.width = `${Math.round(level * 100)}%`;
      const now = performance.now();
      if (this.meter && now - this.lastAria > 500) {
        this.lastAria = now;
        this.meter.setAttribute("aria-valuenow", String(Math.round(level * 100)));
      }
      this.frame = requestAnimationFrame(draw);
    };
    if (context.state === "suspended") context.resume().catch(() => {});
    this.frame = requestAnimationFrame(draw);
  }

  stop() {
    cancelAnimationFrame(this.frame);
    this.bar.style.width = "0%";
    if (this.context) this.context.close().catch(() => {});
    this.context = null;
  }
}
