/**
 * riptide's browser client: the Session interface of the seed draft (draft-rosenberg-dispatch-ript
 * family) over riptide's HTTP/3 API (docs/protocol.md). Plain ES module, no build step.
 *
 * Calling out:
 *
 *   import { Session } from './riptide-session.js';
 *   const s = new Session({ base: 'https://gw.example', tg: 'trunk', token });
 *   s.onSessionStateChange = (state, old) => console.log(state);
 *   await s.open('tel:+14089529999');   // → openingSession, then inSession when answered
 *   s.sendKeyPress('5');                 // RFC 4733 in the media
 *   s.mute = true;                       // sends silence
 *   s.volume = 0.5;                      // playout gain, 0..1
 *   await s.close();                     // → closingSession, then noSession
 *
 * Being called (docs/protocol.md §2.7): register a handler on a TG that a `[[sip_route]]
 * handlers = "<tg>"` rings, then accept or decline what rings:
 *
 *   s.onRegisterStateChange = (state, old) => …;   // registering → registered
 *   s.onIncoming = ({ from, destination, call }) => s.accept(true);   // or s.accept(false)
 *   await s.register({ tg: 'web', handlerId: 'desk-1' });   // resolves once registered
 *   …
 *   await s.unregister();                                   // → noRegistrar
 *
 * Options of `new Session(…)`:
 *   base                     the gateway's HTTP/3 origin, `https://host:port`
 *   tg                       the trunk group open() calls through, and register()'s default
 *   token                    bearer token (scopes calls:write, handlers:write); open() and
 *                            register() may pass one instead
 *   serverCertificateHashes  SHA-256 hashes of the gateway's certificate for WebTransport, for
 *                            riptide's generated development certificate (what
 *                            /web/config.json of the admin listener lists): entries are hex or
 *                            base64 strings, or `{algorithm: 'sha-256', value}` with such a
 *                            string or bytes. Settable later (the gateway renews the certificate).
 *   codecs                   the voice codecs to advertise, in preference order: any of 'PCMU',
 *                            'PCMA', 'opus' (case-insensitive). Default ['PCMU', 'PCMA', 'opus']:
 *                            G.711 first, so that riptide proposes what SIP peers expect; put
 *                            'opus' first to get opus wherever the other side has it. opus is
 *                            advertised only where WebCodecs can encode and decode it
 *                            (`await opusSupported()`); telephone-event (8 kHz) always is.
 *                            Settable later (`s.codecs = ['opus', 'PCMU']`): it applies to the
 *                            next open() or register().
 *
 * State:
 *   sessionState        noSession, openingSession (our call is being set up),
 *                       acceptingSession (a call rings: accept(true|false)), inSession,
 *                       closingSession; `onSessionStateChange(state, old)`
 *   registrationState   noRegistrar (no handler), registering (POST or events stream under
 *                       way, or broken and being re-opened with backoff), registered (the
 *                       handler's events stream is open: calls can ring), registrationFailed
 *                       (the gateway refused: 4xx, or it removed the handler);
 *                       `onRegisterStateChange(state, old)`; `registrationError` says why
 *                       it failed, `handler` is the registered handler's URI
 *   incoming            `{call, from, destination}` of the ringing call, else null;
 *                       `onIncoming(incoming)` when one starts ringing
 *   stats               datagrams sent/received, RTP loss, setup time, received level, codec,
 *                       frames encoded/decoded, …
 *   proposal            the call's proposal (docs/protocol.md §2.5: which codec, payload type
 *                       and pTime each side sends), else null
 * The same changes are also dispatched as events (the Session is an EventTarget):
 * 'sessionstatechange' and 'registerstatechange' (detail {state, old}) and 'incoming'
 * (detail: the incoming call).
 *
 * One call at a time: a call that rings while another is set up or in progress is not shown
 * (it keeps ringing on the TG's other handlers until its no-answer timeout).
 *
 * Signalling is fetch: POST {TG}/calls with an inline advertisement, or for a ringing call
 * POST {call} with our handler (the take), then GET {call}/events (a streaming JSON array)
 * and PUTs of our events. Media is a WebTransport session to {call}/media?ticket=… (the
 * answer's mediaTicket: browsers cannot send Authorization on the CONNECT). Each datagram is
 * the RoQ flow id (0 = RTP) and one RTP packet; the browser adds the Quarter Stream ID. The
 * microphone is captured in an AudioWorklet in frames of the proposal's pTime and encoded as
 * the proposal says: G.711 (µ-law or A-law) in JS from an 8 kHz AudioContext, or opus with
 * WebCodecs (AudioEncoder: raw opus packets, mono, 32 kbit/s, RTP clock 48 kHz) from a 48 kHz
 * AudioContext. Received audio is decoded the same way (opus with AudioDecoder) and plays
 * through a jitter buffer in another worklet (web/worklets.js), then a gain node (volume).
 * `audio` and `output` are the AudioContext and gain node of the current (or last) call: the
 * 8 kHz ones for G.711, the 48 kHz ones for opus. DTMF (RFC 4733) keeps the clock rate the
 * proposal gives telephone-event (8000): with opus its durations count 8 kHz ticks while its
 * RTP timestamps stay on the audio's 48 kHz timeline (one SSRC).
 */
import { alawDecode, alawEncode, decode as ulawDecode, encode as ulawEncode } from './g711.js';

export const SessionState = Object.freeze({
    noSession: 'noSession',
    openingSession: 'openingSession',
    acceptingSession: 'acceptingSession',
    inSession: 'inSession',
    closingSession: 'closingSession',
});

export const RegistrationState = Object.freeze({
    noRegistrar: 'noRegistrar',
    registering: 'registering',
    registered: 'registered',
    registrationFailed: 'registrationFailed',
});

