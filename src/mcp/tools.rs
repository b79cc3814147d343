use std::sync::Arc;

use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptResult,
    Implementation, ListResourcesResult, PaginatedRequestParams, PromptMessage,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Role, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{
    prompt, prompt_handler, prompt_router, tool, tool_handler, tool_router, ErrorData as McpError,
    RoleServer, ServerHandler,
};
use serde_json::json;

use super::params::{
    ExecArgs, ExportArgs, ScreenshotArgs, SessionArgs, SessionStartArgs, UseDesktopArgs, WaitArgs,
};
use super::resources;

use crate::session::{Action, SessionError, SessionManager, StartRequest};

#[derive(Clone)]
pub struct DeskvmServer {
    pub(super) manager: Arc<SessionManager>,
    /// Every live view link, and where views are served.
    pub(super) views: Arc<crate::view::Views>,
    /// `http://host:port/reviews` when serving HTTP: export_review then returns a URL.
    review_base: Option<Arc<str>>,
    /// Long calls of clients that speak the tasks extension (`tasks.rs`).
    pub(super) tasks: rmcp::task_manager::TaskManager,
    pub(super) tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

/// A tool error: the whole cause chain as text, and `{error, message, field?, value?, valid?}`.
pub(super) fn tool_error(e: SessionError) -> CallToolResult {
    let structured = e.to_json();
    let message = structured["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut r = CallToolResult::error(vec![ContentBlock::text(message)]);
    r.structured_content = Some(structured);
    r
}

pub(super) fn structured(value: serde_json::Value) -> CallToolResult {
    CallToolResult::structured(value)
}

impl DeskvmServer {
    pub fn new(manager: Arc<SessionManager>) -> Self {
        let mut tool_router = Self::tool_router()
            + Self::input_router()
            + Self::computer_router()
            + Self::checkpoint_router()
            + Self::files_router()
            + Self::reclaim_router()
            + Self::view_router();
        // The images this server can start, as they are when it starts.
        if let Some(route) = tool_router.map.get_mut("session_start") {
            let (built, unbuilt) = crate::guest_image::GuestImage::names(manager.layout());
            let default = manager.default_image();
            super::params::list_images(&mut route.attr, &built, &unbuilt, default);
        }
        DeskvmServer {
            manager,
            views: Arc::default(),
            review_base: None,
            tasks: rmcp::task_manager::TaskManager::new(),
            tool_router,
            prompt_router: Self::prompt_router(),
        }
    }

    pub fn with_review_base(mut self, base: String) -> Self {
        self.review_base = Some(base.into());
        self
    }

    pub fn views(&self) -> std::sync::Arc<crate::view::Views> {
        self.views.clone()
    }

    pub fn exports_dir(&self) -> std::path::PathBuf {
        self.manager.layout().exports()
    }
}

#[tool_router]
impl DeskvmServer {
    #[tool(
        description = "Start a desktop session: a Debian desktop in a QEMU VM (`workstation`: Xfce with Firefox ESR and LibreOffice; `minimal`: one terminal). Returns session_id, image, screen size, accelerator, backend, engine (and why it was placed there) and startup time. Start with an application already open: open it, `checkpoint`, then session_start {from_checkpoint}.",
        annotations(
            title = "Start desktop session",
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn session_start(
        &self,
        Parameters(a): Parameters<SessionStartArgs>,
    ) -> Result<CallToolResult, McpError> {
        let req = StartRequest {
            width: a.width,
            height: a.height,
            image: a.image,
            memory_mb: a.memory_mb,
            network: a.network,
            forward: a.forward,
            from_checkpoint: a.from_checkpoint,
            engine: a.engine,
        };
        Ok(match self.manager.start(req).await {
            Ok(info) => structured(serde_json::to_value(info).unwrap_or_default()),
            Err(e) => tool_error(e),
        })
    }

    #[tool(
        description = "List running desktop sessions.",
        annotations(title = "List sessions", read_only_hint = true)
    )]
    async fn session_list(&self) -> Result<CallToolResult, McpError> {
        let list = self.manager.list().await;
        match self.manager.engines_status().await {
            // With several engines: each one's health, capacity and sessions.
            Some(engines) => {
                let engines: Vec<serde_json::Value> = engines
                    .into_iter()
                    .map(|e| {
                        let mine: Vec<&str> = list
                            .iter()
                            .filter(|s| s.engine.as_deref() == Some(e.name.as_str()))
                            .map(|s| s.session_id.as_str())
                            .collect();
                        let mut v = serde_json::to_value(&e).unwrap_or_default();
                        v["sessions"] = json!(mine);
                        v
                    })
                    .collect();
                Ok(structured(json!({ "sessions": list, "engines": engines })))
            }
            None => Ok(structured(json!({ "sessions": list }))),
        }
    }

    #[tool(
        description = "Stop a desktop session: its VM and runtime files are removed.",
        annotations(
            title = "Stop session",
            destructive_hint = true,
            idempotent_hint = false
        )
    )]
    async fn session_stop(
        &self,
        Parameters(a): Parameters<SessionArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(match self.manager.stop(&a.session_id).await {
            Ok(()) => structured(json!({ "ok": true, "session_id": a.session_id })),
            Err(e) => tool_error(e),
        })
    }

    #[tool(
        description = "Take a PNG screenshot. Optional scale/max_width downscale it; click coordinates then refer to the returned image's pixels.",
        annotations(title = "Screenshot", read_only_hint = true)
    )]
    async fn screenshot(
        &self,
        Parameters(a): Parameters<ScreenshotArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(self
            .act(
                &a.session_id,
                Action::Screenshot {
                    scale: a.scale,
                    max_width: a.max_width,
                },
            )
            .await)
    }

    #[tool(
        description = "Wait: a fixed time (ms), and/or until the screen stops changing (until_stable). Prefer until_stable over fixed sleeps.",
        annotations(title = "Wait", read_only_hint = true)
    )]
    async fn wait(&self, Parameters(a): Parameters<WaitArgs>) -> Result<CallToolResult, McpError> {
        Ok(self
            .act(
                &a.session_id,
                Action::Wait {
                    ms: a.ms,
                    until_stable: a.until_stable,
                    timeout_ms: a.timeout_ms,
                },
            )
            .await)
    }

    #[tool(
        description = "Run a shell command inside the guest through the guest agent (as the desktop's user, or root with `root: true`; DISPLAY=:0); returns exit_code, stdout, stderr. Answers `unavailable` on a guest with no agent.",
        annotations(
            title = "Run command in guest",
            destructive_hint = true,
            open_world_hint = false
        )
    )]
    async fn exec(&self, Parameters(a): Parameters<ExecArgs>) -> Result<CallToolResult, McpError> {
        Ok(self
            .act(
                &a.session_id,
                Action::Exec {
                    command: a.command,
                    timeout_ms: a.timeout_ms,
                    root: a.root,
                },
            )
            .await)
    }

    #[tool(
        description = "Export the session's review (every tool call with before/after screenshots) as a bundle a person opens in a browser: index.html works from file:// with no server. Works for running, stopped and failed sessions. Returns paths, counts, bytes and resource links to read the bundle over MCP.",
        annotations(
            title = "Export review",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn export_review(
        &self,
        Parameters(a): Parameters<ExportArgs>,
    ) -> Result<CallToolResult, McpError> {
        let exported = self
            .manager
            .export_review(&a.session_id, a.name.as_deref())
            .await;
        Ok(match exported {
            Ok(x) => {
                let exports = self.manager.layout().exports();
                let mut content = vec![ContentBlock::text(format!(
                    "review of {} exported: {} ({} steps, {} failed, {} pictures, {} bytes); single file: {}",
                    a.session_id,
                    x.index.display(),
                    x.steps,
                    x.failed,
                    x.shots,
                    x.bytes,
                    x.single_file.display()
                ))];
                content.extend(
                    resources::bundle_entries(&exports, &x.name)
                        .into_iter()
                        .map(ContentBlock::resource_link),
                );
                let mut r = CallToolResult::success(content);
                let mut v = x.to_json();
                v["resource"] = resources::uri(&x.name, "index.html").into();
                if let Some(base) = &self.review_base {
                    v["url"] = format!("{base}/{}/index.html", x.name).into();
                }
                r.structured_content = Some(v);
                r
            }
            Err(e) => tool_error(e),
        })
    }
}

