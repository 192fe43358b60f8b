// One running `strop serve` and its LanguageClient: start, crash handling, stop.
import * as vscode from 'vscode';
import {
  ClientCapabilities,
  CloseAction,
  CloseHandlerResult,
  ErrorAction,
  FeatureState,
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  ServerCapabilities,
  State,
  StaticFeature,
} from 'vscode-languageclient/node';
import { StropConfig, documentSelector, isExcluded, serveCommand } from './config';
import { CursorReporter } from './cursor';
import { CompletionTracker } from './events';
import { StropInlineProvider, completionId, registerInlineProvider } from './inline';
import { CMD_ACCEPT, CMD_TOGGLE, STATUS, STATUS_CHANGED, Status, ToggleResult } from './protocol';
import { ServerStartError, SpawnedServer, spawnServer } from './serverProcess';
import { StatusBar } from './status';

/** Restarts allowed after a crash of a server that had started fine, within RESTART_WINDOW_MS. */
const MAX_RESTARTS = 3;
const RESTART_WINDOW_MS = 3 * 60_000;
/** How long to wait for a dying server's exit code and last stderr lines. */
const EXIT_WAIT_MS = 2_000;
/** How long the first strop/status may take; generous, the server may still be loading its model. */
const STATUS_TIMEOUT_MS = 30_000;

/**
 * vscode-languageclient pops its own notifications for start failures and crashes ('force'),
 * which would duplicate strop's messages (with stderr and an "Open settings" action); here its
 * messages go to the output channel only.
 */
class StropLanguageClient extends LanguageClient {
  public error(message: string, data?: unknown): void {
    super.error(message, data, false);
  }
}

/**
 * Inline completions only. The client capability tells the server this client handles LSP 3.18
 * inline completions (served by inline.ts). The server's textDocument/completion (for editors
 * without ghost text) is left unregistered: its trigger characters include the space, so VS Code
 * would open the suggest widget on every space and ask the model twice per keystroke, and the
 * server serves only the newest request.
 */
class InlineOnlyFeature implements StaticFeature {
  fillClientCapabilities(capabilities: ClientCapabilities): void {
    capabilities.textDocument = capabilities.textDocument ?? {};
    capabilities.textDocument.inlineCompletion = { dynamicRegistration: false };
  }
  preInitialize(capabilities: ServerCapabilities): void {
    // The features' own copy of the capabilities; client.initializeResult is left as sent.
    delete capabilities.completionProvider;
  }
  initialize(): void {}
  getState(): FeatureState {
    return { kind: 'static' };
  }
  clear(): void {}
}

function waitOrTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  return Promise.race([promise, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), ms))]);
}

export class StropSession {
  readonly tracker: CompletionTracker;
  readonly cursor: CursorReporter;
  private client: StropLanguageClient | undefined;
  private server: SpawnedServer | undefined;
  private registrations: vscode.Disposable[] = [];
  private started = false;
  private crashes: number[] = [];
  /** Whether the server serves completions (strop.toggle), as it last said. */
  private completionsOn = true;

  constructor(
    private readonly output: vscode.OutputChannel,
    private readonly status: StatusBar,
    private readonly config: () => StropConfig,
  ) {
    this.tracker = new CompletionTracker((method, params) => {
      if (this.client?.isRunning()) {
        this.output.appendLine(`→ ${method} ${JSON.stringify(params)}`);
        void this.client.sendNotification(method, params);
      }
    });
    this.cursor = new CursorReporter(this.config, () => (this.completionsOn ? this.running : undefined));
  }

  /** The client once the server has initialized, else undefined. */
  get running(): LanguageClient | undefined {
    return this.started && this.client?.isRunning() ? this.client : undefined;
  }

