// End-to-end browser call through riptide: headless Chromium loads web/demo.html (the dial pad on
// web/riptide-session.js) on https://allowed.example, dials a SIP peer with the fake microphone
// playing a 440 Hz tone, talks for a few seconds, presses 5, and hangs up.
//
// Run by interop/browser/run.sh, which starts the gateway (TG "local", route "+1555" to the SIP
// trunk "tone": a SIPp UAS that answers PCMU and sends a 440 Hz tone back), captures on lo
// what the gateway sends the UAS, and checks that side (tone_check.py). Environment, besides
// cors_wt.mjs's RIPTIDE_URL, SPKI_SHA256, TOKEN, OUT and CHROMIUM:
//   WEB_DIR     the directory of demo.html, served on https://allowed.example/ by page.route
//   TONE_WAV    the WAV the fake microphone plays
//   DIAL        the number to dial
// Prints one PASS/FAIL line per check and a FIGURES line; exit status 1 when any check failed.
import fs from 'node:fs';
import path from 'node:path';
import { check, env, launchWithMic, micPage, responses, run, shooter, sleep } from './harness.mjs';

const RIPTIDE_URL = env('RIPTIDE_URL');
const ADMIN_URL = env('ADMIN_URL');
const SPKI = env('SPKI_SHA256');
const TOKEN = env('TOKEN');
const OUT = env('OUT');
const CHROMIUM = env('CHROMIUM');
const WEB_DIR = env('WEB_DIR');
const TONE_WAV = env('TONE_WAV');
const DIAL = env('DIAL');
const ALLOWED = 'https://allowed.example';
const DENIED = 'https://evil.example';
const TYPES = { '.html': 'text/html', '.js': 'text/javascript' };

const shot = shooter(OUT);

