// What the browser check scripts share: settings from the environment, launching Chromium
// against riptide, PASS/FAIL lines, and running a script's main() so that a crash is a failed
// check and the exit status says so.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

// The environment variable `k`, which run.sh must have set.
export const env = (k) => {
    const v = process.env[k];
    if (!v) throw new Error(`${k} is not set`);
    return v;
};

let failed = 0;

// One check: a PASS or FAIL line, with what was seen.
export function check(name, ok, detail) {
    if (!ok) failed++;
    console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? ` (${detail})` : ''}`);
}

// Debian's chromium, headless, in a fresh profile `out/profileName` (Chromium caches certificate
// decisions and preflights per profile), reaching riptide at `riptideHost` (host:port) over
// HTTP/3 and nothing off the machine. `extraArgs` add what one script needs.
export async function launchChromium({ executable, out, profileName, riptideHost, spki, extraArgs = [] }) {
    const profile = path.join(out, profileName);
    fs.rmSync(profile, { recursive: true, force: true });
    return chromium.launchPersistentContext(profile, {
        executablePath: executable,
        headless: true,
        args: [
            '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
            '--disable-component-update', '--disable-sync', '--disable-default-apps',
            '--disable-domain-reliability', '--disable-client-side-phishing-detection', '--no-pings',
            // Nothing leaves the machine: every name but loopback fails to resolve.
            '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
            // HTTP/3 to riptide without an Alt-Svc from a TCP listener (riptide has none), and
            // its self-signed certificate accepted by public key only.
            `--origin-to-force-quic-on=${riptideHost}`,
            `--ignore-certificate-errors-spki-list=${spki}`,
            ...extraArgs,
        ],
    });
}

// Chromium with a fake microphone playing `wav` (no permission prompt) and autoplay allowed.
export function launchWithMic(opts, wav) {
    return launchChromium({
        ...opts,
        extraArgs: [
            '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
            `--use-file-for-fake-audio-capture=${wav}`,
            '--autoplay-policy=no-user-gesture-required',
            ...(opts.extraArgs ?? []),
        ],
    });
}

// A new page allowed the microphone on `origin`, its console and errors collected in `log`.
export async function micPage(ctx, origin, log) {
    await ctx.grantPermissions(['local-network-access', 'microphone'], { origin });
    const page = await ctx.newPage();
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
    return page;
}

// A full-page screenshot into the folder `out`.
export const shooter = (out) => (page, file) => page.screenshot({ path: path.join(out, file), fullPage: true });

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

export const median = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

// Runs in the page (page.evaluate(toneShares, freqs)): the share of the received audio at each
// of `freqs` (Goertzel over the AnalyserNode's window, after the jitter buffer, at the
// AudioContext's rate; 1 for a pure tone at that frequency), its RMS and the context's rate.
export function toneShares(freqs) {
    const a = window.session.analyser;
    const buf = new Float32Array(a.fftSize);
    a.getFloatTimeDomainData(buf);
    const rate = a.context.sampleRate;
    const ms = buf.reduce((m, x) => m + x * x, 0) / buf.length;
    const share = (f) => {
        const c = 2 * Math.cos((2 * Math.PI * f) / rate);
        let s1 = 0;
        let s2 = 0;
        for (const x of buf) { const s0 = x + c * s1 - s2; s2 = s1; s1 = s0; }
        const p = s1 * s1 + s2 * s2 - c * s1 * s2;
        return ms > 1e-9 ? (2 * p) / (buf.length * buf.length) / ms : 0;
    };
    return { shares: freqs.map(share), rms: Math.sqrt(ms), rate };
}

// Sets the page's volume slider to `value` and measures what the output gain does: the median
// over 5 reads of the RMS after the gain over the RMS before it (the same render quanta, read
// together). The slider goes back to 1 afterwards.
export async function volumeRatio(page, value) {
    await page.locator('#volume').fill(String(value));
    await page.evaluate(() => {
        const s = window.session;
        window.afterGain = s.audio.createAnalyser();
        window.afterGain.fftSize = s.analyser.fftSize;
        s.output.connect(window.afterGain);
    });
    await sleep(200); // the gain ramps with a 10 ms time constant
    const reads = [];
    for (let i = 0; i < 5; i++) {
        reads.push(await page.evaluate(() => {
            const rmsOf = (a) => { const b = new Float32Array(a.fftSize); a.getFloatTimeDomainData(b); return Math.sqrt(b.reduce((m, x) => m + x * x, 0) / b.length); };
            const before = rmsOf(window.session.analyser);
            return before > 0.01 ? rmsOf(window.afterGain) / before : NaN;
        }));
        await sleep(100);
    }
    const volume = await page.evaluate(() => window.session.volume);
    await page.evaluate(() => window.session.output.disconnect(window.afterGain));
    await page.locator('#volume').fill('1');
    return { ratio: median(reads.filter((r) => !Number.isNaN(r))), reads, volume };
}

// riptide_http_responses_total by status, from the admin listener at `adminUrl`.
export async function responses(adminUrl) {
    const text = await (await fetch(`${adminUrl}/metrics`)).text();
    const by = {};
    for (const m of text.matchAll(/^riptide_http_responses_total\{status="(\d+)"\} (\d+)/gm)) {
        by[m[1]] = Number(m[2]);
    }
    return by;
}

// Runs `main`; an exception is a failed check named `what`. Exit status 1 when any check failed.
export async function run(what, main) {
    try {
        await main();
    } catch (e) {
        check(what, false, e.stack ?? String(e));
    }
    process.exitCode = failed ? 1 : 0;
}