const G711_RATE = 8000;
const OPUS_RATE = 48000;
const OPUS_BITRATE = 32000;
// Packet times an opus encoder can produce in one packet (RFC 6716 frame sizes, whole ms).
const OPUS_PTIMES = [5, 10, 20, 40, 60];
const DTMF_MS = 160; // a key press lasts 160 ms
const DTMF_EVENTS = '0123456789*#ABCD';
const NORMAL_CLEARING = 'Q.850;cause=16;text="Normal call clearing"';
// The voice codecs this library can send and receive (no transcoding anywhere), as advertised,
// with the payload types riptide should propose when it has the choice. The proposal decides.
// opus is signalled 48000/2 (RFC 7587) though this library sends mono.
const CODEC_ADS = {
    PCMU: { mediaType: 'audio/PCMU', clockRate: 8000, payloadType: 0, packetTime: 20 },
    PCMA: { mediaType: 'audio/PCMA', clockRate: 8000, payloadType: 8, packetTime: 20 },
    opus: { mediaType: 'audio/opus', clockRate: 48000, channels: 2, payloadType: 111,
        parameters: 'minptime=10;useinbandfec=1', packetTime: 20 },
};
const TELEPHONE_EVENT_AD = { mediaType: 'audio/telephone-event', clockRate: 8000, payloadType: 101, parameters: '0-15', packetTime: 20 };
export const DEFAULT_CODECS = Object.freeze(['PCMU', 'PCMA', 'opus']);
const CODECS = {
    'audio/pcmu': { name: 'PCMU', rate: G711_RATE, encode: ulawEncode, decode: ulawDecode, silence: 0xff },
    'audio/pcma': { name: 'PCMA', rate: G711_RATE, encode: alawEncode, decode: alawDecode, silence: 0xd5 },
    'audio/opus': { name: 'opus', rate: OPUS_RATE, webCodecs: true },
};
const OPUS_ENCODER = { codec: 'opus', sampleRate: OPUS_RATE, numberOfChannels: 1, bitrate: OPUS_BITRATE };
const OPUS_DECODER = { codec: 'opus', sampleRate: OPUS_RATE, numberOfChannels: 1 };

// The codec names of a `codecs` option, checked and spelled as CODEC_ADS spells them.
function codecList(list) {
    if (!Array.isArray(list) || list.length === 0) throw new TypeError('codecs must be a non-empty array of codec names');
    const names = list.map((c) => {
        const name = Object.keys(CODEC_ADS).find((k) => k.toLowerCase() === String(c).toLowerCase());
        if (!name) throw new TypeError(`unknown codec ${c}: this library speaks ${Object.keys(CODEC_ADS).join(', ')}`);
        return name;
    });
    return Object.freeze([...new Set(names)]);
}

// Whether this browser's WebCodecs can encode and decode opus as this library uses it
// (48 kHz mono, raw packets). Resolves false where WebCodecs is missing.
let opusCheck = null;
export function opusSupported() {
    opusCheck ??= (async () => {
        if (typeof AudioEncoder === 'undefined' || typeof AudioDecoder === 'undefined' || typeof AudioData === 'undefined') return false;
        try {
            const [e, d] = await Promise.all([
                AudioEncoder.isConfigSupported({ ...OPUS_ENCODER, opus: { format: 'opus', frameDuration: 20000 } }),
                AudioDecoder.isConfigSupported(OPUS_DECODER),
            ]);
            return Boolean(e.supported && d.supported);
        } catch { return false; }
    })();
    return opusCheck;
}

// Linear interpolation of a mono frame from rate `from` to rate `to` (only for a decoder that
// does not give the AudioContext's rate; Chromium's opus decoder gives 48 kHz as configured).
function resample(x, from, to) {
    if (from === to) return x;
    const n = Math.max(1, Math.round((x.length * to) / from));
    const y = new Float32Array(n);
    for (let i = 0; i < n; i++) {
        const p = (i * from) / to;
        const j = Math.floor(p);
        const f = p - j;
        y[i] = (x[j] ?? 0) * (1 - f) + (x[Math.min(j + 1, x.length - 1)] ?? 0) * f;
    }
    return y;
}
// Handler events stream (docs/protocol.md §2.7): riptide pings every 15 s, so a stream silent
// for much longer is dead even if TCP/QUIC has not noticed yet.
const HANDLER_STREAM_SILENCE_MS = 45000;
// Re-opening a broken handler stream: riptide's TGs ask for at least 2 s between retries
// (`retry-backoff`, §2.2); doubled per failure up to 30 s.
const BACKOFF_MIN_MS = 2000;
const BACKOFF_MAX_MS = 30000;

// The destination of a tel: or sip: URI as docs/protocol.md §2.4 wants it: E.164, a user part,
// or user@domain (URI parameters and headers dropped).
export function destinationOf(url) {
    const m = /^(tel|sips?):([^;?]+)/i.exec(url.trim());
    if (!m) throw new TypeError(`not a tel: or sip: URI: ${url}`);
    const target = decodeURIComponent(m[2]);
    // tel: numbers may carry visual separators (RFC 3966); they are not part of the number.
    return m[1].toLowerCase() === 'tel' ? target.replace(/[-.() ]/g, '') : target;
}

// WebTransport's serverCertificateHashes from the forms the constructor accepts.
export function certificateHashes(list) {
    const bytes = (v) => {
        if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return new Uint8Array(v.buffer ?? v, v.byteOffset ?? 0, v.byteLength);
        const s = String(v).trim();
        if (/^([0-9a-f]{2}:?){32}$/i.test(s)) return Uint8Array.from(s.replace(/:/g, '').match(/../g), (h) => parseInt(h, 16));
        const raw = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
        return Uint8Array.from(raw, (c) => c.charCodeAt(0));
    };
    return (list ?? []).map((h) => {
        const value = bytes(typeof h === 'object' && !ArrayBuffer.isView(h) && !(h instanceof ArrayBuffer) ? (h.value ?? h.hex) : h);
        if (value.length !== 32) throw new TypeError('a serverCertificateHashes entry is not a SHA-256 hash');
        return { algorithm: 'sha-256', value };
    });
}

