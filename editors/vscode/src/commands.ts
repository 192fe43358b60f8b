// The palette commands. `strop.toggle` and `strop.accept` are the server's own commands:
// vscode-languageclient registers them when the server advertises them (executeCommandProvider).
import * as vscode from 'vscode';
import { runCli } from './cli';
import { StropConfig, cliCommand } from './config';
import { StropSession } from './client';
import { STATS, STATUS } from './protocol';
import { renderStats } from './statsTable';
import { renderStatus } from './status';

async function pickFolder(): Promise<vscode.WorkspaceFolder | undefined> {
  const folders = vscode.workspace.workspaceFolders ?? [];
  if (folders.length <= 1) {
    return folders[0];
  }
  return vscode.window.showWorkspaceFolderPick({ placeHolder: 'Repository to distill' });
}

/** Asks the running server `method` and shows its answer, rendered, in `channel`. */
async function showReply(
  session: StropSession,
  channel: vscode.OutputChannel,
  what: string,
  method: string,
  params: object,
  render: (reply: Record<string, unknown>) => string,
): Promise<void> {
  const client = session.running;
  if (!client) {
    void vscode.window.showWarningMessage(`strop: the server is not running, so it has no ${what} to show.`);
    return;
  }
  const reply = await client.sendRequest<Record<string, unknown>>(method, params);
  channel.clear();
  channel.appendLine(`strop ${what} (${new Date().toLocaleString()})`);
  channel.appendLine('');
  channel.append(render(reply));
  channel.show(true);
}

/** Runs `strop distill --once --repo <folder>` as a task (its terminal shows the progress). */
async function distillNow(config: () => StropConfig): Promise<void> {
  const folder = await pickFolder();
  if (!folder) {
    void vscode.window.showWarningMessage('strop: open a folder (a repository) to distill a model for it.');
    return;
  }
  const { command, args } = cliCommand(config(), ['distill', '--once', '--repo', folder.uri.fsPath]);
  const task = new vscode.Task(
    { type: 'process', task: 'strop distill' },
    folder,
    'distill',
    'strop',
    new vscode.ProcessExecution(command, args, { cwd: folder.uri.fsPath }),
  );
  task.presentationOptions = { reveal: vscode.TaskRevealKind.Always, panel: vscode.TaskPanelKind.Dedicated };
  const execution = await vscode.tasks.executeTask(task);
  const exitCode = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: `strop: distilling ${folder.name}`, cancellable: true },
    (_progress, token) =>
      new Promise<number | undefined>((resolve) => {
        token.onCancellationRequested(() => execution.terminate());
        const listener = vscode.tasks.onDidEndTaskProcess((e) => {
          if (e.execution === execution) {
            listener.dispose();
            resolve(e.exitCode);
          }
        });
      }),
  );
  if (exitCode === 0) {
    void vscode.window.showInformationMessage(`strop: distillation of ${folder.name} finished.`);
  } else {
    void vscode.window.showErrorMessage(
      `strop: distillation of ${folder.name} ${exitCode === undefined ? 'was stopped' : `failed (exit ${exitCode})`}; its terminal shows why.`,
    );
  }
}

async function openLog(config: () => StropConfig, channel: vscode.OutputChannel): Promise<void> {
  const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  const result = await runCli(config(), ['log', '--limit', '50'], cwd);
  channel.clear();
  channel.append(result.stdout);
  if (result.exitCode !== 0) {
    channel.appendLine(`\`strop log\` failed (exit ${result.exitCode}): ${result.stderr.trim()}`);
  }
  channel.show(true);
}

/** Wraps a command so a failure becomes one readable error message instead of a silent reject. */
function guarded(name: string, run: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await run();
    } catch (error) {
      void vscode.window.showErrorMessage(`strop: ${name} failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
}

export function registerCommands(session: StropSession, config: () => StropConfig, restart: () => Promise<void>): vscode.Disposable[] {
  const statsChannel = vscode.window.createOutputChannel('strop stats');
  const statusChannel = vscode.window.createOutputChannel('strop status');
  const logChannel = vscode.window.createOutputChannel('strop log');
  return [
    statsChannel,
    statusChannel,
    logChannel,
    vscode.commands.registerCommand('strop.showStats', guarded('Show Stats', () =>
      showReply(session, statsChannel, 'stats', STATS, { json: true }, renderStats))),
    // Params `{}`: see StropSession.refreshStatus.
    vscode.commands.registerCommand('strop.showStatus', guarded('Show Server Status', () =>
      showReply(session, statusChannel, 'status', STATUS, {}, renderStatus))),
    vscode.commands.registerCommand('strop.distillNow', guarded('Distill Now', () => distillNow(config))),
    vscode.commands.registerCommand('strop.openLog', guarded('Open Completion Log', () => openLog(config, logChannel))),
    vscode.commands.registerCommand('strop.restart', guarded('Restart Server', restart)),
    // Bound to Escape while a suggestion is visible (package.json): report, then hide as VS Code would.
    vscode.commands.registerCommand('strop.dismissSuggestion', async () => {
      session.tracker.dismissAll();
      await vscode.commands.executeCommand('editor.action.inlineSuggest.hide');
    }),
  ];
}
