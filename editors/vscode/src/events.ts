// What happened to each shown completion, reported to the server by id.
//
// LSP has no "shown", "dismissed" or "partially accepted" events, so strop defines three
// notifications (server/protocol.py). The rule this tracker implements, per completion id:
//
//   shown      VS Code says it displayed the item (handleDidShowCompletionItem, when the
//              inlineCompletionsAdditions API is enabled), else the provider returned it.
//              Sent once each time the item becomes visible: the server keeps an id when it
//              serves the same suggestion again from its cache, so a dismissed id can be shown
//              again.
//   accepted   Tab ran the item's command `strop.accept`, which vscode-languageclient forwards to
//              the server (workspace/executeCommand), so the server learns it there; the
//              tracker only closes the item.
//   partial    VS Code reported a partial accept (word/line): strop/didPartiallyAcceptCompletion
//              with the accepted length. Every partial accept is forwarded.
//   dismissed  A shown item that was neither accepted nor partially accepted is dismissed by
//              the first of: Escape while it is visible; the answer to a later inline request
//              (typing, deleting, an explicit trigger) that does not carry its id; a cursor move
//              that changes no text and leaves the item's position; a switch to another editor.
//              An answer that carries the id again (the user typed into the suggestion and the
//              server kept it) leaves the item open. An answer comes after the debounce and the
//              model, well after the accept command VS Code sends right behind the accept's edit.
import * as vscode from 'vscode';
import { DID_DISMISS, DID_PARTIALLY_ACCEPT, DID_SHOW } from './protocol';

export type Notify = (method: string, params: object) => void;

interface OpenItem {
  readonly uri: string;
  readonly version: number;
  readonly position: vscode.Position;
}

/** Accepted or partially accepted ids, kept so that a late event cannot dismiss them. */
const SETTLED_MEMORY = 256;

export class CompletionTracker {
  private readonly open = new Map<string, OpenItem>();
  private readonly settled: string[] = [];

  constructor(private readonly notify: Notify) {}

  shown(id: string, document: vscode.TextDocument, position: vscode.Position): void {
    if (this.open.has(id) || this.settled.includes(id)) {
      return;
    }
    this.open.set(id, { uri: document.uri.toString(), version: document.version, position });
    this.notify(DID_SHOW, { id });
  }

  accepted(id: string): void {
    this.settle(id);
  }

  partiallyAccepted(id: string, acceptedLength: number): void {
    this.settle(id);
    this.notify(DID_PARTIALLY_ACCEPT, { id, acceptedLength });
  }

  /** A later request was answered with these ids: every other open item is gone. */
  answered(ids: readonly string[]): void {
    for (const id of [...this.open.keys()]) {
      if (!ids.includes(id)) {
        this.dismiss(id);
      }
    }
  }

  /** Escape or an editor switch: every open item is dismissed. */
  dismissAll(): void {
    this.answered([]);
  }

  /** A cursor move; only moves that changed no text count (edits lead to a new request instead). */
  selectionChanged(document: vscode.TextDocument, active: vscode.Position): void {
    const uri = document.uri.toString();
    for (const [id, item] of [...this.open]) {
      if (item.uri !== uri || (item.version === document.version && !item.position.isEqual(active))) {
        this.dismiss(id);
      }
    }
  }

  /** Forget the open items without telling the server (it is going away). */
  clear(): void {
    this.open.clear();
  }

  private dismiss(id: string): void {
    this.open.delete(id);
    this.notify(DID_DISMISS, { id });
  }

  private settle(id: string): void {
    this.open.delete(id);
    if (!this.settled.includes(id)) {
      this.settled.push(id);
      if (this.settled.length > SETTLED_MEMORY) {
        this.settled.shift();
      }
    }
  }
}
