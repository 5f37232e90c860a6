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
