//! Guest recipes as data: a directory with `recipe.toml` (suite, packages, session, user,
//! defaults), an optional `overlay/` and an optional `post-install.sh`, built by the common
//! builder in `tools/guest` (`build-rootfs.sh` and `common/`). The built-in recipes are compiled
//! into the binary; a user's recipe is any directory of the same form.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ImageError;
use crate::vm::spec::hex;

/// Every file under `tools/guest`, path relative to it (written by `build.rs`).
const GUEST_FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/guest_files.rs"));

/// Where the built-in recipes sit in `tools/guest`.
const RECIPES: &str = "recipes/";

/// How the host proves that input reaches a freshly booted desktop before saving its ready
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputProbe {
    /// The session's own first terminal sits under the default pointer position: click it and
    /// type a shell command.
    Terminal,
    /// Open a probe terminal through the guest agent, click it, type a line, read it back.
    Window,
    /// No probe: a disk deskvm did not build (nothing known runs in it).
    None,
}

/// A recipe's screen size and memory when a session asks for none.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub width: u32,
    pub height: u32,
    pub memory_mb: u32,
}

/// `recipe.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeConfig {
    pub suite: String,
    pub packages: Vec<String>,
    pub session: String,
    pub user: String,
    pub ready_when: String,
    pub input_probe: InputProbe,
    pub disk_size: String,
    pub defaults: Defaults,
}

/// One recipe: its name, its files (relative to its directory) and its parsed `recipe.toml`.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    files: Vec<(String, Vec<u8>)>,
    pub config: RecipeConfig,
    /// Where it was read from, for messages ("built-in" or the directory).
    pub source: String,
}

/// The names of the built-in recipes, sorted.
pub fn builtin_names() -> Vec<String> {
    let mut names: Vec<String> = GUEST_FILES
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(RECIPES)?.split_once('/'))
        .map(|(name, _)| name.to_string())
        .collect();
    names.dedup();
    names
}

/// Image names: what a recipe directory or an import may be called (it names directories and
/// Docker tags).
/// A name a user's image (a recipe directory, an imported disk) may not take: a built-in
/// image's, or an old name of one (sessions asking for it get the built-in one).
pub fn check_user_image_name(name: &str) -> Result<(), ImageError> {
    check_image_name(name)?;
    if builtin_names().iter().any(|b| b == name) || super::ALIASES.iter().any(|(a, _)| *a == name) {
        return Err(ImageError::ReservedName { name: name.into() });
    }
    Ok(())
}

pub fn check_image_name(name: &str) -> Result<(), ImageError> {
    let ok = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadName { name: name.into() })
    }
}

impl Recipe {
    /// The built-in recipe `name`.
    pub fn builtin(name: &str) -> Option<Recipe> {
        let prefix = format!("{RECIPES}{name}/");
        let files: Vec<(String, Vec<u8>)> = GUEST_FILES
            .iter()
            .filter_map(|(p, d)| Some((p.strip_prefix(&prefix)?.to_string(), d.to_vec())))
            .collect();
        if files.is_empty() {
            return None;
        }
        Self::from_files(name, files, "built-in".into()).ok()
    }

    /// A user's recipe directory, named `name` (default: the directory's name).
    pub fn from_dir(dir: &Path, name: Option<&str>) -> Result<Recipe, ImageError> {
        let default_name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let name = name.map(str::to_string).unwrap_or(default_name);
        check_user_image_name(&name)?;
        let mut files = Vec::new();
        read_tree(dir, dir, &mut files).map_err(|source| ImageError::RecipeRead {
            path: dir.to_path_buf(),
            source,
        })?;
        files.sort();
        Self::from_files(&name, files, dir.display().to_string())
    }

    fn from_files(
        name: &str,
        files: Vec<(String, Vec<u8>)>,
        source: String,
    ) -> Result<Recipe, ImageError> {
        let toml_text = files
            .iter()
            .find(|(p, _)| p == "recipe.toml")
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .ok_or_else(|| ImageError::BadRecipe {
                source_dir: source.clone(),
                why: "no recipe.toml".into(),
            })?;
        let config: RecipeConfig =
            toml::from_str(&toml_text).map_err(|e| ImageError::BadRecipe {
                source_dir: source.clone(),
                why: format!("recipe.toml: {e}"),
            })?;
        config.validate().map_err(|why| ImageError::BadRecipe {
            source_dir: source.clone(),
            why,
        })?;
        Ok(Recipe {
            name: name.into(),
            files,
            config,
            source,
        })
    }

