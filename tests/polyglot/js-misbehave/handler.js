// A JavaScript handler that fails on request: the value is an instruction.
//
// - `ok:T`: one output `T` to `<topic>.out`
// - `permanent` / `retry`: throws PermanentError / RetryableError
// - `throw`: throws a TypeError the handler does not catch
// - `throw-string`: throws a string
// - `bad-return`: returns a string instead of an Output
// - `loop`: never returns
// - `oom`: allocates until the memory limit stops it
// - `recurse`: recurses without end
// - `log`: logs `logged <offset>` at info level, no output
// - `headers`: one output whose value is header `trace` and whose key is the value of config `k`
// - anything else: passed on to `<topic>.out`
//
// Exercised by tests/tests/polyglot.rs.

import {
    defineHandler, Output, PermanentError, RetryableError, config, log,
} from '../../../guest-sdk/js/sluice-guest.js';

function recurse(n) {
    return recurse(n + 1) + 1;
}

export const handler = defineHandler((msg) => {
    const value = msg.text();
    const out = `${msg.topic}.out`;
    if (value.startsWith('ok:')) return new Output(out, value.slice(3));
    switch (value) {
        case 'permanent':
            throw new PermanentError('asked to fail for good');
        case 'retry':
            throw new RetryableError(`asked to fail, attempt ${msg.attempt}`);
        case 'throw':
            throw new TypeError('asked to throw');
        case 'throw-string':
            throw 'a bare string';
        case 'bad-return':
            return 'not an output';
        case 'loop':
            for (;;) { /* never returns */ }
        case 'oom': {
            const hoard = [];
            for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
        }
        case 'recurse':
            return new Output(out, String(recurse(0)));
        case 'log':
            log.info(`logged ${msg.offset}`);
            return undefined;
        case 'headers':
            return new Output(out, msg.header('trace'), { key: config('k', 'no-k') });
        default:
            return new Output(out, msg.value, { key: msg.key });
    }
});
