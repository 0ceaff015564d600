//! The shell of `$JS.API.STREAM.SNAPSHOT|RESTORE.<stream>`: each transfer
//! runs as its own task with its own internal client, so that the API keeps
//! answering while chunks go back and forth.
//!
//! A restore is atomic: the chunks land in a file under the store's
//! `jetstream/.transfers`, are unpacked into a directory there (on a thread
//! of its own: decompression and the store's files are plain blocking work),
//! which is renamed to the stream's directory with a `.restoring` marker in
//! it; one meta change then adds the stream and its consumers, and the marker
//! goes. A server killed before that change finds the marker at its next
//! start and removes the directory; after it, the marker alone.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::super::backup::{self, Manifest, RestoreRequest, SnapshotRequest, TransferEnd, Window};
use super::super::config::{StorageType, StreamConfig};
use super::super::errors::{self, ApiError};
use super::super::host::{now_ns, ts_rfc3339, write_kept_state, StreamOp};
use super::super::meta::{ConsumerAssignment, MetaChange, MetaState, StreamAssignment};
use super::{parse, stream_dir, Service};
use crate::control::InternalHandle;
use crate::internal::InternalMsg;
use crate::options::JetStreamOptions;

/// Marks a restored stream directory whose meta change may not be written.
const RESTORING_MARKER: &str = ".restoring";

/// Where transfers keep their files while they run: under the store, so that
/// a restored stream is renamed into place, never copied.
fn transfers_dir(js: &JetStreamOptions) -> PathBuf {
    js.store_dir.join("jetstream").join(".transfers")
}