// Incremental reader of riptide's events streams: an endless JSON array of objects, possibly
// without commas (docs/protocol.md §3). push() returns the complete objects seen so far.
export class EventArrayReader {
    constructor() { this.buf = ''; this.depth = 0; this.inStr = false; this.esc = false; this.start = -1; this.done = false; }
    push(text) {
        const events = [];
        for (const c of text) {
            this.buf += c;
            if (this.inStr) {
                if (this.esc) this.esc = false;
                else if (c === '\\') this.esc = true;
                else if (c === '"') this.inStr = false;
                continue;
            }
            if (c === '"') this.inStr = true;
            else if (c === '{' || c === '[') {
                if (this.depth === 1 && c === '{') this.start = this.buf.length - 1;
                this.depth++;
            } else if (c === '}' || c === ']') {
                this.depth--;
                if (this.depth === 1 && c === '}') {
                    try { events.push(JSON.parse(this.buf.slice(this.start))); } catch { /* skipped, as §3 says */ }
                    this.buf = '';
                } else if (this.depth === 0) this.done = true;
            }
        }
        if (this.depth <= 1) this.buf = '';
        return events;
    }
}

// Resolves after `ms`, or rejects at once when `signal` aborts.
function sleep(ms, signal) {
    return new Promise((ok, fail) => {
        if (signal?.aborted) return fail(signal.reason);
        const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); ok(); }, ms);
        const onAbort = () => { clearTimeout(t); fail(signal.reason); };
        signal?.addEventListener('abort', onAbort, { once: true });
    });
}

const problemText = (status, body) => `${status} ${body?.detail ?? body?.title ?? ''}`.trim();

export class Session extends EventTarget {
    constructor({ base, tg, token, serverCertificateHashes, codecs = DEFAULT_CODECS } = {}) {
        super();
        this.base = base.replace(/\/$/, '');
        this.tg = tg;
        this.token = token;
        this.serverCertificateHashes = serverCertificateHashes ?? [];
        this.codecs = codecs;
        this._state = SessionState.noSession;
        this._regState = RegistrationState.noRegistrar;
        this._reg = null;
        this._mute = false;
        this._volume = 1;
        this.onSessionStateChange = null;
        this.onRegisterStateChange = null;
        this.onIncoming = null;
        this.registrationError = null;
        // AudioContexts by sample rate: 8 kHz for G.711 calls, made now with its worklets, so
        // that the page can start a call at once; 48 kHz for opus calls, made once opus is
        // known to work here when opus comes first in `codecs`, else on the first opus call.
        // They may start suspended until a click (autoplay policy). worklets.js is fetched
        // once, now: a context made later loads it from memory.
        this._disposed = false;
        this._contexts = new Map();
        this._rate = G711_RATE;
        this._workletSource = this._fetchWorklets();
        this._workletSource.catch(() => {}); // reported through `ready`
        this.ready = (async () => {
            await this._context(G711_RATE).ready;
            if (this._codecs[0] === 'opus' && (await opusSupported())) {
                await this._context(OPUS_RATE).ready.catch((e) => console.warn(`riptide: 48 kHz audio: ${e.message ?? e}`));
            }
        })();
        this._reset();
    }

    // The voice codecs to advertise, in preference order (see the header).
    get codecs() { return this._codecs; }
    set codecs(list) { this._codecs = codecList(list); }
    // The AudioContext and output gain node of the current (or last) call (null once disposed).
    get audio() { return this._contexts.get(this._rate)?.ctx ?? null; }
    get output() { return this._contexts.get(this._rate)?.output ?? null; }
    // The call's proposal (docs/protocol.md §2.5), once the gateway gave it.
    get proposal() { return this._proposal; }

    // Ends the call, removes the handler and closes the AudioContexts: the Session is unusable
    // afterwards (a page that changes gateway makes a new one).
    async dispose() {
        this._disposed = true;
        await Promise.all([this.unregister(), this.close()].map((p) => p.catch(() => {})));
        for (const c of this._contexts.values()) c.ctx.close().catch(() => {});
        this._contexts.clear();
    }

    get sessionState() { return this._state; }
    get registrationState() { return this._regState; }
    get incoming() { return this._state === SessionState.acceptingSession ? this._incoming : null; }
    // The registered handler's URI (null when there is none).
    get handler() { return this._reg?.uri ?? null; }
    get mute() { return this._mute; }
    set mute(on) { this._mute = Boolean(on); }
    get volume() { return this._volume; }
    set volume(v) {
        const x = Number(v);
        if (!Number.isFinite(x)) throw new RangeError(`volume must be a number in 0..1: ${v}`);
        this._volume = Math.max(0, Math.min(1, x));
        // A short ramp: a step in gain clicks.
        for (const c of this._contexts.values()) c.output.gain.setTargetAtTime(this._volume, c.ctx.currentTime, 0.01);
    }

    // Counters for the page (and tests): datagrams each way, RTP loss from sequence gaps,
    // setup time (open() or the call's `incoming` → inSession; acceptMs: accept(true) →
    // inSession), the received audio's RMS level (0..1, before the volume), jitter buffer;
    // the codec we send and its sample rate, voice frames encoded (sent as RTP) and decoded
    // (handed to the jitter buffer), and the last encoder/decoder error (WebCodecs) if any.
    get stats() {
        const r = this.rx;
        const expected = r.count ? r.maxSeq - r.baseSeq + 1 : 0;
        return {
            direction: this.direction,
            codec: this.codec?.name ?? null,
            sampleRate: this.codec ? this.codec.rate : null,
            datagramsSent: this.tx.datagrams,
            datagramsReceived: r.datagrams,
            rtpReceived: r.count,
            packetsLost: Math.max(0, expected - r.count),
            framesEncoded: this.tx.frames,
            framesDecoded: r.frames,
            mediaError: this.mediaError,
            dtmfPacketsSent: this.tx.dtmfPackets,
            setupMs: this.setupMs,
            acceptMs: this.acceptMs,
            receivedLevel: this._level(),
            playout: this.playoutStats,
            endReason: this.endReason,
        };
    }

    // Places a call to a tel: or sip: URI. Resolves once the call exists and its media is
    // open (state openingSession); inSession follows when the callee answers.
    async open(url, { token } = {}) {
        if (this._state !== SessionState.noSession) throw new Error(`open() in ${this._state}`);
        const destination = destinationOf(url);
        this._reset();
        this.token = token ?? this.token;
        this.direction = 'outbound';
        this.openedAt = performance.now();
        this._setState(SessionState.openingSession);
        try {
            await this._prepareAudio();
            const r = await fetch(`${this._tgUri(this.tg)}/calls`, {
                method: 'POST',
                headers: this._headers(true),
                body: JSON.stringify({ destination, advertisement: await this._advertisement() }),
                signal: this.abort.signal,
            });
            const body = await r.json().catch(() => ({}));
            if (r.status !== 201) throw new Error(`POST calls: ${problemText(r.status, body)}`);
            this.call = r.headers.get('location') ?? body.uri;
            await this._choosePayloadTypes(body.proposal);
            this._readEvents(); // runs until the call ends
            await this._openMedia(body.mediaTicket);
        } catch (e) {
            this.endReason ??= String(e.message ?? e);
            this._teardown();
            throw e;
        }
    }

