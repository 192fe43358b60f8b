// Runs a strop CLI subcommand (`strop log`, ...) with the same executable as the server.
import { execFile } from 'child_process';
import { StropConfig, cliCommand } from './config';
import { ServerStartError, resolveExecutable } from './serverProcess';

export interface CliResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Output is capped at 16 MiB; a subcommand that exceeds it is reported as failed by Node. */
export function runCli(cfg: StropConfig, sub: readonly string[], cwd: string | undefined): Promise<CliResult> {
  const { command, args } = cliCommand(cfg, sub);
  const resolved = resolveExecutable(command, cwd, process.env);
  if (resolved === undefined) {
    return Promise.reject(new ServerStartError(`strop: cannot find "${command}". Set "strop.serverPath".`));
  }
  return new Promise((resolve) => {
    execFile(resolved, args, { cwd, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error && typeof error.code === 'number' ? error.code : error ? 1 : 0;
      resolve({ exitCode: code, stdout, stderr: stderr || (error && code === 1 ? error.message : '') });
    });
  });
}
