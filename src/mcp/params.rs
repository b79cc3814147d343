//! Tool parameters: what an agent sends, with the descriptions its model reads (schemars).

use schemars::JsonSchema;
use serde::Deserialize;

use crate::vm::Button;

/// Puts the images a server can start into `session_start`'s schema: `enum` of the built ones,
/// and a description naming the default and the built-in recipes not built yet.
pub fn list_images(
    tool: &mut rmcp::model::Tool,
    built: &[String],
    unbuilt: &[String],
    default: &str,
) {
    let schema = std::sync::Arc::make_mut(&mut tool.input_schema);
    let Some(image) = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("image"))
        .and_then(|i| i.as_object_mut())
    else {
        return;
    };
    let mut choices: Vec<serde_json::Value> = built.iter().map(|n| n.as_str().into()).collect();
    let nullable = image["type"]
        .as_array()
        .is_some_and(|t| t.iter().any(|x| x == "null"));
    if nullable {
        choices.push(serde_json::Value::Null);
    }
    if !built.is_empty() {
        image.insert("enum".into(), choices.into());
    }
    let mut description = image["description"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    description.push_str(&format!(" Default: {default}."));
    if !unbuilt.is_empty() {
        description.push_str(&format!(
            " Not built on this host (an operator runs `deskvm setup --image NAME`): {}.",
            unbuilt.join(", ")
        ));
    }
    image.insert("description".into(), description.into());
}

#[derive(Debug, Deserialize, JsonSchema, Default)]
pub struct SessionStartArgs {
    /// Screen width in pixels (640..=1920, default 1280).
    #[schemars(range(min = 640, max = 1920))]
    pub width: Option<u32>,
    /// Screen height in pixels (480..=1200, default 800).
    #[schemars(range(min = 480, max = 1200))]
    pub height: Option<u32>,
    /// Guest image: `workstation` (Xfce, Firefox ESR, LibreOffice, a text editor, PDF and image
    /// viewers; user `user`), `minimal` (openbox and one root terminal), or one built or
    /// imported on this host. The server's list is in this property's `enum`.
    pub image: Option<String>,
    /// Guest memory in MiB (512..=8192, default: the image's, 2048 for workstation). Other
    /// sizes than the image's cold-boot (slow).
    #[schemars(range(min = 512, max = 8192))]
    pub memory_mb: Option<u32>,
    #[serde(default, deserialize_with = "super::params_io::network_mode")]
    #[schemars(schema_with = "super::params_io::network_schema")]
    pub network: crate::session::network::NetworkMode,
    /// Host services on this machine's loopback to show in the guest, e.g. ["127.0.0.1:3000"]:
    /// each appears at http://host.deskvm.internal:PORT (works with network none). Only ports
    /// the operator allows (deskvm serve --allow-forward).
    #[serde(default)]
    pub forward: Vec<String>,
    /// Start as a fork of this checkpoint: its screen, files and memory as they were when it
    /// was saved (size, memory and image come from it).
    pub from_checkpoint: Option<String>,
    /// Run on this engine of the server's pool (names in session_list's `engines`; default:
    /// the one with the most free memory).
    pub engine: Option<String>,
}

