// Browser checks of riptide's HTTP/3 API in headless Chromium (security requirements CORS-04
// and WT-01): a page on an allowed origin and a page on a disallowed origin make the same calls
// to a riptide gateway over HTTP/3; riptide must serve the first and refuse the second. The
// allowed page opens its call's media over WebTransport with the 201's single-use mediaTicket,
// and places calls toward two SIP trunks with `preflight = true` (SIPp UASes started by run.sh,
// which checks their side): one whose SIP CORS preflight answer lacks Access-Control-Allow-Origin
// (the call must fail with 403, never INVITEd) and one whose answer allows the origin.
//
// Run by interop/browser/run.sh, which starts the gateway and passes (environment):
//   RIPTIDE_URL   https://127.0.0.1:PORT (the HTTP/3 listener; its certificate is self-signed)
//   ADMIN_URL     http://127.0.0.1:PORT (admin listener: /metrics)
//   SPKI_SHA256   base64 SHA-256 of the certificate's SubjectPublicKeyInfo
//   TOKEN         a bearer token of the gateway's issuer
//   OUT           where screenshots, the Chromium net log and the profile go
//   CHROMIUM      the browser binary (Debian's chromium; nothing is downloaded)
// Prints one PASS/FAIL line per check; exit status 1 when any check failed.
//
// Evidence comes from three places, because a browser hides why a cross-origin call failed:
// what the page sees (a TypeError), riptide's response counters (delta around each step:
// riptide itself answered the preflight or the CONNECT, with which status), and Chromium's net
// log (the answers as they came off the wire, over HTTP/3, with or without
// Access-Control-Allow-Origin).
import fs from 'node:fs';
import path from 'node:path';
import { check, env, launchChromium, responses as responsesAt, run } from './harness.mjs';

const RIPTIDE_URL = env('RIPTIDE_URL');
const ADMIN_URL = env('ADMIN_URL');
const SPKI = env('SPKI_SHA256');
const TOKEN = env('TOKEN');
const OUT = env('OUT');
const CHROMIUM = env('CHROMIUM');
const ALLOWED = 'https://allowed.example';
const DENIED = 'https://evil.example';
const TG = 'local';
const API = `${RIPTIDE_URL}/.well-known/ript/v1/providertgs`;
const hostPort = new URL(RIPTIDE_URL).host;
const NETLOG = path.join(OUT, 'netlog.json');


// riptide_http_responses_total by status, from the admin listener.
const responses = () => responsesAt(ADMIN_URL);
// Runs step() and returns [its result, riptide's answers during it by status].
async function counted(step) {
    const before = await responses();
    const result = await step();
    const after = await responses();
    const delta = {};
    for (const s of new Set([...Object.keys(before), ...Object.keys(after)])) {
        const d = (after[s] ?? 0) - (before[s] ?? 0);
        if (d) delta[s] = d;
    }
    return [result, delta];
}
const fmt = (delta) =>
    `riptide answered ${Object.entries(delta).map(([s, n]) => `${n}x${s}`).join(' ') || 'nothing'}`;

