// strop/didMoveCursor: where the cursor is. LSP tells a server nothing about the cursor until a
// request; with this the server evaluates the prompt there before the next keystroke asks.
// Sent `strop.cursorDebounceMs` after the last selection change, active-editor change or window
// focus; only for documents the server has (isServed), only while completions are on, and never
// the same position twice in a row.
import * as vscode from 'vscode';
import { BaseLanguageClient } from 'vscode-languageclient';
import { StropConfig, isServed } from './config';
import { DID_MOVE_CURSOR } from './protocol';

export class CursorReporter {
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** The document of the active editor when the pending report was scheduled. */
  private pendingUri: string | undefined;
  /** The last position sent, "uri line:character". */
  private lastSent: string | undefined;

  constructor(
    private readonly config: () => StropConfig,
    /** The client while its server runs and completions are on, else undefined. */
    private readonly client: () => BaseLanguageClient | undefined,
  ) {}

  /** The cursor moved, or an editor or the window got focus: report after the debounce. */
  schedule(): void {
    this.cancel();
    this.pendingUri = vscode.window.activeTextEditor?.document.uri.toString();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.report();
    }, this.config().cursorDebounceMs);
  }

  /** A document closed: a report pending for it is dropped. */
  closed(document: vscode.TextDocument): void {
    if (this.pendingUri === document.uri.toString()) {
      this.cancel();
    }
  }

  /** The server stopped: the pending report is dropped, and a new server has been told nothing. */
  reset(): void {
    this.cancel();
    this.lastSent = undefined;
  }

  private cancel(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pendingUri = undefined;
  }

  private report(): void {
    const editor = vscode.window.activeTextEditor;
    const client = this.client();
    if (!editor || !client || !isServed(this.config(), editor.document)) {
      return;
    }
    const c2p = client.code2ProtocolConverter;
    const textDocument = c2p.asTextDocumentIdentifier(editor.document);
    const position = c2p.asPosition(editor.selection.active);
    const key = `${textDocument.uri} ${position.line}:${position.character}`;
    if (key !== this.lastSent) {
      this.lastSent = key;
      void client.sendNotification(DID_MOVE_CURSOR, { textDocument, position });
    }
  }
}
