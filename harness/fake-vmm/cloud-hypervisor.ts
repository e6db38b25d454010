/**
 * A fake `cloud-hypervisor` for tests and benches: takes the real command
 * line (`--api-socket path=<file>`), serves the REST API on that socket with
 * every request checked against specs/cloud-hypervisor.yaml (common.ts), and
 * keeps the VMM's state machine: vm.boot needs vm.create, pause needs a
 * running VM, resume a paused one, vm.snapshot a paused one, vm.restore no VM
 * yet; hot-plugged disks need their file and a free id. Status codes are the
 * spec's (404 not created, 405 wrong state). The serial console is a unix
 * socket the VMM listens on (`serial: {mode: Socket}`); the guest is the real
 * agent core (common.ts createFakeGuest). A guest power-off ends the process
 * with status 0, as it ends cloud-hypervisor.
 */
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
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

type VmConfig = {
  payload: { kernel?: string; initramfs?: string; cmdline?: string };
  disks?: { path?: string; id?: string; readonly?: boolean }[];
  serial?: { mode: string; socket?: string };
  vsock?: { cid: number; socket: string };
  memory?: { size: number };
  cpus?: { boot_vcpus: number; max_vcpus: number };
};
type State = 'Created' | 'Running' | 'Paused' | 'Shutdown';

const { values } = parseArgs({
  options: { 'api-socket': { type: 'string' }, version: { type: 'boolean', short: 'V' } },
  strict: true,
});
if (values.version) {
  process.stdout.write('cloud-hypervisor v41.0.0-fake\n');
  process.exit(0);
}
const apiArg = values['api-socket'];
if (!apiArg) {
  process.stderr.write('fake cloud-hypervisor: --api-socket is required here\n');
  process.exit(1);
}
const apiPath = apiArg.startsWith('path=') ? apiArg.slice(5) : apiArg;

let config: VmConfig | null = null;
let state: State | null = null;
let guest: FakeGuest | null = null;
let serial: net.Server | null = null;
const viewers = new Set<net.Socket>();
let vsockServer: net.Server | null = null;
let pciSlot = 5;

const consoleOut = (text: string | Buffer) => {
  for (const v of viewers) v.write(text);
};
const fault = (message: string) => message;
const E404 = (what: string): Reply => ({ status: 404, body: `${what}: the VM is not created` });
const E405 = (what: string): Reply => ({
  status: 405,
  body: `${what}: not allowed in state ${state}`,
});

function startDevices(c: VmConfig): void {
  if (c.serial?.mode === 'Socket' && c.serial.socket) {
    serial = net.createServer((s) => {
      viewers.add(s);
      s.on('data', (d: Buffer) => guest?.input(d));
      s.on('close', () => viewers.delete(s));
      s.on('error', () => undefined);
    });
    serial.listen(c.serial.socket);
  }
  if (c.vsock) vsockServer = serveHybridVsock(c.vsock.socket, () => guest?.running === true);
  guest = createFakeGuest({
    cmdline: c.payload.cmdline ?? '',
    vsockUds: c.vsock?.socket ?? null,
    console: consoleOut,
    onPower: (action) => {
      if (action === 'reboot') return reboot();
      exitWith(guest, 0);
    },
  });
}

function reboot(): void {
  guest?.kill();
  guest?.boot();
}

function validate(c: VmConfig): void {
  mustBeElfKernel(c.payload.kernel);
  if (c.payload.initramfs) mustExist(c.payload.initramfs, 'initramfs');
  for (const d of c.disks ?? []) mustExist(d.path, 'disk');
  const ids = (c.disks ?? []).map((d) => d.id).filter(Boolean);
  if (new Set(ids).size !== ids.length) throw new Error('duplicate disk ids');
}