    // Hangs up: sends `end` on a PUT {call}/events, then waits (at most 5 s) for the server to
    // close the events stream. While a call rings (acceptingSession) it declines it.
    async close() {
        if (this._state === SessionState.acceptingSession) return this.accept(false);
        if (this._state === SessionState.noSession || this._state === SessionState.closingSession) return;
        this._setState(SessionState.closingSession);
        this.endReason ??= 'closed by this page';
        if (this.call) {
            try {
                await this._put([this._event('end', { reason: NORMAL_CLEARING })]);
                await Promise.race([this.eventsDone, new Promise((ok) => setTimeout(ok, 5000))]);
            } catch { /* the teardown below ends the call's streams anyway */ }
        }
        this._teardown();
    }

    // Answers (true) or declines (false) the ringing call. Answering takes the call
    // (POST {call} with our handler), opens its events stream and media, then sends
    // `answered` (the SIP caller gets 200 OK): inSession. Declining sends `declined` 603 to
    // every handler it rings on (docs/protocol.md §2.7 step 5): noSession.
    async accept(yes = true) {
        if (this._state !== SessionState.acceptingSession) throw new Error(`accept() in ${this._state}`);
        if (this._taking) throw new Error('accept() already under way');
        if (!yes) {
            this.endReason = 'declined by this page';
            try {
                await this._put([this._event('declined', { code: 603, reason: 'Decline' })]);
            } finally {
                this._teardown();
            }
            return;
        }
        this._taking = true;
        this.acceptedAt = performance.now();
        let taken = false;
        try {
            await this._prepareAudio();
            this._checkRinging();
            const r = await fetch(this.call, {
                method: 'POST',
                headers: this._headers(true),
                body: JSON.stringify({ handler: this._incoming.handler }),
                signal: this.abort.signal,
            });
            const body = await r.json().catch(() => ({}));
            if (r.status !== 200) throw new Error(`taking the call: ${problemText(r.status, body)}`);
            taken = true;
            this._checkRinging();
            await this._choosePayloadTypes(body.proposal);
            this._readEvents();
            await this._openMedia(body.mediaTicket);
            this._checkRinging();
            const a = await this._put([this._event('answered')]);
            if (!a.ok) throw new Error(`sending answered: ${a.status}`);
            this._checkRinging();
            this._setState(SessionState.inSession);
        } catch (e) {
            this.endReason ??= String(e.message ?? e);
            // A taken call would wait for our answer until its timeouts: refuse it now (480).
            if (taken) this._put([this._event('end', { reason: 'SIP;cause=480;text="Temporarily Unavailable"' })]).catch(() => {});
            this._teardown();
            throw e;
        } finally {
            this._taking = false;
        }
    }

    // Sends a DTMF key (0-9, *, #, A-D) as RFC 4733 telephone-events in the media: 160 ms,
    // then three end packets. Keys pressed during one are queued.
    sendKeyPress(key) {
        const code = DTMF_EVENTS.indexOf(String(key).toUpperCase());
        if (code < 0 || String(key).length !== 1) throw new RangeError(`not a DTMF key: ${key}`);
        if (this._state !== SessionState.inSession) throw new Error(`sendKeyPress() in ${this._state}`);
        if (this.ptEvent === null) throw new Error('the call has no telephone-event payload type');
        this.tx.keys.push(code);
    }

    // Registers a handler on `tg` (default: the constructor's) and keeps its events stream open
    // (re-opened with backoff when it breaks; registered again if the gateway forgot it, e.g.
    // after a restart). Resolves once registered; rejects on registrationFailed (the gateway
    // refused: 4xx) or when unregister() comes first. handlerId: a URI path segment naming
    // this device, the same on every TG (default: a random one).
    async register({ tg = this.tg, handlerId, token } = {}) {
        if (this._reg) throw new Error(`register() while ${this._regState}: unregister() first`);
        this.token = token ?? this.token;
        const reg = {
            tg,
            id: handlerId ?? `page-${crypto.randomUUID().slice(0, 8)}`,
            uri: null,
            abort: new AbortController(),
        };
        this._reg = reg;
        this.registrationError = null;
        const outcome = new Promise((ok, fail) => { reg.settle = { ok, fail }; });
        this._registration(reg);
        return outcome;
    }

    // Removes the handler (DELETE) and closes its events stream: noRegistrar. A call ringing on
    // it stops ringing here.
    async unregister() {
        const reg = this._reg;
        if (!reg) return;
        this._reg = null;
        reg.abort.abort(new DOMException('unregistered', 'AbortError'));
        reg.settle?.fail(new Error('unregistered'));
        if (this._state === SessionState.acceptingSession && !this._taking) {
            this.endReason = 'unregistered';
            this._teardown();
        }
        this._setRegState(RegistrationState.noRegistrar);
        if (reg.uri) {
            try {
                // keepalive: unregister() on pagehide must outlive the page.
                await fetch(reg.uri, { method: 'DELETE', headers: this._headers(), keepalive: true });
            } catch { /* the gateway forgets it anyway once its stream is gone for good */ }
        }
    }

    // --- internals ---

