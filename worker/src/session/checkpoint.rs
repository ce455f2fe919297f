//! After a turn: the session's checkpoint and the files it made, in the object store.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::*;

/// How often a turn's checkpoint is tried before the thread is told it is not saved
/// (backoff 0.5 s doubling: about 30 s in all, plus the store client's own retries).
pub(super) const CHECKPOINT_TRIES: i64 = 6;
use crate::render::{self};
use crate::runtime::archive::ChangeKind;

impl State {
    /// Stores the session's checkpoint as turn `turn`'s and records it. Without a running
    /// session there is nothing new to store.
    #[tracing::instrument(name = "checkpoint", skip_all, fields(turn = turn))]
    pub(super) async fn checkpoint(&self, turn: i32) -> Result<(), Error> {
        let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let limit = self.ctx.config.worker.max_workspace_bytes;
        let file = session.checkpoint(limit).await?;
        let key = format!("checkpoints/{}/turn-{turn:05}.tar.gz", self.thread);
        let (content, size) = reopen(&file).map_err(Error::CheckpointFile)?;
        upload_file(
            self.ctx.store.objects().as_ref(),
            &ObjectPath::from(key.as_str()),
            content,
            size,
        )
        .await
        .map_err(Error::CheckpointStore)?;
        drop(file);
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.ctx
            .records
            .record_checkpoint(self.thread.as_str(), turn, &key, size, self.ctx.id.as_str())
            .await?;
        self.ctx
            .stats
            .checkpointed(size.unsigned_abs(), started.elapsed());
        Ok(())
    }

    /// Stores the checkpoint of turn `turn`, trying again with backoff up to
    /// [`CHECKPOINT_TRIES`] times while the prompt's `message` is kept from redelivery.
    /// On success nothing is left unsaved; on failure turn `turn` is (see `unsaved`).
    pub(super) async fn checkpoint_with_retries(
        &mut self,
        turn: i32,
        message: Option<&jetstream::Message>,
    ) -> Result<(), Error> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.checkpoint(turn).await {
                Ok(()) => {
                    // A checkpoint holds everything so far: an earlier turn the thread was
                    // told could not be saved is saved now, and the thread hears it.
                    if let Some(earlier) = self.unsaved.take() {
                        tracing::info!(turn = earlier, "unsaved changes stored");
                        if let Some(live) = self.live.as_mut() {
                            let _ = live
                                .replies
                                .create(render::unsaved_saved(earlier), None)
                                .await;
                        }
                    }
                    return Ok(());
                }
                // Trying again cannot help; the thread is told how far over it is.
                Err(err) if err.too_large().is_some() => return Err(err),
                Err(err) if tries < CHECKPOINT_TRIES && !self.lost.is_cancelled() => {
                    tracing::warn!(error = %err.chain(), tries, turn, "checkpoint failed; trying again");
                    if let Some(message) = message {
                        let _ = message.ack_with(jetstream::AckKind::Progress).await;
                    }
                    tokio::select! {
                        () = self.lost.cancelled() => {}
                        () = tokio::time::sleep(super::error::backoff(tries)) => {}
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err.chain(), tries, turn, "checkpoint failed");
                    self.unsaved = Some(turn);
                    return Err(err);
                }
            }
        }
    }

    /// Tries once more to store the checkpoint of a turn that could not be saved; tells the
    /// thread when it is.
    pub(super) async fn save_unsaved(&mut self) {
        let Some(turn) = self.unsaved else { return };
        match self.checkpoint(turn).await {
            Ok(()) => {
                self.unsaved = None;
                tracing::info!(turn, "unsaved checkpoint stored");
                if let Some(live) = self.live.as_mut() {
                    let _ = live.replies.create(render::unsaved_saved(turn), None).await;
                }
            }
            Err(err) => tracing::warn!(error = %err.chain(), turn, "checkpoint still failing"),
        }
    }

    /// Before the session is let go: its unsaved turn gets a last chance, and the thread is
    /// told plainly when it is lost.
    pub(super) async fn save_before_release(&mut self) {
        let Some(turn) = self.unsaved else { return };
        if let Err(err) = self.checkpoint_with_retries(turn, None).await {
            let text = render::unsaved_lost(turn, &err.chain());
            if let Some(live) = self.live.as_mut() {
                let _ = live.replies.create(text, None).await;
            }
        }
    }

    /// Uploads the files the turn added or changed; returns the artifact block.
    #[tracing::instrument(name = "artifacts", skip_all, fields(turn = turn))]
    pub(super) async fn collect_artifacts(
        &mut self,
        turn: i32,
        before: Option<crate::runtime::archive::Manifest>,
    ) -> (Option<String>, Vec<String>) {
        let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) else {
            return (None, Vec::new());
        };
        let files = session.files();
        let max_bytes = self.ctx.config.worker.max_artifact_bytes;
        let Ok(after) = files.manifest(max_bytes).await else {
            return (None, Vec::new());
        };
        let before = before.unwrap_or_default();
        let changes = after.changes_since(&before);
        // Every path the turn changed, deleted ones too: what a repository session may push.
        let all: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
        let block = self.artifact_block(turn, changes, &after, &files).await;
        (block, all)
    }

    /// Uploads the files a turn made and shows them as links.
    async fn artifact_block(
        &mut self,
        turn: i32,
        changes: Vec<crate::runtime::archive::Change>,
        after: &crate::runtime::archive::Manifest,
        files: &crate::runtime::SessionFiles,
    ) -> Option<String> {
        let max_bytes = self.ctx.config.worker.max_artifact_bytes;
        let (changed, too_large): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| c.path)
            .filter(|p| !p.split('/').any(|s| s.starts_with('.')))
            .take(200)
            .map(|path| {
                let size = after.files.get(&path).map_or(0, |f| f.size);
                (path, size)
            })
            .partition(|(_, size)| max_bytes == 0 || *size <= max_bytes);
        if changed.is_empty() && too_large.is_empty() {
            return None;
        }
        let changed: Vec<String> = changed.into_iter().map(|(path, _)| path).collect();
        let exported = files.export(&changed).await.ok()?;
        let prefix = format!("turn-{turn}/");
        let root = format!("artifacts/{}/{prefix}", self.thread);
        let mut links = Vec::new();
        let expires = common::now_ms() / 1000 + 30 * 24 * 3600;
        let token = self.ctx.signer.sign(&common::signing::LinkClaims {
            thread: self.thread.to_string(),
            prefix: prefix.clone(),
            expires_at_s: expires,
        });
        let base = self
            .ctx
            .config
            .gateway
            .public_url
            .trim_end_matches('/')
            .to_owned();
        for file in exported {
            let key = format!("{root}{}", file.path);
            let size = file.size;
            if let Err(err) = upload_file(
                self.ctx.store.objects().as_ref(),
                &ObjectPath::from(key.as_str()),
                file.content,
                size,
            )
            .await
            {
                tracing::error!(error = %err, path = %file.path, "artifact upload failed");
                continue;
            }
            let content_type = mime_guess::from_path(&file.path)
                .first_or_octet_stream()
                .to_string();
            let _ = self
                .ctx
                .records
                .record_artifact(
                    self.thread.as_str(),
                    turn,
                    &file.path,
                    &key,
                    size as i64,
                    &content_type,
                )
                .await;
            let encoded: Vec<String> = file
                .path
                .split('/')
                .map(|s| {
                    url::form_urlencoded::byte_serialize(s.as_bytes())
                        .collect::<String>()
                        .replace('+', "%20")
                })
                .collect();
            links.push(render::ArtifactLink {
                url: format!("{base}/a/{token}/{}", encoded.join("/")),
                path: file.path,
                size,
            });
        }
        let mut block = String::new();
        if !links.is_empty() {
            block = render::artifacts(
                &links,
                &format!("{base}/a/{token}/"),
                &format!("{base}/z/{token}"),
            );
        }
        if !too_large.is_empty() {
            if !block.is_empty() {
                block.push_str("\n\n");
            }
            block.push_str(&render::artifacts_not_uploaded(&too_large, max_bytes));
        }
        (!block.is_empty()).then_some(block)
    }
}

