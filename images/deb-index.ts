/**
 * A recipe's Debian packages with their dependency closure, resolved from the
 * Packages index apt already has (`apt-cache dumpavail`: one record per
 * package, the version apt's policy would install), in TypeScript.
 *
 * Why not `apt-cache depends --recurse`: it lists every alternative and every
 * provider of a virtual package (python3 came to 400+ packages, most of them
 * never installed by apt), and `apt-get install -s` resolves against the
 * host's installed packages, not an empty root. Here the rules are apt's for
 * an empty root: Depends and Pre-Depends (not Recommends), the first
 * alternative that can be satisfied unless one is already chosen, a virtual
 * package by its one provider (or the one already chosen), versions checked.
 * Essential packages are not added (nothing declares them; busybox stands in
 * for the shell and coreutils). The result depends only on the index, so the
 * same index gives the same closure; the manifest records every version and
 * sha256.
 *
 * The Debian version comparison is written here (dpkg's verrevcmp, ~30 lines):
 * no maintained npm package does it, and calling `dpkg --compare-versions`
 * for every constraint costs a process each.
 */
import { MvirtError } from '../protocol/errors.js';

/** One package record of the index (the fields the resolver reads). */
export interface IndexEntry {
  name: string;
  version: string;
  arch: string;
  /** Groups of alternatives: every group must be satisfied by one of its members. */
  depends: Relation[][];
  provides: { name: string; version: string | null }[];
  installedKiB: number;
  size: number;
  sha256: string;
  filename: string;
}

export type Op = '<<' | '<=' | '=' | '>=' | '>>';
export interface Relation {
  name: string;
  op: Op | null;
  version: string | null;
}

export interface DebIndex {
  get(name: string): IndexEntry | undefined;
  providers(name: string): IndexEntry[];
  names(): IterableIterator<string>;
}

// ------------------------------------------------------------------ versions

const order = (c: string | undefined): number => {
  if (c === undefined) return 0;
  if (c === '~') return -1;
  if (c >= '0' && c <= '9') return 0;
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return c.charCodeAt(0);
  return c.charCodeAt(0) + 256;
};

function verrevcmp(a: string, b: string): number {
  let i = 0;
  let j = 0;
  const digit = (c: string | undefined): boolean => c !== undefined && c >= '0' && c <= '9';
  while (i < a.length || j < b.length) {
    while ((i < a.length && !digit(a[i])) || (j < b.length && !digit(b[j]))) {
      const d = order(a[i]) - order(b[j]);
      if (d !== 0) return d;
      i++;
      j++;
    }
    while (a[i] === '0') i++;
    while (b[j] === '0') j++;
    let first = 0;
    while (digit(a[i]) && digit(b[j])) {
      if (first === 0) first = a.charCodeAt(i) - b.charCodeAt(j);
      i++;
      j++;
    }
    if (digit(a[i])) return 1;
    if (digit(b[j])) return -1;
    if (first !== 0) return first;
  }
  return 0;
}

function splitVersion(v: string): [number, string, string] {
  const colon = v.indexOf(':');
  const epoch = colon === -1 ? 0 : Number(v.slice(0, colon));
  const rest = colon === -1 ? v : v.slice(colon + 1);
  const dash = rest.lastIndexOf('-');
  return dash === -1 ? [epoch, rest, ''] : [epoch, rest.slice(0, dash), rest.slice(dash + 1)];
}

/** Debian version order (dpkg --compare-versions): negative, zero or positive. */
export function compareVersions(a: string, b: string): number {
  const [ea, ua, ra] = splitVersion(a);
  const [eb, ub, rb] = splitVersion(b);
  if (ea !== eb) return ea - eb;
  return verrevcmp(ua, ub) || verrevcmp(ra, rb);
}

export function satisfies(version: string, op: Op | null, want: string | null): boolean {
  if (op === null || want === null) return true;
  const c = compareVersions(version, want);
  switch (op) {
    case '<<':
      return c < 0;
    case '<=':
      return c <= 0;
    case '=':
      return c === 0;
    case '>=':
      return c >= 0;
    case '>>':
      return c > 0;
  }
}

// ------------------------------------------------------------------ parsing

const REL =
  /^([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s]+)\s*\))?$/;