// The page both origins serve: a tiny client of the API. Playwright answers the navigation
// (the origin is real as far as Chromium is concerned: location.origin, Origin headers); every
// request to riptide then goes to the network.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>riptide browser check</title>
<style>body{font:14px monospace;margin:1em} li.ok{color:#070} li.err{color:#b00}</style></head>
<body><h1>riptide browser check</h1><p>page origin: <b id="origin"></b></p><ol id="log"></ol>
<script>
document.getElementById('origin').textContent = location.origin;
function note(text, ok) {
  const li = document.createElement('li');
  li.className = ok ? 'ok' : 'err';
  li.textContent = text;
  document.getElementById('log').appendChild(li);
}
// fetch that reports what the page may see: status, readable headers and body, or the error.
window.api = async (what, url, init) => {
  try {
    const r = await fetch(url, { ...init, signal: AbortSignal.timeout(10000) });
    const body = await r.text();
    note(what + ': ' + r.status, true);
    return { status: r.status, location: r.headers.get('location'), body };
  } catch (e) {
    note(what + ': ' + e.name + ': ' + e.message, false);
    return { error: e.name, message: e.message };
  }
};
window.media = async (what, url) => {
  let wt;
  try {
    wt = new WebTransport(url);
    const timeout = new Promise((_, no) => setTimeout(() => no(new Error('no answer in 10 s')), 10000));
    await Promise.race([wt.ready, timeout]);
    note(what + ': ready', true);
    wt.close();
    return { ready: true };
  } catch (e) {
    note(what + ': ' + e.name + ': ' + e.message, false);
    return { ready: false, error: e.name, message: e.message };
  }
};
</script></body></html>`;

async function openPage(ctx, origin, name) {
    const page = await ctx.newPage();
    await page.route(`${origin}/**`, (r) => r.fulfill({ body: PAGE, contentType: 'text/html' }));
    await page.goto(`${origin}/`);
    // With a route installed Playwright would also answer CORS preflights itself; without one,
    // every request (preflights included) reaches riptide.
    await page.unrouteAll();
    const seen = await page.evaluate(() => location.origin);
    check(`${name}: the page's origin is ${origin}`, seen === origin, `location.origin = ${seen}`);
    return page;
}

const authorized = { headers: { authorization: `Bearer ${TOKEN}` } };
const callTo = (destination) => ({
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({
        destination,
        advertisement: { codecs: [{ mediaType: 'audio/PCMU', clockRate: 8000, payloadType: 0 }] },
    }),
});
const newCall = callTo('echo');
// The mediaTicket of a 201 to POST {TG}/calls (null when absent), and a media URL carrying it.
function mediaTicket(r) {
    try { return JSON.parse(r.body).mediaTicket ?? null; } catch { return null; }
}
const withTicket = (url, t) => `${url}?ticket=${encodeURIComponent(t ?? '')}`;
// A browser call routed to a [[sip_trunk]] with preflight = true (run.sh's config: destination
// prefix "noacao" and "acao", each a SIPp UAS): POST {TG}/calls, then read {call}/events to the
// end (the stream closes after the call's final event). Returns the POST's status and the events.
async function trunkCall(page, destination) {
    const r = await page.evaluate(([u, i]) => api('POST calls', u, i), [`${API}/${TG}/calls`, callTo(destination)]);
    if (r.status !== 201 || !r.location) return { post: r.status ?? r.error, events: [] };
    const e = await page.evaluate(([u, i]) => api('GET events', u, i), [`${r.location}/events`, authorized]);
    let events = [];
    try { events = JSON.parse(e.body); } catch { return { post: 201, events, raw: e.body ?? e.message }; }
    return { post: 201, events };
}
const evline = (r) => `POST ${r.post}; events: ${r.raw !== undefined ? `unreadable: ${r.raw}`
    : r.events.map((e) => `${e.name}${e.code ? ` ${e.code}` : ''}${e.reason ? ` (${e.reason})` : ''}`).join(', ')}`;
const final = (r, name, code) => r.events.some((e) => e.name === name && e.code === code);
const progressed = (r) => r.events.some((e) => ['alerting', 'answered', 'declined'].includes(e.name));
const shot = (page, file) => page.screenshot({ path: path.join(OUT, file), fullPage: true });

async function main() {
    const ctx = await launchChromium({
        executable: CHROMIUM, out: OUT, profileName: 'profile', riptideHost: hostPort, spki: SPKI,
        extraArgs: [`--log-net-log=${NETLOG}`],
    });
    try {
        // Local Network Access: a public origin may reach loopback only with the user's consent.
        // Both origins get it, so that riptide's CORS policy is the only difference between them.
        for (const origin of [ALLOWED, DENIED]) {
            await ctx.grantPermissions(['local-network-access'], { origin });
        }

        // --- the allowed origin ---
        const ok = await openPage(ctx, ALLOWED, 'allowed origin');
        {
            const [r, d] = await counted(() => ok.evaluate(([u, i]) => api('GET providertgs', u, i), [API, authorized]));
            let names = [];
            try { names = JSON.parse(r.body).tgs.map((t) => t.name); } catch { /* checked below */ }
            check('CORS-04 allowed origin: GET providertgs with a token succeeds (preflight answered by riptide)',
                r.status === 200 && names.includes(TG) && d['204'] === 1 && d['200'] === 1,
                `page saw ${r.status ?? r.error} ${JSON.stringify(names)}; ${fmt(d)}`);
        }
        {
            const [r, d] = await counted(() => ok.evaluate((u) => api('GET providertgs without a token', u, {}), API));
            check('CORS-04 allowed origin: a request without preflight gets an answer the page may read',
                r.status === 401 && d['401'] === 1 && !d['204'], `page saw ${r.status ?? r.error}; ${fmt(d)}`);
        }
        let callUri = null;
        let ticket = null;
        {
            const [r, d] = await counted(() => ok.evaluate(([u, i]) => api('POST calls', u, i), [`${API}/${TG}/calls`, newCall]));
            callUri = r.location;
            ticket = mediaTicket(r);
            check('CORS-04 allowed origin: POST calls with a token creates a call (Location readable)',
                r.status === 201 && typeof callUri === 'string' && callUri.startsWith(`${API}/${TG}/calls/`) &&
                    d['204'] === 1 && d['201'] === 1,
                `page saw ${r.status ?? r.error}, Location ${callUri}; ${fmt(d)}`);
        }
        await shot(ok, 'allowed-1-api.png');
        const media = callUri ? `${callUri}/media` : `${API}/${TG}/calls/none/media`;
        {
            // Chromium sends no Authorization on a WebTransport CONNECT (WebTransportOptions
            // headers are not sent), so riptide, after accepting the origin, refuses a session
            // without a media ticket for the missing token: 401, never the origin's 403.
            const [r, d] = await counted(() => ok.evaluate((u) => media('WebTransport {call}/media', u), media));
            check('WT-01 allowed origin: the media CONNECT without a ticket passes riptide\'s origin check (refused only for the missing token)',
                !r.ready && d['401'] >= 1 && !d['403'], `wt.ready ${r.ready ? 'resolved' : `rejected: ${r.message}`}; ${fmt(d)}`);
        }
        {
            // The 201's mediaTicket stands in for the bearer token on this call's media.
            const [r, d] = await counted(() => ok.evaluate((u) => media('WebTransport {call}/media?ticket', u), withTicket(media, ticket)));
            check('WT-01 allowed origin: the media CONNECT with the call\'s mediaTicket reaches wt.ready',
                ticket !== null && r.ready && d['200'] === 1 && !d['401'] && !d['403'],
                `mediaTicket ${ticket === null ? 'missing' : 'present'}; wt.ready ${r.ready ? 'resolved' : `rejected: ${r.message}`}; ${fmt(d)}`);
        }
        {
            const [r, d] = await counted(() => ok.evaluate((u) => media('WebTransport {call}/media?ticket (again)', u), withTicket(media, ticket)));
            check('WT-01 allowed origin: the same mediaTicket does not open a second session (single use)',
                ticket !== null && !r.ready && d['401'] >= 1 && !d['200'],
                `wt.ready ${r.ready ? 'resolved' : `rejected: ${r.message}`}; ${fmt(d)}`);
        }
        // A second call whose ticket the allowed page hands to nobody but the disallowed origin.
        let media2 = `${API}/${TG}/calls/none/media`;
        let ticket2 = null;
        {
            const r = await ok.evaluate(([u, i]) => api('POST calls', u, i), [`${API}/${TG}/calls`, newCall]);
            if (r.status === 201 && r.location) media2 = `${r.location}/media`;
            ticket2 = mediaTicket(r);
        }
        await shot(ok, 'allowed-2-media.png');
        {
            // The SIP side is checked by run.sh from SIPp's exit status and message log.
            const r = await trunkCall(ok, 'noacao');
            check('SIP preflight: a browser call toward trunk "noacao" (preflight answered without Access-Control-Allow-Origin) fails with 403',
                r.post === 201 && final(r, 'failed', 403) && !progressed(r), evline(r));
            const again = await trunkCall(ok, 'noacao');
            check('SIP preflight: a second call toward "noacao" fails at once, the refusing target not contacted again',
                again.post === 201 && final(again, 'failed', 403) && !progressed(again) &&
                    again.events.some((e) => /refused a preflight recently/.test(e.reason ?? '')),
                evline(again));
            const yes = await trunkCall(ok, 'acao');
            check('SIP preflight: a browser call toward trunk "acao" (preflight allows the origin) is INVITEd and declined 486',
                yes.post === 201 && final(yes, 'declined', 486) && !final(yes, 'failed', 403), evline(yes));
        }
        await shot(ok, 'allowed-3-trunks.png');

        // --- the disallowed origin: the same calls ---
        const evil = await openPage(ctx, DENIED, 'disallowed origin');
        {
            const [r, d] = await counted(() => evil.evaluate(([u, i]) => api('GET providertgs', u, i), [API, authorized]));
            check('CORS-04 disallowed origin: GET providertgs with a token fails with a CORS error (riptide refuses the preflight)',
                r.error === 'TypeError' && d['403'] === 1 && !d['200'] && !d['204'],
                `page saw ${r.status ?? `${r.error}: ${r.message}`}; ${fmt(d)}`);
        }
        {
            const [r, d] = await counted(() => evil.evaluate((u) => api('GET providertgs without a token', u, {}), API));
            check('CORS-04 disallowed origin: a request without preflight reaches riptide but its answer is withheld from the page',
                r.error === 'TypeError' && d['401'] === 1, `page saw ${r.status ?? `${r.error}: ${r.message}`}; ${fmt(d)}`);
        }
        {
            const [r, d] = await counted(() => evil.evaluate(([u, i]) => api('POST calls', u, i), [`${API}/${TG}/calls`, newCall]));
            check('CORS-04 disallowed origin: POST calls fails with a CORS error and creates no call',
                r.error === 'TypeError' && d['403'] === 1 && !d['201'],
                `page saw ${r.status ?? `${r.error}: ${r.message}`}; ${fmt(d)}`);
        }
        await shot(evil, 'denied-1-api.png');
        {
            const [r, d] = await counted(() => evil.evaluate((u) => media('WebTransport {call}/media', u), media));
            check('WT-01 disallowed origin: the media CONNECT for a live call is refused with 403',
                !r.ready && d['403'] >= 1 && !d['200'], `wt.ready ${r.ready ? 'resolved' : `rejected: ${r.message}`}; ${fmt(d)}`);
        }
        {
            const [r, d] = await counted(() => evil.evaluate((u) => media('WebTransport {call}/media?ticket (the allowed page\'s)', u), withTicket(media2, ticket2)));
            check('WT-01 disallowed origin: the media CONNECT with the allowed page\'s unused mediaTicket is refused with 403',
                ticket2 !== null && !r.ready && d['403'] >= 1 && !d['200'],
                `mediaTicket ${ticket2 === null ? 'missing' : 'present'}; wt.ready ${r.ready ? 'resolved' : `rejected: ${r.message}`}; ${fmt(d)}`);
        }
        await shot(evil, 'denied-2-media.png');
        {
            const [r, d] = await counted(() => ok.evaluate((u) => media('WebTransport {call}/media?ticket (after evil.example tried it)', u), withTicket(media2, ticket2)));
            check('WT-01 allowed origin: that ticket still opens its call\'s media afterwards (the refused attempt did not use it up)',
                ticket2 !== null && r.ready && d['200'] === 1, `wt.ready ${r.ready ? 'resolved' : `rejected: ${r.message}`}; ${fmt(d)}`);
        }
    } finally {
        await ctx.close(); // Chromium finishes the net log on exit
    }
    wireChecks();
}

