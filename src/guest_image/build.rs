//! Building an image from a recipe: the builder runs as root in `<image>.partial` (the image
//! once it is done), with the recipe written to `<image>.recipe`; both carry the builder's owner
//! marker while it runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::recipe::Recipe;
use super::{GuestImage, ImageError, ImageMeta};
use crate::storage::IoContext;
use crate::storage::{self, Layout};

/// An image's build in `dir` is replaced (`--force`) or removed (`image rm`) only while no
/// server or session uses it.
pub fn refuse_in_use(layout: &Layout, name: &str, dir: &Path) -> Result<(), ImageError> {
    if !dir.exists() {
        return Ok(());
    }
    let in_use = storage::reclaim::in_use(layout);
    match in_use
        .iter()
        .find(|(d, _)| dir.starts_with(d) || d.starts_with(dir))
    {
        Some((_, by)) => Err(ImageError::InUse {
            name: name.into(),
            by: by.clone(),
        }),
        None => Ok(()),
    }
}

/// Builds the image of `recipe` unless its current build is in the store (or `force`).
pub async fn build(
    layout: &Layout,
    recipe: &Recipe,
    force: bool,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<GuestImage, ImageError> {
    let hash = recipe.hash();
    let dir = GuestImage::dir_for(layout, &recipe.name, &hash);
    if !force {
        if let Some(img) = GuestImage::read(dir.clone()) {
            progress(&format!(
                "guest image {} is up to date: {}",
                recipe.name,
                img.dir.display()
            ));
            return Ok(img);
        }
    }
    if !crate::storage::is_root() {
        return Err(ImageError::NeedsRoot);
    }
    // One build at a time: builds share the package cache (apt's lock, debootstrap's files).
    let lock_layout = layout.clone();
    let _one = tokio::task::spawn_blocking(move || {
        storage::CacheLock::builder(&lock_layout, ".image-build.lock")
    })
    .await
    .map_err(|e| ImageError::BadRecipe {
        source_dir: recipe.source.clone(),
        why: format!("waiting for another build: {e}"),
    })??;
    if !force {
        if let Some(img) = GuestImage::read(dir.clone()) {
            return Ok(img);
        }
    }
    refuse_in_use(layout, &recipe.name, &dir)?;
    let mut build = Build::prepare(layout, &dir, recipe)?;
    progress(&format!(
        "building guest image {} (recipe {hash}, {}) in {}",
        recipe.name,
        recipe.source,
        build.work.display()
    ));
    build
        .run(recipe, &layout.cache.join("apt-archives"), progress)
        .await?;
    GuestImage::write_meta(&build.work, &ImageMeta::of_recipe(recipe))?;
    if dir.exists() {
        // Asked again: a session may have started on it during the build.
        refuse_in_use(layout, &recipe.name, &dir)?;
        std::fs::remove_dir_all(&dir).at("removing the older image", &dir)?;
    }
    std::fs::rename(&build.work, &dir).at("publishing the image", &dir)?;
    storage::Owner::me("guest_image", None)
        .write(&dir)
        .at("writing the owner marker in", &dir)?;
    GuestImage::read(dir.clone()).ok_or_else(|| ImageError::BadRecipe {
        source_dir: recipe.source.clone(),
        why: format!(
            "the builder finished but {} lacks base.qcow2, vmlinuz or initrd.img",
            dir.display()
        ),
    })
}

/// One build of an image: the recipe's output dir (`<image>.partial`, the image once it is
/// done), the recipe's own dir (`<image>.recipe`), and the owner marker both carry.
struct Build {
    work: PathBuf,
    recipe_dir: PathBuf,
    builder: storage::Owner,
}

impl Build {
    /// Clears what an earlier build of the image in `dir` left, writes the recipe, and marks
    /// both dirs as this build's.
    fn prepare(layout: &Layout, dir: &Path, recipe: &Recipe) -> Result<Self, ImageError> {
        let work = dir.with_extension("partial");
        let recipe_dir = work.with_extension("recipe");
        for d in [&work, &recipe_dir] {
            if d.exists() {
                std::fs::remove_dir_all(d).at("removing an earlier build's", d)?;
            }
        }
        let images = layout.images();
        storage::private_dir(&images).at("creating the image store's images dir", &images)?;
        recipe
            .write_to(&recipe_dir)
            .at("writing the recipe to", &recipe_dir)?;
        // The builder's marker: a reclaim leaves both alone while this process runs.
        std::fs::create_dir_all(&work).at("creating the build dir", &work)?;
        let build = Build {
            work,
            recipe_dir,
            builder: storage::Owner::me("image_build", None),
        };
        build.mark()?;
        Ok(build)
    }

    fn mark(&self) -> Result<(), ImageError> {
        for d in [&self.work, &self.recipe_dir] {
            self.builder.write(d).at("writing the owner marker in", d)?;
        }
        Ok(())
    }

    /// Runs the recipe, its output lines as progress; on failure, the last 20 lines of its
    /// errors too. The recipe's dir is gone afterwards either way.
    async fn run(
        &mut self,
        recipe: &Recipe,
        apt_cache: &Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<(), ImageError> {
        let recipe_dir = &self.recipe_dir;
        // Downloaded packages are kept between builds (a changed recipe downloads only what
        // is new): they are named by version, so a kept one is the same file.
        storage::private_dir(apt_cache).at("creating the package cache", apt_cache)?;
        let mut child = tokio::process::Command::new("bash")
            .arg(recipe_dir.join("build-rootfs.sh"))
            .arg(recipe_dir.join("recipe"))
            .arg(&self.work)
            .envs(recipe.env())
            .env("DESKVM_APT_CACHE", apt_cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .at("running the recipe in", recipe_dir)?;
        // The recipe (and debootstrap under it) goes on if this process dies: while it runs,
        // its work dirs are alive for reclaim.
        self.builder.helper = child.id().and_then(storage::owner::ProcessRef::of);
        self.mark()?;
        let recipe_dir = &self.recipe_dir;
        let err_task = tokio::spawn(collect_lines(child.stderr.take()));
        if let Some(out) = child.stdout.take() {
            let mut reader = BufReader::new(out).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                progress(&line);
            }
        }
        let status = child
            .wait()
            .await
            .at("waiting for the recipe in", recipe_dir)?;
        let stderr = err_task.await.unwrap_or_default();
        std::fs::remove_dir_all(recipe_dir).at("removing the recipe", recipe_dir)?;
        if !status.success() {
            for line in stderr.iter().rev().take(20).rev() {
                progress(line);
            }
            return Err(ImageError::RecipeFailed { status });
        }
        Ok(())
    }
}

/// Every line `r` gives until it ends: the recipe's errors, kept for when it fails.
async fn collect_lines(r: Option<tokio::process::ChildStderr>) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(r) = r {
        let mut reader = BufReader::new(r).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.push(line);
        }
    }
    lines
}
