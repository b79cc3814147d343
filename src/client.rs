//! A small MCP client (rmcp) over stdio, spawning `deskvm serve`, or over streamable HTTP to a
//! `deskvm serve --http`: used by `deskvm demo`, `deskvm bench` and the integration tests, so
//! all of them drive the real server.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ReadResourceRequestParams, ResourceContents,
};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

pub struct Client {
    svc: RunningService<RoleClient, rmcp::model::ClientConfig>,
}

impl Client {
    /// Spawns `bin serve` with `extra_args` and the given environment.
    pub async fn spawn(bin: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_as(
            bin,
            extra_args,
            env,
            rmcp::model::ClientCapabilities::default(),
        )
        .await
    }

    /// As [`Client::spawn`], declaring `capabilities` (e.g. an extension it renders).
    pub async fn spawn_as(
        bin: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
        capabilities: rmcp::model::ClientCapabilities,
    ) -> Result<Self> {
        let cmd = tokio::process::Command::new(bin).configure(|c| {
            c.arg("serve").args(extra_args);
            for (k, v) in env {
                c.env(k, v);
            }
        });
        let transport = TokioChildProcess::new(cmd).context("spawning deskvm serve")?;
        let info = rmcp::model::ClientConfig::new(
            capabilities,
            rmcp::model::Implementation::new("deskvm-client", env!("CARGO_PKG_VERSION")),
        );
        let svc = info
            .serve(transport)
            .await
            .context("MCP handshake with deskvm serve")?;
        Ok(Client { svc })
    }

    /// Connects over streamable HTTP to `url` (`http://host:port/mcp`), with a bearer token.
    pub async fn connect_http(url: &str, token: Option<&str>) -> Result<Self> {
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        use rmcp::transport::StreamableHttpClientTransport;
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_string());
        if let Some(t) = token {
            config = config.auth_header(t.to_string());
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        let svc = rmcp::model::ClientConfig::default()
            .serve(transport)
            .await
            .with_context(|| format!("MCP handshake with {url}"))?;
        Ok(Client { svc })
    }

    /// The tools as the server lists them to this client.
    pub async fn tools(&self) -> Result<Vec<rmcp::model::Tool>> {
        Ok(self.svc.peer().list_all_tools().await?)
    }

