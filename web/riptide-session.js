// riptide's browser client: the Session interface of the seed draft (draft-rosenberg-dispatch-ript
// family) over riptide's HTTP/3 API (docs/protocol.md). Plain ES module, no build step.
//
//   import { Session } from './riptide-session.js';
//   const s = new Session({ base: 'https://gw.example', tg: 'trunk' });
//   s.onSessionStateChange = (state) => console.log(state);
//   await s.open('tel:+14089529999', { token });   // → openingSession, then inSession
//   s.sendKeyPress('5');                            // RFC 4733 in the media
//   s.mute = true;                                  // sends silence
//   await s.close();                                // → closingSession, then noSession
//
// Signalling is fetch: POST {TG}/calls with an inline advertisement (PCMU/8000 and
// telephone-event), then GET {call}/events (a streaming JSON array). Media is a WebTransport
// session to {call}/media?ticket=… (the 201's mediaTicket: browsers cannot send Authorization
// on the CONNECT). Each datagram is the RoQ flow id (0 = RTP) and one RTP packet; the browser
// adds the Quarter Stream ID. The microphone is captured at 8 kHz in an AudioWorklet and
// encoded to µ-law in 20 ms frames; received PCMU plays through a jitter buffer in another
// worklet (web/worklets.js). Calls this page receives (acceptingSession) are not implemented.
import { decode, encode } from './g711.js';

export const SessionState = Object.freeze({
    noSession: 'noSession',
    openingSession: 'openingSession',
    inSession: 'inSession',
    closingSession: 'closingSession',
});

const FRAME = 160; // samples (= bytes of PCMU) per 20 ms packet
const DTMF_FRAMES = 8; // a key press lasts 160 ms
const DTMF_EVENTS = '0123456789*#ABCD';
const NORMAL_CLEARING = 'Q.850;cause=16;text="Normal call clearing"';
const ADVERTISEMENT = {
    codecs: [
        { mediaType: 'audio/PCMU', clockRate: 8000, payloadType: 0, packetTime: 20 },
        { mediaType: 'audio/telephone-event', clockRate: 8000, payloadType: 101, parameters: '0-15', packetTime: 20 },
    ],
};

// The destination of a tel: or sip: URI as docs/protocol.md §2.4 wants it: E.164, a user part,
// or user@domain (URI parameters and headers dropped).
export function destinationOf(url) {
    const m = /^(tel|sips?):([^;?]+)/i.exec(url.trim());
    if (!m) throw new TypeError(`not a tel: or sip: URI: ${url}`);
    const target = decodeURIComponent(m[2]);
    // tel: numbers may carry visual separators (RFC 3966); they are not part of the number.
    return m[1].toLowerCase() === 'tel' ? target.replace(/[-.() ]/g, '') : target;
}

// Incremental reader of riptide's events stream: an endless JSON array of objects, possibly
// without commas (docs/protocol.md §3). push() returns the complete objects seen so far.
class EventArrayReader {
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

export class Session {
    // base: the gateway's origin (https://host:port); tg: the trunk group to call through.
    constructor({ base, tg }) {
        this.base = base.replace(/\/$/, '');
        this.tg = tg;
        this._state = SessionState.noSession;
        this._mute = false;
        this.onSessionStateChange = null;
        // One 8 kHz AudioContext for the page's calls; worklets load now, so that the page
        // can start a call at once. It may start suspended until a click (autoplay policy).
        this.audio = new AudioContext({ sampleRate: 8000 });
        this.ready = this._loadWorklets();
        this._reset();
    }

    get sessionState() { return this._state; }
    get mute() { return this._mute; }
    set mute(on) { this._mute = Boolean(on); }

