// Helpers for Sluice handlers written in JavaScript.
//
// A handler is an ES module that exports `handler`, made with `defineHandler`,
// built with componentize-js against Sluice's `wit/` folder, world `plugin`
// (`scripts/build-polyglot` does it; the README shows it step by step):
//
//     import { defineHandler, Output, config } from './sluice-guest.js';
//
//     export const handler = defineHandler((msg) =>
//         new Output(config('output_topic', `${msg.topic}.out`), msg.text().toUpperCase()));
//
// What the function may return: one `Output`, an array of them, or
// `undefined`/`null` for no output.
//
// Errors: throw `PermanentError` for a message that can never succeed (Sluice
// dead-letters it) and `RetryableError` for a passing condition (Sluice
// retries it with backoff). Anything else thrown out of the function is a
// permanent error whose reason names the error's type, its message and where
// it was thrown (the stack is logged at debug level). A guest that runs out
// of memory traps instead, and Sluice reports `MemoryLimitExceeded`.

import { log as hostLog, config as hostConfig } from 'sluice:handler/host@0.1.0';

/** The message itself is bad: retrying cannot help, Sluice dead-letters it. */
export class PermanentError extends Error {
    constructor(message) {
        super(message);
        this.name = 'PermanentError';
    }
}

/** A passing condition (a dependency is down): Sluice delivers the message again. */
export class RetryableError extends Error {
    constructor(message) {
        super(message);
        this.name = 'RetryableError';
    }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const encoder = new TextEncoder();

/**
 * One consumed Kafka message: `topic`, `partition`, `offset` (a BigInt),
 * `timestamp` (ms since the epoch as a BigInt, or undefined), `key` and
 * `value` (Uint8Array or undefined), `headers` (`[{key, value}]`, value a
 * Uint8Array) and `attempt` (1 on first delivery).
 */
export class Message {
    constructor(msg) {
        this.topic = msg.topic;
        this.partition = msg.partition;
        this.offset = msg.offset;
        this.timestamp = msg.timestamp;
        this.key = msg.key;
        this.value = msg.value;
        this.headers = msg.headers;
        this.attempt = msg.attempt;
    }

    /** The value as UTF-8 text; no value or invalid UTF-8 is a PermanentError. */
    text() {
        return asText('value', this.value);
    }

    /** The key as UTF-8 text; no key or invalid UTF-8 is a PermanentError. */
    keyText() {
        return asText('key', this.key);
    }

    /** The value parsed as JSON; no value or invalid JSON is a PermanentError
     * quoting the parser's reason (with its line and column). */
    json() {
        const text = this.text();
        try {
            return JSON.parse(text);
        } catch (e) {
            throw new PermanentError(`message value is not JSON: ${e.message}`);
        }
    }

    /** The value (Uint8Array) of header `name`; the last one when it repeats,
     * as Kafka's `lastHeader`; undefined when absent. */
    header(name) {
        for (let i = this.headers.length - 1; i >= 0; i--) {
            if (this.headers[i].key === name) return this.headers[i].value;
        }
        return undefined;
    }

    /** `header(name)` as text; undefined when absent or not UTF-8. */
    headerText(name) {
        const value = this.header(name);
        if (value === undefined) return undefined;
        try {
            return utf8.decode(value);
        } catch {
            return undefined;
        }
    }
}

/**
 * A record for Sluice to produce. `value` and `key` are Uint8Array, string
 * (sent as UTF-8) or undefined; the topic must be one of the route's
 * `output_topics`. `new Output('t', 'v').withKey('k').withHeader('h', '1')`
 * chains.
 */
export class Output {
    constructor(topic, value, options) {
        this.topic = topic;
        this.value = value;
        this.key = options?.key;
        // Kept as given (a message's headers pass through without a copy)
        // until `withHeader` adds to them.
        this.headers = options?.headers ?? [];
        this.ownHeaders = false;
    }

    /** An output whose value is `document` as JSON text. */
    static json(topic, document, options) {
        return new Output(topic, JSON.stringify(document), options);
    }

    withKey(key) {
        this.key = key;
        return this;
    }