    /// A tool's input schema, as the server lists it.
    pub async fn tool_schema(&self, name: &str) -> Result<Value> {
        let tool = self
            .svc
            .list_all_tools()
            .await?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow!("no tool {name}"))?;
        Ok(Value::Object((*tool.input_schema).clone()))
    }

    pub async fn tool_names(&self) -> Result<Vec<String>> {
        Ok(self
            .svc
            .list_all_tools()
            .await?
            .into_iter()
            .map(|t| t.name.to_string())
            .collect())
    }

    pub async fn prompt_names(&self) -> Result<Vec<String>> {
        Ok(self
            .svc
            .list_all_prompts()
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect())
    }

    pub async fn resource_uris(&self) -> Result<Vec<String>> {
        Ok(self
            .svc
            .list_all_resources()
            .await?
            .into_iter()
            .map(|r| r.uri)
            .collect())
    }

    pub async fn read_resource(&self, uri: &str) -> Result<Vec<ResourceContents>> {
        Ok(self
            .svc
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .with_context(|| format!("reading {uri}"))?
            .contents)
    }

    /// Calls a tool and returns its raw result (tool errors included).
    pub async fn call(&self, tool: &str, args: Value) -> Result<CallToolResult> {
        let args = match args {
            Value::Object(m) => m,
            Value::Null => Default::default(),
            other => return Err(anyhow!("tool arguments must be an object, got {other}")),
        };
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args);
        self.svc
            .call_tool(params)
            .await
            .with_context(|| format!("calling {tool}"))
    }

    /// Calls a tool; a tool error becomes an `Err` carrying its message.
    pub async fn call_ok(&self, tool: &str, args: Value) -> Result<Value> {
        let r = self.call(tool, args).await?;
        if r.is_error == Some(true) {
            return Err(anyhow!("{tool} failed: {}", text_of(&r)));
        }
        Ok(r.structured_content.unwrap_or(Value::Null))
    }

    /// A screenshot's PNG bytes and its metadata.
    pub async fn screenshot(&self, session_id: &str, extra: Value) -> Result<(Vec<u8>, Value)> {
        let mut args = serde_json::json!({ "session_id": session_id });
        if let (Value::Object(a), Value::Object(e)) = (&mut args, extra) {
            a.extend(e);
        }
        let r = self.call("screenshot", args).await?;
        if r.is_error == Some(true) {
            return Err(anyhow!("screenshot failed: {}", text_of(&r)));
        }
        let data = r
            .content
            .iter()
            .find_map(|c| c.as_image().map(|i| i.data.clone()))
            .ok_or_else(|| anyhow!("screenshot returned no image"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        Ok((png, r.structured_content.unwrap_or(Value::Null)))
    }

    /// Runs `command` in the guest (`exec`); its stdout.
    pub async fn exec_stdout(&self, session_id: &str, command: &str) -> Result<String> {
        let out = self
            .call_ok(
                "exec",
                serde_json::json!({ "session_id": session_id, "command": command }),
            )
            .await?;
        Ok(out["stdout"].as_str().unwrap_or_default().to_string())
    }

    /// Polls the focused window's title (xdotool, in the workstation image) until it contains
    /// `part`, at most `limit`; the title and how long it took.
    pub async fn wait_for_title(
        &self,
        session_id: &str,
        part: &str,
        limit: std::time::Duration,
    ) -> Result<(String, std::time::Duration)> {
        let started = std::time::Instant::now();
        let mut title = String::new();
        while started.elapsed() < limit {
            let cmd = "xdotool getactivewindow getwindowname 2>/dev/null || true";
            title = self.exec_stdout(session_id, cmd).await?.trim().to_string();
            if title.contains(part) {
                return Ok((title, started.elapsed()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        Err(anyhow!(
            "no window titled like {part:?} within {} s (focused: {title:?})",
            limit.as_secs()
        ))
    }

    /// `upload` of `data` to `path` in session `sid` (overwriting, parents made).
    pub async fn upload(&self, sid: &str, path: &str, data: &[u8]) -> Result<Value> {
        let content = base64::engine::general_purpose::STANDARD.encode(data);
        self.call_ok(
            "upload",
            serde_json::json!({ "session_id": sid, "path": path, "content": content, "overwrite": true, "create_dirs": true }),
        )
        .await
    }

    /// `download` of `path` from session `sid`: the file's bytes and the call's structured
    /// result (path, size, sha256, text).
    pub async fn download(&self, sid: &str, path: &str) -> Result<(Vec<u8>, Value)> {
        let r = self
            .call(
                "download",
                serde_json::json!({ "session_id": sid, "path": path }),
            )
            .await?;
        if r.is_error == Some(true) {
            return Err(anyhow!("download failed: {}", text_of(&r)));
        }
        let meta = r.structured_content.clone().unwrap_or_default();
        for c in &r.content {
            if let rmcp::model::ContentBlock::Resource(e) = c {
                return match &e.resource {
                    ResourceContents::TextResourceContents { text, .. } => {
                        Ok((text.clone().into_bytes(), meta))
                    }
                    ResourceContents::BlobResourceContents { blob, .. } => Ok((
                        base64::engine::general_purpose::STANDARD
                            .decode(blob)
                            .context("the downloaded blob is not base64")?,
                        meta,
                    )),
                    _ => Err(anyhow!("download returned an unknown kind of resource")),
                };
            }
        }
        Err(anyhow!("download returned no embedded resource"))
    }

    pub async fn close(self) -> Result<()> {
        self.svc.cancel().await?;
        Ok(())
    }
}

/// All text content of a result, joined (the server's own calls use it too, so it lives there).
pub use crate::mcp::text_of;

/// A `deskvm serve --http 127.0.0.1:0 …` child process and the base URL it listens on (from
/// the first line it prints). Killed when dropped.
pub struct HttpServer {
    pub child: tokio::process::Child,
    pub base: String,
}

impl HttpServer {
    pub async fn spawn(bin: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["serve", "--http", "127.0.0.1:0"])
            .args(extra_args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning deskvm serve --http")?;
        let out = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(out).lines();
        let first = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .context("deskvm serve --http said nothing within 60 s")??
            .context("deskvm serve --http exited before listening")?;
        let base = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .and_then(|u| u.strip_suffix("/mcp"))
            .with_context(|| format!("unexpected first line {first:?}"))?
            .to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(HttpServer { child, base })
    }

    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