async function main() {
    const ctx = await launchWithMic({
        executable: CHROMIUM, out: OUT, profileName: 'profile-call',
        riptideHost: new URL(RIPTIDE_URL).host, spki: SPKI,
    }, TONE_WAV);
    const consoleLog = [];
    try {
        const page = await micPage(ctx, ALLOWED, consoleLog);
        // web/ as the allowed origin's site: demo.html, riptide-session.js, g711.js, worklets.js.
        const serveWeb = (r) => {
            const file = path.join(WEB_DIR, path.basename(new URL(r.request().url()).pathname) || 'demo.html');
            if (!fs.existsSync(file)) return r.fulfill({ status: 404, body: 'not found' });
            return r.fulfill({ body: fs.readFileSync(file), contentType: TYPES[path.extname(file)] ?? 'application/octet-stream' });
        };
        await page.route(`${ALLOWED}/**`, serveWeb);
        const settings = new URLSearchParams({ base: RIPTIDE_URL, tg: 'local', token: TOKEN, number: DIAL });
        await page.goto(`${ALLOWED}/demo.html#${settings}`);
        // The page has loaded its modules and worklets; from now on every request goes to the
        // network (with a route installed Playwright would answer CORS preflights itself).
        await page.evaluate(() => window.session.ready);
        await page.unrouteAll();
        const idle = await page.textContent('#state');
        check('call: the dial pad loads on https://allowed.example, idle', idle === 'noSession', `state ${idle}`);
        await shot(page, 'call-1-idle.png');

        // Dial, and time click → inSession from the test's side too.
        const states = [];
        await page.exposeFunction('noteState', (s) => states.push(s));
        await page.evaluate(() => {
            const prev = window.session.onSessionStateChange;
            window.session.onSessionStateChange = (s, o) => { prev?.(s, o); window.noteState(s); };
        });
        const t0 = Date.now();
        await page.click('#call');
        let reached = true;
        await page.waitForFunction(() => window.session.sessionState === 'inSession', null, { timeout: 15000 })
            .catch(() => { reached = false; });
        const wall = Date.now() - t0;
        const s0 = await page.evaluate(() => window.session.stats);
        check('call: dialled from the page, the call reaches inSession', reached,
            `state ${await page.evaluate(() => window.session.sessionState)}; ${reached ? `${wall} ms after the click` : `end: ${s0.endReason}`}`);
        if (!reached) return;

        // Talk: media both ways for a few seconds.
        await sleep(1500);
        const s1 = await page.evaluate(() => window.session.stats);
        await sleep(3000);
        const s2 = await page.evaluate(() => window.session.stats);
        check('call: the page receives media datagrams, and their number grows',
            s1.datagramsReceived > 0 && s2.datagramsReceived - s1.datagramsReceived >= 100,
            `received ${s1.datagramsReceived}, 3 s later ${s2.datagramsReceived} (≥ 100 more wanted: 50/s)`);
        check('call: the page sends microphone frames as datagrams (one every 20 ms)',
            s2.datagramsSent - s1.datagramsSent >= 120,
            `sent ${s1.datagramsSent}, 3 s later ${s2.datagramsSent}`);
        check('call: the received tone plays out (AnalyserNode level after the jitter buffer)',
            s2.receivedLevel > 0.05, `RMS ${s2.receivedLevel.toFixed(3)}; playout ${JSON.stringify(s2.playout)}`);

        // DTMF from the dial pad's 5 key: RFC 4733 in the media (tone_check.py checks the SIP side).
        await page.click('#pad button:text-is("5")');
        await sleep(600);
        const s3 = await page.evaluate(() => window.session.stats);
        check('call: pressing 5 sends RFC 4733 packets (8 updates and 3 end packets)',
            s3.dtmfPacketsSent === 11, `${s3.dtmfPacketsSent} telephone-event packets`);
        await shot(page, 'call-2-in-call.png');

        // Hang up.
        await page.click('#hangup');
        let ended = true;
        await page.waitForFunction(() => window.session.sessionState === 'noSession', null, { timeout: 10000 })
            .catch(() => { ended = false; });
        const s4 = await page.evaluate(() => window.session.stats);
        check('call: the states were openingSession, inSession, then on hang-up closingSession and noSession',
            ended && states.join(',') === 'openingSession,inSession,closingSession,noSession',
            `states: ${states.join(' → ')}; end: ${s4.endReason}`);
        await sleep(300);
        await shot(page, 'call-3-ended.png');
        console.log(`FIGURES setup ${s0.setupMs} ms (open() → inSession; click → inSession seen by the test ${wall} ms); ` +
            `datagrams sent ${s4.datagramsSent}, received ${s4.datagramsReceived}; RTP lost ${s4.packetsLost} ` +
            `of ${s4.rtpReceived + s4.packetsLost}; jitter buffer concealed ${s4.playout?.concealed ?? '-'}, ` +
            `late ${s4.playout?.late ?? '-'}, dropped ${s4.playout?.dropped ?? '-'}, underruns ${s4.playout?.underruns ?? '-'}`);

        // The same dial pad on an origin riptide does not allow cannot call: the library's POST
        // fails with a CORS error, the session goes back to noSession, and riptide creates no
        // call (no 201 among its answers).
        await ctx.grantPermissions(['local-network-access', 'microphone'], { origin: DENIED });
        const evil = await ctx.newPage();
        await evil.route(`${DENIED}/**`, serveWeb);
        await evil.goto(`${DENIED}/demo.html#${settings}`);
        await evil.evaluate(() => window.session.ready);
        await evil.unrouteAll();
        const evilStates = [];
        await evil.exposeFunction('noteState', (s) => evilStates.push(s));
        await evil.evaluate(() => {
            const prev = window.session.onSessionStateChange;
            window.session.onSessionStateChange = (s, o) => { prev?.(s, o); window.noteState(s); };
        });
        const before = await responses(ADMIN_URL);
        await evil.click('#call');
        let refused = true;
        await evil.waitForFunction(
            () => window.session.sessionState === 'noSession' && window.session.stats.endReason, null,
            { timeout: 10000 }).catch(() => { refused = false; });
        const after = await responses(ADMIN_URL);
        const created = (after['201'] ?? 0) - (before['201'] ?? 0);
        const why = await evil.evaluate(() => window.session.stats.endReason);
        check('call: the dial pad on a disallowed origin cannot call (CORS refusal, back to noSession, no call created)',
            refused && !evilStates.includes('inSession') && created === 0 && /fetch/i.test(String(why)),
            `states: ${evilStates.join(' → ')}; end: ${why}; calls created: ${created}; riptide answered ${JSON.stringify(Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, d]) => d)))}`);
        await shot(evil, 'call-4-disallowed-origin.png');
    } finally {
        fs.writeFileSync(path.join(OUT, 'call-console.log'), consoleLog.join('\n') + '\n');
        await ctx.close();
    }
}

await run('call harness', main);