  async start(): Promise<void> {
    const cfg = this.config();
    if (!cfg.enable) {
      this.status.local('disabled', 'strop is off ("strop.enable")');
      return;
    }
    this.status.local('starting', 'starting the strop server');
    const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    const { command, args } = serveCommand(cfg);
    this.output.appendLine(`starting: ${command} ${args.join(' ')}${cwd ? ` (in ${cwd})` : ''}`);
    const serverOptions = async () => {
      this.server = await spawnServer(command, args, cwd);
      return this.server.process;
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: documentSelector(cfg),
      outputChannel: this.output,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      initializationFailedHandler: () => false,
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue, handled: true }),
        closed: () => this.onClosed(),
      },
      middleware: {
        // Excluded files never reach the server (a document selector cannot say "all but").
        didOpen: (document, next) => (isExcluded(cfg, document) ? Promise.resolve() : next(document)),
        didChange: (event, next) => (isExcluded(cfg, event.document) ? Promise.resolve() : next(event)),
        didSave: (document, next) => (isExcluded(cfg, document) ? Promise.resolve() : next(document)),
        didClose: (document, next) => (isExcluded(cfg, document) ? Promise.resolve() : next(document)),
        executeCommand: async (command, commandArgs, next) => {
          if (command === CMD_ACCEPT) {
            const id = completionId({ title: '', command, arguments: commandArgs });
            if (id !== undefined) {
              this.output.appendLine(`→ ${CMD_ACCEPT} ${id}`);
              this.tracker.accepted(id);
            }
          }
          const result: unknown = await next(command, commandArgs);
          if (command === CMD_TOGGLE && result && typeof result === 'object') {
            const on = (result as ToggleResult).enabled;
            this.completionsOn = on;
            vscode.window.setStatusBarMessage(`strop: completions ${on ? 'on' : 'off'}`, 3_000);
          }
          return result;
        },
      },
    };
    const client = new StropLanguageClient('strop', 'strop', serverOptions, clientOptions);
    client.registerFeature(new InlineOnlyFeature());
    this.client = client;
    this.started = false;
    try {
      await client.start();
    } catch (error) {
      await this.reportStartFailure(command, args, error);
      return;
    }
    this.started = true;
    await this.afterStart(client, cfg);
  }

  async stop(): Promise<void> {
    const client = this.client;
    const server = this.server;
    this.client = undefined;
    this.server = undefined;
    this.started = false;
    this.tracker.clear();
    this.cursor.reset();
    this.completionsOn = true; // as a new server starts
    this.registrations.forEach((d) => d.dispose());
    this.registrations = [];
    await vscode.commands.executeCommand('setContext', 'strop.serverRunning', false);
    if (client && client.needsStop()) {
      await client.stop(EXIT_WAIT_MS).catch((error) => this.output.appendLine(`stopping the server: ${error}`));
    }
    if (server && server.process.exitCode === null && server.process.signalCode === null) {
      server.process.kill();
    }
    this.status.local('stopped', 'the strop server is not running');
  }

  private async afterStart(client: StropLanguageClient, cfg: StropConfig): Promise<void> {
    if (client.initializeResult?.capabilities.inlineCompletionProvider) {
      const provider = new StropInlineProvider(client, this.tracker, this.config, (line) => this.output.appendLine(line));
      this.registrations.push(registerInlineProvider(documentSelector(cfg), provider));
      this.output.appendLine(
        `inline completions on; "shown" reported ${provider.showHooksActive ? 'by VS Code (proposed API)' : 'when an item is returned'}`,
      );
    } else {
      this.output.appendLine('the server does not offer inline completions (no inlineCompletionProvider)');
    }
    const commands = client.initializeResult?.capabilities.executeCommandProvider?.commands ?? [];
    if (!commands.includes(CMD_ACCEPT)) {
      this.output.appendLine(`the server does not advertise the command ${CMD_ACCEPT}: accepted suggestions go unrecorded`);
    }
    await vscode.commands.executeCommand('setContext', 'strop.serverRunning', true);
    this.registrations.push(
      client.onNotification(STATUS_CHANGED, (status: Status) => this.showStatus(status)),
      // After a crash the client restarts the server itself; ask the new one for its status, and
      // tell it where the cursor is.
      client.onDidChangeState((e) => {
        if (e.newState === State.Running && this.started) {
          this.cursor.reset();
          this.cursor.schedule();
          void this.refreshStatus(client);
        }
      }),
    );
    this.cursor.schedule();
    await this.refreshStatus(client);
  }

  private showStatus(status: Status): void {
    this.completionsOn = status.enabled;
    this.status.server(status);
  }

  private async refreshStatus(client: StropLanguageClient): Promise<void> {
    // Params `{}` rather than none: pygls 2.1 cannot parse a request without "params" and never
    // answers it. Bounded, so a silent server cannot leave the status bar at "starting".
    const timeout = new vscode.CancellationTokenSource();
    const timer = setTimeout(() => timeout.cancel(), STATUS_TIMEOUT_MS);
    try {
      this.showStatus(await client.sendRequest<Status>(STATUS, {}, timeout.token));
    } catch (error) {
      this.output.appendLine(`${STATUS} failed: ${error}`);
      this.status.local('error', `the server did not answer ${STATUS}; see the strop output`);
    } finally {
      clearTimeout(timer);
      timeout.dispose();
    }
  }

  /** The connection closed: restart a server that was running fine, else explain and stay down. */
  private async onClosed(): Promise<CloseHandlerResult> {
    const server = this.server;
    const exit = server ? await waitOrTimeout(server.exited, EXIT_WAIT_MS) : undefined;
    if (this.started) {
      const now = Date.now();
      this.crashes = [...this.crashes.filter((t) => now - t < RESTART_WINDOW_MS), now];
      if (this.crashes.length <= MAX_RESTARTS) {
        this.output.appendLine(`the strop server stopped (exit ${exit ?? '?'}); restarting`);
        this.status.local('starting', 'restarting the strop server');
        return { action: CloseAction.Restart, handled: true };
      }
      this.started = false;
      this.showError(
        `strop: the server stopped ${this.crashes.length} times in 3 minutes and stays off` +
          this.stderrSummary(server) + ' Run "strop: Restart Server" after fixing the cause.',
      );
    }
    return { action: CloseAction.DoNotRestart, handled: true };
  }

  private async reportStartFailure(command: string, args: readonly string[], error: unknown): Promise<void> {
    if (error instanceof ServerStartError) {
      this.showError(error.message, 'strop.serverPath');
      return;
    }
    const server = this.server;
    const exit = server ? await waitOrTimeout(server.exited, EXIT_WAIT_MS) : undefined;
    const what = exit === undefined ? `did not start (${error instanceof Error ? error.message : String(error)})` : `exited at start (exit ${exit})`;
    this.showError(
      `strop: the server \`${[command, ...args].join(' ')}\` ${what}.` +
        this.stderrSummary(server) +
        ' Check "strop.serverPath", "strop.serverArgs" and "strop.modelPath".',
    );
    if (server && server.process.exitCode === null) {
      server.process.kill();
    }
  }

  private stderrSummary(server: SpawnedServer | undefined): string {
    const tail = server?.stderr.lastLines(3);
    return tail ? ` Its last output: ${tail}.` : '';
  }

  /** `settingsQuery`: what "Open settings" searches for (one setting, or all of strop's). */
  private showError(message: string, settingsQuery = '@ext:strop.strop'): void {
    this.output.appendLine(message);
    this.status.local('error', message);
    void vscode.window.showErrorMessage(message, 'Open settings', 'Show output').then((choice) => {
      if (choice === 'Open settings') {
        void vscode.commands.executeCommand('workbench.action.openSettings', settingsQuery);
      } else if (choice === 'Show output') {
        this.output.show(true);
      }
    });
  }
}
