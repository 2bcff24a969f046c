// Compiles RunnelSettlement.sol with the pinned solcjs (control/chain/npm) into the
// artifact Rust embeds (out/RunnelSettlement.json). Run through build.sh.
//
// The output is deterministic: the same source and compiler give the same bytes (solc's
// output is, the JSON keys are written in a fixed order, and no path or time goes in), so
// `build.sh --check` can compare the committed artifact byte for byte.
//
// usage: node compile.cjs <source.sol> <output.json> <npm dir>
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");

const SOLC_VERSION = "0.8.28";
const CONTRACT = "RunnelSettlement";
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function fail(message) {
  process.stderr.write(`compile.cjs: ${message}\n`);
  process.exit(1);
}

const [sourcePath, outputPath, npmDir] = process.argv.slice(2);
if (!sourcePath || !outputPath || !npmDir) fail("usage: node compile.cjs <source.sol> <output.json> <npm dir>");

let solc;
try {
  solc = require(path.join(path.resolve(npmDir), "node_modules", "solc"));
} catch (error) {
  fail(`cannot load solc from ${npmDir}/node_modules (run: cd ${npmDir} && npm ci --ignore-scripts): ${error.message}`);
}
const version = solc.version();
if (!version.startsWith(`${SOLC_VERSION}+`)) fail(`solc ${version} is installed, the artifact is pinned to ${SOLC_VERSION}`);

const source = fs.readFileSync(sourcePath, "utf8");
const unit = `${CONTRACT}.sol`;
const input = { language: "Solidity", sources: { [unit]: { content: source } }, settings: SETTINGS };
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const message of output.errors || []) process.stderr.write(message.formattedMessage || message.message);
if (errors.length > 0) fail(`${errors.length} compile error(s)`);

const contract = output.contracts && output.contracts[unit] && output.contracts[unit][CONTRACT];
if (!contract) fail(`solc produced no ${CONTRACT}`);
const artifact = {
  contractName: CONTRACT,
  solcVersion: version,
  sourceSha256: crypto.createHash("sha256").update(source).digest("hex"),
  settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer },
  abi: contract.abi,
  bytecode: `0x${contract.evm.bytecode.object}`,
  deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
};
fs.writeFileSync(outputPath, `${JSON.stringify(artifact, null, 2)}\n`);
