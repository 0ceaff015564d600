//! A small piece of state kept durably beside a stream: a consumer's delivery
//! state. Two slots are written in turn, each one whole framed record (CRC,
//! and sealed with the stream's key under encryption at rest) carrying a
//! generation number; loading takes the newest slot that reads back whole.
//! A write torn by a crash or a power loss thus leaves the state before it,
//! and a write that returned is durable (fdatasync). A slot is open only
//! while it is read or written: a server with ten thousand durable consumers
//! must not hold twenty thousand descriptors for them.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

use crate::error::{Result, StoreError};
use crate::record::{self, Keys, Record, PAGE};

const SLOTS: [&str; 2] = ["state.a", "state.b"];
const GENERATION_LEN: usize = 8;

/// One durable state blob with its two slots.
pub struct StateFile {
    dir: PathBuf,
    name: String,
    keys: Option<Keys>,
    /// The generation last written (or read back); the next write takes the
    /// other slot with the next generation.
    generation: Cell<u64>,
}

fn align_up(v: usize) -> usize {
    v.div_ceil(PAGE) * PAGE
}

async fn open_slot(path: &Path) -> std::io::Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(std::io::Error::from)
}

impl StateFile {
    /// Opens (or creates) the state in `dir`; `name` is for errors. Returns
    /// the newest state that reads back whole, if any.
    pub async fn open(
        dir: &Path,
        name: &str,
        keys: Option<Keys>,
    ) -> Result<(StateFile, Option<Vec<u8>>)> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(name, "create state dir", e))?;
        let state = StateFile {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            keys,
            generation: Cell::new(0),
        };
        let mut newest: Option<(u64, Vec<u8>)> = None;
        for slot in SLOTS {
            let path = dir.join(slot);
            // A new slot starts as a page of zeros (which reads back as no
            // state): glommio must never see an empty O_DIRECT file first on a
            // device (DESIGN.md, the runtime's guardrails).
            if !path.exists() {
                std::fs::write(&path, [0u8; PAGE])
                    .map_err(|e| StoreError::io(name, "create state", e))?;
            }
            let file = open_slot(&path)
                .await
                .map_err(|e| StoreError::io(name, "open state", e))?;
            let read = state.read_slot(&file).await;
            let _ = file.close().await;
            if let Some((generation, body)) = read? {
                if newest.as_ref().is_none_or(|(g, _)| generation > *g) {
                    newest = Some((generation, body));
                }
            }
        }
        let body = newest.map(|(generation, body)| {
            state.generation.set(generation);
            body
        });
        Ok((state, body))
    }

    /// A slot's generation and body, or `None` for an empty, torn or foreign slot.
    async fn read_slot(&self, slot: &DmaFile) -> Result<Option<(u64, Vec<u8>)>> {
        let size = slot
            .file_size()
            .await
            .map_err(|e| StoreError::io(&self.name, "stat state", e))? as usize;
        if size == 0 {
            return Ok(None);
        }
        let read = slot
            .read_at_aligned(0, align_up(size))
            .await
            .map_err(|e| StoreError::io(&self.name, "read state", e))?;
        let Ok((Record::Meta(body), _)) =
            record::decode(&read[..read.len().min(size)], self.keys.as_ref())
        else {
            return Ok(None);
        };
        if body.len() < GENERATION_LEN {
            return Ok(None);
        }
        let mut generation = [0u8; GENERATION_LEN];
        generation.copy_from_slice(&body[..GENERATION_LEN]);
        Ok(Some((
            u64::from_le_bytes(generation),
            body[GENERATION_LEN..].to_vec(),
        )))
    }

    /// Writes `body` as the new state, durably. One write at a time: the
    /// caller waits for each before the next.
    pub async fn write(&self, body: &[u8]) -> Result<()> {
        let generation = self.generation.get() + 1;
        let mut payload = Vec::with_capacity(GENERATION_LEN + body.len());
        payload.extend_from_slice(&generation.to_le_bytes());
        payload.extend_from_slice(body);
        let mut frame = Vec::new();
        record::encode_meta(&mut frame, self.keys.as_ref(), &payload);
        let slot = open_slot(&self.dir.join(SLOTS[(generation % 2) as usize]))
            .await
            .map_err(|e| StoreError::io(&self.name, "open state", e))?;
        let written = self.write_slot(&slot, &frame).await;
        let _ = slot.close().await;
        written?;
        self.generation.set(generation);
        Ok(())
    }

    async fn write_slot(&self, slot: &DmaFile, frame: &[u8]) -> Result<()> {
        let mut buf = slot.alloc_dma_buffer(align_up(frame.len()));
        let bytes = buf.as_bytes_mut();
        bytes[..frame.len()].copy_from_slice(frame);
        bytes[frame.len()..].fill(0);
        let len = buf.len();
        let written = slot
            .write_at(buf, 0)
            .await
            .map_err(|e| StoreError::io(&self.name, "write state", e))?;
        if written != len {
            return Err(StoreError::io(
                &self.name,
                "write state",
                std::io::Error::new(std::io::ErrorKind::WriteZero, "short write"),
            ));
        }
        slot.fdatasync()
            .await
            .map_err(|e| StoreError::io(&self.name, "sync state", e))
    }

    /// Removes the state and its directory.
    pub async fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cipher;

    fn run(f: impl std::future::Future<Output = ()>) {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .make()
            .expect("executor")
            .run(f)
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("strait-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_newest_whole_slot_wins_and_a_torn_one_is_passed_over() {
        let d = dir("slots");
        run(async move {
            let (state, body) = StateFile::open(&d, "S", None).await.unwrap();
            assert!(body.is_none());
            state.write(b"one").await.unwrap();
            state.write(b"two").await.unwrap();
            state.write(b"three").await.unwrap();
            drop(state);
            let (state, body) = StateFile::open(&d, "S", None).await.unwrap();
            assert_eq!(body.as_deref(), Some(&b"three"[..]));
            state.write(b"four").await.unwrap();
            drop(state);
            // Generation 4 went to slot a: tear it, and generation 3 is back.
            let a = d.join("state.a");
            let mut bytes = std::fs::read(&a).unwrap();
            bytes[20] ^= 0xff;
            std::fs::write(&a, &bytes).unwrap();
            let (state, body) = StateFile::open(&d, "S", None).await.unwrap();
            assert_eq!(body.as_deref(), Some(&b"three"[..]));
            // The next write goes over the torn slot, not over the good one.
            state.write(b"five").await.unwrap();
            drop(state);
            let (state, body) = StateFile::open(&d, "S", None).await.unwrap();
            assert_eq!(body.as_deref(), Some(&b"five"[..]));
            state.remove().await;
            assert!(!d.exists());
        });
    }

    #[test]
    fn sealed_state_needs_its_key() {
        let d = dir("sealed");
        run(async move {
            let keys = || Some(Keys::derive(Cipher::ChaCha, b"secret", "S/obs/C"));
            let (state, _) = StateFile::open(&d, "S", keys()).await.unwrap();
            state.write(b"confidential").await.unwrap();
            drop(state);
            let raw = std::fs::read(d.join("state.b")).unwrap();
            assert!(raw.windows(12).all(|w| w != b"confidential"));
            let (_, body) = StateFile::open(&d, "S", keys()).await.unwrap();
            assert_eq!(body.as_deref(), Some(&b"confidential"[..]));
            let wrong = Some(Keys::derive(Cipher::ChaCha, b"other", "S/obs/C"));
            let (_, body) = StateFile::open(&d, "S", wrong).await.unwrap();
            assert!(body.is_none(), "not readable with another key");
            let _ = std::fs::remove_dir_all(&d);
        });
    }
}