    // Counters for the page (and tests): datagrams each way, RTP loss from sequence gaps,
    // setup time (open() → inSession), the received audio's RMS level (0..1), jitter buffer.
    get stats() {
        const r = this.rx;
        const expected = r.count ? r.maxSeq - r.baseSeq + 1 : 0;
        return {
            datagramsSent: this.tx.datagrams,
            datagramsReceived: r.datagrams,
            rtpReceived: r.count,
            packetsLost: Math.max(0, expected - r.count),
            dtmfPacketsSent: this.tx.dtmfPackets,
            setupMs: this.setupMs,
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
        this.token = token;
        this.openedAt = performance.now();
        this._setState(SessionState.openingSession);
        try {
            await this.ready;
            await this.audio.resume();
            this.mic = await navigator.mediaDevices.getUserMedia({
                audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
            });
            const r = await fetch(`${this.base}/.well-known/ript/v1/providertgs/${encodeURIComponent(this.tg)}/calls`, {
                method: 'POST',
                headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
                body: JSON.stringify({ destination, advertisement: ADVERTISEMENT }),
                signal: this.abort.signal,
            });
            const body = await r.json().catch(() => ({}));
            if (r.status !== 201) throw new Error(`POST calls: ${r.status} ${body.detail ?? body.title ?? ''}`.trim());
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
    // close the events stream.
    async close() {
        if (this._state === SessionState.noSession || this._state === SessionState.closingSession) return;
        this._setState(SessionState.closingSession);
        this.endReason ??= 'closed by this page';
        if (this.call) {
            try {
                await fetch(`${this.call}/events`, {
                    method: 'PUT',
                    headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json' },
                    body: JSON.stringify([this._event('end', { reason: NORMAL_CLEARING })]),
                });
                await Promise.race([this.eventsDone, new Promise((ok) => setTimeout(ok, 5000))]);
            } catch { /* the teardown below ends the call's streams anyway */ }
        }
        this._teardown();
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

    // --- internals ---

    _reset() {
        this.abort = new AbortController();
        this.call = null;
        this.wt = null;
        this.setupMs = null;
        this.endReason = null;
        this.playoutStats = null;
        this.seqOut = 0;
        this.ptAudio = 0;
        this.ptEvent = null;
        this.tx = { datagrams: 0, dtmfPackets: 0, seq: Math.floor(Math.random() * 65536),
            ts: Math.floor(Math.random() * 2 ** 32), ssrc: Math.floor(Math.random() * 2 ** 32) >>> 0,
            keys: [], key: null };
        this.rx = { datagrams: 0, count: 0, baseSeq: 0, maxSeq: 0 };
        this.eventsDone = Promise.resolve();
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
        if (s === SessionState.inSession) this.setupMs = Math.round(performance.now() - this.openedAt);
        try { this.onSessionStateChange?.(s, old); } catch (e) { console.error(e); }
    }

    _event(name, extra) {
        return { name, direction: 'c2s', timestamp: new Date().toISOString(), call: this.call, seq: this.seqOut++, ...extra };
    }

    // The payload types the proposal gives the client to send (docs/protocol.md §2.5).
    _choosePayloadTypes(proposal) {
        const c2s = (proposal?.streams ?? []).filter((s) => s.direction === 'c2s');
        const pcmu = c2s.find((s) => /^audio\/pcmu$/i.test(s.mediaType));
        if (!pcmu) throw new Error('the proposal has no PCMU stream');
        this.ptAudio = pcmu.payloadType;
        this.ptEvent = c2s.find((s) => /^audio\/telephone-event$/i.test(s.mediaType))?.payloadType ?? null;
    }

    _readEvents() {
        this.eventsDone = (async () => {
            try {
                const r = await fetch(`${this.call}/events`, {
                    headers: { authorization: `Bearer ${this.token}` }, signal: this.abort.signal,
                });
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
        this.wt = new WebTransport(url);
        await this.wt.ready;
        if (this._state !== SessionState.openingSession && this._state !== SessionState.inSession) {
            throw new Error(`the call ended while its media opened (${this.endReason})`);
        }
        this.writer = this.wt.datagrams.writable.getWriter();
        this.wt.closed.catch(() => {}).then(() => { this.wt = null; });
        this._receive(this.wt.datagrams.readable.getReader());

        const a = this.audio;
        this.playout = new AudioWorkletNode(a, 'riptide-playout', {
            numberOfInputs: 0, outputChannelCount: [1], processorOptions: { target: 3, max: 10 },
        });
        this.playout.port.onmessage = (e) => { this.playoutStats = e.data; };
        this.analyser = a.createAnalyser();
        this.analyser.fftSize = 1024;
        this.playout.connect(this.analyser).connect(a.destination);

        this.source = a.createMediaStreamSource(this.mic);
        this.capture = new AudioWorkletNode(a, 'riptide-capture', { numberOfOutputs: 1 });
        this.capture.port.onmessage = (e) => this._sendFrame(e.data);
        this.silent = a.createGain();
        this.silent.gain.value = 0; // keeps the capture node pulled by the graph, inaudible
        this.source.connect(this.capture).connect(this.silent).connect(a.destination);
    }

    // One 20 ms frame from the microphone: a PCMU packet, or while a key is pressed an RFC 4733
    // packet in its place. The RTP timestamp advances by 160 either way.
    _sendFrame(samples) {
        const t = this.tx;
        if (!this.writer || this._state === SessionState.closingSession) return;
        if (!t.key && t.keys.length) t.key = { code: t.keys.shift(), ts: t.ts, frames: 0, ends: 0 };
        let pkt;
        if (t.key) {
            const k = t.key;
            if (k.frames < DTMF_FRAMES) k.frames++; else k.ends++;
            const end = k.ends > 0;
            pkt = this._rtp(this.ptEvent, k.frames === 1 && !end, k.ts, 4);
            pkt.set([k.code, (end ? 0x80 : 0) | 10, (k.frames * FRAME) >> 8, (k.frames * FRAME) & 0xff], 13);
            t.dtmfPackets++;
            if (k.ends === 3) t.key = null;
        } else {
            pkt = this._rtp(this.ptAudio, false, t.ts, FRAME);
            if (this._mute) pkt.fill(0xff, 13); else pkt.set(encode(samples), 13); // 0xff: µ-law silence
        }
        t.ts = (t.ts + FRAME) >>> 0;
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
            if (p.length < 12 || p[0] >> 6 !== 2 || (p[1] & 0x7f) !== this.ptAudio) continue;
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
            const samples = decode(p.subarray(off, end));
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
        for (const n of [this.source, this.capture, this.silent, this.playout]) n?.disconnect();
        if (this.capture) this.capture.port.onmessage = null;
        this.source = this.capture = this.silent = this.playout = null;
        // The analyser stays readable (level 0 from now on) until the next open().
        this._setState(SessionState.noSession);
    }
}
