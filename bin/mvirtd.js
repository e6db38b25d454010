#!/usr/bin/env node
// bin/ is CommonJS (bin/package.json, for mvirt.js); mvirtd is an ES module bundle.
import('../dist/mvirtd.js');
