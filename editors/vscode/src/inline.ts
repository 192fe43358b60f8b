// Inline suggestions (ghost text) from the server's LSP 3.18 `textDocument/inlineCompletion`.
//
// vscode-languageclient 9.0.1 has this request only as a proposed feature, and that feature
// (lib/common/inlineCompletion.js + codeConverter.asInlineCompletionParams) sends VS Code's
// trigger kind unconverted (Invoke=0/Automatic=1 where LSP means Invoked=1/Automatic=2) and
// offers no hook for "shown" or "partially accepted". So strop registers its own provider:
// debounced, cancelled with the editor's token, and reporting events to the CompletionTracker.
import * as vscode from 'vscode';
import { BaseLanguageClient, InlineCompletionList, InlineCompletionItem as LspItem } from 'vscode-languageclient';
import { StropConfig, isExcluded } from './config';
import { CompletionTracker } from './events';
import { AcceptArgument, CMD_ACCEPT, INLINE_COMPLETION } from './protocol';

/** LSP InlineCompletionTriggerKind values (3.18). */
const LSP_INVOKED = 1;
const LSP_AUTOMATIC = 2;

/** Resolves true after `ms`, or false as soon as the request is cancelled. */
function debounce(ms: number, token: vscode.CancellationToken): Promise<boolean> {
  if (token.isCancellationRequested) {
    return Promise.resolve(false);
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      listener.dispose();
      resolve(!token.isCancellationRequested);
    }, ms);
    const listener = token.onCancellationRequested(() => {
      clearTimeout(timer);
      listener.dispose();
      resolve(false);
    });
  });
}

/** The completion id, carried in the item's accept command (see server/protocol.py). */
export function completionId(command: vscode.Command | undefined): string | undefined {
  if (command?.command !== CMD_ACCEPT) {
    return undefined;
  }
  const arg = command.arguments?.[0] as AcceptArgument | undefined;
  return typeof arg?.id === 'string' ? arg.id : undefined;
}

interface ItemOrigin {
  readonly id: string;
  readonly document: vscode.TextDocument;
  readonly position: vscode.Position;
}

export class StropInlineProvider implements vscode.InlineCompletionItemProvider {
  private readonly origins = new WeakMap<vscode.InlineCompletionItem, ItemOrigin>();
  /** True once VS Code accepted the show/partial-accept hooks (proposed API enabled). */
  showHooksActive = false;

  constructor(
    private readonly client: BaseLanguageClient,
    private readonly tracker: CompletionTracker,
    private readonly config: () => StropConfig,
    private readonly log: (line: string) => void,
  ) {}

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | undefined> {
    const cfg = this.config();
    if (isExcluded(cfg, document) || !(await debounce(cfg.debounceMs, token))) {
      return undefined;
    }
    const c2p = this.client.code2ProtocolConverter;
    const selected = context.selectedCompletionInfo;
    const params = {
      textDocument: c2p.asTextDocumentIdentifier(document),
      position: c2p.asPosition(position),
      context: {
        triggerKind: context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke ? LSP_INVOKED : LSP_AUTOMATIC,
        selectedCompletionInfo: selected ? { range: c2p.asRange(selected.range), text: selected.text } : undefined,
      },
    };
    let result: InlineCompletionList | LspItem[] | null;
    try {
      result = await this.client.sendRequest<InlineCompletionList | LspItem[] | null>(INLINE_COMPLETION, params, token);
    } catch (error) {
      if (!token.isCancellationRequested) {
        this.log(`inline completion failed: ${error instanceof Error ? error.message : String(error)}`);
      }
      return undefined;
    }
    if (token.isCancellationRequested) {
      return undefined;
    }
    const converted = result ? await this.client.protocol2CodeConverter.asInlineCompletionResult(result, token) : undefined;
    const items = converted === undefined ? [] : Array.isArray(converted) ? converted : converted.items;
    const ids: string[] = [];
    for (const item of items) {
      const id = completionId(item.command);
      if (id !== undefined) {
        ids.push(id);
        this.origins.set(item, { id, document, position });
      }
    }
    this.tracker.answered(ids);
    if (!this.showHooksActive) {
      ids.forEach((id) => this.tracker.shown(id, document, position));
    }
    return items;
  }

  /** Proposed API (inlineCompletionsAdditions): VS Code displayed the item. */
  handleDidShowCompletionItem(item: vscode.InlineCompletionItem): void {
    const origin = this.origins.get(item);
    if (origin) {
      this.tracker.shown(origin.id, origin.document, origin.position);
    }
  }

  /**
   * Proposed API: a word or line of the item was accepted. VS Code 1.100 calls this twice per
   * accept, once with the length (number) and once with a PartialAcceptInfo object; only the
   * number form is forwarded, so the server hears of each partial accept once.
   */
  handleDidPartiallyAcceptCompletionItem(item: vscode.InlineCompletionItem, acceptedLength: unknown): void {
    const origin = this.origins.get(item);
    if (origin && typeof acceptedLength === 'number') {
      this.tracker.partiallyAccepted(origin.id, acceptedLength);
    }
  }
}

/**
 * Registers the provider with the show/partial-accept hooks when the running VS Code allows them
 * (it throws when the inlineCompletionsAdditions proposal is not enabled for this extension),
 * else without them, in which case "shown" is reported when the provider returns an item.
 */
export function registerInlineProvider(
  selector: vscode.DocumentSelector,
  provider: StropInlineProvider,
): vscode.Disposable {
  try {
    const registration = vscode.languages.registerInlineCompletionItemProvider(selector, provider);
    provider.showHooksActive = true;
    return registration;
  } catch {
    provider.showHooksActive = false;
    return vscode.languages.registerInlineCompletionItemProvider(selector, {
      provideInlineCompletionItems: (document, position, context, token) =>
        provider.provideInlineCompletionItems(document, position, context, token),
    });
  }
}
