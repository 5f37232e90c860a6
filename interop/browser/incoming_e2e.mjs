// End-to-end incoming call through riptide: headless Chromium loads the dial pad web/demo.html
// from riptide's own admin listener (http://127.0.0.1:ADMIN/web/, which also gives the page the
// API's address and the certificate hash in /web/config.json), registers a handler on TG "web"
// with the library (web/riptide-session.js), and a SIP phone (SIPp) calls sip:page@gateway,
// which `[[sip_route]] prefix = "page" handlers = "web"` rings on the page:
//   1. the page answers at once (autoanswer): the caller's 440 Hz tone plays on the page, the
//      page's microphone (a fake device playing WAV_MIC) goes back, and the caller hangs up;
//   2. a second call rings; the Decline button refuses it: the phone gets 603;
//   3. the page unregisters; a third call gets 480 at once.
//
// Run by interop/browser/run.sh, which starts the gateway and captures on lo what it sends the
// phone's media port (checked there with tone_check.py). Environment, besides cors_wt.mjs's
// RIPTIDE_URL, ADMIN_URL, SPKI_SHA256, TOKEN, OUT and CHROMIUM:
//   MIC_WAV        the WAV the page's fake microphone plays
//   DATA_DIR       the gateway's data dir (cert.sha256, to compare with /web/config.json)
//   SIP_TARGET     the gateway's SIP address, host:port
//   CALLER_PORT    the phone's SIP port; CALLER_MEDIA its RTP port
//   SCENARIOS      the SIPp scenario directory; CALLER_TONE the 440 Hz µ-law file it sends
// Prints one PASS/FAIL line per check and a FIGURES line; exit status 1 when any check failed.
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import {
    check, env, launchWithMic, median, micPage, responses, run, shooter, sleep, toneShares, volumeRatio,
} from './harness.mjs';

const RIPTIDE_URL = env('RIPTIDE_URL');
const ADMIN_URL = env('ADMIN_URL');
const SPKI = env('SPKI_SHA256');
const TOKEN = env('TOKEN');
const OUT = env('OUT');
const CHROMIUM = env('CHROMIUM');
const MIC_WAV = env('MIC_WAV');
const DATA_DIR = env('DATA_DIR');
const SIP_TARGET = env('SIP_TARGET');
const CALLER_PORT = Number(env('CALLER_PORT'));
const CALLER_MEDIA = Number(env('CALLER_MEDIA'));
const SCENARIOS = env('SCENARIOS');
const CALLER_TONE = env('CALLER_TONE');
const HANDLER_TG = 'web';
const HANDLER_ID = 'page-e2e';

const shot = shooter(OUT);

