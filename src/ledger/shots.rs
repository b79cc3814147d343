//! Content-addressed screenshots: a frame is stored once, as `shots/<hash>.png`, named by a hash
//! of its pixels (not of PNG bytes, which depend on the encoder). Hashing is on the caller's
//! path (xxh3 over 3 MB takes well under a millisecond); encoding and writing are not.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::ImageEncoder;
use tokio::task::JoinHandle;

use crate::vm::display::Frame;

pub const SHOTS_DIR: &str = "shots";

/// The hash that names a frame: its size and pixels.
pub fn frame_hash(frame: &Frame) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&frame.width().to_le_bytes());
    h.update(&frame.height().to_le_bytes());
    h.update(frame.image.as_raw());
    format!("{:032x}", h.digest128())
}

/// The relative reference a timeline uses for a frame hash.
pub fn shot_ref(hash: &str) -> String {
    format!("{SHOTS_DIR}/{hash}.png")
}

pub struct ShotStore {
    dir: PathBuf,
    known: Mutex<HashSet<String>>,
    pending: Mutex<Vec<JoinHandle<()>>>,
    bytes: Arc<AtomicU64>,
}

impl ShotStore {
    /// A store over `dir` (created if missing); frames already there count as stored.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut known = HashSet::new();
        let mut bytes = 0;
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hash) = name.strip_suffix(".png") {
                known.insert(hash.to_string());
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok(ShotStore {
            dir: dir.to_path_buf(),
            known: Mutex::new(known),
            pending: Mutex::new(Vec::new()),
            bytes: Arc::new(AtomicU64::new(bytes)),
        })
    }

    /// The frame's reference; a frame not stored yet is encoded and written in the background.
    pub fn put(&self, frame: &Arc<Frame>) -> String {
        let hash = frame_hash(frame);
        let new = self
            .known
            .lock()
            .expect("shot set poisoned")
            .insert(hash.clone());
        if new {
            let (frame, dir, bytes) = (frame.clone(), self.dir.clone(), self.bytes.clone());
            let name = hash.clone();
            let job = tokio::task::spawn_blocking(move || match write_png(&frame, &dir, &name) {
                Ok(n) => {
                    bytes.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, shot = %name, "could not store a review frame"),
            });
            let mut pending = self.pending.lock().expect("pending list poisoned");
            pending.retain(|j| !j.is_finished());
            pending.push(job);
        }
        shot_ref(&hash)
    }

    /// Waits until every frame handed to [`ShotStore::put`] so far is on disk.
    pub async fn flush(&self) {
        let jobs: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.pending.lock().expect("pending list poisoned"));
        for j in jobs {
            let _ = j.await;
        }
    }

    /// Bytes of the frames written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Encodes at the default level (smaller than the replies' fast level; nobody waits for it)
/// and renames into place, so a frame file is either whole or absent.
fn write_png(frame: &Frame, dir: &Path, hash: &str) -> io::Result<u64> {
    let mut png = Vec::with_capacity(64 * 1024);
    PngEncoder::new_with_quality(&mut png, CompressionType::Default, FilterType::Adaptive)
        .write_image(
            frame.image.as_raw(),
            frame.width(),
            frame.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(io::Error::other)?;
    let tmp = dir.join(format!("{hash}.png.tmp"));
    std::fs::write(&tmp, &png)?;
    std::fs::rename(&tmp, dir.join(format!("{hash}.png")))?;
    Ok(png.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fill: u8) -> Arc<Frame> {
        Arc::new(Frame {
            image: image::RgbImage::from_pixel(32, 20, image::Rgb([fill, 0, 0])),
        })
    }

    #[tokio::test]
    async fn a_frame_is_stored_once_by_its_pixels() {
        let dir = std::env::temp_dir().join(format!("deskvm-shots-{}", rand::random::<u64>()));
        let store = ShotStore::open(&dir).unwrap();
        let a = store.put(&frame(1));
        let again = store.put(&frame(1));
        let b = store.put(&frame(2));
        assert_eq!(a, again);
        assert_ne!(a, b);
        store.flush().await;
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 2);
        let png = image::open(dir.join(a.strip_prefix("shots/").unwrap())).unwrap();
        assert_eq!((png.width(), png.height()), (32, 20));
        assert!(store.bytes() > 0);
        // A reopened store knows what is there.
        let reopened = ShotStore::open(&dir).unwrap();
        assert_eq!(reopened.bytes(), store.bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
