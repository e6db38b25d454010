/**
 * The control calls of one cloud-hypervisor VM over its REST API: power,
 * pause, status, hot-plug of disks (vm.add-disk / vm.remove-device) and
 * saved states (vm.snapshot). Each maps to one documented endpoint.
 */
import type { Logger } from 'pino';
import { MvirtError } from '../../../protocol/errors.js';
import type { ApiVmControl } from '../api-vm.js';
import type { RestClient } from '../rest.js';
import type { DiskHotplug, DiskSpec, StateSpec } from '../types.js';
import { describeState } from '../vmm-common.js';
import { diskConfig, diskId, toRunState } from './config.js';
import path from 'node:path';
import { symlink, rm } from 'node:fs/promises';

export const CH_BACKEND = 'cloud-hypervisor';

/** How often vm.info is asked whether an unplugged disk is gone (the guest ejects it over ACPI). */
const UNPLUG_POLL_MS = 50;

interface VmInfoBody {
  state?: string;
  config?: { disks?: { id?: string }[] };
}

export function chControl(o: {
  api: RestClient;
  dir: string;
  version: () => Promise<string>;
  log: Logger;
}): ApiVmControl {
  const { api } = o;
  const put = async (what: string, body?: unknown) => {
    await api.call('PUT', `/${what}`, body);
  };
  const info = async () => (await api.call('GET', '/vm.info')) as VmInfoBody;

  const linkName = (serial: string) => `hotplug-${serial}`;
  const hotplug: DiskHotplug = {
    // mvirtd's own user runs the VMM: nothing to hand over.
    handOver: async () => undefined,
    // cloud-hypervisor opens and plugs in one call (plug); only the link into the folder here.
    async addBackend(disk: DiskSpec) {
      const link = path.join(o.dir, linkName(disk.serial!));
      await rm(link, { force: true });
      await symlink(path.resolve(disk.path), link);
    },
    async removeBackend(serial) {
      await rm(path.join(o.dir, linkName(serial)), { force: true });
    },
    async plug(disk) {
      if (!disk.serial) throw new MvirtError('INVALID_PARAMS', 'a hot-plugged disk needs a serial');
      await put('vm.add-disk', diskConfig(disk, linkName(disk.serial), diskId(disk.serial)));
    },
    async unplug(serial, timeoutMs) {
      const id = diskId(serial);
      const present = async () => ((await info()).config?.disks ?? []).some((d) => d.id === id);
      if (!(await present())) return;
      await put('vm.remove-device', { id });
      const deadline = Date.now() + timeoutMs;
      while (await present()) {
        if (Date.now() > deadline)
          throw new MvirtError(
            'DISK_BUSY',
            `the guest did not release disk ${serial} in ${timeoutMs} ms`,
          );
        await new Promise((r) => setTimeout(r, UNPLUG_POLL_MS));
      }
    },
  };

  return {
    pause: () => put('vm.pause'),
    resume: () => put('vm.resume'),
    reboot: () => put('vm.reboot'),
    // ACPI power button: the guest's init powers off, then the VMM's VM shuts down.
    powerdown: () => put('vm.power-button'),
    // vm.shutdown stops the VM; vmm.shutdown ends the process, which is what quit means.
    quit: () => put('vmm.shutdown'),
    async status() {
      return toRunState((await info()).state);
    },
    hotplug,
    async saveState(dir: string, spec: StateSpec) {
      if ((await info()).state !== 'Paused') await put('vm.pause');
      await put('vm.snapshot', { destination_url: `file://${path.resolve(dir)}` });
      return describeState(dir, CH_BACKEND, await o.version(), spec);
    },
    close: () => api.close(),
  };
}