// One SIPp phone for one call: `name` is its log directory under OUT and part of its Call-ID.
// Resolves with {code, callId, dir, messages: the SIP first lines it logged}.
function phone(name, scenario) {
    const dir = path.join(OUT, `sipp-${name}`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    fs.symlinkSync(CALLER_TONE, path.join(dir, 'tone-440hz.ulaw'));
    const callId = `${name}-1@127.0.0.1`;
    const out = fs.openSync(path.join(dir, 'stdout'), 'w');
    const child = spawn('timeout', ['-k', '5', '120', 'sipp', '-sf', path.join(SCENARIOS, scenario),
        '-s', 'page', SIP_TARGET, '-i', '127.0.0.1', '-p', String(CALLER_PORT),
        '-mi', '127.0.0.1', '-mp', String(CALLER_MEDIA), '-m', '1', '-nostdin',
        '-cid_str', `${name}-%u@%s`, '-trace_msg', '-message_file', path.join(dir, 'messages.log'),
        '-trace_err', '-error_file', path.join(dir, 'errors.log'), '-timeout', '100s', '-timeout_error'],
    { cwd: dir, stdio: ['ignore', out, out] });
    const done = new Promise((ok) => child.on('exit', (code, signal) => {
        fs.closeSync(out);
        const log = fs.existsSync(path.join(dir, 'messages.log')) ? fs.readFileSync(path.join(dir, 'messages.log'), 'utf8') : '';
        const errors = fs.existsSync(path.join(dir, 'errors.log')) ? fs.readFileSync(path.join(dir, 'errors.log'), 'utf8').trim() : '';
        ok({ code: code ?? signal, callId, dir, errors: errors.split('\n').slice(0, 3).join(' ').slice(0, 300),
            messages: [...log.matchAll(/^((?:SIP\/2\.0 \d{3})|[A-Z]+ sip:)/gm)].map((m) => m[1].replace(/ sip:$/, '')) });
    }));
    return { child, done, callId };
}

// What SIPp received and sent, in order, e.g. "INVITE 100 180 200 ACK MESSAGE 200 BYE 200".
const flow = (r) => r.messages.map((m) => m.replace('SIP/2.0 ', '')).join(' ');

// Makes the phone hang up: a MESSAGE with its Call-ID (see scenarios/page_caller_uac.xml).
function hangUp(callId) {
    const msg = [
        `MESSAGE sip:test@127.0.0.1:${CALLER_PORT} SIP/2.0`,
        'Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-incoming-e2e-hangup',
        'From: <sip:incoming-e2e@127.0.0.1>;tag=hangup',
        `To: <sip:test@127.0.0.1:${CALLER_PORT}>`,
        `Call-ID: ${callId}`,
        'CSeq: 1 MESSAGE',
        'Max-Forwards: 70',
        'Content-Length: 0',
        '', ''].join('\r\n');
    const s = dgram.createSocket('udp4');
    return new Promise((ok, fail) => s.send(msg, CALLER_PORT, '127.0.0.1', (e) => { s.close(); e ? fail(e) : ok(); }));
}


// Waits (at most `ms`) until `cond()` holds: the page's notes reach this process asynchronously.
async function until(cond, ms = 5000) {
    const end = Date.now() + ms;
    while (!cond() && Date.now() < end) await sleep(50);
    return cond();
}


async function main() {
    // /web/config.json, as the page will read it.
    const cfgRes = await fetch(`${ADMIN_URL}/web/config.json`);
    const cfg = await cfgRes.json();
    const certHash = fs.readFileSync(path.join(DATA_DIR, 'cert.sha256'), 'utf8').trim();
    const h = cfg.serverCertificateHashes?.[0];
    check('incoming: /web/config.json on the admin listener names the HTTP/3 API, the TGs, the SHA-256 of the certificate in use (cert.sha256) and of its public key',
        cfgRes.headers.get('cache-control') === 'no-cache' && cfg.api === RIPTIDE_URL && cfg.tgs?.includes(HANDLER_TG)
            && cfg.handlerTgs?.includes(HANDLER_TG) && h?.hex === certHash
            && Buffer.from(h?.value ?? '', 'base64').toString('hex') === certHash && cfg.spkiSha256 === SPKI,
        `api ${cfg.api}, tgs ${cfg.tgs}, handlerTgs ${cfg.handlerTgs}, hash ${h?.hex?.slice(0, 16)}… (cert.sha256 ${certHash.slice(0, 16)}…), ` +
        `SPKI ${cfg.spkiSha256} (openssl: ${SPKI})`);

    const ctx = await launchWithMic({
        executable: CHROMIUM, out: OUT, profileName: 'profile-incoming',
        riptideHost: new URL(RIPTIDE_URL).host, spki: SPKI,
    }, MIC_WAV);
    const consoleLog = [];
    const phones = [];
    try {
        const origin = new URL(ADMIN_URL).origin;
        const page = await micPage(ctx, origin, consoleLog);
        const states = [];
        const regStates = [];
        const rings = [];
        await page.exposeFunction('noteState', (s) => states.push(s));
        await page.exposeFunction('noteRegState', (s) => regStates.push(s));
        await page.exposeFunction('noteIncoming', (c) => rings.push(c));

        // The page from the gateway itself: base URL, the TG that rings handlers and the
        // certificate hash from config.json; the token and the handler id in the fragment.
        const settings = new URLSearchParams({ token: TOKEN, handler: HANDLER_ID, autoanswer: '1' });
        await page.goto(`${ADMIN_URL}/web/#${settings}`);
        await page.waitForFunction(() => window.session, null, { timeout: 15000 });
        await page.evaluate(() => {
            const s = window.session;
            s.addEventListener('sessionstatechange', (e) => window.noteState(e.detail.state));
            s.addEventListener('registerstatechange', (e) => window.noteRegState(e.detail.state));
            s.addEventListener('incoming', (e) => window.noteIncoming(e.detail));
        });
        // The hash in config.json is the one WebTransport must check: with it a CONNECT reaches
        // riptide (which refuses it: there is no such call), with a wrong one Chromium refuses
        // the certificate and riptide sees nothing. Either way, with or without the SPKI flag.
        const probe = async (hash) => {
            const before = await responses(ADMIN_URL);
            const seen = await page.evaluate(async ({ url, hash }) => {
                const value = Uint8Array.from(atob(hash), (c) => c.charCodeAt(0));
                try {
                    const wt = new WebTransport(url, { serverCertificateHashes: [{ algorithm: 'sha-256', value }] });
                    await wt.ready;
                    wt.close();
                    return 'ready';
                } catch (e) { return String(e.message ?? e); }
            }, { url: `${cfg.api}/.well-known/ript/v1/providertgs/${HANDLER_TG}/calls/no-such-call/media`, hash });
            const after = await responses(ADMIN_URL);
            const answered = Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)]).filter(([, d]) => d);
            return { seen, answered: Object.fromEntries(answered) };
        };
        const wrong = Buffer.from(certHash.replace(/^./, (c) => (c === '0' ? '1' : '0')), 'hex').toString('base64');
        const withWrong = await probe(wrong);
        const withRight = await probe(h?.value ?? '');
        check('incoming: WebTransport checks the certificate by the hash in config.json (right hash: riptide answers the CONNECT; wrong hash: it never sees one)',
            Object.keys(withRight.answered).length > 0 && Object.keys(withWrong.answered).length === 0,
            `right hash: ${withRight.seen}, riptide answered ${JSON.stringify(withRight.answered)}; wrong hash: ${withWrong.seen}, riptide answered ${JSON.stringify(withWrong.answered)}`);

        const form = await page.evaluate(() => ({ base: document.getElementById('base').value, htg: document.getElementById('htg').value }));
        await page.click('#register');
        let registered = true;
        await page.waitForFunction(() => window.session.registrationState === 'registered', null, { timeout: 20000 })
            .catch(() => { registered = false; });
        const reg = await page.evaluate(() => ({ state: window.session.registrationState, error: window.session.registrationError,
            handler: window.session.handler, base: window.session.base, hashes: window.session.serverCertificateHashes.length,
            shown: document.getElementById('regstate').textContent }));
        await until(() => regStates.includes('registered'));
        check('incoming: the page served by riptide fills in the gateway from config.json and registers a handler on TG "web" (Register: registering → registered)',
            registered && reg.shown === 'registered' && form.base === cfg.api && form.htg === HANDLER_TG && reg.base === cfg.api
                && reg.hashes === 1 && regStates.join(',') === 'registering,registered',
            `form: base ${form.base}, TG ${form.htg}; registration ${regStates.join(' → ')}${reg.error ? ` (${reg.error})` : ''}; handler ${reg.handler}; certificate hashes ${reg.hashes}`);
        await shot(page, 'incoming-1-registered.png');
        if (!registered) return;

        // 1. A call that the page answers at once.
        const call1 = phone('page-caller', 'page_caller_uac.xml');
        phones.push(call1);
        let answered = true;
        await page.waitForFunction(() => window.session.sessionState === 'inSession', null, { timeout: 20000 })
            .catch(() => { answered = false; });
        await until(() => states.includes('inSession') && rings.length > 0);
        const a0 = await page.evaluate(() => ({ state: window.session.sessionState, stats: window.session.stats,
            caller: document.getElementById('caller').textContent }));
        check('incoming: a SIP call to sip:page@gateway rings the page (incoming, acceptingSession) and the page answers it (inSession)',
            answered && states.slice(0, 2).join(',') === 'acceptingSession,inSession' && rings.length === 1,
            `states ${states.join(' → ')}; incoming ${JSON.stringify(rings[0] ?? null)}; ${answered ? `inSession ${a0.stats.setupMs} ms after incoming` : `end: ${a0.stats.endReason}`}`);
        check('incoming: the page shows the caller', /2155551212/.test(a0.caller) && /2155551212/.test(rings[0]?.from ?? ''),
            `shown "${a0.caller}", from ${rings[0]?.from}`);
        if (!answered) { await hangUp(call1.callId).catch(() => {}); return; }

        // The caller's tone, as the page plays it (after the jitter buffer).
        let sounding = true;
        await page.waitForFunction(() => window.session.stats.receivedLevel > 0.05, null, { timeout: 10000 })
            .catch(() => { sounding = false; });
        const s1 = await page.evaluate(() => window.session.stats);
        const reads = [];
        for (let i = 0; i < 7; i++) {
            reads.push(await page.evaluate(toneShares, [440, 560]));
            await sleep(250);
        }
        const at440 = median(reads.map((r) => r.shares[0]));
        const at560 = median(reads.map((r) => r.shares[1]));
        const rms = median(reads.map((r) => r.rms));
        const sTone = await page.evaluate(() => window.session.stats);
        check('incoming: the SIP caller\'s 440 Hz tone plays on the page (AnalyserNode after the jitter buffer)',
            sounding && at440 >= 0.5 && at560 < 0.1,
            `energy share at 440 Hz ${at440.toFixed(3)}, at 560 Hz ${at560.toFixed(3)}, RMS ${rms.toFixed(3)}; codec ${sTone.codec}; playout ${JSON.stringify(sTone.playout)}`);

        // The volume slider scales what goes to the speaker: the RMS after the library's output
        // gain over the RMS before it (the same render quanta, read together).
        const { ratio, reads: ratios, volume: vol } = await volumeRatio(page, 0.3);
        check('incoming: the volume slider (0.3) scales the played audio', vol === 0.3 && Math.abs(ratio - 0.3) < 0.05,
            `session.volume ${vol}; output RMS / received RMS ${ratio?.toFixed(3)} (reads ${ratios.map((r) => r.toFixed(3)).join(', ')})`);

        await sleep(1000);
        const s2 = await page.evaluate(() => window.session.stats);
        check('incoming: media flows both ways (datagrams received and sent keep growing, 50/s each)',
            s2.datagramsReceived - s1.datagramsReceived >= 50 && s2.datagramsSent - s1.datagramsSent >= 50,
            `received ${s1.datagramsReceived} → ${s2.datagramsReceived}, sent ${s1.datagramsSent} → ${s2.datagramsSent} since the tone was heard`);
        await shot(page, 'incoming-2-in-call.png');

        // The caller hangs up.
        await hangUp(call1.callId);
        let ended = true;
        await page.waitForFunction(() => window.session.sessionState === 'noSession', null, { timeout: 15000 })
            .catch(() => { ended = false; });
        await until(() => states.includes('noSession'));
        const s3 = await page.evaluate(() => window.session.stats);
        check('incoming: the caller\'s BYE ends the call on the page: acceptingSession → inSession → noSession',
            ended && states.join(',') === 'acceptingSession,inSession,noSession' && /^end\b/.test(s3.endReason ?? ''),
            `states ${states.join(' → ')}; end: ${s3.endReason}`);
        // Whatever the outcome, the next calls need an idle page.
        if (!ended) await page.evaluate(() => window.session.close()).catch(() => {});
        const r1 = await call1.done;
        check('incoming: the SIP caller got 180 and a 200 OK answering PCMU (SIPp checked it), and its BYE was answered',
            r1.code === 0 && /\b180\b.*\b200 ACK\b/.test(flow(r1)) && /BYE 200$/.test(flow(r1)),
            `SIPp exit ${r1.code}; ${flow(r1)}${r1.errors ? `; ${r1.errors}` : ''}`);
        await sleep(300);
        await shot(page, 'incoming-3-ended.png');
        console.log(`FIGURES incoming call: incoming → inSession ${s3.setupMs} ms (accept(true) → inSession ${s3.acceptMs} ms); ` +
            `codec ${s3.codec}; datagrams sent ${s3.datagramsSent}, received ${s3.datagramsReceived}; RTP lost ${s3.packetsLost} ` +
            `of ${s3.rtpReceived + s3.packetsLost}; jitter buffer concealed ${s3.playout?.concealed ?? '-'}, ` +
            `late ${s3.playout?.late ?? '-'}, dropped ${s3.playout?.dropped ?? '-'}, underruns ${s3.playout?.underruns ?? '-'}`);

        // 2. A call the user declines with the Decline button.
        await page.uncheck('#autoanswer');
        states.length = 0;
        const call2 = phone('page-declined', 'page_decline_uac.xml');
        phones.push(call2);
        let ringing = true;
        await page.waitForSelector('#incoming:not([hidden])', { timeout: 20000 }).catch(() => { ringing = false; });
        const shown = await page.evaluate(() => ({ caller: document.getElementById('caller').textContent, state: window.session.sessionState }));
        await shot(page, 'incoming-4-ringing.png');
        check('incoming: a second call rings with Accept and Decline shown', ringing && shown.state === 'acceptingSession' && /2155551213/.test(shown.caller),
            `state ${shown.state}; caller shown "${shown.caller}"`);
        if (ringing) await page.click('#decline');
        const r2 = await call2.done;
        await until(() => states.includes('noSession'));
        const after2 = await page.evaluate(() => ({ state: window.session.sessionState, end: window.session.stats.endReason }));
        check('incoming: Decline refuses the call: the SIP caller gets 603 (declined on PUT events), the page is back to noSession',
            r2.code === 0 && / 603 ACK/.test(flow(r2)) && after2.state === 'noSession' && states.join(',') === 'acceptingSession,noSession',
            `SIPp exit ${r2.code}; ${flow(r2)}${r2.errors ? `; ${r2.errors}` : ''}; page states ${states.join(' → ')}, end: ${after2.end}`);

        // 3. No handler registered: 480 at once.
        await page.click('#unregister');
        let unregistered = true;
        await page.waitForFunction(() => window.session.registrationState === 'noRegistrar', null, { timeout: 10000 })
            .catch(() => { unregistered = false; });
        await until(() => regStates.includes('noRegistrar'));
        states.length = 0;
        const call3 = phone('page-unavailable', 'page_unavailable_uac.xml');
        phones.push(call3);
        const r3 = await call3.done;
        check('incoming: after unregister() (DELETE handler: noRegistrar), a call to sip:page@gateway gets 480 and does not ring the page',
            unregistered && r3.code === 0 && / 480 ACK/.test(flow(r3)) && states.length === 0,
            `registration states ${regStates.join(' → ')}; SIPp exit ${r3.code}; ${flow(r3)}${r3.errors ? `; ${r3.errors}` : ''}; page states: ${states.join(' → ') || 'none'}`);
    } finally {
        for (const p of phones) if (p.child.exitCode === null) p.child.kill('SIGTERM');
        fs.writeFileSync(path.join(OUT, 'incoming-console.log'), consoleLog.join('\n') + '\n');
        await ctx.close();
    }
}

await run('incoming harness', main);
