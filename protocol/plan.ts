/**
 * Dry runs: every state-changing method takes `dryRun: true` and answers with
 * a plan instead of its usual result — what it checked, the steps it would
 * run, the processes it would start and the hypervisor (QMP) or agent
 * commands it would send, the files it would create or remove and the records
 * it would change — and changes nothing: no row, no file, no process, no
 * event. A call the real method would refuse is refused the same way, with
 * the same typed error.
 */
import * as z from 'zod';

/** The methods that change something, each of which takes `dryRun`. */
export const MUTATING_METHODS = [
  'vm.create',
  'vm.start',
  'vm.stop',
  'vm.kill',
  'vm.pause',
  'vm.resume',
  'vm.reboot',
  'vm.delete',
  'vm.attachDisk',
  'vm.detachDisk',
  'vm.snapshot',
  'vm.suspend',
  'snapshot.delete',
  'job.run',
  'job.cancel',
  'job.signal',
  'job.stdin',
  'job.resize',
  'pool.set',
  'pool.delete',
  'image.delete',
  'image.build',
  'image.import',
  'volume.create',
  'volume.resize',
  'volume.delete',
  'volume.clone',
  'volume.snapshot',
  'volume.restore',
  'volume.deleteSnapshot',
  'fs.write',
  'fs.mkdir',
  'fs.remove',
  'fs.move',
  'port.forward',
  'port.close',
] as const;
export type MutatingMethod = (typeof MUTATING_METHODS)[number];

export const isMutating = (m: string): m is MutatingMethod =>
  (MUTATING_METHODS as readonly string[]).includes(m);

/** The params field every mutating method takes. */
export const DRY_RUN = {
  dryRun: z.boolean().describe('answer with the plan (a DryRunPlan) and change nothing').optional(),
};

/** One thing a plan would do outside mvirtd's own records. */
export const PlanCommand = z.discriminatedUnion('kind', [
  /** A process it would start. */
  z.strictObject({ kind: z.literal('exec'), argv: z.array(z.string()) }),
  /** A QMP command it would send to the VM's QEMU. */
  z.strictObject({
    kind: z.literal('qmp'),
    execute: z.string(),
    arguments: z.record(z.string(), z.unknown()).optional(),
  }),
  /** A message it would send to the VM's agent. */
  z.strictObject({
    kind: z.literal('agent'),
    type: z.string(),
    body: z.record(z.string(), z.unknown()).optional(),
  }),
  /** A signal it would send to a process. */
  z.strictObject({ kind: z.literal('signal'), pid: z.number().int(), signal: z.string() }),
]);
export type PlanCommand = z.infer<typeof PlanCommand>;

export const DryRunPlan = z.strictObject({
  dryRun: z.literal(true),
  method: z.string(),
  /** The checks the real call makes before changing anything, each passed, in words. */
  admission: z.array(z.string()),
  /** The named steps it would run, in order (empty: nothing to do). */
  steps: z.array(z.string()),
  commands: z.array(PlanCommand),
  /** Paths relative to the data dir (a folder ends in '/'). */
  files: z.strictObject({ create: z.array(z.string()), remove: z.array(z.string()) }),
  /** The records it would change, in words ("vm web: stopped → starting"). */
  changes: z.array(z.string()),
});
export type DryRunPlan = z.infer<typeof DryRunPlan>;