// The net log: every exchange with riptide as Chromium's HTTP/3 stack saw it.
function wireChecks() {
    let text = fs.readFileSync(NETLOG, 'utf8').trimEnd();
    // A log cut short (browser killed) lacks its closing brackets.
    if (!text.endsWith('}')) text = text.replace(/,?\s*$/, ']}');
    const log = JSON.parse(text);
    const types = Object.fromEntries(Object.entries(log.constants.logEventTypes).map(([k, v]) => [v, k]));
    const sent = new Map();
    const exchanges = [];
    let tcp = 0;
    for (const e of log.events) {
        const t = types[e.type];
        const p = e.params ?? {};
        if (t === 'TCP_CONNECT' && String(p.address ?? '').endsWith(`:${hostPort.split(':')[1]}`)) tcp++;
        if (t !== 'HTTP3_HEADERS_SENT' && t !== 'HTTP3_HEADERS_DECODED') continue;
        const h = Object.fromEntries((p.headers ?? []).map((l) => {
            const i = l.indexOf(': ', 1);
            return [l.slice(0, i).toLowerCase(), l.slice(i + 2)];
        }));
        const key = `${e.source.id}/${p.stream_id}`;
        if (t === 'HTTP3_HEADERS_SENT') sent.set(key, h);
        else if (sent.has(key) && sent.get(key)[':authority'] === hostPort) {
            exchanges.push({ req: sent.get(key), res: h });
        }
    }
    const from = (o) => exchanges.filter((x) => x.req.origin === o);
    const line = (x) => `${x.req[':method']} ${x.res[':status']} acao=${x.res['access-control-allow-origin'] ?? '-'}`;
    const okX = from(ALLOWED);
    const evilX = from(DENIED);
    check('CORS-04 Chromium reached riptide over HTTP/3 only',
        exchanges.length >= 8 && tcp === 0,
        `${exchanges.length} HTTP/3 exchanges with ${hostPort}, ${tcp} TCP connects to its port`);
    check('CORS-04 every answer to the allowed origin carries Access-Control-Allow-Origin: it',
        okX.length >= 5 && okX.every((x) => x.res['access-control-allow-origin'] === ALLOWED),
        okX.map(line).join(', '));
    const statuses = evilX.map((x) => x.res[':status']).sort().join(',');
    check('CORS-04 no answer to the disallowed origin carries Access-Control-Allow-Origin',
        statuses === '401,403,403' && evilX.every((x) => !('access-control-allow-origin' in x.res)),
        evilX.map(line).join(', '));
}

await run('browser harness', main);