/// Object store parts of a streamed upload, and how many are in flight at once: memory
/// for an upload stays under `UPLOAD_PART * (UPLOAD_PARALLEL + 1)` whatever its size.
const UPLOAD_PART: usize = 8 * 1024 * 1024;
const UPLOAD_PARALLEL: usize = 2;

/// A fresh handle on a temporary file's content, and its size.
fn reopen(file: &tempfile::NamedTempFile) -> std::io::Result<(std::fs::File, u64)> {
    let content = file.reopen()?;
    let size = content.metadata()?.len();
    Ok((content, size))
}

/// Uploads `size` bytes read from `content` to `key`, streamed: one request when it fits in
/// a part, a multipart upload otherwise (aborted when it fails).
#[tracing::instrument(
    name = "upload",
    skip_all,
    fields(otel.kind = "client", object.key = %key, object.size = size)
)]
pub(super) async fn upload_file(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    content: std::fs::File,
    size: u64,
) -> Result<(), object_store::Error> {
    let io = |source: std::io::Error| object_store::Error::Generic {
        store: "local file",
        source: Box::new(source),
    };
    let mut reader = tokio::fs::File::from_std(content).take(size);
    if size <= UPLOAD_PART as u64 {
        let mut buffer = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader.read_to_end(&mut buffer).await.map_err(io)?;
        store.put(key, PutPayload::from(buffer)).await?;
        return Ok(());
    }
    let mut upload =
        WriteMultipart::new_with_chunk_size(store.put_multipart(key).await?, UPLOAD_PART);
    let mut buffer = vec![0; 256 * 1024];
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) => {
                let _ = upload.abort().await;
                return Err(io(err));
            }
        };
        if let Err(err) = upload.wait_for_capacity(UPLOAD_PARALLEL).await {
            let _ = upload.abort().await;
            return Err(err);
        }
        upload.write(&buffer[..read]);
    }
    upload.finish().await?;
    Ok(())
}
