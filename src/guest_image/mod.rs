//! Guest images: built from recipes (`recipe`, compiled into the binary or a user's directory)
//! or imported from a user's disk (`import`); where they live in the image store, what each one
//! is (`image.json`), and the ready states sessions resume (`ready`).
//!
//! An image is `images/<name>-<hash>/`: the recipe's hash, or the imported file's. A built-in
//! recipe's current image is the one of its hash now; any other name's is its newest build.

mod build;
pub use build::refuse_in_use;
pub mod import;
pub mod ready;
pub mod recipe;

use std::path::PathBuf;

use thiserror::Error;

pub use crate::vm::spec::{DiskBus, Firmware};
use recipe::{InputProbe, Recipe};

/// The image a session gets when it names none (`--image` on `serve` changes it).
pub const DEFAULT_IMAGE: &str = "workstation";
/// Names that earlier versions used, and what they are now.
pub const ALIASES: &[(&str, &str)] = &[("debian-desktop", "minimal")];
const META: &str = "image.json";

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("unknown image {name:?}; images: {available}")]
    Unknown { name: String, available: String },
    #[error(
        "guest image {name:?} is not built yet; run `{command}` first (it takes several minutes)"
    )]
    NotBuilt { name: String, command: String },
    #[error("building a guest image needs root (debootstrap, file ownership); run `sudo deskvm image build`")]
    NeedsRoot,
    #[error("the guest image recipe failed ({status}); its output is above")]
    RecipeFailed { status: std::process::ExitStatus },
    #[error("image name {name:?}: use 1 to 40 characters from a-z 0-9 - _, starting with a letter or digit")]
    BadName { name: String },
    #[error("image name {name:?} is a built-in image's; choose another (--name)")]
    ReservedName { name: String },
    #[error("recipe {source_dir}: {why}")]
    BadRecipe { source_dir: String, why: String },
    #[error("reading the recipe in {path}")]
    RecipeRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot import {path}: {why}")]
    BadDisk { path: PathBuf, why: String },
    #[error("image {name:?} is in use by a running session or server ({by}); stop it first")]
    InUse { name: String, by: String },
    /// Names the operation and the path; the OS error is its source.
    #[error(transparent)]
    Io(#[from] crate::storage::IoError),
}

/// How an image was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// Built from a recipe: boots its own kernel directly.
    Recipe,
    /// A user's disk: boots through firmware.
    Imported,
}

/// `image.json`: what an image is and what a session of it gets by default.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImageMeta {
    pub name: String,
    pub kind: ImageKind,
    /// The recipe's hash, or the imported file's (with the import's options).
    pub hash: String,
    pub built_at_unix: u64,
    pub width: u32,
    pub height: u32,
    pub memory_mb: u32,
    /// Who `exec` runs as unless asked for root ("root": no change).
    pub user: String,
    pub input_probe: InputProbe,
    /// Firmware boot (an imported disk); `None`: the image's own kernel, booted directly.
    pub firmware: Option<Firmware>,
    pub disk_bus: DiskBus,
    /// The recipe ("built-in" or its directory) or the imported file.
    pub source: String,
}

impl ImageMeta {
    /// The metadata of an image built from `recipe`.
    pub fn of_recipe(recipe: &Recipe) -> ImageMeta {
        let c = &recipe.config;
        ImageMeta {
            name: recipe.name.clone(),
            kind: ImageKind::Recipe,
            hash: recipe.hash(),
            built_at_unix: now_unix(),
            width: c.defaults.width,
            height: c.defaults.height,
            memory_mb: c.defaults.memory_mb,
            user: c.user.clone(),
            input_probe: c.input_probe,
            firmware: None,
            disk_bus: DiskBus::Virtio,
            source: recipe.source.clone(),
        }
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct GuestImage {
    pub name: String,
    pub dir: PathBuf,
    pub meta: ImageMeta,
}

/// An image in the store, and whether it is its name's current one.
#[derive(Debug, Clone)]
pub struct Listed {
    pub image: GuestImage,
    pub current: bool,
}

/// The name an older name stands for.
pub fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(old, _)| *old == name)
        .map_or(name, |(_, new)| new)
}

impl GuestImage {
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn base(&self) -> PathBuf {
        self.dir.join("base.qcow2")
    }

    /// Whether the image boots its own kernel (a recipe's) rather than through firmware.
    pub fn boots_kernel(&self) -> bool {
        self.meta.firmware.is_none()
    }

    /// The image in `dir`, if it is a finished one (metadata written last, files present).
    pub fn read(dir: PathBuf) -> Option<GuestImage> {
        let meta: ImageMeta = serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
        let img = GuestImage {
            name: meta.name.clone(),
            dir,
            meta,
        };
        let kernel_ok = !img.boots_kernel() || (img.kernel().is_file() && img.initrd().is_file());
        (img.base().is_file() && kernel_ok).then_some(img)
    }

