// What the browser check scripts share: settings from the environment, PASS/FAIL lines, and
// running a script's main() so that a crash is a failed check and the exit status says so.

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
