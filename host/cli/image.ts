/**
 * `mvirt image …` belongs to images/ (the builder); the CLI only routes to it.
 * Loaded lazily by the dispatcher so the other commands do not pay for it.
 */
import { imageCommand } from '../../images/cli.js';

export const runImage = (argv: string[]): Promise<number> => imageCommand(argv);