    _reset() {
        this.abort = new AbortController();
        this.call = null;
        this.wt = null;
        this.direction = null;
        this.openedAt = null;
        this.acceptedAt = null;
        this.setupMs = null;
        this.acceptMs = null;
        this.endReason = null;
        this.playoutStats = null;
        this._incoming = null;
        this._taking = false;
        this.seqOut = 0;
        this.codec = null;
        this._proposal = null;
        this.mediaError = null;
        this.ptAudio = 0;
        this.ptEvent = null;
        this.eventRate = G711_RATE;
        this.rxCodecs = new Map();
        this.pTime = 20;
        this.frame = 160;
        this.encoder = null;
        this.decoder = null;
        // pending: the RTP sequence number and timestamp of each frame the opus encoder has
        // not given back yet (it answers in order, one packet per frame).
        this.tx = { datagrams: 0, dtmfPackets: 0, frames: 0, seq: Math.floor(Math.random() * 65536),
            ts: Math.floor(Math.random() * 2 ** 32), ssrc: Math.floor(Math.random() * 2 ** 32) >>> 0,
            keys: [], key: null, pending: [], clock: 0, restarts: 0 };
        // pending: the extended sequence numbers of the packets the opus decoder has not
        // given back yet (in order, one frame per packet).
        this.rx = { datagrams: 0, count: 0, baseSeq: 0, maxSeq: 0, frames: 0, pending: [], clock: 0, restarts: 0 };
        this.eventsDone = Promise.resolve();
    }

    _tgUri(tg) { return `${this.base}/.well-known/ript/v1/providertgs/${encodeURIComponent(tg)}`; }

    _headers(json = false) {
        const h = { authorization: `Bearer ${this.token}` };
        if (json) h['content-type'] = 'application/json';
        return h;
    }

    _put(events) {
        return fetch(`${this.call}/events`, { method: 'PUT', headers: this._headers(true), body: JSON.stringify(events) });
    }

    // The advertisement of docs/protocol.md §2.3: `codecs` as this browser can do them, then
    // telephone-event.
    async _advertisement() {
        const opus = await opusSupported();
        const voice = this._codecs.filter((c) => c !== 'opus' || opus);
        if (!voice.length) throw new Error(`none of the codecs ${this._codecs.join(', ')} works in this browser (no WebCodecs opus)`);
        return { codecs: [...voice.map((c) => ({ ...CODEC_ADS[c] })), { ...TELEPHONE_EVENT_AD }] };
    }

    // Worklets loaded, the contexts running, and the microphone open.
    async _prepareAudio() {
        if (this._disposed) throw new Error('this Session was disposed of');
        await this.ready;
        await Promise.all([...this._contexts.values()].map((c) => c.ctx.resume()));
        const mic = await navigator.mediaDevices.getUserMedia({
            audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        });
        // The call may have ended while the browser asked for the microphone.
        if (this._state === SessionState.noSession) {
            mic.getTracks().forEach((t) => t.stop());
            throw new Error(`the call ended (${this.endReason})`);
        }
        this.mic = mic;
    }

    // While answering: the call must still be ours to answer (the caller may have given up).
    _checkRinging() {
        if (this._state !== SessionState.acceptingSession) throw new Error(`the call stopped ringing (${this.endReason})`);
    }

    // web/worklets.js is fetched like the page's other scripts and handed to the worklet as a
    // Blob URL: worklet requests of their own bypass request interception (Playwright's
    // page.route, which the browser checks serve this page with, never sees them).
    async _fetchWorklets() {
        const r = await fetch(new URL('./worklets.js', import.meta.url));
        if (!r.ok) throw new Error(`worklets.js: ${r.status}`);
        return r.text();
    }

    // The AudioContext at `rate` with its output gain (the volume) and worklets (`ready`),
    // made on first use.
    _context(rate) {
        if (this._disposed) throw new Error('this Session was disposed of');
        let c = this._contexts.get(rate);
        if (c) return c;
        const ctx = new AudioContext({ sampleRate: rate });
        // After the analyser, so that the received level does not depend on the volume.
        const output = ctx.createGain();
        output.gain.value = this._volume;
        output.connect(ctx.destination);
        c = { ctx, output };
        c.ready = (async () => {
            if (ctx.sampleRate !== rate) throw new Error(`this browser made a ${ctx.sampleRate} Hz AudioContext, not ${rate} Hz`);
            const url = URL.createObjectURL(new Blob([await this._workletSource], { type: 'text/javascript' }));
            try { await ctx.audioWorklet.addModule(url); } finally { URL.revokeObjectURL(url); }
        })();
        c.ready.catch(() => {}); // reported where it is awaited
        this._contexts.set(rate, c);
        return c;
    }

    _setState(s) {
        if (s === this._state) return;
        const old = this._state;
        this._state = s;
        if (s === SessionState.inSession) {
            const now = performance.now();
            this.setupMs = Math.round(now - this.openedAt);
            if (this.acceptedAt != null) this.acceptMs = Math.round(now - this.acceptedAt);
        }
        try { this.onSessionStateChange?.(s, old); } catch (e) { console.error(e); }
        this.dispatchEvent(new CustomEvent('sessionstatechange', { detail: { state: s, old } }));
    }

    _setRegState(s) {
        if (s === this._regState) return;
        const old = this._regState;
        this._regState = s;
        try { this.onRegisterStateChange?.(s, old); } catch (e) { console.error(e); }
        this.dispatchEvent(new CustomEvent('registerstatechange', { detail: { state: s, old } }));
    }

    _event(name, extra) {
        return { name, direction: 'c2s', timestamp: new Date().toISOString(), call: this.call, seq: this.seqOut++, ...extra };
    }

