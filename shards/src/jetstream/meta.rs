//! The JetStream meta state: which streams exist, in which account, with which
//! configuration, on which shard, and which consumers each stream has. It changes only by applying [`MetaChange`]s in
//! order, so the same machine can be fed from this server's own durable log
//! ([`MetaLog`]) or, once clustered, from a Raft meta group.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use strait_storage::record::{self, DecodeError, Keys, Record};
use strait_storage::Encryption;

use super::config::StreamConfig;
use super::consumer_config::ConsumerConfig;

/// Where one stream lives and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamAssignment {
    pub account: String,
    pub config: StreamConfig,
    /// Creation time, ns since the epoch.
    pub created: i64,
    pub shard: usize,
}

/// One consumer of a stream. Its delivery state is the stream's shard's
/// business (kept beside the stream's messages); this is what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerAssignment {
    pub account: String,
    pub stream: String,
    /// Normalized: the name is set, defaults are filled in.
    pub config: ConsumerConfig,
    /// Creation time, ns since the epoch.
    pub created: i64,
}

impl ConsumerAssignment {
    pub fn name(&self) -> &str {
        self.config.consumer_name()
    }

    /// Listed and counted: not one a mirror or source made (nats-server's
    /// `direct` consumers are invisible to the API).
    pub fn is_public(&self) -> bool {
        !self.config.direct
    }
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
    /// Adds a consumer, or replaces its configuration (an update).
    PutConsumer(Box<ConsumerAssignment>),
    DeleteConsumer {
        account: String,
        stream: String,
        name: String,
    },
    /// A stream restored from a snapshot, with its durable consumers: one
    /// change, so that a restore is in the state whole or not at all.
    RestoreStream {
        stream: StreamAssignment,
        consumers: Vec<ConsumerAssignment>,
    },
}

/// A consumer's key: (account, stream, consumer).
type ConsumerKey = (String, String, String);

