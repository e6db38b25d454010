// Types of icu-trim.mjs (a build script in plain JavaScript), for the tests.
export declare const ICU_KEEP_LANGUAGES: readonly string[];
export declare function icuDropList(items: readonly string[]): string[];
export declare function findIcuData(
  file: string,
): { symbol: string; version: string; offset: number; size: number } | null;
export declare function trimIcu(
  file: string,
  workDir: string,
): { symbol: string; items: number; kept: number; bytes: number; keptBytes: number } | null;
export declare function checkTrimmed(trimmed: string, original: string, script?: string): void;
