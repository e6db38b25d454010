/**
 * Firecracker's jailer (chroot, its own uid and gid, cgroups, new pid and
 * mount namespaces): found or not, and why it is not used. mvirtd does not
 * launch through it yet (issue 15 leaves it to a follow-up: the chroot needs
 * the kernel, initrd and drives hard-linked in and the pid read from the
 * jail's pid file, none of which can be checked on a host without KVM), so
 * system.info says plainly that Firecracker runs unjailed, as mvirtd's user.
 * Firecracker's own seccomp filters are on whatever launches it.
 */
import type { HypervisorConfinement } from '../types.js';
import { findProgram } from '../vmm-probe.js';

export function jailerState(jailer: string): HypervisorConfinement {
  const reasons: string[] = [];
  if (jailer === 'off') reasons.push('the jailer is off (--jailer-bin off)');
  else if (!findProgram(jailer)) reasons.push(`the jailer is not installed (${jailer} not found)`);
  else
    reasons.push('launching through the jailer is not implemented yet; Firecracker runs as mvirtd');
  return { user: false, cgroup: null, seccomp: true, jail: false, reasons };
}
