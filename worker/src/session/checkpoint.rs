//! After a turn: the session's checkpoint and the files it made, in the object store.

use object_store::PutPayload;
use object_store::path::Path as ObjectPath;

use super::*;
use crate::render::{self};
use crate::runtime::archive::ChangeKind;

impl State {
    pub(super) async fn checkpoint(&self, turn: i32) {
        let Some(session) = self.live.as_ref().and_then(|l| l.session.as_ref()) else {
            return;
        };
        match session.checkpoint().await {
            Ok(bytes) => {
                let key = format!("checkpoints/{}/turn-{turn:05}.tar.gz", self.thread);
                let size = bytes.len() as i64;
                match self
                    .ctx
                    .store
                    .objects()
                    .put(&ObjectPath::from(key.as_str()), PutPayload::from(bytes))
                    .await
                {
                    Ok(_) => {
                        let _ = self
                            .ctx
                            .records
                            .record_checkpoint(
                                self.thread.as_str(),
                                turn,
                                &key,
                                size,
                                self.ctx.id.as_str(),
                            )
                            .await;
                    }
                    Err(err) => tracing::error!(error = %err, "checkpoint upload failed"),
                }
            }
            Err(err) => tracing::error!(error = %err, "checkpoint failed"),
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