#[prompt_router]
impl DeskvmServer {
    #[prompt(
        name = "use-desktop",
        description = "How to operate a deskvm desktop well: look, act in screenshot coordinates, wait for the screen to settle."
    )]
    async fn use_desktop(&self, Parameters(a): Parameters<UseDesktopArgs>) -> GetPromptResult {
        let mut messages = vec![PromptMessage::new_text(
            Role::User,
            include_str!("../../prompts/use-desktop.md"),
        )];
        if let Some(task) = a.task.filter(|t| !t.trim().is_empty()) {
            messages.push(PromptMessage::new_text(
                Role::User,
                format!("Your task: {task}"),
            ));
        }
        GetPromptResult::new(messages)
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for DeskvmServer {
    /// The one place every tool call passes: who calls (set for the handler as a task-local),
    /// progress while it runs, and for a client that speaks the tasks extension, long calls as
    /// tasks (`tasks.rs`).
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = super::calls::caller(&context);
        if super::tasks::runs_as_task(self, &request, &context) {
            return Ok(super::tasks::spawn(self.clone(), request, context, caller));
        }
        let progress = super::calls::progress(&request.name, &context);
        let result = caller.scope(self.run_tool(request, context)).await;
        drop(progress);
        result
    }

    /// The tools; for a client that renders MCP Apps, `session_view` names its app.
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, McpError> {
        let apps = super::view::client_renders_apps(&context);
        let tools = self
            .tool_router
            .list_all()
            .into_iter()
            .map(|t| match t.name.as_ref() {
                "session_view" if apps => super::view::with_app(t),
                _ => t,
            })
            .collect();
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = super::calls::caller(&context);
        let mut list = resources::list(&self.manager.layout().exports(), &caller);
        if super::view::client_renders_apps(&context) {
            list.push(super::view::app_resource());
        }
        Ok(ListResourcesResult::with_all_items(list))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let caller = super::calls::caller(&context);
        if request.uri == super::view::APP_URI {
            let base = self.views.base_for(caller.host.as_deref());
            let contents = super::view::app_contents(base.as_deref());
            return Ok(ReadResourceResult::new(vec![contents]).into());
        }
        let contents = resources::read(&self.manager.layout().exports(), &request.uri, &caller)?;
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, McpError> {
        Ok(rmcp::model::GetTaskResult::new(
            self.tasks.get_task(&request.task_id)?,
        ))
    }

    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.tasks.cancel_task(&request.task_id)
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .enable_tasks()
                .build(),
        )
            .with_server_info(Implementation::new("deskvm", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "deskvm gives you a real Linux desktop in a VM. Call session_start, then screenshot to look, \
                 click/type/key to act, wait(until_stable) after changes, export_review and \
                 session_stop when done. Coordinates are pixels of your latest screenshot. Every call \
                 is recorded in the session's review ledger; type with secret=true for passwords.",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::DeskvmServer;

    /// The README's tool table and the `use-desktop` prompt describe the whole action set.
    #[test]
    fn readme_and_prompt_describe_every_tool() {
        let router = DeskvmServer::tool_router()
            + DeskvmServer::input_router()
            + DeskvmServer::computer_router()
            + DeskvmServer::checkpoint_router()
            + DeskvmServer::reclaim_router()
            + DeskvmServer::view_router();
        let readme = include_str!("../../README.md");
        let prompt = include_str!("../../prompts/use-desktop.md");
        let tools = router.list_all();
        assert_eq!(
            tools.len(),
            24,
            "a new tool: describe it, then count it here"
        );
        for t in tools {
            let name = t.name.to_string();
            assert!(readme.contains(&format!("`{name}")), "README: {name}");
            // Storage housekeeping is the operator's, not the agent's.
            if name != "reclaim" {
                assert!(
                    prompt.contains(&format!("`{name}")),
                    "use-desktop prompt: {name}"
                );
            }
        }
    }
}
