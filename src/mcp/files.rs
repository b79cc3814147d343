//! Files and the clipboard: upload, download, clipboard_set, clipboard_get.

use base64::Engine;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};
use rmcp::{tool, tool_router, ErrorData as McpError};
use serde_json::json;

use super::params_io::{ClipboardGetArgs, ClipboardSetArgs, DownloadArgs, Selection, UploadArgs};
use super::tools::{structured, tool_error, DeskvmServer};
use crate::session::files::Upload;

#[tool_router(router = files_router, vis = "pub(crate)")]
impl DeskvmServer {
    #[tool(
        description = "Write a file into the guest (through the guest agent; no guest network needed). `content` is base64, at most 10 MiB decoded. The path is the guest's and absolute; missing parent directories are made only with create_dirs: true, an existing file is replaced only with overwrite: true. Owned by the desktop user (root: true for root), mode 0644 unless given. Returns path, size and sha256; the review records those, not the content.",
        annotations(
            title = "Upload file",
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn upload(
        &self,
        Parameters(a): Parameters<UploadArgs>,
    ) -> Result<CallToolResult, McpError> {
        let up = Upload::check(
            a.path.clone(),
            &a.content,
            a.mode.as_ref(),
            (a.create_dirs, a.overwrite, a.root),
        );
        Ok(
            match self.manager.upload(&a.session_id, &a.path, up).await {
                Ok(v) => structured(v),
                Err(e) => tool_error(e),
            },
        )
    }

    #[tool(
        description = "Read a file from the guest (a regular file, absolute path, at most 10 MiB). Returns path, size, sha256 and the file as an embedded resource: text when it is UTF-8, else base64 bytes.",
        annotations(
            title = "Download file",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn download(
        &self,
        Parameters(a): Parameters<DownloadArgs>,
    ) -> Result<CallToolResult, McpError> {
        let d = match self.manager.download(&a.session_id, &a.path).await {
            Ok(d) => d,
            Err(e) => return Ok(tool_error(e)),
        };
        let uri = format!("deskvm://sessions/{}/files{}", a.session_id, d.path);
        let meta =
            json!({ "path": d.path, "size": d.data.len(), "sha256": d.sha256, "text": d.text });
        let resource = if d.text {
            ResourceContents::text(String::from_utf8_lossy(&d.data).into_owned(), uri)
        } else {
            let mut r = ResourceContents::blob(
                base64::engine::general_purpose::STANDARD.encode(&d.data),
                uri,
            );
            if let ResourceContents::BlobResourceContents { mime_type, .. } = &mut r {
                *mime_type = Some("application/octet-stream".into());
            }
            r
        };
        let mut result = structured(meta.clone());
        result.content = vec![
            ContentBlock::text(meta.to_string()),
            ContentBlock::resource(resource),
        ];
        Ok(result)
    }

    #[tool(
        description = "Put text on the guest's clipboard (selection: clipboard, the ctrl+c/ctrl+v one, or primary, the select/middle-click one); paste it with key ctrl+v. Unicode is exact. secret: true keeps the text out of the review. Needs xclip in the guest (workstation).",
        annotations(
            title = "Set clipboard",
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn clipboard_set(
        &self,
        Parameters(a): Parameters<ClipboardSetArgs>,
    ) -> Result<CallToolResult, McpError> {
        let primary = matches!(a.selection, Selection::Primary);
        Ok(
            match self
                .manager
                .clipboard_set(&a.session_id, &a.text, primary, a.secret)
                .await
            {
                Ok(v) => structured(v),
                Err(e) => tool_error(e),
            },
        )
    }

    #[tool(
        description = "Read the guest's clipboard (or the primary selection) as text; empty when nothing was copied. Needs xclip in the guest (workstation).",
        annotations(
            title = "Get clipboard",
            read_only_hint = true,
            open_world_hint = false
        )
    )]
    async fn clipboard_get(
        &self,
        Parameters(a): Parameters<ClipboardGetArgs>,
    ) -> Result<CallToolResult, McpError> {
        let primary = matches!(a.selection, Selection::Primary);
        Ok(
            match self.manager.clipboard_get(&a.session_id, primary).await {
                Ok(v) => structured(v),
                Err(e) => tool_error(e),
            },
        )
    }
}