async function handle(method: string, p: string, body: unknown): Promise<Reply> {
  const op = `${method} ${p.replace(/^\/api\/v1/, '')}`;
  switch (op) {
    case 'GET /vmm.ping':
      return {
        status: 200,
        body: { version: 'v41.0.0-fake', build_version: 'fake', pid: process.pid },
      };
    case 'PUT /vmm.shutdown':
      setImmediate(() => exitWith(guest, 0));
      return { status: 204 };
    case 'GET /vm.info':
      if (!config || !state) return E404('vm.info');
      return { status: 200, body: { config, state } };
    case 'PUT /vm.create':
      if (config) return { status: 500, body: 'VM already created' };
      validate(body as VmConfig);
      config = body as VmConfig;
      state = 'Created';
      return { status: 204 };
    case 'PUT /vm.boot':
      if (!config) return E404('vm.boot');
      if (state !== 'Created' && state !== 'Shutdown') return E405('vm.boot');
      if (!guest) startDevices(config);
      guest!.boot();
      state = 'Running';
      return { status: 204 };
    case 'PUT /vm.pause':
      if (!config) return E404('vm.pause');
      if (state !== 'Running') return E405('vm.pause');
      guest!.pause();
      state = 'Paused';
      return { status: 204 };
    case 'PUT /vm.resume':
      if (!config) return E404('vm.resume');
      if (state !== 'Paused') return E405('vm.resume');
      if (!guest!.running)
        guest!.boot(); // first run of a restored VM
      else guest!.resume();
      state = 'Running';
      return { status: 204 };
    case 'PUT /vm.reboot':
      if (!config) return E404('vm.reboot');
      if (state !== 'Running') return E405('vm.reboot');
      reboot();
      return { status: 204 };
    case 'PUT /vm.shutdown':
      if (!config) return E404('vm.shutdown');
      if (state !== 'Running' && state !== 'Paused') return E405('vm.shutdown');
      guest!.kill();
      state = 'Shutdown';
      return { status: 204 };
    case 'PUT /vm.power-button':
      if (!config) return E404('vm.power-button');
      if (state !== 'Running') return E405('vm.power-button');
      // The µOS's init powers off on the ACPI button: the VM ends, then the VMM.
      consoleOut('reboot: Power down\r\n');
      setTimeout(() => exitWith(guest, 0), 20);
      return { status: 204 };
    case 'PUT /vm.add-disk': {
      if (!config || !state) return E404('vm.add-disk');
      if (state !== 'Running' && state !== 'Paused') return E405('vm.add-disk');
      const d = body as { path?: string; id?: string };
      mustExist(d.path, 'disk');
      const id = d.id ?? `_disk${pciSlot}`;
      if ((config.disks ?? []).some((x) => x.id === id))
        return { status: 409, body: `${id} exists` };
      config.disks = [...(config.disks ?? []), { ...d, id }];
      return {
        status: 200,
        body: { id, bdf: `0000:00:${(pciSlot++).toString(16).padStart(2, '0')}.0` },
      };
    }
    case 'PUT /vm.remove-device': {
      if (!config) return E404('vm.remove-device');
      const id = (body as { id?: string }).id;
      const before = config.disks?.length ?? 0;
      config.disks = (config.disks ?? []).filter((d) => d.id !== id);
      return config.disks.length === before
        ? { status: 404, body: `no device ${id}` }
        : { status: 204 };
    }
    case 'PUT /vm.snapshot': {
      if (!config) return E404('vm.snapshot');
      if (state !== 'Paused') return E405('vm.snapshot');
      const dir = fileUrl((body as { destination_url?: string }).destination_url);
      writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
      writeFileSync(path.join(dir, 'state.json'), JSON.stringify({ fake: true, at: Date.now() }));
      writeFileSync(path.join(dir, 'memory-ranges'), Buffer.alloc(4096));
      return { status: 204 };
    }
    case 'PUT /vm.restore': {
      if (config) return { status: 404, body: 'vm.restore: a VM is already created' };
      const b = body as { source_url: string; resume?: boolean };
      const dir = fileUrl(b.source_url);
      for (const f of ['config.json', 'state.json', 'memory-ranges'])
        if (!existsSync(path.join(dir, f))) return { status: 400, body: `${f} missing in ${dir}` };
      const c = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as VmConfig;
      validate(c);
      config = c;
      startDevices(c);
      state = 'Paused';
      if (b.resume) {
        guest!.boot();
        state = 'Running';
      }
      return { status: 204 };
    }
    default:
      // In the spec (checked above) but not something mvirt uses: the fake says so.
      return { status: 400, body: `the fake does not implement ${op}` };
  }
}

function fileUrl(url: string | undefined): string {
  if (!url?.startsWith('file://')) throw new Error(`not a file:// URL: ${url}`);
  const dir = url.slice('file://'.length);
  if (!existsSync(dir)) throw new Error(`${dir} does not exist`);
  return dir;
}

const spec = loadSpec(path.join(SPECS_DIR, 'cloud-hypervisor.yaml'));
process.on('SIGTERM', () => exitWith(guest, 0));
process.on('SIGINT', () => exitWith(guest, 0));
await serveApi(apiPath, spec, handle, fault);
void serial;
void vsockServer;
