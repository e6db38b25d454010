#!/usr/bin/env node
import '../dist/mvirtd.js';
