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
 *   stats               datagrams sent/received, RTP loss, setup time, received level, …
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
 * microphone is captured at 8 kHz in an AudioWorklet and encoded to G.711 (µ-law or A-law, as
 * the proposal says) in frames of the proposal's pTime; received G.711 plays through a jitter
 * buffer in another worklet (web/worklets.js), then a gain node (volume).
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

const RATE = 8000;
const DTMF_MS = 160; // a key press lasts 160 ms
const DTMF_EVENTS = '0123456789*#ABCD';
const NORMAL_CLEARING = 'Q.850;cause=16;text="Normal call clearing"';
// The codecs this library sends and receives (G.711 both laws, no transcoding anywhere), with
// the payload types riptide should propose when it has the choice. The proposal decides.
const ADVERTISEMENT = {
    codecs: [
        { mediaType: 'audio/PCMU', clockRate: 8000, payloadType: 0, packetTime: 20 },
        { mediaType: 'audio/PCMA', clockRate: 8000, payloadType: 8, packetTime: 20 },
        { mediaType: 'audio/telephone-event', clockRate: 8000, payloadType: 101, parameters: '0-15', packetTime: 20 },
    ],
};
const CODECS = {
    'audio/pcmu': { name: 'PCMU', encode: ulawEncode, decode: ulawDecode, silence: 0xff },
    'audio/pcma': { name: 'PCMA', encode: alawEncode, decode: alawDecode, silence: 0xd5 },
};
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
    constructor({ base, tg, token, serverCertificateHashes } = {}) {
        super();
        this.base = base.replace(/\/$/, '');
        this.tg = tg;
        this.token = token;
        this.serverCertificateHashes = serverCertificateHashes ?? [];
        this._state = SessionState.noSession;
        this._regState = RegistrationState.noRegistrar;
        this._reg = null;
        this._mute = false;
        this._volume = 1;
        this.onSessionStateChange = null;
        this.onRegisterStateChange = null;
        this.onIncoming = null;
        this.registrationError = null;
        // One 8 kHz AudioContext for the page's calls; worklets load now, so that the page
        // can start a call at once. It may start suspended until a click (autoplay policy).
        this.audio = new AudioContext({ sampleRate: RATE });
        // After the analyser, so that the received level does not depend on the volume.
        this.output = this.audio.createGain();
        this.output.connect(this.audio.destination);
        this.ready = this._loadWorklets();
        this._reset();
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
        this.output.gain.setTargetAtTime(this._volume, this.audio.currentTime, 0.01);
    }

    // Counters for the page (and tests): datagrams each way, RTP loss from sequence gaps,
    // setup time (open() or the call's `incoming` → inSession; acceptMs: accept(true) →
    // inSession), the received audio's RMS level (0..1, before the volume), jitter buffer.
    get stats() {
        const r = this.rx;
        const expected = r.count ? r.maxSeq - r.baseSeq + 1 : 0;
        return {
            direction: this.direction,
            codec: this.codec?.name ?? null,
            datagramsSent: this.tx.datagrams,
            datagramsReceived: r.datagrams,
            rtpReceived: r.count,
            packetsLost: Math.max(0, expected - r.count),
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
                body: JSON.stringify({ destination, advertisement: ADVERTISEMENT }),
                signal: this.abort.signal,
            });
            const body = await r.json().catch(() => ({}));
            if (r.status !== 201) throw new Error(`POST calls: ${problemText(r.status, body)}`);
            this.call = r.headers.get('location') ?? body.uri;
            this._choosePayloadTypes(body.proposal);
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
            this._choosePayloadTypes(body.proposal);
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
        this.ptAudio = 0;
        this.ptEvent = null;
        this.rxCodecs = new Map();
        this.frame = 160;
        this.tx = { datagrams: 0, dtmfPackets: 0, seq: Math.floor(Math.random() * 65536),
            ts: Math.floor(Math.random() * 2 ** 32), ssrc: Math.floor(Math.random() * 2 ** 32) >>> 0,
            keys: [], key: null };
        this.rx = { datagrams: 0, count: 0, baseSeq: 0, maxSeq: 0 };
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

    // Worklets loaded, the context running, and the microphone open.
    async _prepareAudio() {
        await this.ready;
        await this.audio.resume();
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
    async _loadWorklets() {
        const r = await fetch(new URL('./worklets.js', import.meta.url));
        if (!r.ok) throw new Error(`worklets.js: ${r.status}`);
        const url = URL.createObjectURL(new Blob([await r.text()], { type: 'text/javascript' }));
        try { await this.audio.audioWorklet.addModule(url); } finally { URL.revokeObjectURL(url); }
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
                    const r = await fetch(`${this._tgUri(reg.tg)}/handlers`, {
                        method: 'POST',
                        headers: this._headers(true),
                        body: JSON.stringify({ 'handler-id': reg.id, advertisement: ADVERTISEMENT }),
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
    _choosePayloadTypes(proposal) {
        const streams = proposal?.streams ?? [];
        const c2s = streams.filter((s) => s.direction === 'c2s');
        const s2c = streams.filter((s) => s.direction === 's2c');
        const voice = c2s.find((s) => CODECS[s.mediaType?.toLowerCase()]);
        if (!voice) throw new Error(`the proposal has no G.711 stream to send (${c2s.map((s) => s.mediaType).join(', ') || 'none'})`);
        this.codec = CODECS[voice.mediaType.toLowerCase()];
        this.ptAudio = voice.payloadType;
        this.frame = (RATE / 1000) * (voice.pTime || 20);
        this.ptEvent = c2s.find((s) => /^audio\/telephone-event$/i.test(s.mediaType))?.payloadType ?? null;
        for (const s of s2c.length ? s2c : c2s) {
            const c = CODECS[s.mediaType?.toLowerCase()];
            if (c) this.rxCodecs.set(s.payloadType, c);
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
        this.wt = new WebTransport(url, hashes.length ? { serverCertificateHashes: hashes } : {});
        await this.wt.ready;
        if (![SessionState.openingSession, SessionState.acceptingSession, SessionState.inSession].includes(this._state)) {
            throw new Error(`the call ended while its media opened (${this.endReason})`);
        }
        this.writer = this.wt.datagrams.writable.getWriter();
        this.wt.closed.catch(() => {}).then(() => { this.wt = null; });
        this._receive(this.wt.datagrams.readable.getReader());

        const a = this.audio;
        this.playout = new AudioWorkletNode(a, 'riptide-playout', {
            numberOfInputs: 0, outputChannelCount: [1], processorOptions: { target: 3, max: 10, frame: this.frame },
        });
        this.playout.port.onmessage = (e) => { this.playoutStats = e.data; };
        this.analyser = a.createAnalyser();
        this.analyser.fftSize = 1024;
        this.playout.connect(this.analyser).connect(this.output);

        this.source = a.createMediaStreamSource(this.mic);
        this.capture = new AudioWorkletNode(a, 'riptide-capture', { numberOfOutputs: 1, processorOptions: { frame: this.frame } });
        this.capture.port.onmessage = (e) => this._sendFrame(e.data);
        this.silent = a.createGain();
        this.silent.gain.value = 0; // keeps the capture node pulled by the graph, inaudible
        this.source.connect(this.capture).connect(this.silent).connect(a.destination);
    }

    // One frame from the microphone: a G.711 packet, or while a key is pressed an RFC 4733
    // packet in its place. The RTP timestamp advances by the frame either way.
    _sendFrame(samples) {
        const t = this.tx;
        if (!this.writer || this._state === SessionState.closingSession) return;
        if (!t.key && t.keys.length) t.key = { code: t.keys.shift(), ts: t.ts, frames: 0, ends: 0 };
        let pkt;
        const n = samples.length;
        if (t.key) {
            const k = t.key;
            const frames = Math.ceil((DTMF_MS * RATE) / 1000 / n);
            if (k.frames < frames) k.frames++; else k.ends++;
            const end = k.ends > 0;
            const duration = Math.min(0xffff, k.frames * n);
            pkt = this._rtp(this.ptEvent, k.frames === 1 && !end, k.ts, 4);
            pkt.set([k.code, (end ? 0x80 : 0) | 10, duration >> 8, duration & 0xff], 13);
            t.dtmfPackets++;
            if (k.ends === 3) t.key = null;
        } else {
            pkt = this._rtp(this.ptAudio, false, t.ts, n);
            if (this._mute) pkt.fill(this.codec.silence, 13); else pkt.set(this.codec.encode(samples), 13);
        }
        t.ts = (t.ts + n) >>> 0;
        this.writer.write(pkt).then(() => { t.datagrams++; }, () => {});
    }

    // A datagram holding flow id 0 and an RTP header (V=2, no CSRC); the payload is filled in.
    _rtp(pt, marker, ts, payloadLen) {
        const t = this.tx;
        const d = new Uint8Array(1 + 12 + payloadLen);
        const v = new DataView(d.buffer);
        d[0] = 0; // RoQ flow id 0: RTP (a one-byte QUIC varint)
        d[1] = 0x80;
        d[2] = (marker ? 0x80 : 0) | pt;
        v.setUint16(3, t.seq);
        v.setUint32(5, ts);
        v.setUint32(9, t.ssrc);
        t.seq = (t.seq + 1) & 0xffff;
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
            const codec = this.rxCodecs.get(p[1] & 0x7f);
            if (!codec) continue; // telephone-event, CN: not played
            let off = 12 + 4 * (p[0] & 0x0f);
            if (p[0] & 0x10) off += 4 + 4 * ((p[off + 2] << 8) | p[off + 3]);
            let end = p.length;
            if (p[0] & 0x20) end -= p[end - 1];
            if (off >= end) continue;
            const seq16 = (p[2] << 8) | p[3];
            let seq;
            if (r.count === 0) { seq = seq16; r.baseSeq = seq; r.maxSeq = seq; } else {
                const delta = ((seq16 - (r.maxSeq & 0xffff) + 0x18000) % 0x10000) - 0x8000;
                seq = r.maxSeq + delta;
                if (seq < r.baseSeq) continue; // older than the first packet: ignored
                if (seq > r.maxSeq) r.maxSeq = seq;
            }
            r.count++;
            const samples = codec.decode(p.subarray(off, end));
            this.playout?.port.postMessage({ seq, samples }, [samples.buffer]);
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
        // The analyser stays readable (level 0 from now on) until the next call.
        this._setState(SessionState.noSession);
    }
}
