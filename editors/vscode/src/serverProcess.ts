// Starting the `strop serve` child process: find the executable, spawn it, keep its stderr tail so
// a server that exits at start can be explained in one message.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

/** A server that could not be started; `message` says what, why and how to fix. */
export class ServerStartError extends Error {}

/**
 * The absolute path of `command` (a name looked up on PATH, or a path), or undefined.
 * Hand-rolled (a dozen lines) rather than the `which` package to keep the .vsix dependency-free.
 */
export function resolveExecutable(command: string, cwd: string | undefined, env: NodeJS.ProcessEnv): string | undefined {
  const isFile = (p: string): boolean => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return fs.statSync(p).isFile();
    } catch {
      return false;
    }
  };
  if (command.includes('/') || command.includes(path.sep)) {
    const full = path.resolve(cwd ?? process.cwd(), command);
    return isFile(full) ? full : undefined;
  }
  const dirs = (env.PATH ?? '').split(path.delimiter).filter((d) => d.length > 0);
  const exts = process.platform === 'win32' ? (env.PATHEXT ?? '.EXE;.CMD;.BAT').split(';') : [''];
  for (const dir of dirs) {
    for (const ext of exts) {
      const full = path.join(dir, command + ext);
      if (isFile(full)) {
        return full;
      }
    }
  }
  return undefined;
}

/** Keeps the last `maxChars` characters written to a stream (the reason a server died is at the end). */
export class TextTail {
  private text = '';
  constructor(private readonly maxChars: number) {}
  push(chunk: string): void {
    this.text = (this.text + chunk).slice(-this.maxChars);
  }
  lastLines(count: number): string {
    return this.text.trimEnd().split('\n').slice(-count).join('\n');
  }
}

export interface SpawnedServer {
  readonly process: ChildProcess;
  readonly stderr: TextTail;
  /** Resolves with the exit code (or signal name) once the process has exited. */
  readonly exited: Promise<string>;
}

/** Spawns the server with piped stdio; rejects with ServerStartError when it cannot be executed. */
export async function spawnServer(command: string, args: readonly string[], cwd: string | undefined): Promise<SpawnedServer> {
  const resolved = resolveExecutable(command, cwd, process.env);
  if (resolved === undefined) {
    throw new ServerStartError(
      `strop: cannot find the server executable "${command}" (not on PATH and not a file). ` +
        'Install strop so that its `strop` command is on PATH, or set "strop.serverPath" to it.',
    );
  }
  const child = spawn(resolved, [...args], { cwd, env: process.env, stdio: ['pipe', 'pipe', 'pipe'] });
  const stderr = new TextTail(8_000);
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => stderr.push(chunk));
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => resolve(signal ?? String(code)));
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (err) =>
      reject(new ServerStartError(`strop: could not run "${resolved}": ${err.message}. Check "strop.serverPath".`)),
    );
  });
  return { process: child, stderr, exited };
}
