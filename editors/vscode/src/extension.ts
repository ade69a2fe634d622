// Starts `kdc lsp` for .kd files: diagnostics as you type, hover, completion,
// go to definition, references, rename, document symbols and formatting (docs/editors.md).
import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";

let client: LanguageClient | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const command = vscode.workspace.getConfiguration("kd").get<string>("server.path") || "kdc";
  const server: ServerOptions = {
    run: { command, args: ["lsp"], transport: TransportKind.stdio },
    debug: { command, args: ["lsp"], transport: TransportKind.stdio },
  };
  const options: LanguageClientOptions = {
    documentSelector: [{ scheme: "file", language: "kd" }],
  };
  client = new LanguageClient("kd", "kdc language server", server, options);
  context.subscriptions.push({ dispose: () => void client?.stop() });
  await client.start();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
}
