//! The live view's page and script, which the front door (`crate::http`) serves at
//! `/view/<token>` and `/view/assets/deskvm-view.js` with its headers.

use super::Grant;

const PAGE: &str = include_str!("page.html");

/// deskvm's page script (no inline code: the page's CSP allows scripts only from the server).
pub const SCRIPT: &str = include_str!("page.js");

/// The page for one granted view of session `session_id`.
pub fn html(grant: &Grant, session_id: &str) -> String {
    let expires = humantime::format_rfc3339_seconds(grant.expires_at).to_string();
    PAGE.replace("{{MODE}}", grant.mode())
        .replace("{{SESSION}}", session_id)
        .replace("{{EXPIRES}}", &expires)
}