function parseRelation(text: string): Relation | null {
  const m = REL.exec(text.trim());
  if (m === null) return null;
  // `<` and `>` are dpkg's deprecated spellings of `<=` and `>=`.
  const op = m[2] === '<' ? '<=' : m[2] === '>' ? '>=' : ((m[2] ?? null) as Op | null);
  return { name: m[1] ?? '', op, version: m[3] ?? null };
}

export function parseRelations(field: string | undefined): Relation[][] {
  if (field === undefined || field.trim() === '') return [];
  return field.split(',').map((group) =>
    group
      .split('|')
      .map(parseRelation)
      .filter((r): r is Relation => r !== null),
  );
}

/**
 * Parse Packages-index text (deb822 stanzas). When a package appears more than
 * once, the highest version wins (dumpavail already gives one per package).
 */
export function parseIndex(text: string, arch = 'amd64'): DebIndex {
  const byName = new Map<string, IndexEntry>();
  for (const stanza of text.split('\n\n')) {
    if (stanza.trim() === '') continue;
    const f = new Map<string, string>();
    let key = '';
    for (const line of stanza.split('\n')) {
      if (line.startsWith(' ') || line.startsWith('\t')) {
        if (key === 'Depends' || key === 'Pre-Depends' || key === 'Provides')
          f.set(key, `${f.get(key) ?? ''} ${line.trim()}`);
        continue;
      }
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      key = line.slice(0, colon);
      f.set(key, line.slice(colon + 1).trim());
    }
    const name = f.get('Package');
    const version = f.get('Version');
    const a = f.get('Architecture') ?? '';
    if (name === undefined || version === undefined || (a !== arch && a !== 'all')) continue;
    const old = byName.get(name);
    if (old !== undefined && compareVersions(old.version, version) >= 0) continue;
    byName.set(name, {
      name,
      version,
      arch: a,
      depends: [...parseRelations(f.get('Pre-Depends')), ...parseRelations(f.get('Depends'))],
      provides: parseRelations(f.get('Provides')).flatMap((g) =>
        g.map((r) => ({ name: r.name, version: r.op === '=' ? r.version : null })),
      ),
      installedKiB: Number(f.get('Installed-Size') ?? 0),
      size: Number(f.get('Size') ?? 0),
      sha256: f.get('SHA256') ?? '',
      filename: f.get('Filename') ?? '',
    });
  }
  const provided = new Map<string, IndexEntry[]>();
  for (const e of byName.values())
    for (const p of e.provides) {
      const list = provided.get(p.name) ?? [];
      list.push(e);
      provided.set(p.name, list);
    }
  for (const list of provided.values()) list.sort((x, y) => (x.name < y.name ? -1 : 1));
  return {
    get: (n) => byName.get(n),
    providers: (n) => provided.get(n) ?? [],
    names: () => byName.keys(),
  };
}

// ------------------------------------------------------------------ resolving

export interface Closure {
  /** Every package, sorted by name. */
  packages: IndexEntry[];
  /** Why each package is in: "requested" or the package that needed it. */
  why: Map<string, string>;
  installedKiB: number;
}

const relText = (r: Relation): string =>
  r.op === null ? r.name : `${r.name} (${r.op} ${r.version ?? ''})`;

