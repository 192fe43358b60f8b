// The extension's settings, read into a frozen object on start and on every change.
import * as vscode from 'vscode';

export interface StropConfig {
  readonly enable: boolean;
  readonly serverPath: string;
  readonly serverArgs: readonly string[];
  readonly modelPath: string;
  readonly enabledLanguages: readonly string[];
  readonly excludeGlobs: readonly string[];
  readonly debounceMs: number;
  readonly cursorDebounceMs: number;
}

/** Settings whose change needs a new server process (everything but the debounces). */
export const RESTART_KEYS = ['enable', 'serverPath', 'serverArgs', 'modelPath', 'enabledLanguages', 'excludeGlobs'];

/** A contributed setting; VS Code supplies package.json's default, the one place defaults live. */
function setting<T>(section: vscode.WorkspaceConfiguration, key: string): T {
  const value = section.get<T>(key);
  if (value === undefined) {
    throw new Error(`strop: setting "strop.${key}" is not contributed by package.json`);
  }
  return value;
}

export function readConfig(): StropConfig {
  const c = vscode.workspace.getConfiguration('strop');
  return Object.freeze({
    enable: setting<boolean>(c, 'enable'),
    serverPath: setting<string>(c, 'serverPath').trim(),
    serverArgs: Object.freeze([...setting<string[]>(c, 'serverArgs')]),
    modelPath: setting<string>(c, 'modelPath').trim(),
    enabledLanguages: Object.freeze([...setting<string[]>(c, 'enabledLanguages')]),
    excludeGlobs: Object.freeze([...setting<string[]>(c, 'excludeGlobs')]),
    debounceMs: Math.max(0, setting<number>(c, 'debounceMs')),
    cursorDebounceMs: Math.max(0, setting<number>(c, 'cursorDebounceMs')),
  });
}

/** The documents strop serves: real files and untitled buffers of the enabled languages. */
export function documentSelector(cfg: StropConfig): { scheme: string; language?: string }[] {
  const schemes = ['file', 'untitled'];
  if (cfg.enabledLanguages.length === 0 || cfg.enabledLanguages.includes('*')) {
    return schemes.map((scheme) => ({ scheme }));
  }
  return schemes.flatMap((scheme) => cfg.enabledLanguages.map((language) => ({ scheme, language })));
}

/**
 * A document selector cannot express "all but", so excluded files are filtered where documents
 * reach the server: text sync (client.ts middleware), the inline provider and the cursor reports.
 */
export function isExcluded(cfg: StropConfig, document: vscode.TextDocument): boolean {
  return cfg.excludeGlobs.some((pattern) => vscode.languages.match({ pattern }, document) > 0);
}

/** Whether the server has `document`: it matches the selector and is not excluded. */
export function isServed(cfg: StropConfig, document: vscode.TextDocument): boolean {
  return vscode.languages.match(documentSelector(cfg), document) > 0 && !isExcluded(cfg, document);
}

/** The command line that starts the language server: serverPath serverArgs [--model modelPath]. */
export function serveCommand(cfg: StropConfig): { command: string; args: string[] } {
  const args = [...cfg.serverArgs];
  if (cfg.modelPath) {
    args.push('--model', cfg.modelPath);
  }
  return { command: cfg.serverPath, args };
}

/**
 * The command line of another strop subcommand (`log`, `distill`, `stats`): the server arguments
 * before `serve` (e.g. `-m strop` when serverPath is a Python interpreter), then `sub`.
 */
export function cliCommand(cfg: StropConfig, sub: readonly string[]): { command: string; args: string[] } {
  const serveAt = cfg.serverArgs.indexOf('serve');
  const prefix = serveAt >= 0 ? cfg.serverArgs.slice(0, serveAt) : [];
  return { command: cfg.serverPath, args: [...prefix, ...sub] };
}