    // The registration's life: POST the handler, hold its events stream open, and re-open it
    // (with backoff) when it breaks, until unregister() or a refusal.
    async _registration(reg) {
        const live = () => this._reg === reg;
        const fail = (why) => {
            if (!live()) return;
            this.registrationError = why;
            this._reg = null;
            reg.abort.abort();
            this._setRegState(RegistrationState.registrationFailed);
            reg.settle.fail(new Error(why));
        };
        let backoff = 0;
        let posted = false; // the gateway has our handler, as far as we know
        let justPosted = false; // … and we have not seen its stream open since the POST
        while (live()) {
            this._setRegState(RegistrationState.registering);
            try {
                if (backoff) await sleep(backoff * (0.8 + 0.4 * Math.random()), reg.abort.signal);
                if (!posted) {
                    let advertisement;
                    try { advertisement = await this._advertisement(); } catch (e) { return fail(String(e.message ?? e)); }
                    const r = await fetch(`${this._tgUri(reg.tg)}/handlers`, {
                        method: 'POST',
                        headers: this._headers(true),
                        body: JSON.stringify({ 'handler-id': reg.id, advertisement }),
                        signal: reg.abort.signal,
                    });
                    const body = await r.json().catch(() => ({}));
                    if (r.status >= 400 && r.status < 500 && r.status !== 429) return fail(`registering: ${problemText(r.status, body)}`);
                    if (r.status !== 201 && r.status !== 200) throw new Error(`registering: ${problemText(r.status, body)}`);
                    reg.uri = r.headers.get('location') ?? body.uri;
                    posted = justPosted = true;
                }
                const ended = await this._handlerStream(reg, () => { backoff = 0; justPosted = false; });
                if (ended === 'removed') return fail('the gateway removed the handler');
                if (ended.startsWith('refused')) return fail(ended);
                if (ended === 'gone') {
                    // Forgotten (handlers live in the gateway's memory: it restarted): register
                    // again at once; with backoff when even a fresh POST's stream is 404.
                    posted = false;
                    if (!justPosted) { backoff = 0; continue; }
                }
            } catch (e) {
                if (!live()) return;
                console.warn(`riptide: handler registration: ${e.message ?? e}`);
            }
            backoff = Math.min(BACKOFF_MAX_MS, Math.max(BACKOFF_MIN_MS, backoff * 2));
        }
    }

    // One GET of the handler's events stream, read to its end. Returns 'gone' (404),
    // 'refused …' (other 4xx), 'removed' (the array was closed: the handler was deleted) or
    // 'broken' (the stream ended or fell silent); throws on network errors.
    async _handlerStream(reg, onOpen) {
        const stream = new AbortController();
        const onAbort = () => stream.abort(reg.abort.signal.reason);
        reg.abort.signal.addEventListener('abort', onAbort, { once: true });
        let timer = null;
        const arm = () => {
            clearTimeout(timer);
            timer = setTimeout(() => stream.abort(new Error('no ping for 45 s')), HANDLER_STREAM_SILENCE_MS);
        };
        try {
            arm();
            const r = await fetch(`${reg.uri}/events`, { headers: this._headers(), signal: stream.signal });
            if (r.status === 404) return 'gone';
            if (r.status >= 400 && r.status < 500 && r.status !== 429) {
                const body = await r.json().catch(() => ({}));
                return `refused: ${problemText(r.status, body)}`;
            }
            if (r.status !== 200) throw new Error(`GET handler events: ${r.status}`);
            onOpen();
            this._setRegState(RegistrationState.registered);
            reg.settle.ok();
            const parser = new EventArrayReader();
            const text = r.body.pipeThrough(new TextDecoderStream()).getReader();
            while (!parser.done) {
                arm();
                const { value, done } = await text.read();
                if (done) break;
                for (const ev of parser.push(value)) this._onHandlerEvent(reg, ev);
            }
            return parser.done ? 'removed' : 'broken';
        } catch (e) {
            if (stream.signal.aborted && !reg.abort.signal.aborted) return 'broken'; // fell silent
            throw e;
        } finally {
            clearTimeout(timer);
            reg.abort.signal.removeEventListener('abort', onAbort);
        }
    }

    _onHandlerEvent(reg, ev) {
        const name = ev.name ?? ev.event ?? ev.type;
        if (name === 'incoming') {
            if (!ev.call) return;
            // A re-opened stream repeats what rings now.
            if (this._state === SessionState.acceptingSession && this.call === ev.call) return;
            if (this._state !== SessionState.noSession) return; // busy: see the header
            this._reset();
            this.direction = 'inbound';
            this.call = ev.call;
            this.openedAt = performance.now();
            this._incoming = { call: ev.call, from: ev.from ?? null, destination: ev.destination ?? null, handler: reg.uri };
            this._setState(SessionState.acceptingSession);
            const info = this.incoming;
            try { this.onIncoming?.(info); } catch (e) { console.error(e); }
            this.dispatchEvent(new CustomEvent('incoming', { detail: info }));
        } else if (name === 'end' || name === 'terminated') {
            if (this._state === SessionState.acceptingSession && this.call === ev.call && !this._taking) {
                this.endReason = `stopped ringing${ev.reason ? ` (${ev.reason})` : ''}`;
                this._teardown();
            } else if (this._state === SessionState.acceptingSession && this.call === ev.call) {
                // Mid-take: the take (or the events stream) will fail and tear down.
                this.endReason = `stopped ringing${ev.reason ? ` (${ev.reason})` : ''}`;
            }
        }
    }

    // The codecs of the proposal (docs/protocol.md §2.5): we send the c2s streams' payload
    // types and read the s2c ones (riptide proposes the same both ways, but need not).
    // The audio runs at the sending codec's rate (8 kHz G.711, 48 kHz opus); received streams
    // of another rate are not played (riptide never proposes such a mix).
    async _choosePayloadTypes(proposal) {
        this._proposal = proposal ?? null;
        const opus = await opusSupported();
        const usable = (s) => {
            const c = CODECS[s.mediaType?.toLowerCase()];
            return c && (!c.webCodecs || opus) ? c : null;
        };
        const streams = proposal?.streams ?? [];
        const c2s = streams.filter((s) => s.direction === 'c2s');
        const s2c = streams.filter((s) => s.direction === 's2c');
        const voice = c2s.find(usable);
        if (!voice) throw new Error(`the proposal has no stream this page can send (${c2s.map((s) => s.mediaType).join(', ') || 'none'})`);
        this.codec = usable(voice);
        this.ptAudio = voice.payloadType;
        let pTime = voice.pTime || 20;
        // opus packets hold 2.5 to 60 ms; anything else is sent as 20 ms packets.
        if (this.codec.webCodecs && !OPUS_PTIMES.includes(pTime)) pTime = 20;
        this.pTime = pTime;
        this.frame = (this.codec.rate / 1000) * pTime;
        const event = c2s.find((s) => /^audio\/telephone-event$/i.test(s.mediaType));
        this.ptEvent = event?.payloadType ?? null;
        this.eventRate = event?.clockRate || G711_RATE;
        for (const s of s2c.length ? s2c : c2s) {
            const c = usable(s);
            if (c && c.rate === this.codec.rate) this.rxCodecs.set(s.payloadType, c);
        }
    }

