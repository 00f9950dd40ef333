//! The payload archive: raw webhook bodies appended to segment files, one write (and, with
//! `fsync` durability, one fdatasync) per group of deliveries. The database row keeps a reference
//! `segment:offset:length` and the body's CRC-32, so the hot table stays small and a body costs
//! one sequential copy instead of B-tree pages, a log record and a checkpoint.
//!
//! A crash between the archive write and the database commit leaves unreferenced bytes at the end
//! of a segment; those deliveries were never acknowledged, so nothing refers to them.
//!
//! With `fsync` durability the bodies are synced in the background, at most [`SYNC_EVERY`] after
//! they were written, not before the answer: processing needs only the delivery's row, which is
//! committed (and fsynced) before the answer, so a second sync on the answer's path would double
//! its latency to keep a copy that nothing acts on. A power loss can cost the raw bytes of the
//! last moment's deliveries; their rows stand, and reading such a body fails its checksum rather
//! than returning something else. A crash of orch alone loses nothing (the bytes are the OS's).

use anyhow::{bail, Context};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The integrity check recorded with every body: CRC-32 in hex. It detects torn or corrupted
/// archive bytes; authenticity was established by the webhook signature at ingest.
pub fn checksum(body: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(body))
}

const SEGMENT_LIMIT: u64 = 256 * 1024 * 1024;

/// How long written bodies may wait for their background sync.
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

struct Active {
    segment: u64,
    file: File,
    len: u64,
}

pub struct PayloadArchive {
    dir: PathBuf,
    fsync: bool,
    active: Arc<Mutex<Active>>,
    /// Bytes were written since the last sync (read by the background syncer).
    unsynced: Arc<AtomicBool>,
}

/// Syncs the active segment every [`SYNC_EVERY`] while it has unsynced bytes; ends with the archive.
fn background_sync(active: Weak<Mutex<Active>>, unsynced: Arc<AtomicBool>) {
    loop {
        std::thread::sleep(SYNC_EVERY);
        let Some(active) = active.upgrade() else { return };
        if !unsynced.swap(false, Ordering::AcqRel) {
            continue;
        }
        // A handle of its own, so that appends go on while the sync runs.
        let file = active.lock().unwrap_or_else(|p| p.into_inner()).file.try_clone();
        drop(active);
        if let Err(e) = file.and_then(|f| f.sync_data()) {
            unsynced.store(true, Ordering::Release);
            tracing::error!(error = %e, "could not sync the payload archive; trying again");
        }
    }
}

impl Drop for PayloadArchive {
    fn drop(&mut self) {
        if self.fsync && self.unsynced.swap(false, Ordering::AcqRel) {
            let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = active.file.sync_data() {
                tracing::error!(error = %e, "could not sync the payload archive at shutdown");
            }
        }
    }
}

impl std::fmt::Debug for PayloadArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayloadArchive({})", self.dir.display())
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:010}.seg"))
}

fn open_segment(dir: &Path, segment: u64) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(segment_path(dir, segment))?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl PayloadArchive {
    pub fn open(dir: &Path, fsync: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("ORCH_PAYLOAD_DIR: cannot create {}", dir.display()))?;
        let mut last = 0u64;
        for entry in std::fs::read_dir(dir).with_context(|| format!("ORCH_PAYLOAD_DIR: cannot read {}", dir.display()))? {
            let name = entry?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                last = last.max(n);
            }
        }
        let segment = last.max(1);
        let (file, len) =
            open_segment(dir, segment).with_context(|| format!("ORCH_PAYLOAD_DIR: cannot open a segment in {}", dir.display()))?;
        let active = Arc::new(Mutex::new(Active { segment, file, len }));
        let unsynced = Arc::new(AtomicBool::new(false));
        if fsync {
            sync_dir(dir)?;
            let (active, unsynced) = (Arc::downgrade(&active), unsynced.clone());
            std::thread::Builder::new()
                .name("orch-archive-sync".into())
                .spawn(move || background_sync(active, unsynced))
                .context("starting the payload archive's sync thread")?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            fsync,
            active,
            unsynced,
        })
    }

    /// Appends every body with one write and returns each body's reference. The bytes are synced
    /// in the background (see the module's comment).
    pub fn append_batch(&self, bodies: &[&[u8]]) -> std::io::Result<Vec<String>> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.len >= SEGMENT_LIMIT {
            let next = active.segment + 1;
            let (file, len) = open_segment(&self.dir, next)?;
            if self.fsync {
                // The background syncer only knows the active segment: the full one is synced here.
                active.file.sync_data()?;
                sync_dir(&self.dir)?;
            }
            *active = Active { segment: next, file, len };
        }
        let total: usize = bodies.iter().map(|b| b.len()).sum();
        let mut buf = Vec::with_capacity(total);
        let mut refs = Vec::with_capacity(bodies.len());
        let mut offset = active.len;
        for body in bodies {
            refs.push(format!("{}:{}:{}", active.segment, offset, body.len()));
            buf.extend_from_slice(body);
            offset += body.len() as u64;
        }
        if let Err(e) = active.file.write_all(&buf) {
            // Whatever part was written is unreferenced; continue after it.
            active.len = active.file.metadata().map(|m| m.len()).unwrap_or(offset);
            return Err(e);
        }
        self.unsynced.store(true, Ordering::Release);
        active.len = offset;
        Ok(refs)
    }

    /// Reads a body back by reference and checks it against its recorded [`checksum`].
    pub fn read(&self, reference: &str, expected_checksum: &str) -> anyhow::Result<Vec<u8>> {
        let parts: Vec<u64> = reference
            .split(':')
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .context("malformed payload reference")?;
        let [segment, offset, len] = parts[..] else {
            bail!("malformed payload reference {reference:?}");
        };
        let mut file = File::open(segment_path(&self.dir, segment)).with_context(|| format!("payload segment {segment} is missing"))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut body = vec![0u8; len as usize];
        file.read_exact(&mut body)
            .with_context(|| format!("payload {reference} is truncated"))?;
        if checksum(&body) != expected_checksum {
            bail!("payload {reference} does not match its recorded checksum");
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = PayloadArchive::open(dir.path(), true).unwrap();
        let refs = a.append_batch(&[b"first", b"second body"]).unwrap();
        let sha = checksum;
        assert_eq!(a.read(&refs[1], &sha(b"second body")).unwrap(), b"second body");
        drop(a);
        let a = PayloadArchive::open(dir.path(), false).unwrap();
        let more = a.append_batch(&[b"third"]).unwrap();
        assert_ne!(more[0], refs[0]);
        assert_eq!(a.read(&refs[0], &sha(b"first")).unwrap(), b"first");
        assert_eq!(a.read(&more[0], &sha(b"third")).unwrap(), b"third");
        assert!(a.read(&more[0], &sha(b"other")).is_err());
        assert!(a.read("1:999:5", &sha(b"third")).is_err());
        assert!(a.read("nonsense", "").is_err());
    }
}
