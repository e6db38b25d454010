/**
 * Image recipes: JSON validated with strict zod schemas, so a typo in a field
 * name is an error rather than a silently ignored setting. Every error names
 * the field and says what to do.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import * as z from 'zod';
import { MvirtError } from '../protocol/errors.js';
import { PROJECT_ROOT } from './paths.js';

const debName = z
  .string()
  .regex(
    /^[a-z0-9][a-z0-9+.-]+$/,
    'must be a Debian package name (lowercase letters, digits, + - .)',
  );

export const MACHINES = ['pc', 'q35', 'microvm'] as const;
export type Machine = (typeof MACHINES)[number];

export const Recipe = z.strictObject({
  /** Image name: the folder under <data-dir>/images/. */
  name: z
    .string()
    .regex(
      /^[a-z0-9][a-z0-9._-]{0,63}$/,
      'must be 1-64 of a-z 0-9 . _ - starting with a letter or digit',
    ),
  description: z.string().max(500).optional(),
  /** Debian's kernel (a package name resolved through images/pins.json) or the kernel-config/ build. */
  kernel: z.union([
    z.strictObject({ debian: debName }),
    z.strictObject({ custom: z.string().min(1) }),
  ]),
  /** Extra Debian packages; their dependency closure is added. */
  packages: z.array(debName).max(200).default([]),
  /** Cap on the closure's installed size (MiB), checked before anything is downloaded. */
  maxPackagesMiB: z.number().int().min(1).max(65536).default(1024),
  /** Extra files copied into the root disk. */
  files: z
    .array(
      z.strictObject({
        src: z.string().min(1),
        dest: z.string().regex(/^\/[^\0]*$/, 'must be an absolute path inside the guest'),
        mode: z
          .string()
          .regex(/^0?[0-7]{3,4}$/, 'must be an octal mode such as "0755"')
          .optional(),
      }),
    )
    .max(1000)
    .default([]),
  /**
   * Paths the packages install that the root disk leaves out: files or whole
   * folders, e.g. glibc's iconv modules in an image where nothing uses iconv.
   */
  exclude: z
    .array(
      z
        .string()
        .regex(/^\/[^\0]*[^/]$/, 'must be an absolute path inside the guest, not "/"')
        .refine((p) => !p.split('/').includes('..'), 'must not contain ".."'),
    )
    .max(1000)
    .default([]),
  /** Kernel modules loaded at boot (Debian kernel); dependencies come from modules.dep. */
  modules: z
    .array(z.string().regex(/^[A-Za-z0-9_-]+$/, 'must be a module name'))
    .max(200)
    .default([]),
  /** Kernel arguments; the VM backend appends per-VM `mvirt.*` ones. */
  cmdline: z.string().max(2048).default(''),
  /** The agent executable, installed as /usr/bin/mvirt-agent. */
  agent: z.string().min(1).default('dist/agent/mvirt-agent'),
  /** The machine type this image is tested with, recorded for the QEMU backend. */
  machine: z.enum(MACHINES).default('pc'),
  /**
   * The serial console: `shell` runs a login-less root shell on it (the
   * emergency shell of `mvirt console`); `off` leaves it output only, for
   * production images where nobody should type into a guest.
   */
  console: z.enum(['shell', 'off']).default('shell'),
  /** Root disk: squashfs compression (zstd: smaller; lz4: faster to read under TCG). */
  rootfs: z
    .strictObject({
      compression: z.enum(['zstd', 'lz4', 'xz', 'gzip']).default('zstd'),
      /**
       * zstd level (default 15). Measured on the build recipe's 395 MiB root
       * (2 cores): level 15 55 s → 121 MiB, level 3 2.2 s → 139 MiB; reading
       * costs the same, so big package images use 3.
       */
      level: z.number().int().min(1).max(22).optional(),
    })
    .refine((r) => r.level === undefined || r.compression === 'zstd', {
      message: 'level is for zstd only: remove it or use "compression": "zstd"',
      path: ['level'],
    })
    .default({ compression: 'zstd' }),
});
export type Recipe = z.infer<typeof Recipe>;

/** A validated recipe with its file paths made absolute. */
export interface ResolvedRecipe extends Recipe {
  source: string;
  agentPath: string;
  customKernelDir: string | null;
  fileSources: { src: string; dest: string; mode: number | null }[];
}