    _readEvents() {
        this.eventsDone = (async () => {
            try {
                const r = await fetch(`${this.call}/events`, { headers: this._headers(), signal: this.abort.signal });
                if (r.status !== 200) throw new Error(`GET events: ${r.status}`);
                const parser = new EventArrayReader();
                const text = r.body.pipeThrough(new TextDecoderStream()).getReader();
                while (!parser.done) {
                    const { value, done } = await text.read();
                    if (done) break;
                    for (const ev of parser.push(value)) this._onEvent(ev);
                }
                this.endReason ??= 'the events stream ended';
            } catch (e) {
                if (e.name !== 'AbortError') this.endReason ??= String(e.message ?? e);
            }
            if (this._state !== SessionState.closingSession) this._teardown();
        })();
    }

    _onEvent(ev) {
        const name = ev.name ?? ev.event ?? ev.type; // older RIPP peers (docs/protocol.md §3.1)
        if (name === 'answered' || name === 'accepted') {
            if (this._state === SessionState.openingSession) this._setState(SessionState.inSession);
        } else if (['declined', 'rejected', 'failed', 'noanswer', 'end', 'terminated'].includes(name)) {
            this.endReason ??= `${name}${ev.code ? ` ${ev.code}` : ''}${ev.reason ? ` (${ev.reason})` : ''}`;
            this._teardown();
        }
    }

    async _openMedia(ticket) {
        const url = `${this.call}/media${ticket ? `?ticket=${encodeURIComponent(ticket)}` : ''}`;
        const hashes = certificateHashes(this.serverCertificateHashes);
        // The codec's AudioContext (a 48 kHz one for opus may be new) while the media opens.
        const audio = this._context(this.codec.rate);
        const audioReady = audio.ready.then(() => audio.ctx.resume());
        audioReady.catch(() => {}); // awaited below, unless the media fails first
        this.wt = new WebTransport(url, hashes.length ? { serverCertificateHashes: hashes } : {});
        await this.wt.ready;
        await audioReady;
        if (![SessionState.openingSession, SessionState.acceptingSession, SessionState.inSession].includes(this._state)) {
            throw new Error(`the call ended while its media opened (${this.endReason})`);
        }
        this._rate = this.codec.rate;
        if (this.codec.webCodecs) this._makeEncoder();
        this.writer = this.wt.datagrams.writable.getWriter();
        this.wt.closed.catch(() => {}).then(() => { this.wt = null; });

        const a = this.audio;
        this.playout = new AudioWorkletNode(a, 'riptide-playout', {
            numberOfInputs: 0, outputChannelCount: [1], processorOptions: { target: 3, max: 10, frame: this.frame },
        });
        this.playout.port.onmessage = (e) => { this.playoutStats = e.data; };
        this.analyser = a.createAnalyser();
        // About the same window at either rate: 128 ms at 8 kHz, 171 ms at 48 kHz.
        this.analyser.fftSize = this._rate === G711_RATE ? 1024 : 8192;
        this.playout.connect(this.analyser).connect(this.output);
        this._receive(this.wt.datagrams.readable.getReader());

        this.source = a.createMediaStreamSource(this.mic);
        this.capture = new AudioWorkletNode(a, 'riptide-capture', { numberOfOutputs: 1, processorOptions: { frame: this.frame } });
        this.capture.port.onmessage = (e) => this._sendFrame(e.data);
        this.silent = a.createGain();
        this.silent.gain.value = 0; // keeps the capture node pulled by the graph, inaudible
        this.source.connect(this.capture).connect(this.silent).connect(a.destination);
    }

    // One frame from the microphone: a voice packet, or while a key is pressed an RFC 4733
    // packet in its place. The RTP timestamp advances by the frame either way. G.711 is
    // encoded and sent at once; opus frames go to the AudioEncoder with the packet's sequence
    // number and timestamp reserved, and are sent when it gives them back (_sendEncoded).
    _sendFrame(samples) {
        const t = this.tx;
        if (!this.writer || this._state === SessionState.closingSession) return;
        if (!t.key && t.keys.length) t.key = { code: t.keys.shift(), ts: t.ts, frames: 0, ends: 0 };
        let pkt = null;
        const n = samples.length;
        if (t.key) {
            const k = t.key;
            const frames = Math.ceil((DTMF_MS * this.codec.rate) / 1000 / n);
            if (k.frames < frames) k.frames++; else k.ends++;
            const end = k.ends > 0;
            // In the telephone-event clock (8 kHz as proposed, also under opus's 48 kHz).
            const duration = Math.min(0xffff, Math.round((k.frames * n * this.eventRate) / this.codec.rate));
            pkt = this._rtp(this.ptEvent, k.frames === 1 && !end, k.ts, 4);
            pkt.set([k.code, (end ? 0x80 : 0) | 10, duration >> 8, duration & 0xff], 13);
            t.dtmfPackets++;
            if (k.ends === 3) t.key = null;
        } else if (this.codec.webCodecs) {
            // WebCodecs closes a codec that fails: a new one, a few times per call.
            if (this.encoder?.state === 'closed' && t.restarts++ < 3) this._makeEncoder();
            if (this.encoder?.state === 'configured') {
                t.pending.push({ seq: this._nextSeq(), ts: t.ts });
                const data = this._mute ? new Float32Array(n) : samples;
                const frame = new AudioData({ format: 'f32-planar', sampleRate: this.codec.rate, numberOfFrames: n,
                    numberOfChannels: 1, timestamp: Math.round((t.clock * 1e6) / this.codec.rate), data });
                t.clock += n;
                try { this.encoder.encode(frame); } catch (e) { t.pending.pop(); this._mediaError('opus encoder', e); }
                frame.close();
            }
        } else {
            pkt = this._rtp(this.ptAudio, false, t.ts, n);
            if (this._mute) pkt.fill(this.codec.silence, 13); else pkt.set(this.codec.encode(samples), 13);
            t.frames++;
        }
        t.ts = (t.ts + n) >>> 0;
        if (pkt) this.writer.write(pkt).then(() => { t.datagrams++; }, () => {});
    }

