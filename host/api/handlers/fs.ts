/** The fs.* methods: thin adapters from validated params onto the guest files (host/fs/files.ts). */
import type { GuestFiles } from '../../fs/files.js';
import type { Handlers, Planners } from '../types.js';

export interface FsHandlerDeps {
  files: GuestFiles;
}

type FsMethods =
  'fs.write' | 'fs.read' | 'fs.stat' | 'fs.list' | 'fs.mkdir' | 'fs.remove' | 'fs.move';

export const fsHandlers = ({ files }: FsHandlerDeps): Handlers<FsMethods> => ({
  'fs.write': (p) => files.write(p),
  'fs.read': (p) => files.read(p),
  'fs.stat': (p) => files.stat(p),
  'fs.list': (p) => files.list(p),
  'fs.mkdir': (p) => files.mkdir(p),
  'fs.remove': (p) => files.remove(p),
  'fs.move': (p) => files.move(p),
});

export const fsPlanners = ({
  files,
}: FsHandlerDeps): Planners<'fs.write' | 'fs.mkdir' | 'fs.remove' | 'fs.move'> => ({
  'fs.write': (p) => files.plan('fs.write', p),
  'fs.mkdir': (p) => files.plan('fs.mkdir', p),
  'fs.remove': (p) => files.plan('fs.remove', p),
  'fs.move': (p) => files.plan('fs.move', p),
});
