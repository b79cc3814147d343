//! `session_view`, and the same view offered as an MCP App (the `io.modelcontextprotocol/ui`
//! extension) to clients that render one: the tool names a `ui://` resource, an HTML page the
//! client shows in a sandboxed frame, which frames the view's URL from the tool's result.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, MetaObject, Resource, ResourceContents, Tool};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, ErrorData as McpError, RoleServer};
use serde_json::{json, Value};

use super::params::SessionViewArgs;
use super::tools::{structured, tool_error, DeskvmServer};

pub const APPS_EXTENSION: &str = "io.modelcontextprotocol/ui";
pub const APP_MIME: &str = "text/html;profile=mcp-app";
pub const APP_URI: &str = "ui://deskvm/session-view";
const APP_HTML: &str = include_str!("view_app.html");

#[tool_router(router = view_router, vis = "pub(crate)")]
impl DeskvmServer {
    #[tool(
        description = "A link that shows the session's screen live in a browser, for a person to watch; with control=true their mouse and keyboard reach the desktop too (to help with a login or a captcha), and what they do is recorded as human_input in the review. Hand out a control link only with the user's consent: anyone with it can use the desktop. Each call makes a new link for one session and mode; it expires (expires_in_s, default 3600) and dies when the session stops. Give the URL to the person; do not open it yourself.",
        annotations(
            title = "Live view link",
            // A control link is a credential for the whole desktop: not a read.
            read_only_hint = false,
            destructive_hint = false,
            open_world_hint = false
        )
    )]
    async fn session_view(
        &self,
        Parameters(a): Parameters<SessionViewArgs>,
    ) -> Result<CallToolResult, McpError> {
        Ok(
            match self
                .views
                .offer(&self.manager, &a.session_id, a.control, a.expires_in_s)
                .await
            {
                Ok(v) => structured(v),
                Err(e) => tool_error(e),
            },
        )
    }
}

/// Whether the client renders MCP Apps of HTML.
pub fn client_renders_apps(context: &RequestContext<RoleServer>) -> bool {
    let Some(caps) = context.client_capabilities() else {
        return false;
    };
    let ext = caps
        .extensions
        .as_ref()
        .and_then(|e| e.get(APPS_EXTENSION))
        .or_else(|| caps.experimental.as_ref()?.get(APPS_EXTENSION));
    ext.is_some_and(|s| {
        s.get("mimeTypes")
            .and_then(Value::as_array)
            .is_none_or(|m| m.iter().any(|t| t == APP_MIME))
    })
}

fn meta(v: Value) -> MetaObject {
    MetaObject(v.as_object().cloned().unwrap_or_default())
}

/// `session_view` pointing at its app (both the current key and the flat one older hosts read).
pub fn with_app(tool: Tool) -> Tool {
    tool.with_meta(meta(json!({
        "ui": { "resourceUri": APP_URI },
        "ui/resourceUri": APP_URI,
    })))
}

pub fn app_resource() -> Resource {
    Resource::new(APP_URI, "session-view")
        .with_mime_type(APP_MIME)
        .with_description("The live view of a session, inside the client (session_view's app)")
}

/// The app's page. Its frame may load the view listener (`base`), nothing else.
pub fn app_contents(base: Option<&str>) -> ResourceContents {
    let frames: Vec<&str> = base.into_iter().collect();
    ResourceContents::text(APP_HTML, APP_URI)
        .with_mime_type(APP_MIME)
        .with_meta(meta(json!({
            "ui": { "csp": { "frameDomains": frames }, "prefersBorder": true }
        })))
}
