#!/usr/bin/env node
// Known-answer helper for tests/test_crypto.py: runs the real CryptoJS (npm "crypto-js" 4.x).
//
// Setup (once; .ci/node/ is git-ignored):   npm install --prefix .ci/node crypto-js@4
//
// Reads one JSON request on stdin, writes one JSON answer on stdout:
//   {"op": "encrypt", "items": [{"text", "passphrase"}]}
//       -> {"results": [{"ciphertext"}]}          CryptoJS.AES.encrypt(text, passphrase).toString()
//   {"op": "decrypt", "items": [{"ciphertext", "passphrase"}]}
//       -> {"results": [{"text"} | {"error"}]}     CryptoJS.AES.decrypt(ciphertext, passphrase) as UTF-8
//   {"op": "encrypt_salted", "items": [{"text", "passphrase", "salt"}]}   (salt: 16 hex digits)
//       -> {"results": [{"ciphertext"}]}          same format, salt fixed: the key and IV come from
//          CryptoJS.kdf.OpenSSL.execute(passphrase, 8, 4, salt), then CryptoJS.AES.encrypt(text, key, {iv})
//   {"op": "string", "items": [<any JSON value>]}
//       -> {"results": [String(v) for numbers/booleans, JSON.stringify(v) for objects/arrays]}
// Every answer also carries "cryptojs_version". Exit code 3 when crypto-js is not installed.
"use strict";

const fs = require("fs");
const path = require("path");

const moduleDir = path.resolve(__dirname, "..", "..", ".ci", "node", "node_modules", "crypto-js");
let CryptoJS;
try {
  CryptoJS = require(moduleDir);
} catch (err) {
  process.stderr.write(
    `crypto-js not found at ${moduleDir} (${err.code || err.message}).\n` +
      "Run: npm install --prefix .ci/node crypto-js@4   (from the repository root)\n"
  );
  process.exit(3);
}
const version = JSON.parse(fs.readFileSync(path.join(moduleDir, "package.json"), "utf8")).version;

function encrypt(item) {
  return { ciphertext: CryptoJS.AES.encrypt(item.text, item.passphrase).toString() };
}

function decrypt(item) {
  try {
    const words = CryptoJS.AES.decrypt(item.ciphertext, item.passphrase);
    return { text: words.toString(CryptoJS.enc.Utf8) };
  } catch (err) {
    return { error: String(err && err.message ? err.message : err) };
  }
}

function encryptSalted(item) {
  const salt = CryptoJS.enc.Hex.parse(item.salt);
  const derived = CryptoJS.kdf.OpenSSL.execute(item.passphrase, 256 / 32, 128 / 32, salt);
  const encrypted = CryptoJS.AES.encrypt(item.text, derived.key, { iv: derived.iv });
  const params = CryptoJS.lib.CipherParams.create({ ciphertext: encrypted.ciphertext, salt: salt });
  return { ciphertext: CryptoJS.format.OpenSSL.stringify(params) };
}

function jsString(value) {
  return value !== null && typeof value === "object" ? JSON.stringify(value) : String(value);
}

const ops = { encrypt: encrypt, decrypt: decrypt, encrypt_salted: encryptSalted, string: jsString };

const request = JSON.parse(fs.readFileSync(0, "utf8"));
const op = ops[request.op];
if (!op) {
  process.stderr.write(`unknown op ${JSON.stringify(request.op)}; expected one of ${Object.keys(ops)}\n`);
  process.exit(2);
}
process.stdout.write(JSON.stringify({ cryptojs_version: version, results: request.items.map(op) }));
