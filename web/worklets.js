// Audio worklets of riptide's browser client (web/riptide-session.js). Both run in an
// AudioContext at the codec's rate (8 kHz for G.711, 48 kHz for opus), so no resampling is
// needed. Self-contained (no imports): riptide-session.js loads it from a Blob URL.

// 20 ms at the context's rate (160 samples at 8 kHz: one RTP packet of G.711), unless the
// call's pTime differs (processorOptions.frame).
const FRAME = Math.round(sampleRate / 50);

// Microphone → frames of the call's packet time (processorOptions.frame samples, default 20 ms).
// Collects the 128-sample render quanta into frames and posts each (a Float32Array) to the main
// thread, which encodes them (G.711, or opus with WebCodecs) and frames RTP. The audio clock
// paces the frames.
class CaptureProcessor extends AudioWorkletProcessor {
    constructor(options) {
        super();
        this.frame = options?.processorOptions?.frame ?? FRAME;
        this.buf = new Float32Array(this.frame);
        this.n = 0;
    }
    process(inputs) {
        const ch = inputs[0]?.[0];
        if (!ch) return true; // no input connected yet
        for (let i = 0; i < ch.length; i++) {
            this.buf[this.n++] = ch[i];
            if (this.n === this.frame) {
                this.port.postMessage(this.buf, [this.buf.buffer]);
                this.buf = new Float32Array(this.frame);
                this.n = 0;
            }
        }
        return true;
    }
}

// Received frames → speaker, through a small jitter buffer. The main thread posts
// {seq, samples} (decoded frames, seq = extended RTP sequence number). Playout starts once
// `target` frames are queued (again after an underrun, from the first frame queued then);
// frames are played in sequence order; a missing frame plays as silence; a frame that arrives
// after its turn is dropped; when the queue grows past `max` frames the oldest ones are
// dropped. Counters go back on the port every second.
class PlayoutProcessor extends AudioWorkletProcessor {
    constructor(options) {
        super();
        const o = options.processorOptions ?? {};
        this.target = o.target ?? 3; // 60 ms
        this.max = o.max ?? 10; // 200 ms
        this.frame = o.frame ?? FRAME; // samples a missing frame stands for
        this.frames = new Map(); // seq → Float32Array
        this.next = null; // seq of the frame to play next
        this.cur = null;
        this.pos = 0;
        this.playing = false;
        this.stats = { played: 0, concealed: 0, late: 0, dropped: 0, underruns: 0 };
        this.quanta = 0;
        this.port.onmessage = (e) => this.push(e.data.seq, e.data.samples);
    }
    push(seq, samples) {
        if (this.next !== null && seq < this.next) { this.stats.late++; return; }
        this.frames.set(seq, samples);
        // Waiting to (re)start: play from the first frame queued. After an underrun the
        // frames missed meanwhile (lost, or sent as DTMF in their place) are not concealed:
        // silence played in their time already.
        if (this.next === null || (!this.playing && (seq < this.next || this.frames.size === 1))) this.next = seq;
        while (this.frames.size > this.max) { // too far behind: skip ahead
            this.frames.delete(this.next);
            this.next++;
            this.stats.dropped++;
        }
    }
    // The next frame to play, or null when playout waits for the buffer to fill.
    take() {
        if (!this.playing) {
            if (this.frames.size < this.target) return null;
            this.playing = true;
        }
        if (this.frames.size === 0) { // ran dry: refill before playing again
            this.playing = false;
            this.stats.underruns++;
            return null;
        }
        const f = this.frames.get(this.next);
        this.frames.delete(this.next);
        this.next++;
        if (f) { this.stats.played++; return f; }
        this.stats.concealed++;
        return new Float32Array(this.frame);
    }
    process(_inputs, outputs) {
        const out = outputs[0][0];
        for (let i = 0; i < out.length; i++) {
            if (!this.cur || this.pos === this.cur.length) {
                this.cur = this.take();
                this.pos = 0;
                if (!this.cur) { out.fill(0, i); break; }
            }
            out[i] = this.cur[this.pos++];
        }
        if (++this.quanta % Math.round(sampleRate / 128) === 0) { // about once a second
            this.port.postMessage({ ...this.stats, buffered: this.frames.size });
        }
        return true;
    }
}

registerProcessor('riptide-capture', CaptureProcessor);
registerProcessor('riptide-playout', PlayoutProcessor);
