//! A recipe made by the test: a copy of `minimal` with one more package builds with
//! `deskvm image build DIR`, is listed, starts from its ready state and has the package; then
//! `image rm` takes it away again.

mod common;

use std::path::Path;

use anyhow::Result;
use common::*;
use serde_json::json;

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_copied_recipe_with_one_more_package_builds_starts_and_has_it() -> Result<()> {
    let (d, _guard) = temp_dirs(&["rt", "rd", "rr"])?;
    let recipe = d[2].join("with-hello");
    let minimal = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/guest/recipes/minimal");
    copy_tree(&minimal, &recipe)?;
    let toml = std::fs::read_to_string(recipe.join("recipe.toml"))?;
    // GNU hello: one small package that minimal does not have.
    std::fs::write(
        recipe.join("recipe.toml"),
        toml.replacen("packages = [", "packages = [\"hello\", ", 1),
    )?;
    let env = state_env(&d[0], &d[1]);
    let dir = recipe.to_string_lossy();
    // A build an earlier run left (same files, same hash) would make this one a no-op.
    let _ = cli(&["image", "rm", "recipe-test", "--all"], &env)?;
    let (code, _, err) = cli(&["image", "build", &dir, "--name", "recipe-test"], &env)?;
    assert_eq!(code, 0, "image build failed: {err}");
    let (code, list, err) = cli(&["image", "list", "--json"], &env)?;
    assert_eq!(code, 0, "{err}");
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "recipe-test" && i["current"] == true)
        .cloned()
        .unwrap_or_else(|| panic!("recipe-test not listed: {list}"));
    assert_eq!(mine["ready_states"], 1, "{mine}");
    assert_eq!(mine["source"], dir.as_ref(), "{mine}");
    assert_eq!(mine["kind"], "recipe", "{mine}");

    let s = server().await?;
    let info = s
        .client
        .call_ok("session_start", json!({ "image": "recipe-test" }))
        .await?;
    assert_eq!(info["startup"], "ready_state", "{info}");
    assert_eq!(info["image"], "recipe-test", "{info}");
    let sid = sid(&info);
    assert_eq!(guest(&s.client, &sid, "hello").await?, "Hello, world!\n");
    // session_list and the review say which image it runs.
    let list = s.client.call_ok("session_list", json!({})).await?;
    assert_eq!(list["sessions"][0]["image"], "recipe-test", "{list}");
    s.client
        .call_ok("session_stop", json!({ "session_id": sid }))
        .await?;
    // In use while its server runs: refused; then removed.
    let (code, _, err) = cli(&["image", "rm", "recipe-test", "--all"], &env)?;
    assert_ne!(
        code, 0,
        "image rm of an image a live server uses must be refused"
    );
    assert!(err.contains("in use"), "{err}");
    s.client.close().await?;
    let (code, out, err) = cli(&["image", "rm", "recipe-test", "--all"], &env)?;
    assert_eq!(code, 0, "{err}");
    let _ = out;
    let (_, list, _) = cli(&["image", "list", "--json"], &env)?;
    assert!(
        !list.to_string().contains("recipe-test"),
        "still listed after rm: {list}"
    );
    Ok(())
}
