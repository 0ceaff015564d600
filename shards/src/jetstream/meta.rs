//! The JetStream meta state: which streams exist, in which account, with which
//! configuration, on which shard. It changes only by applying [`MetaChange`]s in
//! order, so the same machine can be fed from this server's own durable log
//! ([`MetaLog`]) or, once clustered, from a Raft meta group.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::StreamConfig;

/// Where one stream lives and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamAssignment {
    pub account: String,
    pub config: StreamConfig,
    /// Creation time, ns since the epoch.
    pub created: i64,
    pub shard: usize,
}

/// One change of the meta state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaChange {
    AddStream(StreamAssignment),
    UpdateStream {
        account: String,
        config: StreamConfig,
    },
    DeleteStream {
        account: String,
        name: String,
    },
}

/// The meta state machine.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetaState {
    /// By (account, stream name).
    streams: BTreeMap<(String, String), StreamAssignment>,
}

impl MetaState {
    /// Applies one change. Changes that do not fit (a stream added twice, an
    /// unknown one updated) are ignored, so replaying a log is idempotent.
    pub fn apply(&mut self, change: &MetaChange) {
        match change {
            MetaChange::AddStream(a) => {
                self.streams
                    .entry((a.account.clone(), a.config.name.clone()))
                    .or_insert_with(|| a.clone());
            }
            MetaChange::UpdateStream { account, config } => {
                if let Some(a) = self
                    .streams
                    .get_mut(&(account.clone(), config.name.clone()))
                {
                    a.config = config.clone();
                }
            }
            MetaChange::DeleteStream { account, name } => {
                self.streams.remove(&(account.clone(), name.clone()));
            }
        }
    }

    pub fn stream(&self, account: &str, name: &str) -> Option<&StreamAssignment> {
        self.streams.get(&(account.to_string(), name.to_string()))
    }

    /// The account's streams, by name.
    pub fn streams_of<'a>(
        &'a self,
        account: &'a str,
    ) -> impl Iterator<Item = &'a StreamAssignment> + 'a {
        self.streams
            .range((account.to_string(), String::new())..)
            .take_while(move |((a, _), _)| a == account)
            .map(|(_, s)| s)
    }

    pub fn all(&self) -> impl Iterator<Item = &StreamAssignment> {
        self.streams.values()
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The shard with the fewest streams (the lowest index on a tie).
    pub fn least_loaded_shard(&self, shards: usize) -> usize {
        let mut counts = vec![0usize; shards.max(1)];
        for s in self.streams.values() {
            if let Some(c) = counts.get_mut(s.shard) {
                *c += 1;
            }
        }
        counts
            .iter()
            .enumerate()
            .min_by_key(|&(i, &c)| (c, i))
            .map_or(0, |(i, _)| i)
    }

    /// The changes that rebuild this state (a compacted log).
    fn as_changes(&self) -> Vec<MetaChange> {
        self.streams
            .values()
            .cloned()
            .map(MetaChange::AddStream)
            .collect()
    }
}

/// Errors of the meta log.
#[derive(Debug, thiserror::Error)]
pub enum MetaLogError {
    #[error("meta log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The meta state's durable log: one JSON change per line, each synced before
/// the change is applied. A torn last line (a crash mid-write) is dropped at
/// load; when the log holds many more lines than the state has streams, it is
/// rewritten as the state (a new file, synced, renamed over the old one).
pub struct MetaLog {
    path: PathBuf,
    file: std::fs::File,
    lines: usize,
}

const COMPACT_FACTOR: usize = 2;
const COMPACT_MIN: usize = 64;

impl MetaLog {
    /// Opens (or creates) the log in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<(MetaLog, MetaState), MetaLogError> {
        let path = dir.join("meta.log");
        let io = |source| MetaLogError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut state = MetaState::default();
        let mut lines = 0;
        let mut good_len = 0u64;
        if let Ok(file) = std::fs::File::open(&path) {
            let mut reader = std::io::BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io)?;
                if n == 0 {
                    break;
                }
                if !line.ends_with('\n') {
                    tracing::warn!("JetStream meta log {path:?}: dropping a torn last entry");
                    break;
                }
                match serde_json::from_str::<MetaChange>(line.trim_end()) {
                    Ok(change) => state.apply(&change),
                    Err(e) => {
                        tracing::warn!(
                            "JetStream meta log {path:?}: dropping an unreadable entry: {e}"
                        );
                        break;
                    }
                }
                good_len += n as u64;
                lines += 1;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        file.set_len(good_len).map_err(io)?;
        let mut log = MetaLog { path, file, lines };
        log.maybe_compact(&state)?;
        Ok((log, state))
    }