    // The call's opus encoder: mono at 48 kHz, raw opus packets of the proposal's pTime.
    _makeEncoder() {
        const t = this.tx;
        t.pending = [];
        const encoder = new AudioEncoder({
            output: (chunk) => {
                if (this.encoder !== encoder) return;
                const slot = t.pending.shift();
                if (!slot || !this.writer || this._state === SessionState.closingSession) return;
                const pkt = this._rtp(this.ptAudio, false, slot.ts, chunk.byteLength, slot.seq);
                chunk.copyTo(pkt.subarray(13));
                t.frames++;
                this.writer.write(pkt).then(() => { t.datagrams++; }, () => {});
            },
            error: (e) => { if (this.encoder === encoder) this._mediaError('opus encoder', e); },
        });
        encoder.configure({ ...OPUS_ENCODER, opus: { format: 'opus', frameDuration: this.pTime * 1000 } });
        this.encoder = encoder;
    }

    // The call's opus decoder (made again after an error: WebCodecs closes a codec that
    // fails). Decoded frames go to the jitter buffer under their packet's sequence number.
    _makeDecoder() {
        const r = this.rx;
        r.pending = [];
        const decoder = new AudioDecoder({
            output: (data) => {
                const seq = r.pending.shift();
                try {
                    if (this.decoder !== decoder || seq === undefined || !this.playout) return;
                    let samples = new Float32Array(data.numberOfFrames);
                    data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
                    samples = resample(samples, data.sampleRate, this.audio.sampleRate);
                    r.frames++;
                    this.playout.port.postMessage({ seq, samples }, [samples.buffer]);
                } finally { data.close(); }
            },
            error: (e) => { if (this.decoder === decoder) this._mediaError('opus decoder', e); },
        });
        decoder.configure(OPUS_DECODER);
        this.decoder = decoder;
    }

    _mediaError(what, e) {
        this.mediaError = `${what}: ${e?.message ?? e}`;
        console.warn(`riptide: ${this.mediaError}`);
    }

    _nextSeq() {
        const t = this.tx;
        const seq = t.seq;
        t.seq = (t.seq + 1) & 0xffff;
        return seq;
    }

    // A datagram holding flow id 0 and an RTP header (V=2, no CSRC); the payload is filled in.
    // The sequence number is the next one unless reserved earlier (`seq`).
    _rtp(pt, marker, ts, payloadLen, seq = this._nextSeq()) {
        const t = this.tx;
        const d = new Uint8Array(1 + 12 + payloadLen);
        const v = new DataView(d.buffer);
        d[0] = 0; // RoQ flow id 0: RTP (a one-byte QUIC varint)
        d[1] = 0x80;
        d[2] = (marker ? 0x80 : 0) | pt;
        v.setUint16(3, seq);
        v.setUint32(5, ts);
        v.setUint32(9, t.ssrc);
        return d;
    }

    async _receive(reader) {
        const r = this.rx;
        for (;;) {
            let d;
            try {
                const { value, done } = await reader.read();
                if (done) return;
                d = value;
            } catch { return; }
            r.datagrams++;
            // Flow id (QUIC varint); only RTP (0) is played, RTCP (1) is ignored.
            const len = 1 << (d[0] >> 6);
            if (d.length < len || (d[0] & 0x3f) !== 0 || len !== 1) continue;
            const p = d.subarray(1);
            if (p.length < 12 || p[0] >> 6 !== 2) continue;
            const pt = p[1] & 0x7f;
            if (pt >= 72 && pt <= 95) continue; // RTCP multiplexed on RTP (RFC 5761): not ours
            // Every RTP packet counts in the sequence (loss); voice packets are also played.
            const seq16 = (p[2] << 8) | p[3];
            let seq;
            if (r.count === 0) { seq = seq16; r.baseSeq = seq; r.maxSeq = seq; } else {
                const delta = ((seq16 - (r.maxSeq & 0xffff) + 0x18000) % 0x10000) - 0x8000;
                seq = r.maxSeq + delta;
                if (seq < r.baseSeq) continue; // older than the first packet: ignored
                if (seq > r.maxSeq) r.maxSeq = seq;
            }
            r.count++;
            const codec = this.rxCodecs.get(pt);
            if (!codec) continue; // telephone-event, CN: not played
            let off = 12 + 4 * (p[0] & 0x0f);
            if (p[0] & 0x10) off += 4 + 4 * ((p[off + 2] << 8) | p[off + 3]);
            let end = p.length;
            if (p[0] & 0x20) end -= p[end - 1];
            if (off >= end) continue;
            if (codec.webCodecs) {
                this._decode(seq, p.subarray(off, end));
                continue;
            }
            const samples = codec.decode(p.subarray(off, end));
            r.frames++;
            this.playout?.port.postMessage({ seq, samples }, [samples.buffer]);
        }
    }

    // One opus packet to the AudioDecoder (which copies it).
    _decode(seq, payload) {
        const r = this.rx;
        if (!this.decoder || this.decoder.state !== 'configured') {
            // The first, or a new one after a failure (a bad packet closes it), a few times.
            if (this._state === SessionState.noSession || (this.decoder && r.restarts++ >= 20)) return;
            this._makeDecoder();
        }
        r.pending.push(seq);
        try {
            this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: Math.round((r.clock * 1e6) / OPUS_RATE), data: payload }));
            r.clock += this.frame;
        } catch (e) {
            r.pending.pop();
            this._mediaError('opus decoder', e);
        }
    }

    _level() {
        if (!this.analyser) return 0;
        const buf = new Float32Array(this.analyser.fftSize);
        this.analyser.getFloatTimeDomainData(buf);
        let s = 0;
        for (const x of buf) s += x * x;
        return Math.sqrt(s / buf.length);
    }

    _teardown() {
        if (this._state === SessionState.noSession) return;
        this.abort.abort();
        try { this.wt?.close(); } catch { /* already closed */ }
        this.writer = null;
        this.mic?.getTracks().forEach((t) => t.stop());
        this.mic = null;
        for (const n of [this.source, this.capture, this.silent, this.playout]) n?.disconnect();
        if (this.capture) this.capture.port.onmessage = null;
        this.source = this.capture = this.silent = this.playout = null;
        for (const c of [this.encoder, this.decoder]) if (c && c.state !== 'closed') c.close();
        this.encoder = this.decoder = null;
        // The analyser stays readable (level 0 from now on) until the next call.
        this._setState(SessionState.noSession);
    }
}
