// Verify the DKIM signatures of a message with mailauth (npm), a JavaScript
// implementation with Ed25519, asking the name server at 127.0.0.1:PORT for
// the public keys.  Debian 12's Mail::DKIM has no Ed25519; this checks those.
//
// usage: node dkimverify.mjs PORT MESSAGE-FILE  (mailauth found by NODE_PATH)
// prints one line per signature: "result domain selector algorithm", then
// "overall" and the number of signatures that passed.
import { readFileSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { createRequire } from 'node:module';

const require = createRequire(process.env.NODE_PATH ? `${process.env.NODE_PATH}/` : import.meta.url);
const { dkimVerify } = require('mailauth/lib/dkim/verify');

const [port, path] = process.argv.slice(2);
const dns = new Resolver({ timeout: 5000, tries: 1 });
dns.setServers([`127.0.0.1:${port}`]);

const result = await dkimVerify(readFileSync(path), {
    resolver: (name, type) => dns.resolve(name, type),
});
let passed = 0;
for (const signature of result.results) {
    const status = signature.status;
    if (status.result === 'pass') passed += 1;
    console.log([status.result, signature.signingDomain, signature.selector, signature.algo].join(' '));
}
console.log(`overall ${passed}`);
