//! The object store behind artifacts and checkpoints: S3-compatible (Garage, MinIO, AWS,
//! …) or a local directory, chosen by configuration. Everything is written under
//! `object_store.prefix`.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;

use crate::config::{ObjectStoreConfig, ObjectStoreKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not configure the object store")]
    Build(#[source] object_store::Error),
    #[error("could not create the object store root {root}")]
    Root {
        root: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object store request failed")]
    Request(#[source] object_store::Error),
}

/// The configured store, with the prefix applied.
#[derive(Clone, Debug)]
pub struct Store {
    store: Arc<dyn ObjectStore>,
    s3: Option<Arc<AmazonS3>>,
    prefix: Path,
}

impl Store {
    pub fn from_config(config: &ObjectStoreConfig) -> Result<Self, Error> {
        let prefix = Path::from(config.prefix.as_str());
        match config.kind {
            ObjectStoreKind::S3 => {
                let mut builder = AmazonS3Builder::new()
                    .with_region(&config.region)
                    .with_bucket_name(&config.bucket)
                    .with_access_key_id(&config.access_key_id)
                    .with_secret_access_key(config.secret_access_key.expose())
                    .with_virtual_hosted_style_request(!config.path_style)
                    // A few quick retries for a blip; longer outages are the caller's to
                    // handle (and tell the thread about), not minutes inside one call.
                    .with_retry(object_store::RetryConfig {
                        backoff: object_store::BackoffConfig::default(),
                        max_retries: 3,
                        retry_timeout: std::time::Duration::from_secs(20),
                    });
                if !config.endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&config.endpoint)
                        .with_allow_http(config.endpoint.starts_with("http://"));
                }
                let s3 = Arc::new(builder.build().map_err(Error::Build)?);
                let store: Arc<dyn ObjectStore> = if config.prefix.is_empty() {
                    s3.clone()
                } else {
                    Arc::new(PrefixStore::new(
                        s3.clone() as Arc<dyn ObjectStore>,
                        prefix.clone(),
                    ))
                };
                Ok(Self {
                    store,
                    s3: Some(s3),
                    prefix,
                })
            }
            ObjectStoreKind::Fs => {
                std::fs::create_dir_all(&config.root).map_err(|source| Error::Root {
                    root: config.root.display().to_string(),
                    source,
                })?;
                let local = LocalFileSystem::new_with_prefix(&config.root).map_err(Error::Build)?;
                let store: Arc<dyn ObjectStore> = if config.prefix.is_empty() {
                    Arc::new(local)
                } else {
                    Arc::new(PrefixStore::new(local, prefix.clone()))
                };
                Ok(Self {
                    store,
                    s3: None,
                    prefix,
                })
            }
        }
    }

    /// The store, keys relative to the configured prefix.
    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// A presigned GET URL for `key`, when the backend supports them (S3 does; a local
    /// directory does not, and artifact links go through the gateway anyway).
    pub async fn presigned_get(
        &self,
        key: &Path,
        expires_in: Duration,
    ) -> Result<Option<String>, Error> {
        let Some(s3) = &self.s3 else {
            return Ok(None);
        };
        let full: Path = self.prefix.parts().chain(key.parts()).collect();
        let url = s3
            .signed_url(http::Method::GET, &full, expires_in)
            .await
            .map_err(Error::Request)?;
        Ok(Some(url.to_string()))
    }
}
