// End-to-end opus call through riptide: headless Chromium loads web/demo.html on
// https://allowed.example with opus preferred (`codecs=opus,PCMU,PCMA`), calls the gateway's
// built-in echo service (TG "local", route "echo") with the fake microphone playing a 440 Hz
// tone, and checks that the call runs on opus through WebCodecs: the proposal is audio/opus
// 48000, datagrams flow both ways, the echoed opus decodes and plays the 440 Hz tone (Goertzel
// over the AnalyserNode after the jitter buffer), mute, volume and DTMF still work; then the same
// page calls the echo again with the library's default codecs (G.711 first) and gets PCMU.
//
// Run by interop/browser/run.sh. Environment, besides cors_wt.mjs's RIPTIDE_URL, ADMIN_URL,
// SPKI_SHA256, TOKEN, OUT and CHROMIUM:
//   WEB_DIR     the directory of demo.html, served on https://allowed.example/ by page.route
//   TONE_WAV    the WAV the fake microphone plays (440 Hz)
//   DIAL        the echo service's destination on TG "local"
// Prints one PASS/FAIL line per check and a FIGURES line; exit status 1 when any check failed.
import fs from 'node:fs';
import path from 'node:path';
import {
    check, env, launchWithMic, median, micPage, run, shooter, sleep, toneShares, volumeRatio,
} from './harness.mjs';

const RIPTIDE_URL = env('RIPTIDE_URL');
const SPKI = env('SPKI_SHA256');
const TOKEN = env('TOKEN');
const OUT = env('OUT');
const CHROMIUM = env('CHROMIUM');
const WEB_DIR = env('WEB_DIR');
const TONE_WAV = env('TONE_WAV');
const DIAL = env('DIAL');
const ALLOWED = 'https://allowed.example';
const TYPES = { '.html': 'text/html', '.js': 'text/javascript' };

const shot = shooter(OUT);


// Median Goertzel shares at 440 and 560 Hz and RMS over 7 reads, 250 ms apart.
async function tone(page) {
    const reads = [];
    for (let i = 0; i < 7; i++) {
        reads.push(await page.evaluate(toneShares, [440, 560]));
        await sleep(250);
    }
    return {
        at440: median(reads.map((r) => r.shares[0])),
        at560: median(reads.map((r) => r.shares[1])),
        rms: median(reads.map((r) => r.rms)),
        rate: reads[0].rate,
    };
}

// The call description as the gateway gives it (GET {call}, docs/protocol.md §2.5), from the page.
const description = (page) => page.evaluate(async (token) => {
    const r = await fetch(window.session.call, { headers: { authorization: `Bearer ${token}` } });
    return { status: r.status, body: await r.json().catch(() => null) };
}, TOKEN);

// The voice and telephone-event streams of a proposal, each way.
function streams(proposal) {
    const all = proposal?.streams ?? [];
    const pick = (dir, voice) => all.find((s) => s.direction === dir && voice !== /telephone-event|CN/i.test(s.mediaType));
    return { c2s: pick('c2s', true), s2c: pick('s2c', true), te: pick('c2s', false) };
}
const show = (s) => (s ? `${s.mediaType}/${s.clockRate}${s.channels ? `/${s.channels}` : ''} pt ${s.payloadType} pTime ${s.pTime}` : 'none');

// Waits until the session reaches `state` (at most `ms`); true if it did.
const reach = (page, state, ms) => page.waitForFunction((s) => window.session.sessionState === s, state, { timeout: ms })
    .then(() => true, () => false);

