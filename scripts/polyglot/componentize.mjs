// Builds one JavaScript handler into a component for Sluice's world `plugin`.
//
//   node componentize.mjs HANDLER.js WIT_DIR OUT.wasm
//
// Run by scripts/build-polyglot with componentize-js installed beside it.
// Fetch and the HTTP handler are left out: the host grants no sockets.
import { writeFile } from 'node:fs/promises';
import { componentize } from '@bytecodealliance/componentize-js';

const [source, wit, out] = process.argv.slice(2);
if (!out) {
    console.error('usage: node componentize.mjs HANDLER.js WIT_DIR OUT.wasm');
    process.exit(2);
}
const { component } = await componentize({
    sourcePath: source,
    witPath: wit,
    worldName: 'plugin',
    disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