/// The meta state machine.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetaState {
    /// By (account, stream name).
    streams: BTreeMap<(String, String), StreamAssignment>,
    consumers: BTreeMap<ConsumerKey, ConsumerAssignment>,
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
                let keys: Vec<ConsumerKey> = self
                    .consumers_of(account, name)
                    .map(|c| (c.account.clone(), c.stream.clone(), c.name().to_string()))
                    .collect();
                for key in keys {
                    self.consumers.remove(&key);
                }
            }
            MetaChange::PutConsumer(c) => {
                if self.stream(&c.account, &c.stream).is_some() {
                    let key = (c.account.clone(), c.stream.clone(), c.name().to_string());
                    self.consumers.insert(key, (**c).clone());
                }
            }
            MetaChange::DeleteConsumer {
                account,
                stream,
                name,
            } => {
                self.consumers
                    .remove(&(account.clone(), stream.clone(), name.clone()));
            }
            MetaChange::RestoreStream { stream, consumers } => {
                if self.stream(&stream.account, &stream.config.name).is_some() {
                    return;
                }
                self.apply(&MetaChange::AddStream(stream.clone()));
                for c in consumers {
                    self.apply(&MetaChange::PutConsumer(Box::new(c.clone())));
                }
            }
        }
    }

    pub fn consumer(&self, account: &str, stream: &str, name: &str) -> Option<&ConsumerAssignment> {
        self.consumers
            .get(&(account.to_string(), stream.to_string(), name.to_string()))
    }

    /// A stream's consumers, by name.
    pub fn consumers_of<'a>(
        &'a self,
        account: &'a str,
        stream: &'a str,
    ) -> impl Iterator<Item = &'a ConsumerAssignment> + 'a {
        self.consumers
            .range((account.to_string(), stream.to_string(), String::new())..)
            .take_while(move |((a, s, _), _)| a == account && s == stream)
            .map(|(_, c)| c)
    }

    /// The consumers the API lists, over every account.
    pub fn public_consumers_total(&self) -> usize {
        self.consumers.values().filter(|c| c.is_public()).count()
    }

    /// How many consumers the API lists in the account, over all its streams.
    pub fn consumer_count(&self, account: &str) -> usize {
        self.consumers
            .range((account.to_string(), String::new(), String::new())..)
            .take_while(|((a, _, _), _)| a == account)
            .filter(|(_, c)| c.is_public())
            .count()
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

    /// The changes that rebuild this state (a compacted log). Ephemeral
    /// consumers are not written (see [`MetaLog::commit`]).
    fn as_changes(&self) -> Vec<MetaChange> {
        let streams = self.streams.values().cloned().map(MetaChange::AddStream);
        let consumers = self
            .consumers
            .values()
            .filter(|c| c.config.is_durable())
            .map(|c| MetaChange::PutConsumer(Box::new(c.clone())));
        streams.chain(consumers).collect()
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

/// The meta state's durable log: one change per line, each synced before the
/// change is applied. A torn last line (a crash mid-write) is dropped at load;
/// when the log holds many more lines than the state has streams, it is
/// rewritten as the state (a new file, synced, renamed over the old one).
///
/// With encryption at rest, each line is a sealed change (the store's framed,
/// authenticated record, base64) next to the account and stream it concerns —
/// names the store's directories show anyway. Plain lines written before
/// encryption was switched on stay readable. A stream any of whose lines cannot
/// be opened (a wrong key, or encryption switched off) is left out of the
/// state with nats-server's log line, and its lines are kept as they are, so
/// that starting again with the right key brings it back.
pub struct MetaLog {
    path: PathBuf,
    file: std::fs::File,
    lines: usize,
    keys: Option<Keys>,
    /// The lines of streams that could not be read, verbatim. While there are
    /// any, the log is not compacted: a run with the wrong key rewrites nothing.
    kept: Vec<((String, String), String)>,
}

const COMPACT_FACTOR: usize = 2;
const COMPACT_MIN: usize = 64;

/// What the meta log's key is derived for: a name no stream can have.
const META_KEY_CONTEXT: &str = "meta.log";

/// A line of the log once encryption is on.
#[derive(Serialize, Deserialize)]
struct SealedLine {
    account: String,
    stream: String,
    sealed: String,
}

impl MetaChange {
    /// The (account, stream) it is about.
    fn stream_key(&self) -> (String, String) {
        match self {
            MetaChange::AddStream(a) => (a.account.clone(), a.config.name.clone()),
            MetaChange::UpdateStream { account, config } => (account.clone(), config.name.clone()),
            MetaChange::DeleteStream { account, name } => (account.clone(), name.clone()),
            MetaChange::PutConsumer(c) => (c.account.clone(), c.stream.clone()),
            MetaChange::DeleteConsumer {
                account, stream, ..
            } => (account.clone(), stream.clone()),
            MetaChange::RestoreStream { stream, .. } => {
                (stream.account.clone(), stream.config.name.clone())
            }
        }
    }

    /// Whether the change outlives a restart: an ephemeral consumer does not
    /// (nats-server forgets them too; their clients make them again).
    fn is_durable(&self) -> bool {
        match self {
            MetaChange::PutConsumer(c) => c.config.is_durable(),
            _ => true,
        }
    }

    /// Whether the line holds nothing but names, and so is never sealed.
    fn only_names(&self) -> bool {
        matches!(
            self,
            MetaChange::DeleteStream { .. } | MetaChange::DeleteConsumer { .. }
        )
    }
}

/// One line read back.
enum LineRead {
    Change(Box<MetaChange>),
    /// Sealed, and not to be opened with the key at hand (nats-server's reason).
    Unreadable {
        key: (String, String),
        reason: &'static str,
    },
    Malformed(String),
}

fn read_line(line: &str, keys: Option<&Keys>) -> LineRead {
    if let Ok(sealed) = serde_json::from_str::<SealedLine>(line) {
        let key = (sealed.account, sealed.stream);
        let Ok(frame) = data_encoding::BASE64.decode(sealed.sealed.as_bytes()) else {
            return LineRead::Malformed("sealed entry is not base64".into());
        };
        return match record::decode(&frame, keys) {
            Ok((Record::Meta(body), _)) => match serde_json::from_slice::<MetaChange>(&body) {
                Ok(change) if change.stream_key() == key => LineRead::Change(Box::new(change)),
                Ok(_) => LineRead::Malformed("sealed entry names another stream".into()),
                Err(e) => LineRead::Malformed(e.to_string()),
            },
            Err(DecodeError::KeyRequired) => LineRead::Unreadable {
                key,
                reason: "encryption not enabled",
            },
            Err(DecodeError::WrongKey) => LineRead::Unreadable {
                key,
                reason: "unable to recover keys",
            },
            Ok(_) => LineRead::Malformed("sealed entry is not a meta record".into()),
            Err(e) => LineRead::Malformed(format!("{e:?}")),
        };
    }
    match serde_json::from_str::<MetaChange>(line) {
        Ok(change) => LineRead::Change(Box::new(change)),
        Err(e) => LineRead::Malformed(e.to_string()),
    }
}

impl MetaLog {
    /// Opens (or creates) the log in `dir` and replays it; `encryption` seals
    /// what is written from now on.
    pub fn open(
        dir: &Path,
        encryption: Option<&Encryption>,
    ) -> Result<(MetaLog, MetaState), MetaLogError> {
        let path = dir.join("meta.log");
        let io = |source| MetaLogError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let keys = encryption.map(|e| Keys::derive(e.cipher, &e.key, META_KEY_CONTEXT));
        let mut read = Vec::new();
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
                let text = line.trim_end();
                match read_line(text, keys.as_ref()) {
                    LineRead::Malformed(e) => {
                        tracing::warn!(
                            "JetStream meta log {path:?}: dropping an unreadable entry: {e}"
                        );
                        break;
                    }
                    entry => read.push((text.to_string(), entry)),
                }
                good_len += n as u64;
            }
        }
        // A stream with a line that cannot be opened is left out whole: its
        // readable lines alone would give it a configuration it no longer has.
        // A delete (never sealed: it holds only names) ends that.
        let mut unreadable = BTreeMap::new();
        for (_, entry) in &read {
            match entry {
                LineRead::Unreadable { key, reason } => {
                    unreadable.entry(key.clone()).or_insert(*reason);
                }
                LineRead::Change(c) if matches!(**c, MetaChange::DeleteStream { .. }) => {
                    unreadable.remove(&c.stream_key());
                }
                _ => {}
            }
        }
        for ((account, stream), reason) in &unreadable {
            tracing::warn!("  Error decrypting our stream metafile: {reason}");
            tracing::warn!("  Stream '{account} > {stream}' is not loaded: its metadata cannot be read with the configured encryption");
        }
        let mut state = MetaState::default();
        let mut kept = Vec::new();
        let lines = read.len();
        for (text, entry) in read {
            match entry {
                LineRead::Change(c) if !unreadable.contains_key(&c.stream_key()) => state.apply(&c),
                LineRead::Change(c) => kept.push((c.stream_key(), text)),
                LineRead::Unreadable { key, .. } if unreadable.contains_key(&key) => {
                    kept.push((key, text))
                }
                _ => {}
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        file.set_len(good_len).map_err(io)?;
        let mut log = MetaLog {
            path,
            file,
            lines,
            keys,
            kept,
        };
        log.maybe_compact(&state)?;
        Ok((log, state))
    }

    /// The line `change` is written as: sealed when encryption is on.
    fn line(&self, change: &MetaChange) -> Vec<u8> {
        let json = serde_json::to_vec(change).unwrap_or_default();
        let mut line = match &self.keys {
            Some(keys) if !change.only_names() => {
                let mut frame = Vec::new();
                record::encode_meta(&mut frame, Some(keys), &json);
                let (account, stream) = change.stream_key();
                let sealed = SealedLine {
                    account,
                    stream,
                    sealed: data_encoding::BASE64.encode(&frame),
                };
                serde_json::to_vec(&sealed).unwrap_or_default()
            }
            _ => json,
        };
        line.push(b'\n');
        line
    }

    /// Writes `change` durably, then applies it to `state`. A delete also
    /// forgets the lines of an unreadable stream of that name. What does not
    /// outlive a restart (an ephemeral consumer, and the delete of one) is
    /// applied without being written.
    pub fn commit(
        &mut self,
        state: &mut MetaState,
        change: MetaChange,
    ) -> Result<(), MetaLogError> {
        let volatile = match &change {
            MetaChange::DeleteConsumer {
                account,
                stream,
                name,
            } => state
                .consumer(account, stream, name)
                .is_some_and(|c| !c.config.is_durable()),
            other => !other.is_durable(),
        };
        if volatile {
            state.apply(&change);
            return Ok(());
        }
        let line = self.line(&change);
        let io = |source| MetaLogError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.lines += 1;
        if matches!(change, MetaChange::DeleteStream { .. }) {
            let key = change.stream_key();
            self.kept.retain(|(k, _)| *k != key);
        }
        state.apply(&change);
        self.maybe_compact(state)
    }

    fn maybe_compact(&mut self, state: &MetaState) -> Result<(), MetaLogError> {
        if !self.kept.is_empty()
            || self.lines < COMPACT_MIN
            || self.lines < (state.len() + state.consumers.len()) * COMPACT_FACTOR
        {
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
            out.extend(self.line(change));
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
    fn a_restore_adds_the_stream_and_its_consumers_whole_or_not_at_all() {
        let consumer = |name: &str| ConsumerAssignment {
            account: "A".into(),
            stream: "X".into(),
            config: serde_json::from_str(&format!(
                r#"{{"durable_name":"{name}","name":"{name}"}}"#
            ))
            .expect("config"),
            created: 7,
        };
        let restore = MetaChange::RestoreStream {
            stream: assignment("A", "X", 1),
            consumers: vec![consumer("C1"), consumer("C2")],
        };
        let mut s = MetaState::default();
        s.apply(&restore);
        assert!(s.stream("A", "X").is_some());
        assert_eq!(s.consumers_of("A", "X").count(), 2);
        assert_eq!(s.consumer("A", "X", "C2").map(|c| c.created), Some(7));
        // Replayed, or over a stream that exists: nothing changes.
        let before = s.clone();
        s.apply(&restore);
        assert_eq!(s, before);
        let mut other = MetaState::default();
        other.apply(&MetaChange::AddStream(assignment("A", "X", 0)));
        other.apply(&restore);
        assert_eq!(other.consumers_of("A", "X").count(), 0);
        assert_eq!(other.stream("A", "X").map(|a| a.shard), Some(0));
    }

    #[test]
    fn the_log_survives_reopening_a_torn_tail_and_compaction() {
        let dir = std::env::temp_dir().join(format!("strait-meta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut log, mut state) = MetaLog::open(&dir, None).unwrap();
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
        let (mut log, mut reopened) = MetaLog::open(&dir, None).unwrap();
        assert_eq!(reopened, state);
        log.commit(
            &mut reopened,
            MetaChange::AddStream(assignment("A", "Z", 1)),
        )
        .unwrap();
        drop(log);
        let (_, again) = MetaLog::open(&dir, None).unwrap();
        assert_eq!(again.len(), 51);
        assert!(again.stream("A", "Z").is_some());
        let text = std::fs::read_to_string(dir.join("meta.log")).unwrap();
        assert!(text.lines().count() < 150, "compacted");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn key(cipher: strait_storage::Cipher, key: &str) -> Encryption {
        Encryption {
            cipher,
            key: key.as_bytes().to_vec(),
        }
    }

    fn secret(account: &str, name: &str) -> MetaChange {
        let mut a = assignment(account, name, 0);
        a.config.subjects = vec![format!("hidden.{name}.>")];
        a.config.description = "confidential description".into();
        MetaChange::AddStream(a)
    }

    #[test]
    fn an_encrypted_log_hides_configs_and_keeps_what_a_wrong_key_cannot_read() {
        use strait_storage::Cipher;
        let dir = std::env::temp_dir().join(format!("strait-meta-enc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let right = key(Cipher::ChaCha, "s3cr3t");
        // Written before encryption was switched on.
        let (mut log, mut state) = MetaLog::open(&dir, None).unwrap();
        log.commit(&mut state, secret("A", "PLAIN")).unwrap();
        drop(log);
        let (mut log, mut state) = MetaLog::open(&dir, Some(&right)).unwrap();
        assert!(
            state.stream("A", "PLAIN").is_some(),
            "plain lines stay readable"
        );
        log.commit(&mut state, secret("A", "X")).unwrap();
        log.commit(&mut state, secret("B", "Y")).unwrap();
        drop(log);
        let text = std::fs::read_to_string(dir.join("meta.log")).unwrap();
        assert!(
            !text.contains("hidden.X") && !text.contains("hidden.Y"),
            "{text}"
        );
        assert_eq!(
            text.matches("confidential").count(),
            1,
            "only the old plain line"
        );
        let all = state.clone();

        // A wrong key and no key: the sealed streams are left out, the rest loads,
        // and enough commits to compact the log keep the unreadable lines.
        for wrong in [Some(key(Cipher::ChaCha, "nope")), None] {
            let (mut log, mut partial) = MetaLog::open(&dir, wrong.as_ref()).unwrap();
            let names: Vec<_> = partial.all().map(|a| a.config.name.clone()).collect();
            assert_eq!(names, ["PLAIN"]);
            for i in 0..COMPACT_MIN {
                let name = format!("T{i}");
                log.commit(&mut partial, secret("C", &name)).unwrap();
                log.commit(
                    &mut partial,
                    MetaChange::DeleteStream {
                        account: "C".into(),
                        name,
                    },
                )
                .unwrap();
            }
        }
        // Runs that could not read everything rewrote nothing.
        let lines = std::fs::read_to_string(dir.join("meta.log")).unwrap();
        assert!(lines.lines().count() > 4 * COMPACT_MIN);
        // The right key, with another cipher: everything is back (what the wrong
        // key created and deleted is simply gone), and the log is compacted.
        let (_, again) = MetaLog::open(&dir, Some(&key(Cipher::Aes, "s3cr3t"))).unwrap();
        assert_eq!(again, all);
        let lines = std::fs::read_to_string(dir.join("meta.log")).unwrap();
        assert_eq!(lines.lines().count(), 3, "{lines}");
        assert!(
            !lines.contains("confidential"),
            "compaction seals the old line"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
