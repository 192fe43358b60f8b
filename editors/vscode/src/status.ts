// The status bar item: server state, model version and the last completion's latency.
import * as vscode from 'vscode';
import { Status } from './protocol';

const ICONS: Record<string, string> = {
  starting: '$(loading~spin)',
  idle: '$(sparkle)',
  working: '$(sync~spin)',
  error: '$(error)',
  disabled: '$(circle-slash)',
  stopped: '$(debug-disconnect)',
};

export class StatusBar implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;

  constructor() {
    this.item = vscode.window.createStatusBarItem('strop.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'strop';
    // A click opens the command palette filtered to strop's commands.
    this.item.command = { title: 'strop commands', command: 'workbench.action.quickOpen', arguments: ['>strop: '] };
    this.item.show();
    this.local('starting', 'starting the strop server');
  }

  /** A state the extension knows without the server (starting, stopped, disabled, failed to start). */
  local(state: 'starting' | 'stopped' | 'disabled' | 'error', detail: string): void {
    this.render(state, `strop ${state}`, detail);
  }

  /** A `strop/status` result or `strop/statusChanged` notification. */
  server(status: Status): void {
    const state = status.enabled ? status.state : 'disabled';
    const latency = status.lastLatencyMs === null ? '' : ` ${Math.round(status.lastLatencyMs)} ms`;
    const lines = [
      `strop: ${state}${status.message ? ` (${status.message})` : ''}`,
      `model: ${status.model} (version ${status.modelVersion})`,
      `FIM format: ${status.fim ?? 'none'}`,
      `last latency: ${status.lastLatencyMs === null ? '-' : `${Math.round(status.lastLatencyMs)} ms`}`,
      'Click for strop commands.',
    ];
    this.render(state, `strop ${status.modelVersion} ${state}${latency}`, lines.join('\n'));
  }

  dispose(): void {
    this.item.dispose();
  }

  private render(state: string, text: string, tooltip: string): void {
    this.item.text = `${ICONS[state] ?? ''} ${text}`;
    this.item.tooltip = tooltip;
    // The accessible label doubles as a stable handle for the e2e test ("strop idle").
    this.item.accessibilityInformation = { label: `strop ${state}`, role: 'button' };
    this.item.backgroundColor =
      state === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  }
}

/** A strop/status answer as "key: value" lines, objects as JSON (strop: Show Server Status). */
export function renderStatus(status: Record<string, unknown>): string {
  const text = (v: unknown) => (v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  return Object.entries(status).map(([key, value]) => `${key}: ${text(value)}\n`).join('');
}