const fieldOf = (p: readonly PropertyKey[]): string =>
  p.length === 0
    ? '(top level)'
    : p
        .map((s, i) => (typeof s === 'number' ? `[${s}]` : i === 0 ? String(s) : `.${String(s)}`))
        .join('');

/** One readable line per zod issue: `field: problem`. */
export function describeIssues(err: z.ZodError): string[] {
  return err.issues.map((iss) => {
    const at = fieldOf(iss.path);
    if (iss.code === 'unrecognized_keys') {
      const allowed =
        iss.path.length === 0 ? ` (allowed: ${Object.keys(Recipe.shape).join(', ')})` : '';
      return `${at}: unknown field${iss.keys.length > 1 ? 's' : ''} ${iss.keys.map((k) => `"${k}"`).join(', ')}: remove or rename${allowed}`;
    }
    if (iss.code === 'invalid_type' && iss.message.includes('received undefined'))
      return `${at}: missing required field (expected ${iss.expected})`;
    if (iss.code === 'invalid_union' && fieldOf(iss.path) === 'kernel')
      return `kernel: must be {"debian": "<package>"} or {"custom": "<kernel-config folder>"}`;
    return `${at}: ${iss.message}`;
  });
}

/** Validate parsed JSON; `source` names the file in messages. */
export function parseRecipe(json: unknown, source = 'recipe'): Recipe {
  const r = Recipe.safeParse(json);
  if (!r.success) {
    const lines = describeIssues(r.error);
    throw new MvirtError('RECIPE_INVALID', `${source}: ${lines.join('; ')}`, { details: lines });
  }
  return r.data;
}

async function exists(p: string, want: 'file' | 'dir'): Promise<boolean> {
  try {
    const st = await stat(p);
    return want === 'file' ? st.isFile() : st.isDirectory();
  } catch {
    return false;
  }
}

/**
 * Read, validate and resolve a recipe. Relative paths resolve against the
 * project root (so `dist/agent/mvirt-agent` means the same from any cwd).
 */
export async function loadRecipe(file: string, root = PROJECT_ROOT): Promise<ResolvedRecipe> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new MvirtError(
      'RECIPE_INVALID',
      `recipe ${file} cannot be read: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new MvirtError(
      'RECIPE_INVALID',
      `recipe ${file} is not valid JSON: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  return resolveRecipe(parseRecipe(json, `recipe ${file}`), file, root);
}

export async function resolveRecipe(
  recipe: Recipe,
  source: string,
  root = PROJECT_ROOT,
): Promise<ResolvedRecipe> {
  const abs = (p: string): string => path.resolve(root, p);
  const problems: string[] = [];
  const agentPath = abs(recipe.agent);
  if (!(await exists(agentPath, 'file')))
    problems.push(
      `agent: ${agentPath} does not exist: build the agent with \`node scripts/build.mjs agent\` or set "agent" to an executable (relative paths resolve against ${root})`,
    );
  const fileSources: ResolvedRecipe['fileSources'] = [];
  for (const [i, f] of recipe.files.entries()) {
    const src = abs(f.src);
    if (!(await exists(src, 'file')))
      problems.push(
        `files[${i}].src: ${src} is not a file: fix the path (relative paths resolve against ${root})`,
      );
    if (f.dest.split('/').includes('..')) problems.push(`files[${i}].dest: must not contain ".."`);
    fileSources.push({
      src,
      dest: f.dest,
      mode: f.mode === undefined ? null : parseInt(f.mode, 8),
    });
  }
  let customKernelDir: string | null = null;
  if ('custom' in recipe.kernel) {
    customKernelDir = abs(recipe.kernel.custom);
    if (!(await exists(path.join(customKernelDir, 'build.sh'), 'file')))
      problems.push(
        `kernel.custom: ${customKernelDir} has no build.sh: point it at the kernel-config folder`,
      );
    if (recipe.modules.length > 0)
      problems.push('modules: the custom kernel is built without module support: remove "modules"');
  }
  if (problems.length > 0)
    throw new MvirtError('RECIPE_INVALID', `${source}: ${problems.join('; ')}`, {
      details: problems,
    });
  return { ...recipe, source, agentPath, customKernelDir, fileSources };
}
