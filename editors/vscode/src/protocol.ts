// strop's additions to LSP, mirrored from server/protocol.py (tests/e2e/test_vscode.py checks the
// two files agree).

/** Client → server notifications; params {id}, partial accept adds {acceptedLength} (UTF-16 units). */
export const DID_SHOW = 'strop/didShowCompletion';
export const DID_DISMISS = 'strop/didDismissCompletion';
export const DID_PARTIALLY_ACCEPT = 'strop/didPartiallyAcceptCompletion';
/** Client → server notification: where the cursor is; params {textDocument: {uri}, position}. */
export const DID_MOVE_CURSOR = 'strop/didMoveCursor';

/** Client → server requests. */
export const STATUS = 'strop/status';
export const STATS = 'strop/stats';

/** Server → client notification, same shape as the STATUS result. */
export const STATUS_CHANGED = 'strop/statusChanged';

/** workspace/executeCommand commands (vscode-languageclient registers them as VS Code commands). */
export const CMD_ACCEPT = 'strop.accept';
export const CMD_TOGGLE = 'strop.toggle';

/** The standard LSP 3.18 request (sent directly: see inline.ts for why not through the client feature). */
export const INLINE_COMPLETION = 'textDocument/inlineCompletion';

export type ServerState = 'idle' | 'working' | 'error' | 'disabled';

export interface Status {
  readonly state: ServerState;
  readonly model: string;
  readonly modelVersion: string;
  readonly fim: string | null;
  readonly lastLatencyMs: number | null;
  readonly enabled: boolean;
  readonly message?: string | null;
  /** The last position strop/didMoveCursor told the server (0-based, UTF-16), or null. */
  readonly cursor?: { readonly uri: string; readonly line: number; readonly character: number } | null;
  readonly warmups?: number;
}

export interface AcceptArgument {
  readonly id: string;
}

export interface ToggleResult {
  readonly enabled: boolean;
}
