//! Content-addressed screenshots: a frame is stored once, as `shots/<hash>.png`, named by a hash
//! of its pixels (not of PNG bytes, which depend on the encoder). Hashing is on the caller's
//! path (xxh3 over 3 MB takes well under a millisecond); encoding and writing are not.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex, OnceLock};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::ImageEncoder;
use tokio::sync::oneshot;

use crate::storage::IoContext;
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
}

struct Job {
    frame: Arc<Frame>,
    dir: PathBuf,
    hash: String,
    done: oneshot::Sender<()>,
}

impl Job {
    fn run(self) {
        if let Err(e) = write_png(&self.frame, &self.dir, &self.hash) {
            tracing::warn!(error = %e, shot = %self.hash, "could not store a review frame");
        }
        let _ = self.done.send(());
    }
}

/// Frames waiting for the encoder at most (3 MB each); past that a frame is encoded on
/// tokio's blocking pool at normal priority rather than held in memory.
const QUEUE: usize = 32;

/// One encoder thread per process, at the lowest CPU priority: guests run under TCG on the
/// same cores, and a guest starved of CPU drains its keyboard queue too slowly (typed keys
/// were lost when frames were encoded at normal priority beside three busy guests).
fn encoder() -> &'static std::sync::mpsc::SyncSender<Job> {
    static ENCODER: OnceLock<std::sync::mpsc::SyncSender<Job>> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("deskvm-shots".into())
            .spawn(move || {
                // SAFETY: setpriority only reads its integer arguments; 0 names this thread.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                for job in rx {
                    job.run();
                }
            });
        if let Err(e) = spawned {
            // Every send then fails, and frames are encoded on the blocking pool instead.
            tracing::warn!(error = %e, "could not start the frame encoder thread");
        }
        tx
    })
}

impl ShotStore {
    /// A store over `dir` (created if missing); frames already there count as stored.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir).at("creating the frames dir", dir)?;
        let known = std::fs::read_dir(dir)
            .at("listing the frames in", dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".png").map(str::to_string)
            })
            .collect();
        Ok(ShotStore {
            dir: dir.to_path_buf(),
            known: Mutex::new(known),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// The reference of a frame whose [`frame_hash`] is `hash`; a frame not stored yet is
    /// encoded and written in the background.
    pub fn put(&self, frame: &Arc<Frame>, hash: &str) -> String {
        // One lock for "known" and "queued": a frame counts as stored only once it is queued,
        // so a flush after any put that returned its reference waits for it.
        let mut known = self.known.lock().expect("shot set poisoned");
        if known.insert(hash.to_string()) {
            let (done, wait) = oneshot::channel();
            let job = Job {
                frame: frame.clone(),
                dir: self.dir.clone(),
                hash: hash.to_string(),
                done,
            };
            match encoder().try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    tokio::task::spawn_blocking(move || job.run());
                }
            }
            let mut pending = self.pending.lock().expect("pending list poisoned");
            // Keep only the jobs still in flight.
            pending
                .retain_mut(|w| matches!(w.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
            pending.push(wait);
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
    std::fs::write(&tmp, &png).at("writing frame", &tmp)?;
    let path = dir.join(format!("{hash}.png"));
    std::fs::rename(&tmp, &path).at("storing frame", &path)?;
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
        // A reopened store knows what is there: nothing is queued again.
        let reopened = ShotStore::open(&dir).unwrap();
        assert_eq!(reopened.put(&frame(1), &frame_hash(&frame(1))), a);
        assert!(reopened.pending.lock().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
