// Compiles one Solidity file with solc-js; prints {"ContractName": {"abi": [...], "bytecode": "0x..."}}.
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const file = process.argv[2];
const name = path.basename(file);
const input = {
  language: "Solidity",
  sources: { [name]: { content: fs.readFileSync(file, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
const out = {};
for (const [contract, art] of Object.entries(output.contracts[name])) {
  out[contract] = { abi: art.abi, bytecode: "0x" + art.evm.bytecode.object };
}
process.stdout.write(JSON.stringify(out));
