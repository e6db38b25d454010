// Lint: typescript-eslint's recommended rules over every TypeScript folder,
// plus type-aware rules (each file is linted with the type information of the
// tsconfig.json that owns it, through the TypeScript project service).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'node_modules/',
      'dist/',
      'build/',
      'bin/',
      'test-output/',
      'bench-output/',
      '**/*.mjs',
      'eslint.config.js',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
      '@typescript-eslint/consistent-type-imports': 'error',
      // A promise nobody awaits or catches loses its error (an unhandled
      // rejection ends mvirtd); one passed where a callback's result is
      // ignored (an event handler, a timer) does the same.
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          // node:test runs what test() and describe() return itself.
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['test', 'describe', 'it', 'suite'] },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      'no-console': 'off',
    },
  },
);