    /// Every finished image in the store, each marked current or not, sorted by name then
    /// newest first.
    pub fn list(layout: &crate::storage::Layout) -> Vec<Listed> {
        let mut all: Vec<GuestImage> = std::fs::read_dir(layout.images())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_none())
            .filter_map(|e| GuestImage::read(e.path()))
            .collect();
        all.sort_by(|a, b| {
            (&a.name, b.meta.built_at_unix, &a.dir).cmp(&(&b.name, a.meta.built_at_unix, &b.dir))
        });
        let mut seen: Vec<String> = Vec::new();
        all.into_iter()
            .map(|image| {
                let current = match Recipe::builtin(&image.name) {
                    Some(r) => image.meta.kind == ImageKind::Recipe && image.meta.hash == r.hash(),
                    None => !seen.contains(&image.name),
                };
                if current {
                    seen.push(image.name.clone());
                }
                Listed { image, current }
            })
            .collect()
    }

    /// The current images, one per name: what a session can start.
    pub fn available(layout: &crate::storage::Layout) -> Vec<GuestImage> {
        Self::list(layout)
            .into_iter()
            .filter(|l| l.current)
            .map(|l| l.image)
            .collect()
    }

    /// Names a session may ask for: the images built, then the built-in recipes not built yet.
    pub fn names(layout: &crate::storage::Layout) -> (Vec<String>, Vec<String>) {
        let built: Vec<String> = Self::available(layout)
            .into_iter()
            .map(|i| i.name)
            .collect();
        let unbuilt = recipe::builtin_names()
            .into_iter()
            .filter(|n| !built.contains(n))
            .collect();
        (built, unbuilt)
    }

    /// Where the image of a recipe with this hash goes.
    pub fn dir_for(layout: &crate::storage::Layout, name: &str, hash: &str) -> PathBuf {
        layout.images().join(format!("{name}-{hash}"))
    }

    /// The current image `name`, or why there is none: unknown (with the names there are), or
    /// a built-in recipe not built yet (with the command that builds it).
    pub fn locate(layout: &crate::storage::Layout, name: &str) -> Result<Self, ImageError> {
        let name = canonical(name);
        if let Some(found) = Self::available(layout).into_iter().find(|i| i.name == name) {
            return Ok(found);
        }
        if Recipe::builtin(name).is_some() {
            let command = if name == DEFAULT_IMAGE {
                "deskvm setup".to_string()
            } else {
                format!("deskvm setup --image {name}")
            };
            return Err(ImageError::NotBuilt {
                name: name.into(),
                command,
            });
        }
        let (built, unbuilt) = Self::names(layout);
        let mut available: Vec<String> = built;
        available.extend(unbuilt.into_iter().map(|n| format!("{n} (not built)")));
        Err(ImageError::Unknown {
            name: name.into(),
            available: available.join(", "),
        })
    }

    /// Builds the image of `recipe` unless its current build is in the store (or `force`).
    /// Progress lines go to `progress` as the recipe prints them.
    pub async fn build(
        layout: &crate::storage::Layout,
        recipe: &Recipe,
        force: bool,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Self, ImageError> {
        build::build(layout, recipe, force, progress).await
    }

    /// Writes the metadata (last: it marks the image finished).
    pub fn write_meta(dir: &std::path::Path, meta: &ImageMeta) -> Result<(), ImageError> {
        use crate::storage::IoContext;
        let path = dir.join(META);
        let json = serde_json::to_vec_pretty(meta).unwrap_or_default();
        std::fs::write(&path, json).at("writing", &path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Layout;

    fn layout(root: &std::path::Path) -> Layout {
        Layout {
            cache: root.join("cache"),
            state: root.join("state"),
            runtime: root.join("run"),
            data: root.join("data"),
        }
    }

    fn fake_image(l: &Layout, name: &str, hash: &str, at: u64) -> PathBuf {
        let dir = GuestImage::dir_for(l, name, hash);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["base.qcow2", "vmlinuz", "initrd.img"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let mut meta = ImageMeta::of_recipe(&Recipe::builtin("minimal").unwrap());
        (meta.name, meta.hash, meta.built_at_unix) = (name.into(), hash.into(), at);
        GuestImage::write_meta(&dir, &meta).unwrap();
        dir
    }

    #[test]
    fn unknown_and_unbuilt_images_name_what_there_is_and_the_command() {
        let root = std::env::temp_dir().join(format!("deskvm-images-{}", std::process::id()));
        let l = layout(&root);
        let err = GuestImage::locate(&l, "windows").unwrap_err().to_string();
        assert!(err.contains("minimal (not built)"), "{err}");
        assert!(err.contains("workstation (not built)"), "{err}");
        let err = GuestImage::locate(&l, "minimal").unwrap_err().to_string();
        assert!(err.contains("deskvm setup --image minimal"), "{err}");
        let err = GuestImage::locate(&l, DEFAULT_IMAGE)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run `deskvm setup`"), "{err}");

        // A user's image: its newest build is current; a built-in's only at its hash.
        let old = fake_image(&l, "mine", "000000000001", 10);
        let new = fake_image(&l, "mine", "000000000002", 20);
        let stale = fake_image(&l, "minimal", "000000000003", 30);
        assert_eq!(GuestImage::locate(&l, "mine").unwrap().dir, new);
        let list = GuestImage::list(&l);
        let current = |d: &PathBuf| list.iter().find(|x| &x.image.dir == d).unwrap().current;
        assert!(current(&new) && !current(&old) && !current(&stale));
        let err = GuestImage::locate(&l, "debian-desktop")
            .unwrap_err()
            .to_string();
        assert!(err.contains("minimal"), "{err}");
        let err = GuestImage::locate(&l, "nope").unwrap_err().to_string();
        assert!(err.contains("mine, minimal (not built)"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
