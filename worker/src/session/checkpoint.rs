//! After a turn: the session's checkpoint and the files it made, in the object store.

use object_store::PutPayload;
use object_store::path::Path as ObjectPath;

use super::*;

/// How often a turn's checkpoint is tried before the thread is told it is not saved
/// (backoff 0.5 s doubling: about 30 s in all, plus the store client's own retries).
pub(super) const CHECKPOINT_TRIES: i64 = 6;
use crate::render::{self};
use crate::runtime::archive::ChangeKind;

impl State {
    /// Stores the session's checkpoint as turn `turn`'s and records it. Without a running
    /// session there is nothing new to store.
    pub(super) async fn checkpoint(&self, turn: i32) -> Result<(), Error> {
        let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) else {
            return Ok(());
        };
        let bytes = session.checkpoint().await?;
        let key = format!("checkpoints/{}/turn-{turn:05}.tar.gz", self.thread);
        let size = bytes.len() as i64;
        self.ctx
            .store
            .objects()
            .put(&ObjectPath::from(key.as_str()), PutPayload::from(bytes))
            .await
            .map_err(Error::CheckpointStore)?;
        self.ctx
            .records
            .record_checkpoint(self.thread.as_str(), turn, &key, size, self.ctx.id.as_str())
            .await?;
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
    pub(super) async fn collect_artifacts(
        &mut self,
        turn: i32,
        before: Option<crate::runtime::archive::Manifest>,
    ) -> Option<String> {
        let session = self.live.as_ref()?.session.as_ref()?;
        let files = session.files();
        let after = files.manifest().await.ok()?;
        let before = before.unwrap_or_default();
        let changed: Vec<String> = after
            .changes_since(&before)
            .into_iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .map(|c| c.path)
            .filter(|p| !p.split('/').any(|s| s.starts_with('.')))
            .take(200)
            .collect();
        if changed.is_empty() {
            return None;
        }
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
            let size = file.content.len() as u64;
            if let Err(err) = self
                .ctx
                .store
                .objects()
                .put(
                    &ObjectPath::from(key.as_str()),
                    PutPayload::from(file.content),
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
        if links.is_empty() {
            return None;
        }
        Some(render::artifacts(
            &links,
            &format!("{base}/a/{token}/"),
            &format!("{base}/z/{token}"),
        ))
    }
}