async function main() {
    const ctx = await launchWithMic({
        executable: CHROMIUM, out: OUT, profileName: 'profile-opus',
        riptideHost: new URL(RIPTIDE_URL).host, spki: SPKI,
    }, TONE_WAV);
    const consoleLog = [];
    try {
        const page = await micPage(ctx, ALLOWED, consoleLog);
        await page.route(`${ALLOWED}/**`, (r) => {
            const file = path.join(WEB_DIR, path.basename(new URL(r.request().url()).pathname) || 'demo.html');
            if (!fs.existsSync(file)) return r.fulfill({ status: 404, body: 'not found' });
            return r.fulfill({ body: fs.readFileSync(file), contentType: TYPES[path.extname(file)] ?? 'application/octet-stream' });
        });
        const settings = new URLSearchParams({ base: RIPTIDE_URL, tg: 'local', token: TOKEN, number: DIAL, codecs: 'opus,PCMU,PCMA' });
        await page.goto(`${ALLOWED}/demo.html#${settings}`);
        await page.evaluate(() => window.session.ready);
        // The library module is loaded (imports after this hit the module map, not the network).
        const lib = await page.evaluate(async () => {
            const m = await import('./riptide-session.js');
            return { opus: await m.opusSupported(), defaults: [...m.DEFAULT_CODECS], codecs: [...window.session.codecs] };
        });
        await page.unrouteAll();
        check('opus: WebCodecs can encode and decode opus here (opusSupported()), and the page prefers opus (codecs=opus,PCMU,PCMA)',
            lib.opus === true && lib.codecs.join(',') === 'opus,PCMU,PCMA' && lib.defaults.join(',') === 'PCMU,PCMA,opus',
            `opusSupported ${lib.opus}; session.codecs ${lib.codecs.join(',')}; DEFAULT_CODECS ${lib.defaults.join(',')}`);

        const states = [];
        await page.exposeFunction('noteState', (s) => states.push(s));
        await page.evaluate(() => {
            const prev = window.session.onSessionStateChange;
            window.session.onSessionStateChange = (s, o) => { prev?.(s, o); window.noteState(s); };
        });
        const t0 = Date.now();
        await page.click('#call');
        const reached = await reach(page, 'inSession', 15000);
        const wall = Date.now() - t0;
        const s0 = await page.evaluate(() => window.session.stats);
        check(`opus: a call from the page to the echo service ("${DIAL}" on TG "local") reaches inSession`, reached,
            `state ${await page.evaluate(() => window.session.sessionState)}; ${reached ? `${wall} ms after the click` : `end: ${s0.endReason}`}`);
        if (!reached) return;

        // The proposal, as the gateway describes the call and as the library took it.
        const desc = await description(page);
        const p = streams(desc.body?.proposal);
        const mine = streams(await page.evaluate(() => window.session.proposal));
        const isOpus = (s) => s && /^audio\/opus$/i.test(s.mediaType) && s.clockRate === 48000 && s.payloadType === 111;
        check('opus: the call description\'s proposal is audio/opus 48000 (payload type 111) both ways, telephone-event stays 8000, and the library took that proposal',
            desc.status === 200 && isOpus(p.c2s) && isOpus(p.s2c) && p.te?.clockRate === 8000 && show(mine.c2s) === show(p.c2s),
            `GET {call} ${desc.status}: c2s ${show(p.c2s)}, s2c ${show(p.s2c)}, telephone-event ${show(p.te)}; session.proposal c2s ${show(mine.c2s)}`);

        // Media both ways, opus encoded and decoded at 48 kHz.
        await sleep(1500);
        const s1 = await page.evaluate(() => window.session.stats);
        await sleep(3000);
        const s2 = await page.evaluate(() => window.session.stats);
        const pace = 3000 / 20; // packets in 3 s at 20 ms
        check('opus: datagrams flow both ways (the page sends an opus packet every 20 ms and the echo comes back)',
            s2.datagramsSent - s1.datagramsSent >= 0.8 * pace && s2.datagramsReceived - s1.datagramsReceived >= 0.8 * pace,
            `sent ${s1.datagramsSent} → ${s2.datagramsSent}, received ${s1.datagramsReceived} → ${s2.datagramsReceived} in 3 s (≥ ${0.8 * pace} more each wanted)`);
        check('opus: the library encodes and decodes opus with WebCodecs at 48 kHz (frames encoded and decoded grow, no codec error)',
            s2.codec === 'opus' && s2.sampleRate === 48000 && s2.framesEncoded - s1.framesEncoded >= 0.8 * pace
                && s2.framesDecoded - s1.framesDecoded >= 0.8 * pace && !s2.mediaError,
            `codec ${s2.codec} at ${s2.sampleRate} Hz; frames encoded ${s1.framesEncoded} → ${s2.framesEncoded}, decoded ${s1.framesDecoded} → ${s2.framesDecoded}; error ${s2.mediaError ?? 'none'}`);

        // The echoed tone, as the page plays it.
        const sounding = await page.waitForFunction(() => window.session.stats.receivedLevel > 0.05, null, { timeout: 5000 })
            .then(() => true, () => false);
        const t = await tone(page);
        const s3 = await page.evaluate(() => window.session.stats);
        check('opus: the echoed opus decodes and the page plays the fake microphone\'s 440 Hz tone (AnalyserNode after the jitter buffer)',
            sounding && t.rate === 48000 && t.at440 >= 0.5 && t.at560 < 0.1,
            `energy share at 440 Hz ${t.at440.toFixed(3)}, at 560 Hz ${t.at560.toFixed(3)}, RMS ${t.rms.toFixed(3)}; AudioContext ${t.rate} Hz; playout ${JSON.stringify(s3.playout)}`);

        // Mute: the page sends opus silence, so the echo falls silent; unmute brings it back.
        await page.click('#mute');
        await sleep(700);
        const muted = (await tone(page)).rms;
        await page.click('#mute');
        await sleep(700);
        const unmuted = (await tone(page)).rms;
        check('opus: Mute sends silence (the echoed level falls) and Unmute brings the tone back',
            muted < 0.01 && unmuted > 0.05, `RMS muted ${muted.toFixed(4)}, unmuted ${unmuted.toFixed(3)}`);

        // Volume: the output gain scales what goes to the speaker (RMS after it over RMS before).
        const { ratio, reads: ratios } = await volumeRatio(page, 0.3);
        check('opus: the volume slider (0.3) scales the played audio', Math.abs(ratio - 0.3) < 0.05,
            `output RMS / received RMS ${ratio?.toFixed(3)} (reads ${ratios.map((r) => r.toFixed(3)).join(', ')})`);

        // DTMF next to opus: RFC 4733 at the proposal's 8000 clock.
        const d0 = (await page.evaluate(() => window.session.stats)).dtmfPacketsSent;
        await page.click('#pad button:text-is("5")');
        await sleep(600);
        const d1 = (await page.evaluate(() => window.session.stats)).dtmfPacketsSent;
        check('opus: pressing 5 sends RFC 4733 packets (8 updates and 3 end packets)', d1 - d0 === 11, `${d1 - d0} telephone-event packets`);
        await shot(page, 'opus-1-in-call.png');

        await page.click('#hangup');
        const ended = await reach(page, 'noSession', 10000);
        const s4 = await page.evaluate(() => window.session.stats);
        check('opus: the states were openingSession, inSession, then on hang-up closingSession and noSession',
            ended && states.join(',') === 'openingSession,inSession,closingSession,noSession',
            `states: ${states.join(' → ')}; end: ${s4.endReason}`);
        console.log(`FIGURES opus echo call: setup ${s4.setupMs} ms (open() → inSession; click → inSession seen by the test ${wall} ms); ` +
            `codec ${s4.codec} at ${s4.sampleRate} Hz; datagrams sent ${s4.datagramsSent}, received ${s4.datagramsReceived}; ` +
            `opus frames encoded ${s4.framesEncoded}, decoded ${s4.framesDecoded}; RTP lost ${s4.packetsLost} of ${s4.rtpReceived + s4.packetsLost}; ` +
            `jitter buffer concealed ${s4.playout?.concealed ?? '-'}, late ${s4.playout?.late ?? '-'}, dropped ${s4.playout?.dropped ?? '-'}, underruns ${s4.playout?.underruns ?? '-'}`);

        // The library's default codecs on the same page: G.711 first, so the echo proposes PCMU
        // and the call runs at 8 kHz again.
        await page.evaluate(async () => { window.session.codecs = (await import('./riptide-session.js')).DEFAULT_CODECS; });
        states.length = 0;
        await page.click('#call');
        const again = await reach(page, 'inSession', 15000);
        let g = null;
        let gp = {};
        if (again) {
            gp = streams((await description(page)).body?.proposal);
            await page.waitForFunction(() => window.session.stats.receivedLevel > 0.05, null, { timeout: 5000 }).catch(() => {});
            g = await tone(page);
        }
        const s5 = await page.evaluate(() => window.session.stats);
        await page.click('#hangup').catch(() => {});
        await reach(page, 'noSession', 10000);
        check('opus: with the default codecs (G.711 first) the same page\'s echo call gets PCMU 8000 and plays the tone at 8 kHz',
            again && gp.c2s?.mediaType === 'audio/PCMU' && gp.c2s?.clockRate === 8000 && s5.codec === 'PCMU' && g?.rate === 8000 && g.at440 >= 0.5,
            again ? `proposal c2s ${show(gp.c2s)}; codec ${s5.codec}; share at 440 Hz ${g?.at440.toFixed(3)}, RMS ${g?.rms.toFixed(3)}, AudioContext ${g?.rate} Hz`
                : `state ${s5.endReason}`);
    } finally {
        fs.writeFileSync(path.join(OUT, 'opus-console.log'), consoleLog.join('\n') + '\n');
        await ctx.close();
    }
}

await run('opus harness', main);