/// At start, before any stream opens: what a killed transfer left behind goes
/// (see the module's comment).
pub(super) fn sweep_transfers(js: &JetStreamOptions, meta: &MetaState) {
    let _ = std::fs::remove_dir_all(transfers_dir(js));
    let Ok(accounts) = std::fs::read_dir(js.store_dir.join("jetstream")) else {
        return;
    };
    for account in accounts.filter_map(|e| e.ok()) {
        let Ok(streams) = std::fs::read_dir(account.path().join("streams")) else {
            continue;
        };
        for stream in streams.filter_map(|e| e.ok()) {
            let dir = stream.path();
            if !dir.join(RESTORING_MARKER).exists() {
                continue;
            }
            let account = account.file_name().to_string_lossy().into_owned();
            let name = stream.file_name().to_string_lossy().into_owned();
            if meta.stream(&account, &name).is_some() {
                let _ = std::fs::remove_file(dir.join(RESTORING_MARKER));
            } else {
                tracing::warn!("Removing the unfinished restore of stream '{account} > {name}'");
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

/// nats-server's `IsValidPublishSubject`: a valid subject with no wildcards.
fn is_publish_subject(subject: &str) -> bool {
    let subject = subject.as_bytes();
    crate::subject::is_valid_subject(subject) && crate::subject::is_valid_literal_subject(subject)
}

/// The next message for `handle` within `wait`.
async fn next_within(handle: &InternalHandle, wait: Duration) -> Option<InternalMsg> {
    futures_lite::future::or(handle.next(), async {
        glommio::timer::sleep(wait).await;
        None
    })
    .await
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Sends the archive at `path` to the request's deliver subject in chunks,
/// each with the subject its ack goes to, never more unacknowledged than the
/// window holds.
async fn send_chunks(
    handle: &InternalHandle,
    stream: &str,
    path: &Path,
    req: &SnapshotRequest,
) -> Result<u64, TransferEnd> {
    let failed = |e: std::io::Error| TransferEnd::Failed(e.to_string());
    let (chunk_size, inflight) = req.window();
    let prefix = backup::ack_prefix(stream, &crate::nuid());
    handle
        .subscribe(&format!("{prefix}.>"), None)
        .await
        .ok_or_else(|| TransferEnd::Failed("could not subscribe for acks".into()))?;
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let mut window = Window::new(inflight);
    let mut chunk = vec![0u8; chunk_size];
    let mut sent = 0u64;
    loop {
        let n = read_full(&mut file, &mut chunk).map_err(failed)?;
        if n == 0 {
            return Ok(sent);
        }
        let index = loop {
            // Only acks come to this client.
            while handle.receiver().try_recv().is_some() {
                window.acked();
            }
            if let Some(index) = window.take() {
                break index;
            }
            match next_within(handle, backup::ACK_TIMEOUT).await {
                Some(_) => window.acked(),
                None => return Err(TransferEnd::NoFlowResponse),
            }
        };
        let ack = backup::ack_subject(&prefix, n, index);
        // The receiver subscribes once it has the response: the first chunk
        // waits a while for it, as nats-server's does.
        let deadline = Instant::now()
            + if index == 1 {
                backup::INTEREST_WAIT
            } else {
                Duration::ZERO
            };
        loop {
            let routed = handle
                .publish(&req.deliver_subject, &ack, None, &chunk[..n])
                .await;
            if routed.any() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(TransferEnd::NoInterest);
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        sent += n as u64;
    }
}

/// Decompresses and unpacks a received archive into `staging`.
fn unpack(part: &Path, staging: &Path) -> Result<Manifest, String> {
    let _ = std::fs::remove_dir_all(staging);
    let file = std::fs::File::open(part).map_err(|e| e.to_string())?;
    let mut input = backup::decompressing(std::io::BufReader::new(file));
    let manifest = backup::read_head(&mut input).map_err(|e| e.to_string())?;
    strait_storage::FileStore::restore(staging, &mut input).map_err(|e| e.to_string())?;
    Ok(manifest)
}

/// A snapshot being sent: whose, from which file, as asked, since when, for whom.
struct SnapshotTransfer {
    account: String,
    stream: String,
    path: PathBuf,
    req: SnapshotRequest,
    start: i64,
    client: Option<Value>,
}

impl Service {
    /// `$JS.API.STREAM.SNAPSHOT.<stream>`: the archive is written, the
    /// response gives its configuration and state, and a task sends it.
    pub(super) async fn snapshot(
        self: &Rc<Self>,
        account: &str,
        index: u32,
        name: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err(errors::BAD_REQUEST.error());
        }
        let a = self.assignment(account, name)?;
        let req: SnapshotRequest = parse(payload, self.js.strict)?;
        if !is_publish_subject(&req.deliver_subject) {
            return Err(errors::SNAPSHOT_DELIVER_SUBJECT_INVALID.error());
        }
        let dir = transfers_dir(&self.js);
        std::fs::create_dir_all(&dir).map_err(|e| errors::STREAM_SNAPSHOT.err(e))?;
        let path = dir.join(format!("{}.snapshot", crate::nuid()));
        if req.check_msgs {
            tracing::info!("Starting health check and snapshot for stream '{account} > {name}'");
        } else {
            tracing::info!("Starting snapshot for stream '{account} > {name}'");
        }
        let start = now_ns();
        let op = StreamOp::Snapshot {
            path: path.clone(),
            created: a.created,
            consumers: !req.no_consumers,
        };
        let state = match self.send_op(&a, op).await {
            Ok(mut body) => body["state"].take(),
            Err(e) => {
                tracing::warn!(
                    "Snapshot of stream '{account} > {name}' failed: {}",
                    e.description
                );
                return Err(e);
            }
        };
        let handle = match self.commander.internal_client(0, index).await {
            Some(handle) => handle,
            None => {
                let _ = std::fs::remove_file(&path);
                return Err(errors::STREAM_SNAPSHOT.err("the server is stopping"));
            }
        };
        let client = self.requester.borrow().clone();
        self.advise_transfer(
            account,
            "SNAPSHOT_CREATE",
            name,
            json!({
                "type": "io.nats.jetstream.advisory.v1.snapshot_create",
                "stream": name,
                "state": state,
                "client": client,
            }),
        );
        let transfer = SnapshotTransfer {
            account: account.to_string(),
            stream: name.to_string(),
            path,
            req,
            start,
            client,
        };
        let service = self.clone();
        glommio::spawn_local(async move { service.send_snapshot(handle, transfer).await }).detach();
        Ok(json!({
            "config": a.config.without_dynamic_metadata(),
            "state": state,
        }))
    }

    async fn send_snapshot(self: Rc<Self>, handle: InternalHandle, transfer: SnapshotTransfer) {
        let SnapshotTransfer {
            account,
            stream,
            path,
            req,
            start,
            client,
        } = transfer;
        let began = Instant::now();
        let result = send_chunks(&handle, &stream, &path, &req).await;
        let _ = std::fs::remove_file(&path);
        let end = backup::end_of_transfer(result.as_ref().err());
        handle
            .publish(&req.deliver_subject, "", Some(&end), &[])
            .await;
        let mut advisory = json!({
            "type": "io.nats.jetstream.advisory.v1.snapshot_complete",
            "stream": stream,
            "start": ts_rfc3339(start),
            "end": ts_rfc3339(now_ns()),
            "client": client,
        });
        match &result {
            Ok(bytes) => tracing::info!(
                "Completed snapshot of {} for stream '{account} > {stream}' in {}",
                backup::friendly_bytes(*bytes),
                crate::format_duration(began.elapsed())
            ),
            Err(e) => {
                advisory["error"] = json!(e.to_string());
                tracing::warn!(
                    "Snapshot for stream '{account} > {stream}' failed after {}: {e}",
                    crate::format_duration(began.elapsed())
                );
            }
        }
        self.advise_transfer(&account, "SNAPSHOT_COMPLETE", &stream, advisory);
        self.publish_advisories(&account).await;
    }

    /// `$JS.API.STREAM.RESTORE.<stream>`: checks the configuration as a
    /// create would, then answers where the chunks go.
    pub(super) async fn restore(
        self: &Rc<Self>,
        account: &str,
        index: u32,
        name: &str,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err(errors::BAD_REQUEST.error());
        }
        let req: RestoreRequest = parse(payload, self.js.strict)?;
        let mut requested = req.config;
        if requested.name.is_empty() {
            requested.name = name.to_string();
        }
        if requested.name != name {
            return Err(errors::STREAM_MISMATCH.error());
        }
        if name.contains(['/', '\\']) {
            return Err(errors::STREAM_NAME_CONTAINS_PATH_SEPARATORS.error());
        }
        let mut config = requested.normalized(&self.limits(account, requested.storage))?;
        self.check_origins(account, &mut config)?;
        if config.storage == StorageType::Memory {
            return Err(errors::STREAM_RESTORE.err("memory streams can not be restored"));
        }
        self.check_stream_room(account, &config)?;
        let key = (account.to_string(), name.to_string());
        if self.assignment(account, name).is_ok() || self.restoring.borrow().contains(&key) {
            return Err(errors::STREAM_NAME_EXIST_RESTORE_FAILED.error());
        }
        tracing::info!("Starting restore for stream '{account} > {name}'");
        let id = crate::nuid();
        let subject = backup::restore_subject(name, &id);
        let subscribe_failed = |err: &str| {
            errors::RESTORE_SUBSCRIBE_FAILED.with(&[("subject", &subject), ("err", &err)])
        };
        let handle = self
            .commander
            .internal_client(0, index)
            .await
            .ok_or_else(|| subscribe_failed("the server is stopping"))?;
        handle
            .subscribe(&subject, None)
            .await
            .ok_or_else(|| subscribe_failed("invalid subject"))?;
        self.restoring.borrow_mut().insert(key);
        let client = self.requester.borrow().clone();
        self.advise_transfer(
            account,
            "RESTORE_CREATE",
            name,
            json!({
                "type": "io.nats.jetstream.advisory.v1.restore_create",
                "stream": name,
                "client": client,
            }),
        );
        let service = self.clone();
        let account = account.to_string();
        glommio::spawn_local(async move {
            service
                .receive_restore(handle, account, config, id, client)
                .await
        })
        .detach();
        Ok(json!({ "deliver_subject": subject }))
    }

    async fn receive_restore(
        self: Rc<Self>,
        handle: InternalHandle,
        account: String,
        config: StreamConfig,
        id: String,
        client: Option<Value>,
    ) {
        let name = config.name.clone();
        let start = now_ns();
        let began = Instant::now();
        let part = transfers_dir(&self.js).join(format!("{id}.restore"));
        let received = self.receive_chunks(&handle, &account, &name, &part).await;
        let (bytes, outcome) = match received {
            Err((bytes, e)) => {
                tracing::warn!("{e}");
                (bytes, Err(None))
            }
            Ok((bytes, reply)) => {
                let restored = self.finish_restore(&account, config, &part, &id).await;
                let mut body = serde_json::Map::new();
                body.insert(
                    "type".into(),
                    json!("io.nats.jetstream.api.v1.stream_create_response"),
                );
                let outcome = match restored {
                    Ok(Value::Object(info)) => {
                        body.extend(info);
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        body.insert("error".into(), json!(e));
                        Err(Some(e))
                    }
                };
                let body = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
                handle.publish(&reply, "", None, &body).await;
                (bytes, outcome)
            }
        };
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_dir_all(transfers_dir(&self.js).join(&id));
        self.restoring
            .borrow_mut()
            .remove(&(account.clone(), name.clone()));
        let took = crate::format_duration(began.elapsed());
        match outcome {
            Ok(()) => tracing::info!(
                "Completed restore of {} for stream '{account} > {name}' in {took}",
                backup::friendly_bytes(bytes)
            ),
            Err(e) => tracing::warn!(
                "Restore failed for {} for stream '{account} > {name}' in {took}{}",
                backup::friendly_bytes(bytes),
                e.map(|e| format!(": {}", e.description))
                    .unwrap_or_default()
            ),
        }
        self.advise_transfer(
            &account,
            "RESTORE_COMPLETE",
            &name,
            json!({
                "type": "io.nats.jetstream.advisory.v1.restore_complete",
                "stream": name,
                "start": ts_rfc3339(start),
                "end": ts_rfc3339(now_ns()),
                "bytes": bytes,
                "client": client,
            }),
        );
        self.publish_advisories(&account).await;
    }

    /// Writes the chunks to `part`, acknowledging each, until the empty one
    /// that ends them: answers the bytes and where the result goes.
    async fn receive_chunks(
        &self,
        handle: &InternalHandle,
        account: &str,
        name: &str,
        part: &Path,
    ) -> Result<(u64, String), (u64, String)> {
        let mut bytes = 0u64;
        let create = std::fs::create_dir_all(transfers_dir(&self.js))
            .and_then(|()| std::fs::File::create(part));
        let mut file = match create {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!("Restore of stream '{account} > {name}' can not be stored: {e}");
                None
            }
        };
        loop {
            let Some(msg) = next_within(handle, backup::RESTORE_STALL).await else {
                return Err((
                    bytes,
                    format!("restore for stream '{account} > {name}' is stalled"),
                ));
            };
            if msg.reply.is_empty() {
                return Err((
                    bytes,
                    format!(
                        "restore for stream '{account} > {name}' requires reply subject for each chunk"
                    ),
                ));
            }
            let reply = String::from_utf8_lossy(&msg.reply).into_owned();
            if msg.payload().is_empty() {
                return Ok((bytes, reply));
            }
            let written = match file.as_mut() {
                Some(f) => f.write_all(msg.payload()).map_err(|e| e.to_string()),
                None => Err("the restore could not be stored".to_string()),
            };
            if let Err(e) = written {
                let body = json!({
                    "type": "io.nats.jetstream.api.v1.stream_create_response",
                    "error": errors::STREAM_RESTORE.err(&e),
                });
                let body = serde_json::to_vec(&body).unwrap_or_default();
                handle.publish(&reply, "", None, &body).await;
                return Err((
                    bytes,
                    format!("restore for stream '{account} > {name}': {e}"),
                ));
            }
            bytes += msg.payload().len() as u64;
            handle.publish(&reply, "", None, &[]).await;
        }
    }

    /// Unpacks the archive, puts the stream in place and in the meta state
    /// with its consumers (one change), and opens it: its info.
    async fn finish_restore(
        &self,
        account: &str,
        config: StreamConfig,
        part: &Path,
        id: &str,
    ) -> Result<Value, ApiError> {
        let failed = |e: &dyn std::fmt::Display| errors::STREAM_RESTORE.err(e);
        let staging = transfers_dir(&self.js).join(id);
        let (tx, rx) = flume::bounded(1);
        {
            let (part, staging) = (part.to_path_buf(), staging.clone());
            std::thread::spawn(move || {
                let _ = tx.send(unpack(&part, &staging));
            });
        }
        let manifest = rx
            .recv_async()
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
        for c in &manifest.consumers {
            write_kept_state(&staging, &config.name, c, self.js.encryption.as_ref())
                .await
                .map_err(|e| failed(&e))?;
        }
        std::fs::write(staging.join(RESTORING_MARKER), b"").map_err(|e| failed(&e))?;
        let name = config.name.clone();
        if self.assignment(account, &name).is_ok() {
            return Err(errors::STREAM_NAME_EXIST_RESTORE_FAILED.error());
        }
        let target = stream_dir(&self.js, account, &name);
        if target.exists() {
            if !target.join(RESTORING_MARKER).exists() {
                return Err(failed(&format!("{} already exists", target.display())));
            }
            let _ = std::fs::remove_dir_all(&target);
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| failed(&e))?;
        }
        std::fs::rename(&staging, &target).map_err(|e| failed(&e))?;
        let a = StreamAssignment {
            account: account.to_string(),
            config,
            created: if manifest.created > 0 {
                manifest.created
            } else {
                now_ns()
            },
            shard: self
                .meta
                .borrow()
                .least_loaded_shard(self.commander.shards()),
        };
        let consumers: Vec<ConsumerAssignment> = manifest
            .consumers
            .into_iter()
            .map(|c| ConsumerAssignment {
                account: account.to_string(),
                stream: name.clone(),
                config: c.config,
                created: c.created,
            })
            .collect();
        let change = MetaChange::RestoreStream {
            stream: a.clone(),
            consumers: consumers.clone(),
        };
        if let Err(e) = self.commit(change) {
            let _ = std::fs::remove_dir_all(&target);
            return Err(e);
        }
        let _ = std::fs::remove_file(target.join(RESTORING_MARKER));
        if let Err(e) = self.open_on_shard(&a).await {
            let _ = self.commit(MetaChange::DeleteStream {
                account: account.to_string(),
                name: name.clone(),
            });
            let _ = std::fs::remove_dir_all(&target);
            return Err(e);
        }
        for c in &consumers {
            if let Err(e) = self.put_on_shard(&a, c).await {
                tracing::warn!(
                    "JetStream could not restore consumer '{account} > {name} > {}': {}",
                    c.name(),
                    e.description
                );
            }
        }
        self.info_body(&a, StreamOp::state(), false, false)
            .await
            .map(Value::Object)
    }

    /// Queues `$JS.EVENT.ADVISORY.STREAM.<event>.<stream>` with its `id`,
    /// `timestamp` and `domain` filled in.
    fn advise_transfer(&self, account: &str, event: &str, stream: &str, fields: Value) {
        let mut body = serde_json::Map::new();
        if let Value::Object(fields) = fields {
            let mut fields = fields.into_iter();
            // `type` first, then the common fields, as nats-server writes them.
            if let Some((k, v)) = fields.next() {
                body.insert(k, v);
            }
            body.insert("id".into(), json!(crate::nuid()));
            body.insert("timestamp".into(), json!(ts_rfc3339(now_ns())));
            // Without a `Nats-Request-Info` there is no client to name.
            body.extend(fields.filter(|(k, v)| !(k == "client" && v.is_null())));
        }
        if let Some(domain) = &self.js.domain {
            body.insert("domain".into(), json!(domain));
        }
        self.advisories.borrow_mut().push((
            account.to_string(),
            format!("$JS.EVENT.ADVISORY.STREAM.{event}.{stream}"),
            Value::Object(body),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_subjects_have_no_wildcards() {
        assert!(is_publish_subject("_INBOX.abc.def"));
        assert!(!is_publish_subject(""));
        assert!(!is_publish_subject("a.*"));
        assert!(!is_publish_subject("a.>"));
        assert!(!is_publish_subject("a..b"));
        assert!(!is_publish_subject("a b"));
    }
}
