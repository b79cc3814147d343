//! Content-addressed screenshots: a frame is stored once, as `shots/<hash>.png`, named by a hash
//! of its pixels (not of PNG bytes, which depend on the encoder). Hashing is on the caller's
//! path (xxh3 over 3 MB takes well under a millisecond); encoding and writing are not.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::ImageEncoder;
use tokio::sync::oneshot;

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
    pending: Mutex<Vec<oneshot::Receiver<()>>>,
    bytes: Arc<AtomicU64>,
}

struct Job {
    frame: Arc<Frame>,
    dir: PathBuf,
    hash: String,
    bytes: Arc<AtomicU64>,
    done: oneshot::Sender<()>,
}

/// One encoder thread per process, at the lowest CPU priority: guests run under TCG on the
/// same cores, and a guest starved of CPU drains its keyboard queue too slowly (typed keys
/// were lost when frames were encoded at normal priority beside three busy guests).
fn encoder() -> &'static std::sync::mpsc::Sender<Job> {
    static ENCODER: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("deskvm-shots".into())
            .spawn(move || {
                // SAFETY: setpriority only reads its integer arguments; 0 names this thread.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                for job in rx {
                    match write_png(&job.frame, &job.dir, &job.hash) {
                        Ok(n) => {
                            job.bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, shot = %job.hash, "could not store a review frame")
                        }
                    }
                    let _ = job.done.send(());
                }
            })
            .expect("spawning the frame encoder thread");
        tx
    })
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

    /// The reference of a frame whose [`frame_hash`] is `hash`; a frame not stored yet is
    /// encoded and written in the background.
    pub fn put(&self, frame: &Arc<Frame>, hash: &str) -> String {
        let new = self
            .known
            .lock()
            .expect("shot set poisoned")
            .insert(hash.to_string());
        if new {
            let (done, wait) = oneshot::channel();
            let job = Job {
                frame: frame.clone(),
                dir: self.dir.clone(),
                hash: hash.to_string(),
                bytes: self.bytes.clone(),
                done,
            };
            if encoder().send(job).is_ok() {
                let mut pending = self.pending.lock().expect("pending list poisoned");
                // Keep only the jobs still in flight.
                pending.retain_mut(|w| {
                    matches!(w.try_recv(), Err(oneshot::error::TryRecvError::Empty))
                });
                pending.push(wait);
            }
        }
        shot_ref(hash)
    }

    /// Waits until every frame handed to [`ShotStore::put`] so far is on disk.
    pub async fn flush(&self) {
        let waits: Vec<oneshot::Receiver<()>> =
            std::mem::take(&mut *self.pending.lock().expect("pending list poisoned"));
        for w in waits {
            let _ = w.await;
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
        let put = |f: Arc<Frame>| store.put(&f, &frame_hash(&f));
        let a = put(frame(1));
        let again = put(frame(1));
        let b = put(frame(2));
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