    withHeader(key, value) {
        if (!this.ownHeaders) {
            this.headers = [...this.headers];
            this.ownHeaders = true;
        }
        this.headers.push({ key, value });
        return this;
    }

    toContract() {
        if (typeof this.topic !== 'string') {
            throw new TypeError(`an output topic must be a string, not ${typeof this.topic}`);
        }
        return {
            topic: this.topic,
            key: asBytes('key', this.key),
            value: asBytes('value', this.value),
            headers: this.headers.every(isContractHeader)
                ? this.headers
                : this.headers.map((h) => ({ key: h.key, value: asBytes(`header ${h.key}`, h.value) })),
        };
    }
}

const configured = new Map();

/** The value of `key` in the route's `[routes.config]` table, or `fallback`.
 * The host is asked once per key: the table is fixed for an instance's life. */
export function config(key, fallback) {
    let value = configured.get(key);
    if (value === undefined && !configured.has(key)) {
        value = hostConfig(key);
        configured.set(key, value);
    }
    return value ?? fallback;
}

/** Log lines, attributed by Sluice to the module and the message. */
export const log = {
    trace: (message) => hostLog('trace', String(message)),
    debug: (message) => hostLog('debug', String(message)),
    info: (message) => hostLog('info', String(message)),
    warn: (message) => hostLog('warn', String(message)),
    error: (message) => hostLog('error', String(message)),
};

/**
 * The `handler` export for `handle(msg)`: runs it on each message and maps
 * its result and what it throws onto the contract.
 */
export function defineHandler(handle) {
    return {
        handle(msg) {
            let result;
            try {
                result = outputs(handle(new Message(msg)));
            } catch (e) {
                throw contractError(e);
            }
            return result;
        },
    };
}

function outputs(result) {
    if (result === undefined || result === null) return [];
    if (result instanceof Output) return [result.toContract()];
    if (!Array.isArray(result)) {
        throw new TypeError(`the handler returned ${describeValue(result)}; return an Output, an array of them or nothing`);
    }
    return result.map((item) => {
        if (!(item instanceof Output)) {
            throw new TypeError(`the handler returned ${describeValue(item)} among its outputs; expected Output`);
        }
        return item.toContract();
    });
}

/** What componentize-js turns into the `handler-error` variant. */
function contractError(e) {
    // SpiderMonkey reports running out of memory by throwing this string.
    // Thrown on as it is, it is no `handler-error`: the call traps, and the
    // host reports the refused growth as `MemoryLimitExceeded`.
    if (e === 'out of memory') return e;
    if (e instanceof PermanentError) return { tag: 'permanent', val: e.message };
    if (e instanceof RetryableError) return { tag: 'retryable', val: e.message };
    if (e instanceof Error) {
        const frame = (e.stack ?? '').split('\n').find((line) => line.includes('@'));
        const where = frame ? ` at ${frame.slice(frame.lastIndexOf('/') + 1).replace(/^.*@/, '')}` : '';
        hostLog('debug', `${e.name}: ${e.message}\n${e.stack ?? ''}`);
        return { tag: 'permanent', val: `uncaught ${e.name}${where}${e.message ? `: ${e.message}` : ''}` };
    }
    return { tag: 'permanent', val: `uncaught throw of ${describeValue(e)}` };
}

function describeValue(value) {
    if (value === null) return 'null';
    if (typeof value === 'object') return `an object (${value.constructor?.name ?? 'no prototype'})`;
    return `a ${typeof value} (${String(value).slice(0, 100)})`;
}

function isContractHeader(header) {
    return typeof header.key === 'string' && header.value instanceof Uint8Array;
}

function asText(what, bytes) {
    if (bytes === undefined) throw new PermanentError(`message has no ${what}`);
    try {
        return utf8.decode(bytes);
    } catch {
        throw new PermanentError(`message ${what} is not UTF-8`);
    }
}

function asBytes(what, data) {
    if (data === undefined || data === null) return undefined;
    if (data instanceof Uint8Array) return data;
    if (typeof data === 'string') return encoder.encode(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    throw new TypeError(`an output ${what} must be a Uint8Array, a string or undefined, not ${typeof data}`);
}
