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

// Runs `main`; an exception is a failed check named `what`. Exit status 1 when any check failed.
export async function run(what, main) {
    try {
        await main();
    } catch (e) {
        check(what, false, e.stack ?? String(e));
    }
    process.exitCode = failed ? 1 : 0;
}