/** Close names by prefix or edit distance 1–2, for "did you mean". */
function similar(index: DebIndex, name: string): string[] {
  const out: string[] = [];
  const dist = (a: string, b: string): number => {
    const d = Array.from({ length: b.length + 1 }, (_, i) => i);
    for (let i = 1; i <= a.length; i++) {
      let prev = d[0] ?? 0;
      d[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const cur = d[j] ?? 0;
        d[j] = Math.min(cur + 1, (d[j - 1] ?? 0) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
        prev = cur;
      }
    }
    return d[b.length] ?? 0;
  };
  for (const n of index.names())
    if (Math.abs(n.length - name.length) <= 2 && dist(n, name) <= 2) out.push(n);
  return out.sort().slice(0, 5);
}

/**
 * The dependency closure of `requested` in `index`. Errors name the package
 * to fix: an unknown or ambiguous name (RECIPE_INVALID), a dependency the
 * index cannot satisfy (BUILD_FAILED, with the chain that needs it).
 */
export function resolveClosure(index: DebIndex, requested: readonly string[]): Closure {
  const chosen = new Map<string, IndexEntry>();
  const why = new Map<string, string>();
  const queue: IndexEntry[] = [];
  const choose = (e: IndexEntry, because: string): void => {
    if (chosen.has(e.name)) return;
    chosen.set(e.name, e);
    why.set(e.name, because);
    queue.push(e);
  };
  const chain = (name: string): string => {
    const path = [name];
    for (let n = why.get(name); n !== undefined && n !== 'requested'; n = why.get(n)) path.push(n);
    return path.reverse().join(' → ');
  };

  const problems: string[] = [];
  for (const name of requested) {
    const real = index.get(name);
    if (real !== undefined) {
      choose(real, 'requested');
      continue;
    }
    const provs = index.providers(name);
    if (provs.length === 1 && provs[0] !== undefined) choose(provs[0], 'requested');
    else if (provs.length > 1)
      problems.push(
        `"${name}" is a virtual package provided by ${provs.map((p) => p.name).join(', ')}: name one of them`,
      );
    else {
      const near = similar(index, name);
      problems.push(
        `"${name}" is not in the apt index${near.length > 0 ? ` (did you mean ${near.join(', ')}?)` : ''}: fix the name, or run \`apt-get update\` if it is new`,
      );
    }
  }
  if (problems.length > 0)
    throw new MvirtError('RECIPE_INVALID', `packages: ${problems.join('; ')}`, {
      details: problems,
    });

  /** A chosen package satisfying r: the real package, or a provider (versioned provides for versioned deps). */
  const satisfiedBy = (r: Relation, pool: (n: string) => IndexEntry | undefined): boolean => {
    const real = pool(r.name);
    if (real !== undefined && satisfies(real.version, r.op, r.version)) return true;
    return index
      .providers(r.name)
      .some(
        (p) =>
          pool(p.name) !== undefined &&
          p.provides.some(
            (v) =>
              v.name === r.name &&
              (r.op === null || (v.version !== null && satisfies(v.version, r.op, r.version))),
          ),
      );
  };
  const candidates = (r: Relation): IndexEntry[] => {
    const out: IndexEntry[] = [];
    const real = index.get(r.name);
    if (real !== undefined && satisfies(real.version, r.op, r.version)) out.push(real);
    for (const p of index.providers(r.name))
      if (
        p.provides.some(
          (v) =>
            v.name === r.name &&
            (r.op === null || (v.version !== null && satisfies(v.version, r.op, r.version))),
        )
      )
        out.push(p);
    return out;
  };

  for (let e = queue.shift(); e !== undefined; e = queue.shift()) {
    for (const group of e.depends) {
      if (group.some((r) => satisfiedBy(r, (n) => chosen.get(n)))) continue;
      // A chosen package of the wrong version cannot be replaced: report it.
      const clash = group.find((r) => chosen.has(r.name));
      let picked: IndexEntry | undefined;
      for (const r of group) {
        const c = candidates(r).filter((x) => !chosen.has(x.name));
        // A virtual package with several providers: apt would ask; take the first by name.
        picked = c[0];
        if (picked !== undefined) break;
      }
      if (picked === undefined) {
        const have =
          clash === undefined
            ? ''
            : ` (have ${clash.name} ${chosen.get(clash.name)?.version ?? ''})`;
        throw new MvirtError(
          'BUILD_FAILED',
          `packages: ${chain(e.name)} needs ${group.map(relText).join(' | ')}, which the apt index cannot satisfy${have}: run \`apt-get update\`, or drop the package that needs it`,
        );
      }
      choose(picked, e.name);
    }
  }
  const packages = [...chosen.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  return { packages, why, installedKiB: packages.reduce((s, p) => s + p.installedKiB, 0) };
}

/** The versioned constraints the closure puts on `name` (for checking a pin against them). */
export function constraintsOn(closure: Closure, name: string): Relation[] {
  const out: Relation[] = [];
  for (const p of closure.packages)
    for (const group of p.depends)
      if (group.length === 1 && group[0]?.name === name && group[0].op !== null) out.push(group[0]);
  return out;
}
