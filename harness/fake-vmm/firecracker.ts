/**
 * A fake `firecracker` for tests and benches: takes the real command line
 * (`--api-sock <file>`, `--id`), serves the REST API on that socket with
 * every request checked against specs/firecracker.yaml (common.ts), and
 * keeps Firecracker's state machine: configuration only before
 * InstanceStart (after it, 400 "not supported after starting"), InstanceStart
 * needs a boot source, PATCH /vm and SendCtrlAltDel need a started VM,
 * /snapshot/create a paused one, /snapshot/load a VMM that has neither been
 * configured nor started. Errors are `{fault_message}` as Firecracker's are.
 * The serial console is stdin and stdout; a guest power-off or reboot ends
 * the process with status 0, as it ends Firecracker.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type net from 'node:net';
import { parseArgs } from 'node:util';
import path from 'node:path';
import {
  createFakeGuest,
  exitWith,
  mustBeElfKernel,
  mustExist,
  serveApi,
  serveHybridVsock,
  type FakeGuest,
  type Reply,
} from './common.js';
import { loadSpec, SPECS_DIR } from './spec-check.js';

const { values } = parseArgs({
  options: {
    'api-sock': { type: 'string' },
    id: { type: 'string' },
    version: { type: 'boolean' },
  },
  strict: true,
});
const VERSION = '1.17.0-fake';
if (values.version) {
  process.stdout.write(`Firecracker v${VERSION}\n`);
  process.exit(0);
}
const apiPath = values['api-sock'] ?? '/run/firecracker.socket';

type State = 'Not started' | 'Running' | 'Paused';
let state: State = 'Not started';
let configured = false;
const cfg: {
  machine: { vcpu_count: number; mem_size_mib: number };
  boot?: { kernel_image_path: string; initrd_path?: string; boot_args?: string };
  drives: Map<string, Record<string, unknown>>;
  nets: Map<string, Record<string, unknown>>;
  vsock?: { guest_cid: number; uds_path: string };
} = { machine: { vcpu_count: 1, mem_size_mib: 128 }, drives: new Map(), nets: new Map() };
let guest: FakeGuest | null = null;
let vsockServer: net.Server | null = null;

const fault = (fault_message: string) => ({ fault_message });
const bad = (m: string): Reply => ({ status: 400, body: fault(m) });
const AFTER_START = 'The requested operation is not supported after starting the microVM.';

process.stdin.on('data', (d: Buffer) => guest?.input(d));
process.stdin.on('error', () => undefined);

function startGuest(): void {
  if (cfg.vsock) vsockServer = serveHybridVsock(cfg.vsock.uds_path, () => guest?.running === true);
  guest = createFakeGuest({
    cmdline: cfg.boot?.boot_args ?? '',
    vsockUds: cfg.vsock?.uds_path ?? null,
    console: (t) => process.stdout.write(t),
    // No reset device: reboot=k makes a guest reboot Firecracker's exit too.
    onPower: () => exitWith(guest, 0),
  });
}

function configure(what: () => Reply): Reply {
  if (state !== 'Not started') return bad(AFTER_START);
  const r = what();
  if (r.status < 300) configured = true;
  return r;
}

function handle(method: string, p: string, body: unknown): Reply {
  const b = body as Record<string, unknown>;
  const m = /^\/(drives|network-interfaces)\/([^/]+)$/.exec(p);
  if (method === 'PUT' && m) {
    return configure(() => {
      if (m[1] === 'drives') {
        if (b.drive_id !== m[2])
          return bad('The id from the path does not match the id from the body!');
        mustExist(b.path_on_host as string, 'drive');
        cfg.drives.set(m[2]!, b);
      } else {
        if (b.iface_id !== m[2])
          return bad('The id from the path does not match the id from the body!');
        cfg.nets.set(m[2]!, b);
      }
      return { status: 204 };
    });
  }
  switch (`${method} ${p}`) {
    case 'GET /':
      return {
        status: 200,
        body: {
          app_name: 'Firecracker',
          id: values.id ?? 'anonymous-instance',
          state,
          vmm_version: VERSION,
        },
      };
    case 'GET /version':
      return { status: 200, body: { firecracker_version: VERSION } };
    case 'GET /machine-config':
      return { status: 200, body: cfg.machine };
    case 'PUT /machine-config':
      return configure(() => {
        cfg.machine = b as typeof cfg.machine;
        return { status: 204 };
      });
    case 'PUT /boot-source':
      return configure(() => {
        mustBeElfKernel(b.kernel_image_path as string);
        if (b.initrd_path) mustExist(b.initrd_path as string, 'initrd');
        cfg.boot = b as typeof cfg.boot;
        return { status: 204 };
      });
    case 'PUT /vsock':
      return configure(() => {
        cfg.vsock = b as typeof cfg.vsock;
        return { status: 204 };
      });
    case 'PUT /actions':
      switch (b.action_type) {
        case 'InstanceStart':
          if (state !== 'Not started') return bad(AFTER_START);
          if (!cfg.boot) return bad('Cannot start microvm without kernel configuration.');
          startGuest();
          guest!.boot();
          state = 'Running';
          return { status: 204 };
        case 'SendCtrlAltDel':
          if (state !== 'Running') return bad('The microVM is not running.');
          process.stdout.write('reboot: Restarting system\r\n');
          setTimeout(() => exitWith(guest, 0), 20);
          return { status: 204 };
        default:
          return { status: 204 }; // FlushMetrics
      }
    case 'PATCH /vm':
      if (state === 'Not started') return bad('The microVM is not running.');
      if (b.state === 'Paused') {
        guest!.pause();
        state = 'Paused';
      } else {
        // A loaded snapshot's guest runs for the first time; a paused one continues.
        if (state === 'Paused' && guest!.running) guest!.resume();
        else if (state === 'Paused') guest!.boot();
        state = 'Running';
      }
      return { status: 204 };
    case 'PUT /snapshot/create': {
      if (state !== 'Paused') return bad('Cannot create a snapshot: the microVM is not paused.');
      const snap = b.snapshot_path as string;
      const mem = b.mem_file_path as string;
      for (const f of [snap, mem])
        if (!existsSync(path.dirname(f))) return bad(`No such directory: ${path.dirname(f)}`);
      writeFileSync(
        snap,
        JSON.stringify({ cfg: { ...cfg, drives: [...cfg.drives], nets: [...cfg.nets] } }),
      );
      writeFileSync(mem, Buffer.alloc(4096));
      return { status: 204 };
    }
    case 'PUT /snapshot/load': {
      if (state !== 'Not started' || configured)
        return bad(
          'Loading a microVM snapshot not allowed after configuring boot-specific resources.',
        );
      const snap = b.snapshot_path as string;
      const memPath =
        (b.mem_backend as { backend_path?: string } | undefined)?.backend_path ??
        (b.mem_file_path as string);
      mustExist(snap, 'snapshot');
      mustExist(memPath, 'memory file');
      const saved = JSON.parse(readFileSync(snap, 'utf8')) as {
        cfg: {
          machine: typeof cfg.machine;
          boot: typeof cfg.boot;
          drives: [string, Record<string, unknown>][];
          vsock?: typeof cfg.vsock;
        };
      };
      cfg.machine = saved.cfg.machine;
      cfg.boot = saved.cfg.boot;
      cfg.drives = new Map(saved.cfg.drives);
      for (const d of cfg.drives.values()) mustExist(d.path_on_host as string, 'drive');
      const override = b.vsock_override as { uds_path: string } | undefined;
      cfg.vsock =
        saved.cfg.vsock &&
        (override ? { ...saved.cfg.vsock, uds_path: override.uds_path } : saved.cfg.vsock);
      configured = true;
      startGuest();
      state = 'Paused';
      if (b.resume_vm === true) {
        guest!.boot();
        state = 'Running';
      }
      return { status: 204 };
    }
    default:
      return bad(`the fake does not implement ${method} ${p}`);
  }
}

const spec = loadSpec(path.join(SPECS_DIR, 'firecracker.yaml'));
process.on('SIGTERM', () => exitWith(guest, 0));
process.on('SIGINT', () => exitWith(guest, 0));
await serveApi(apiPath, spec, handle, fault);
void vsockServer;
