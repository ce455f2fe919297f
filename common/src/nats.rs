//! NATS connection and the idempotent creation of the fleet's streams and buckets.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use proto::names::Names;

use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nats.wire_version cannot be written by this build")]
    WireVersion(#[source] proto::Error),
    #[error("could not connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("could not create or open stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("could not update stream {stream}")]
    StreamUpdate {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("could not create or open consumer {consumer} of stream {stream}")]
    Consumer {
        stream: String,
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("could not create or open KV bucket {bucket}")]
    Bucket {
        bucket: String,
        #[source]
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
}

/// Connects with unbounded reconnects; the first connection is retried until
/// `connect_timeout_ms` has passed. `nats.url` may list several servers, comma-separated. Pins the wire version this process writes
/// (`nats.wire_version`).
pub async fn connect(config: &NatsConfig, name: &str) -> Result<async_nats::Client, Error> {
    proto::pin_write_version(config.wire_version).map_err(Error::WireVersion)?;
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                other => tracing::debug!(%other, "NATS event"),
            }
        });
    let url = config.url.clone();
    // A cluster's nodes, comma-separated: the client takes each as a server to try (as one
    // string it is a single URL with an invalid port).
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    let connect = options.connect(servers);
    // retry_on_initial_connect returns at once and connects in the background; bound it.
    let client = connect.await.map_err(|source| Error::Connect {
        url: url.clone(),
        source,
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.connect_timeout_ms);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Connect {
                url,
                source: async_nats::ConnectError::from(async_nats::ConnectErrorKind::TimedOut),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(client)
}

/// Stream and bucket settings derived from configuration.
#[derive(Debug, Clone)]
pub struct Topology {
    pub names: Names,
    pub replicas: usize,
    pub events_max_age: Duration,
    pub duplicate_window: Duration,
    pub lease_ttl: Duration,
    /// Consumers the events stream may have (one per live session).
    pub max_consumers: u32,
}

impl Topology {
    pub fn from_config(nats: &NatsConfig, lease_ttl: Duration) -> Self {
        Self {
            names: Names::new(nats.prefix.clone()),
            replicas: nats.replicas,
            events_max_age: Duration::from_secs(nats.events_max_age_s),
            duplicate_window: Duration::from_secs(nats.duplicate_window_s),
            lease_ttl,
            max_consumers: nats.max_consumers,
        }
    }
}

/// The fleet's streams and buckets, created if absent.
#[derive(Clone)]
pub struct Fabric {
    pub js: jetstream::Context,
    pub events: stream::Stream,
    pub replies: stream::Stream,
    pub dead: stream::Stream,
    pub queue: stream::Stream,
    pub leases: kv::Store,
    pub workers: kv::Store,
    pub posts: kv::Store,
    /// Configured users pinned to their ids (`proto::kv::Directory`), kept by gateways.
    pub directory: kv::Store,
}

/// The configuration of a pull consumer that several processes share (the workers' claim
/// and dispatch consumers): whoever creates it first, the others open the same one.
pub fn shared_pull_config(name: String) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(name),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Creates (or opens, when they exist) every stream and bucket the fleet uses. Safe to
/// call from every process at start, concurrently.
pub async fn ensure_fabric(
    client: &async_nats::Client,
    topology: &Topology,
) -> Result<Fabric, Error> {
    let js = jetstream::new(client.clone());
    let names = &topology.names;
    // Every stream: file storage, the configured replicas, dedupe window.
    let stream = |name: String, subjects: String| stream::Config {
        name,
        subjects: vec![subjects],
        duplicate_window: topology.duplicate_window,
        num_replicas: topology.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    // Every bucket keeps only the latest value of a key.
    let bucket = |bucket: String, max_age: Duration| kv::Config {
        bucket,
        history: 1,
        max_age,
        num_replicas: topology.replicas,
        ..Default::default()
    };
    let mut events = ensure_stream(
        &js,
        stream::Config {
            max_age: topology.events_max_age,
            max_consumers: topology.max_consumers as i32,
            ..stream(names.events_stream(), names.events_subjects())
        },
    )
    .await?;
    // A stream made before the limit was set (or with a lower one): raise it.
    let wanted = topology.max_consumers as i32;
    if events.cached_info().config.max_consumers < wanted {
        let config = stream::Config {
            max_consumers: wanted,
            ..events.cached_info().config.clone()
        };
        js.update_stream(config)
            .await
            .map_err(|source| Error::StreamUpdate {
                stream: names.events_stream(),
                source: Box::new(source),
            })?;
        events.info().await.map_err(|source| Error::StreamUpdate {
            stream: names.events_stream(),
            source: Box::new(source),
        })?;
    }
    let replies = ensure_stream(
        &js,
        stream::Config {
            max_age: topology.events_max_age,
            ..stream(names.replies_stream(), names.replies_subjects())
        },
    )
    .await?;
    // Dead letters are kept until an operator deals with them.
    let dead = ensure_stream(&js, stream(names.dead_stream(), names.dead_subjects())).await?;
    let queue = ensure_stream(
        &js,
        stream::Config {
            retention: stream::RetentionPolicy::WorkQueue,
            ..stream(names.queue_stream(), names.queue_subjects())
        },
    )
    .await?;
    // The claim consumer exists before any worker does, so an autoscaler reading its lag
    // (KEDA's nats-jetstream scaler: num_pending + num_ack_pending) sees the queue even
    // when no worker runs, instead of falling back to the stream's last sequence.
    queue
        .get_or_create_consumer(
            &names.claim_consumer(),
            shared_pull_config(names.claim_consumer()),
        )
        .await
        .map_err(|source| Error::Consumer {
            stream: names.queue_stream(),
            consumer: names.claim_consumer(),
            source: Box::new(source),
        })?;
    // The bot's thread membership and post references are kept for as long as the session
    // records that refer to them (for ever, today): a session thread must keep working
    // after its events have expired. A bucket made with an expiry loses it here.
    let posts = ensure_bucket(&js, bucket(names.posts_bucket(), Duration::ZERO)).await?;
    keep_forever(&js, &format!("KV_{}", names.posts_bucket())).await?;
    // Leases and heartbeats lapse unless renewed.
    let leases = ensure_bucket(&js, bucket(names.leases_bucket(), topology.lease_ttl)).await?;
    let workers = ensure_bucket(&js, bucket(names.workers_bucket(), topology.lease_ttl)).await?;
    // Pins are kept until replaced: a lost pin would be re-resolved by name.
    let directory = ensure_bucket(&js, bucket(names.directory_bucket(), Duration::ZERO)).await?;
    Ok(Fabric {
        js,
        events,
        replies,
        dead,
        queue,
        leases,
        workers,
        posts,
        directory,
    })
}

/// Removes the max age of `stream` if it has one.
async fn keep_forever(js: &jetstream::Context, stream: &str) -> Result<(), Error> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::StreamUpdate {
        stream: stream.to_owned(),
        source,
    };
    let mut current = js.get_stream(stream).await.map_err(|e| err(Box::new(e)))?;
    let config = current
        .info()
        .await
        .map_err(|e| err(Box::new(e)))?
        .config
        .clone();
    if config.max_age.is_zero() {
        return Ok(());
    }
    js.update_stream(stream::Config {
        max_age: Duration::ZERO,
        ..config
    })
    .await
    .map_err(|e| err(Box::new(e)))?;
    Ok(())
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, Error> {
    let name = config.name.clone();
    js.get_or_create_stream(config)
        .await
        .map_err(|source| Error::Stream {
            stream: name,
            source,
        })
}

async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, Error> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let bucket = config.bucket.clone();
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another process created it between our look-up and our create.
        Err(source) => js
            .get_key_value(&bucket)
            .await
            .map_err(|_| Error::Bucket { bucket, source }),
    }
}