    /// Hash of the common builder and this recipe's files: a changed recipe (or builder) means
    /// a new image directory, so a stale image is never used.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        let common = GUEST_FILES.iter().filter(|(p, _)| !p.starts_with(RECIPES));
        let own = self.files.iter().map(|(p, d)| (p.as_str(), d.as_slice()));
        for (p, d) in common.map(|(p, d)| (*p, *d)).chain(own) {
            h.update(p.as_bytes());
            h.update([0]);
            h.update(d);
            h.update([0]);
        }
        hex(&h.finalize()[..6])
    }

    /// Writes the builder (`build-rootfs.sh`, `common/`) to `dir` and the recipe to
    /// `dir/recipe`; returns the builder script.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let common = GUEST_FILES
            .iter()
            .filter(|(p, _)| !p.starts_with(RECIPES))
            .map(|(p, d)| (PathBuf::from(p), *d));
        let own = self
            .files
            .iter()
            .map(|(p, d)| (Path::new("recipe").join(p), d.as_slice()));
        for (rel, data) in common.chain(own) {
            let path = dir.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
            std::fs::write(&path, data)?;
            let s = rel.to_string_lossy();
            if s.ends_with(".sh") || s.contains("/bin/") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        Ok(dir.join("build-rootfs.sh"))
    }

    /// The environment the builder reads the recipe from (it parses no TOML).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let c = &self.config;
        vec![
            ("DESKVM_SUITE", c.suite.clone()),
            ("DESKVM_PACKAGES", c.packages.join(" ")),
            ("DESKVM_DISK_SIZE", c.disk_size.clone()),
            ("DESKVM_USER", c.user.clone()),
            ("DESKVM_SESSION", c.session.clone()),
            ("DESKVM_READY_WHEN", c.ready_when.clone()),
        ]
    }
}

impl RecipeConfig {
    fn validate(&self) -> Result<(), String> {
        use crate::vm::spec::{HEIGHT_RANGE, MEMORY_RANGE, WIDTH_RANGE};
        let word = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '+' | '.')
                })
        };
        if !word(&self.suite) {
            return Err(format!("suite {:?} is not a Debian suite name", self.suite));
        }
        if self.packages.is_empty() {
            return Err("packages is empty".into());
        }
        if let Some(bad) = self.packages.iter().find(|p| !word(p)) {
            return Err(format!("package {bad:?} is not a Debian package name"));
        }
        if !self.session.starts_with('/') {
            return Err(format!(
                "session {:?} must be an absolute path in the guest",
                self.session
            ));
        }
        let user_ok = self.user.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !user_ok {
            return Err(format!(
                "user {:?} is not a user name (a-z, 0-9, -)",
                self.user
            ));
        }
        let size_ok = self.disk_size.len() > 1
            && self.disk_size.ends_with(['M', 'G', 'T'])
            && self.disk_size[..self.disk_size.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_digit());
        if !size_ok {
            return Err(format!(
                "disk_size {:?}: use a size such as 4G or 8192M",
                self.disk_size
            ));
        }
        let d = &self.defaults;
        for (field, v, (lo, hi)) in [
            ("defaults.width", d.width, WIDTH_RANGE),
            ("defaults.height", d.height, HEIGHT_RANGE),
            ("defaults.memory_mb", d.memory_mb, MEMORY_RANGE),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(format!("{field} = {v} is outside {lo}..={hi}"));
            }
        }
        Ok(())
    }
}

/// Every file under `dir`, as (path relative to `root`, bytes).
fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            read_tree(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((rel.to_string_lossy().into_owned(), std::fs::read(&path)?));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_builtin_recipes_parse_and_hash_apart() {
        assert_eq!(builtin_names(), ["minimal", "workstation"]);
        let m = Recipe::builtin("minimal").expect("minimal parses");
        let w = Recipe::builtin("workstation").expect("workstation parses");
        assert_eq!(m.config.user, "root");
        assert_eq!(w.config.user, "user");
        assert_ne!(m.hash(), w.hash());
        assert_eq!(m.hash(), Recipe::builtin("minimal").unwrap().hash());
        assert!(Recipe::builtin("nope").is_none());
    }

    #[test]
    fn a_copied_recipe_with_one_more_package_hashes_differently() {
        let dir = std::env::temp_dir().join(format!("deskvm-recipe-{}", std::process::id()));
        let m = Recipe::builtin("minimal").unwrap();
        for (p, d) in &m.files {
            let path = dir.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, d).unwrap();
        }
        let same = Recipe::from_dir(&dir, Some("mine")).unwrap();
        assert_eq!(same.hash(), m.hash());
        let toml = std::fs::read_to_string(dir.join("recipe.toml")).unwrap();
        let more = toml.replacen("packages = [", "packages = [\"cowsay\", ", 1);
        std::fs::write(dir.join("recipe.toml"), more).unwrap();
        let mine = Recipe::from_dir(&dir, Some("mine")).unwrap();
        assert!(mine.config.packages.contains(&"cowsay".to_string()));
        assert_ne!(mine.hash(), m.hash());
        std::fs::write(dir.join("recipe.toml"), "suite = 1").unwrap();
        let err = Recipe::from_dir(&dir, Some("mine"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("recipe.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            check_image_name("Bad/Name"),
            Err(ImageError::BadName { .. })
        ));
    }

    #[test]
    fn user_images_cannot_take_a_built_in_name_or_alias() {
        for name in ["workstation", "minimal", "debian-desktop"] {
            assert!(
                matches!(
                    check_user_image_name(name),
                    Err(ImageError::ReservedName { .. })
                ),
                "{name}"
            );
        }
        assert!(check_user_image_name("my-desktop").is_ok());
        assert!(matches!(
            check_user_image_name("../x"),
            Err(ImageError::BadName { .. })
        ));
    }
}
