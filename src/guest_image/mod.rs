//! Guest images: the recipe in `tools/guest` (compiled into the binary so the binary alone can
//! build it), where built images live in the cache, and the ready state that sessions resume.

pub mod ready;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::storage::IoContext;
use crate::storage::{self, Layout};
use crate::vm::spec::hex;

pub const DEFAULT_IMAGE: &str = "debian-desktop";
/// Image names a session may ask for.
pub const IMAGES: &[&str] = &[DEFAULT_IMAGE];

struct RecipeFile {
    path: &'static str,
    data: &'static [u8],
}

macro_rules! recipe {
    ($($p:literal),* $(,)?) => {
        &[$(RecipeFile { path: $p, data: include_bytes!(concat!("../../tools/guest/", $p)) }),*]
    };
}

const RECIPE: &[RecipeFile] = recipe!(
    "build-rootfs.sh",
    "packages.txt",
    "overlay/etc/systemd/system/deskvm-desktop.service",
    "overlay/usr/local/bin/deskvm-session",
    "overlay/usr/local/bin/deskvm-shell",
    "overlay/root/.bashrc",
);

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("unknown image {name:?}; available: {}", IMAGES.join(", "))]
    Unknown { name: String },
    #[error("guest image {name:?} is not built yet (expected {dir}); run `deskvm setup` (or `deskvm image build`) first")]
    NotBuilt { name: String, dir: PathBuf },
    #[error("building the guest image needs root (debootstrap, file ownership); run `sudo deskvm image build`")]
    NeedsRoot,
    #[error("the guest image recipe failed ({status}); its output is above")]
    RecipeFailed { status: std::process::ExitStatus },
    /// Names the operation and the path; the OS error is its source.
    #[error(transparent)]
    Io(#[from] crate::storage::IoError),
}

/// Hash of the recipe; a changed recipe means a new image directory, so stale images are never used.
pub fn recipe_hash() -> String {
    let mut h = Sha256::new();
    for f in RECIPE {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.data);
        h.update([0]);
    }
    hex(&h.finalize()[..6])
}

#[derive(Debug, Clone)]
pub struct GuestImage {
    pub name: String,
    pub dir: PathBuf,
}

impl GuestImage {
    pub fn dir_for(layout: &Layout, name: &str) -> PathBuf {
        layout.images().join(format!("{name}-{}", recipe_hash()))
    }

    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn base(&self) -> PathBuf {
        self.dir.join("base.qcow2")
    }

    pub fn locate(layout: &Layout, name: &str) -> Result<Self, ImageError> {
        if !IMAGES.contains(&name) {
            return Err(ImageError::Unknown { name: name.into() });
        }
        let dir = Self::dir_for(layout, name);
        let img = GuestImage {
            name: name.into(),
            dir: dir.clone(),
        };
        if img.base().exists() && img.kernel().exists() && img.initrd().exists() {
            Ok(img)
        } else {
            Err(ImageError::NotBuilt {
                name: name.into(),
                dir,
            })
        }
    }

    /// Builds the image unless it is already in the cache (or `force`). Progress lines go to
    /// `progress` as the recipe prints them.
    pub async fn build(
        layout: &Layout,
        name: &str,
        force: bool,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Self, ImageError> {
        if !force {
            match Self::locate(layout, name) {
                Ok(img) => {
                    progress(&format!(
                        "guest image {name} is up to date: {}",
                        img.dir.display()
                    ));
                    return Ok(img);
                }
                Err(ImageError::NotBuilt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if !crate::storage::is_root() {
            return Err(ImageError::NeedsRoot);
        }
        let dir = Self::dir_for(layout, name);
        let mut build = Build::prepare(layout, &dir)?;
        progress(&format!(
            "building guest image {name} (recipe {}) in {}",
            recipe_hash(),
            build.work.display()
        ));
        build.run(progress).await?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).at("removing the older image", &dir)?;
        }
        std::fs::rename(&build.work, &dir).at("publishing the image", &dir)?;
        storage::Owner::me("guest_image", None)
            .write(&dir)
            .at("writing the owner marker in", &dir)?;
        Ok(GuestImage {
            name: name.into(),
            dir,
        })
    }
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
    fn prepare(layout: &Layout, dir: &Path) -> Result<Self, ImageError> {
        let work = dir.with_extension("partial");
        let recipe_dir = work.with_extension("recipe");
        for d in [&work, &recipe_dir] {
            if d.exists() {
                std::fs::remove_dir_all(d).at("removing an earlier build's", d)?;
            }
        }
        let images = layout.images();
        storage::private_dir(&images).at("creating the image store's images dir", &images)?;
        write_recipe(&recipe_dir).at("writing the recipe to", &recipe_dir)?;
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
    async fn run(&mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<(), ImageError> {
        let recipe_dir = &self.recipe_dir;
        let mut child = tokio::process::Command::new("bash")
            .arg(recipe_dir.join("build-rootfs.sh"))
            .arg(&self.work)
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

fn write_recipe(dir: &Path) -> std::io::Result<()> {
    for f in RECIPE {
        let path = dir.join(f.path);
        std::fs::create_dir_all(path.parent().expect("recipe paths have a parent"))?;
        std::fs::write(&path, f.data)?;
        if f.path.ends_with(".sh") || f.path.contains("/bin/") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_hash_is_stable_and_short() {
        assert_eq!(recipe_hash(), recipe_hash());
        assert_eq!(recipe_hash().len(), 12);
    }

    #[test]
    fn unknown_images_are_named_with_the_valid_ones() {
        let layout = Layout {
            cache: "/nonexistent".into(),
            state: "/nonexistent".into(),
            runtime: "/nonexistent".into(),
            data: "/nonexistent".into(),
        };
        let err = GuestImage::locate(&layout, "windows").unwrap_err();
        assert!(err.to_string().contains("debian-desktop"), "{err}");
        let err = GuestImage::locate(&layout, DEFAULT_IMAGE).unwrap_err();
        assert!(matches!(err, ImageError::NotBuilt { .. }));
    }
}