/// The schema of a name an agent gives what it saves (a checkpoint, an exported bundle): one
/// rule for both, so a model that learned one knows the other. The session checks the same rule
/// again (`session::check_name`); this states it before the call.
fn saved_name(schema: &mut schemars::Schema) {
    schema.insert("minLength".into(), 1.into());
    schema.insert("maxLength".into(), 64.into());
    schema.insert("pattern".into(), r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$".into());
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckpointArgs {
    pub session_id: String,
    /// Name (1-64 of A-Z a-z 0-9 . _ -); default <session>-<unix time>.
    #[schemars(transform = saved_name)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RestoreArgs {
    pub session_id: String,
    /// The checkpoint to roll the session back to.
    pub checkpoint: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CheckpointNameArgs {
    /// The checkpoint's name.
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionArgs {
    /// Session id from session_start.
    pub session_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ScreenshotArgs {
    pub session_id: String,
    /// Downscale factor in (0, 1]. Later coordinates are in this screenshot's pixel space.
    #[schemars(range(min = 0.01, max = 1.0))]
    pub scale: Option<f64>,
    /// Downscale so the image is at most this wide (64 or more).
    #[schemars(range(min = 64, max = 7680))]
    pub max_width: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClickArgs {
    pub session_id: String,
    /// X in pixels of the latest screenshot.
    #[schemars(range(min = 0.0))]
    pub x: f64,
    /// Y in pixels of the latest screenshot.
    #[schemars(range(min = 0.0))]
    pub y: f64,
    /// left (default), right or middle.
    pub button: Option<Button>,
    /// 1 (default), 2 for a double click, 3 for a triple click.
    #[schemars(range(min = 1, max = 3))]
    pub count: Option<u32>,
    /// Keys held during the click, e.g. ["ctrl"], ["shift"].
    #[serde(default)]
    pub modifiers: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct MoveArgs {
    pub session_id: String,
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Deserialize, serde::Serialize, JsonSchema)]
pub struct XY {
    pub x: f64,
    pub y: f64,
}

/// Several points in screenshot pixels.
pub type Path = Vec<XY>;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DragArgs {
    pub session_id: String,
    /// Where the button goes down (with `to`; or give `path` instead).
    pub from: Option<XY>,
    /// Where it comes up (with `from`).
    pub to: Option<XY>,
    /// Instead of from/to: the button goes down at the first point, moves through each, and
    /// comes up at the last (2..=64 points).
    #[schemars(length(min = 2, max = 64))]
    pub path: Option<Path>,
    /// left (default), right or middle.
    pub button: Option<Button>,
    /// Keys held during the drag, e.g. ["shift"], ["alt"].
    #[serde(default)]
    pub modifiers: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ScrollArgs {
    pub session_id: String,
    pub x: f64,
    pub y: f64,
    /// Horizontal wheel clicks, negative = left (-50..=50).
    #[serde(default)]
    #[schemars(range(min = -50, max = 50))]
    pub dx: i32,
    /// Vertical wheel clicks, negative = up, positive = down (-50..=50).
    #[serde(default)]
    #[schemars(range(min = -50, max = 50))]
    pub dy: i32,
    /// Keys held while the wheel turns, e.g. ["ctrl"] to zoom, ["shift"] to scroll sideways.
    #[serde(default)]
    pub modifiers: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ButtonArgs {
    pub session_id: String,
    /// left (default), right or middle.
    pub button: Option<Button>,
    /// Where to press or release, in pixels of the latest screenshot (with y); default: where
    /// the pointer is.
    #[schemars(range(min = 0.0))]
    pub x: Option<f64>,
    #[schemars(range(min = 0.0))]
    pub y: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ZoomArgs {
    pub session_id: String,
    /// Left edge of the region, in pixels of the latest screenshot.
    #[schemars(range(min = 0.0))]
    pub x: f64,
    /// Top edge of the region, in pixels of the latest screenshot.
    #[schemars(range(min = 0.0))]
    pub y: f64,
    /// Region width in pixels of the latest screenshot (1 or more; the region must lie on it).
    #[schemars(range(min = 1.0, max = 4096.0))]
    pub width: f64,
    /// Region height in pixels of the latest screenshot.
    #[schemars(range(min = 1.0, max = 4096.0))]
    pub height: f64,
    /// Size of the answer relative to the screen's own pixels: 1 (default) is full resolution,
    /// 2 doubles it (0.01..=8).
    #[schemars(range(min = 0.01, max = 8.0))]
    pub scale: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TypeArgs {
    pub session_id: String,
    /// Text to type exactly, any Unicode (accents, Greek, CJK, emoji, combining marks), newline
    /// and tab; at most 4096 characters. Control characters are refused.
    #[schemars(length(max = 4096))]
    pub text: String,
    /// A password or other secret: the review ledger keeps only its length.
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExportArgs {
    /// Session id (running, stopped or failed).
    pub session_id: String,
    /// Bundle name (1-64 of A-Z a-z 0-9 . _ -); default <session>-<UTC time>.
    #[schemars(transform = saved_name)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct KeyArgs {
    pub session_id: String,
    /// xdotool-style combination(s): "ctrl+s", "alt+Tab", "Return", "F5", "super".
    /// Several separated by spaces are pressed one after another: "ctrl+a BackSpace".
    pub keys: String,
    /// Hold each combination down this long before releasing it (0..=60000 ms, default a
    /// tap), e.g. to hold shift while something else happens or to trigger a long press.
    #[schemars(range(max = 60000))]
    pub hold_ms: Option<u64>,
}

/// Which vocabulary a `computer` action is in.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionFormat {
    /// Anthropic's computer-use tool (computer_20251124 and earlier): {"action": "left_click",
    /// "coordinate": [x, y]}.
    Anthropic,
    /// OpenAI's computer-use actions: {"type": "click", "button": "left", "x": 1, "y": 2}.
    Openai,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ComputerArgs {
    pub session_id: String,
    /// One action exactly as Anthropic's computer-use tool ({"action": ...}) or OpenAI's
    /// computer-use ({"type": ...}) emits it.
    pub action: serde_json::Map<String, serde_json::Value>,
    /// The action's vocabulary; default: recognised from its shape ("action" key: Anthropic,
    /// "type" key: OpenAI).
    pub format: Option<ActionFormat>,
    /// The text a `type` action types is a secret: the review keeps only its length (key
    /// names are recorded as they are).
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WaitArgs {
    pub session_id: String,
    /// Fixed wait in ms first (0..=60000; default 1000, or 0 with until_stable).
    #[schemars(range(max = 60000))]
    pub ms: Option<u64>,
    /// Then wait until the screen stops changing.
    #[serde(default)]
    pub until_stable: bool,
    /// Give up waiting for a stable screen after this long (default 10000, at most 60000).
    #[schemars(range(max = 60000))]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ExecArgs {
    pub session_id: String,
    /// Shell command, run with `sh -c` in the guest with DISPLAY=:0, as the desktop's user
    /// (`user`, home /home/user, on workstation; root on minimal).
    #[schemars(length(min = 1, max = 65536))]
    pub command: String,
    /// Run as root instead (default false).
    #[serde(default)]
    pub root: bool,
    /// Timeout in ms (1..=300000, default 30000).
    #[schemars(range(min = 1, max = 300000))]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UseDesktopArgs {
    /// What you want done on the desktop.
    pub task: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimMode {
    /// List what can be removed; remove nothing.
    #[default]
    Report,
    /// Remove it, and say per item what was removed, the bytes freed, and each failure.
    Apply,
}

#[derive(Debug, Deserialize, JsonSchema, Default)]
pub struct ReclaimArgs {
    /// "report" (default) or "apply".
    #[serde(default)]
    pub mode: ReclaimMode,
    /// Only these kinds (default: all of them; exports only when named in `include`).
    pub kinds: Option<Vec<crate::storage::reclaim::Kind>>,
    /// Exported review bundles to remove, by name. Exports are never removed otherwise.
    #[serde(default)]
    pub include: Vec<String>,
    /// Ledgers of stopped sessions last written longer ago than this, e.g. "12h" or "7d"
    /// (default: each ledger's retention, 14 days unless configured).
    pub older_than: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients and models see the limits in the schema before they call.
    #[test]
    fn schemas_state_ranges() {
        let click = serde_json::to_value(schemars::schema_for!(ClickArgs)).unwrap();
        let count = &click["properties"]["count"];
        assert_eq!(
            (count["minimum"].as_u64(), count["maximum"].as_u64()),
            (Some(1), Some(3)),
            "{count}"
        );
        let exec = serde_json::to_value(schemars::schema_for!(ExecArgs)).unwrap();
        assert_eq!(exec["properties"]["timeout_ms"]["maximum"], 300000);
        let start = serde_json::to_value(schemars::schema_for!(SessionStartArgs)).unwrap();
        assert_eq!(start["properties"]["width"]["minimum"], 640);
    }

    /// Checkpoint and bundle names state one rule; only their descriptions differ.
    #[test]
    fn saved_names_share_one_schema() {
        let name = |schema: schemars::Schema| {
            let mut name = serde_json::to_value(schema).unwrap()["properties"]["name"].clone();
            name.as_object_mut().unwrap().remove("description");
            name
        };
        let checkpoint = name(schemars::schema_for!(CheckpointArgs));
        assert_eq!(checkpoint, name(schemars::schema_for!(ExportArgs)));
        assert_eq!(
            checkpoint,
            serde_json::json!({
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 64,
                "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
            })
        );
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionViewArgs {
    pub session_id: String,
    /// Let the person's mouse and keyboard reach the desktop (default false: view only).
    #[serde(default)]
    pub control: bool,
    /// Seconds the link works (10 to 604800; default 3600). It also dies when the session stops.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}