    /// Writes `change` durably, then applies it to `state`.
    pub fn commit(
        &mut self,
        state: &mut MetaState,
        change: MetaChange,
    ) -> Result<(), MetaLogError> {
        let mut line = serde_json::to_vec(&change).unwrap_or_default();
        line.push(b'\n');
        let io = |source| MetaLogError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.lines += 1;
        state.apply(&change);
        self.maybe_compact(state)
    }

    fn maybe_compact(&mut self, state: &MetaState) -> Result<(), MetaLogError> {
        if self.lines < COMPACT_MIN || self.lines < state.len() * COMPACT_FACTOR {
            return Ok(());
        }
        let io = |source| MetaLogError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("log.new");
        let mut out = Vec::new();
        let changes = state.as_changes();
        for change in &changes {
            out.extend(serde_json::to_vec(change).unwrap_or_default());
            out.push(b'\n');
        }
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&out).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.lines = changes.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(account: &str, name: &str, shard: usize) -> StreamAssignment {
        StreamAssignment {
            account: account.into(),
            config: StreamConfig {
                name: name.into(),
                ..StreamConfig::default()
            },
            created: 1,
            shard,
        }
    }

    #[test]
    fn changes_apply_in_order_and_replay_idempotently() {
        let mut s = MetaState::default();
        let changes = [
            MetaChange::AddStream(assignment("A", "X", 0)),
            MetaChange::AddStream(assignment("A", "Y", 1)),
            MetaChange::AddStream(assignment("B", "X", 0)),
            MetaChange::DeleteStream {
                account: "A".into(),
                name: "X".into(),
            },
        ];
        for c in &changes {
            s.apply(c);
        }
        let again = s.clone();
        for c in &changes[1..3] {
            s.apply(c);
        }
        assert_eq!(s, again);
        let names: Vec<_> = s.streams_of("A").map(|a| a.config.name.clone()).collect();
        assert_eq!(names, ["Y"]);
        assert_eq!(s.least_loaded_shard(2), 0);
        assert_eq!(s.least_loaded_shard(3), 2);
    }

    #[test]
    fn the_log_survives_reopening_a_torn_tail_and_compaction() {
        let dir = std::env::temp_dir().join(format!("strait-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut log, mut state) = MetaLog::open(&dir).unwrap();
        for i in 0..100 {
            let name = format!("S{i}");
            log.commit(&mut state, MetaChange::AddStream(assignment("A", &name, 0)))
                .unwrap();
            if i % 2 == 0 {
                log.commit(
                    &mut state,
                    MetaChange::DeleteStream {
                        account: "A".into(),
                        name,
                    },
                )
                .unwrap();
            }
        }
        assert_eq!(state.len(), 50);
        drop(log);
        // A crash mid-write leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("meta.log"))
            .unwrap();
        f.write_all(br#"{"op":"add_stream","acc"#).unwrap();
        drop(f);
        let (mut log, mut reopened) = MetaLog::open(&dir).unwrap();
        assert_eq!(reopened, state);
        log.commit(
            &mut reopened,
            MetaChange::AddStream(assignment("A", "Z", 1)),
        )
        .unwrap();
        drop(log);
        let (_, again) = MetaLog::open(&dir).unwrap();
        assert_eq!(again.len(), 51);
        assert!(again.stream("A", "Z").is_some());
        let text = std::fs::read_to_string(dir.join("meta.log")).unwrap();
        assert!(text.lines().count() < 150, "compacted");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
