#!/usr/bin/env node
// CommonJS (bin/package.json): Node then starts without its ES module loader (scripts/build.mjs).
require('../dist/mvirt.cjs');
