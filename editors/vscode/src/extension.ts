// Entry point: wires settings, the server session, the status bar and the commands together.
import * as vscode from 'vscode';
import { RESTART_KEYS, StropConfig, readConfig } from './config';
import { StropSession } from './client';
import { registerCommands } from './commands';
import { StatusBar } from './status';

let session: StropSession | undefined;

export function activate(context: vscode.ExtensionContext): void {
  let config: StropConfig = readConfig();
  const current = () => config;
  const output = vscode.window.createOutputChannel('strop');
  const status = new StatusBar();
  session = new StropSession(output, status, current);
  const active = session;
  // Serialised so a burst of setting changes cannot start two servers.
  let lifecycle = Promise.resolve();
  const restart = (): Promise<void> => {
    lifecycle = lifecycle.then(async () => {
      await active.stop();
      await active.start();
    });
    return lifecycle;
  };

  context.subscriptions.push(
    output,
    status,
    ...registerCommands(active, current, restart),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (!e.affectsConfiguration('strop')) {
        return;
      }
      config = readConfig();
      if (RESTART_KEYS.some((key) => e.affectsConfiguration(`strop.${key}`))) {
        void restart();
      }
    }),
    vscode.window.onDidChangeTextEditorSelection((e) => {
      active.tracker.selectionChanged(e.textEditor.document, e.selections[0].active);
      active.cursor.schedule();
    }),
    vscode.window.onDidChangeActiveTextEditor(() => {
      active.tracker.dismissAll();
      active.cursor.schedule();
    }),
    vscode.window.onDidChangeWindowState((e) => e.focused && active.cursor.schedule()),
    vscode.workspace.onDidCloseTextDocument((document) => active.cursor.closed(document)),
  );
  // Not awaited: activation finishes at once, the server loads its model in the background.
  lifecycle = active.start();
}

export async function deactivate(): Promise<void> {
  await session?.stop();
}
