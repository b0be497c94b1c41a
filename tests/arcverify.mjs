// Verify the ARC chain (RFC 8617) of a message with mailauth (npm), an
// implementation independent of dkimpy, asking the name server at
// 127.0.0.1:PORT for the public keys.
//
// usage: node arcverify.mjs PORT MESSAGE-FILE  (mailauth found by NODE_PATH)
// prints "arc RESULT INSTANCE" (result pass, fail or none; the last
// instance, or 0 without a chain), then "comment TEXT" when mailauth gives
// one, then "aar MTA ARC-RESULT" from the last ARC-Authentication-Results,
// then "ams RESULT DOMAIN SELECTOR" for the last ARC-Message-Signature.
import { readFileSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { createRequire } from 'node:module';

const require = createRequire(process.env.NODE_PATH ? `${process.env.NODE_PATH}/` : import.meta.url);
const { dkimVerify } = require('mailauth/lib/dkim/verify');
const { arc } = require('mailauth/lib/arc');

const [port, path] = process.argv.slice(2);
const dns = new Resolver({ timeout: 5000, tries: 1 });
dns.setServers([`127.0.0.1:${port}`]);
const resolver = (name, type) => dns.resolve(name, type);

const dkimResult = await dkimVerify(readFileSync(path), { resolver });
const result = await arc(dkimResult.arc, { resolver });
console.log(`arc ${result.status.result} ${result.i}`);
if (result.status.comment) console.log(`comment ${result.status.comment}`);
const aar = result.authenticationResults;
if (aar) console.log(`aar ${aar.mta} ${aar.arc ? aar.arc.result : '-'}`);
const ams = result.signature;
if (ams) console.log(`ams ${ams.status.result} ${ams.signingDomain} ${ams.selector}`);
