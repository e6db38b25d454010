#!/usr/bin/env node
import '../dist/mvirt.js';
