//! Faults a test or a fault run injects into one fleet without touching the others that
//! share the same services: a TCP proxy in front of a service that can be cut off (every
//! open connection reset, new ones refused) and restored, or made to swallow the service's
//! answers (requests still reach it: the client never learns what happened). [`run`] is
//! `loadtest faults`, the combined run that stops the services themselves (its own
//! instance of them).

pub mod run;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A loopback TCP proxy to `upstream`. While cut, connections are closed at once and open
/// ones are dropped: to its clients the service is unreachable.
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    mute: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let mute = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(
            listener,
            upstream,
            cut.clone(),
            mute.clone(),
            generation.clone(),
            stop.clone(),
        ));
        Ok(Self {
            addr,
            cut,
            mute,
            generation,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Clears [`Proxy::cut`] and [`Proxy::mute`].
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.mute.store(false, Ordering::SeqCst);
    }

    /// Keeps forwarding what clients send but drops what the service answers: a request
    /// takes effect while its client waits for an answer that never comes (an answer lost
    /// on the way back).
    pub fn mute(&self) {
        self.mute.store(true, Ordering::SeqCst);
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    mute: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((client, _)) = accepted else { continue };
        if cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut cuts = generation.subscribe();
        let mute = mute.clone();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let up = async {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                let _ = server_write.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if mute.load(Ordering::SeqCst) {
                        continue;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = client_write.shutdown().await;
            };
            tokio::select! {
                _ = async { tokio::join!(up, down) } => {}
                _ = cuts.changed() => {}
            }
        });
    }
    connections.shutdown().await;
}
