//! The gRPC port's accept loop: how many connections the server holds at
//! once, and when it stops taking new ones.
//!
//! Every connection costs memory (HTTP/2 state, buffers, a TLS session) and
//! a file descriptor, and HTTP/2's own limits bound what one connection may
//! hold, not how many there are. So each accepted connection takes a slot of
//! [`ConnectionLimit`] and gives it back when it closes; at the limit the
//! loop stops accepting, new clients wait in the kernel's backlog (their
//! connect succeeds, nothing is read from them), and the first connection to
//! close lets the next one in. A client retrying elsewhere is better served
//! by that than by a server that runs out of memory or descriptors.
//!
//! The loop also closes the listener as soon as the server starts draining.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::validate::ProvenCredential;

/// How long the accept loop pauses after `accept` fails (out of file
/// descriptors, typically), rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The most connections open at once; see the module docs.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    /// A limit of `max` connections (at least one).
    #[must_use]
    pub fn new(max: u32) -> Self {
        let max = usize::try_from(max.max(1)).unwrap_or(usize::MAX);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Waits for a free slot, warning once each time the limit is reached.
    async fn slot(&self) -> OwnedSemaphorePermit {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return slot;
        }
        tracing::warn!(
            max_connections = self.max,
            "connection limit reached; new connections wait until one closes"
        );
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

impl ConnectionLimit {
    /// Completes once every connection accepted within this limit has
    /// closed: with the listener closed, when a drain is over.
    pub async fn all_closed(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }
}

/// An accepted connection, holding its slot of the [`ConnectionLimit`]
/// until it is dropped.
#[derive(Debug)]
pub struct Connection<IO> {
    io: IO,
    peer: Peer,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Connection<IO> {
    /// The connection itself.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

/// Who is at the other end of a connection: its address, and the caller
/// credential it last proved ([`ProvenCredential`]), which lives as long as
/// the connection. Every request of the connection carries it: gRPC ones
/// as their connect info (read with [`crate::auth::Origin::of`]), HTTP/1.1
/// ones as an extension.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address, or its proxy's.
    pub addr: SocketAddr,
    /// The connection's proven caller credential.
    pub proven: Arc<ProvenCredential>,
}

/// For tonic, which attaches it to every request of the connection (in
/// place of its own `TcpConnectInfo`, so `Request::remote_addr` is `None`:
/// keyward reads the address from here).
impl<IO> Connected for Connection<IO> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accepts TCP connections on `listener` within `limit`, turns each into a
/// `T` with `establish` (nothing for plaintext, the handshake for TLS; `None`
/// drops the connection) and yields it. Each connection is established in a
/// task of its own, so a slow one delays only itself; it holds its slot from
/// `accept` on. Stops accepting, and closes the listener, when `draining`
/// turns true or the stream is dropped.
pub fn accept<T, F, Fut>(
    listener: TcpListener,
    limit: ConnectionLimit,
    mut draining: watch::Receiver<bool>,
    establish: F,
) -> ReceiverStream<io::Result<Connection<T>>>
where
    T: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let (ready, stream) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                slot = limit.slot() => slot,
                () = ready.closed() => break,
                () = started(&mut draining) => break,
            };
            let (socket, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
                () = ready.closed() => break,
                () = started(&mut draining) => break,
            };
            let _ = socket.set_nodelay(true);
            let established = establish(socket, addr);
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Some(io) = established.await {
                    let peer = Peer {
                        addr,
                        proven: Arc::default(),
                    };
                    let _ = ready
                        .send(Ok(Connection {
                            io,
                            peer,
                            _slot: slot,
                        }))
                        .await;
                }
            });
        }
        tracing::debug!("listener closed");
    });
    ReceiverStream::new(stream)
}

/// File descriptors the server needs beside its client connections: the
/// database pool, the database files, listeners, logs.
const OTHER_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files so that `max_connections` fit, as far
/// as the hard limit allows, and warns when they cannot: past the limit
/// `accept` fails (and is retried) with connection slots still free. Shells
/// and service managers often start processes with a soft limit of 1,024.
pub fn ensure_descriptors(max_connections: u32) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let wanted = u64::from(max_connections).saturating_add(OTHER_DESCRIPTORS);
    let mut limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= wanted {
        return;
    }
    let raised = limit.maximum.map_or(wanted, |hard| hard.min(wanted));
    if raised > soft {
        limit.current = Some(raised);
        if setrlimit(Resource::Nofile, limit).is_err() {
            limit.current = Some(soft);
        }
    }
    let now = limit.current.unwrap_or(u64::MAX);
    if now < wanted {
        tracing::warn!(
            open_files = now,
            max_connections,
            "the open-file limit is below --max-connections plus the server's own files; \
             raise it (LimitNOFILE=, ulimit -n) or lower --max-connections"
        );
    }
}

/// Completes once `draining` is true (or its sender is gone).
async fn started(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|draining| *draining).await;
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn at_the_limit_a_connection_waits_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_draining, not_draining) = watch::channel(false);
        let mut accepted = accept(
            listener,
            ConnectionLimit::new(2),
            not_draining,
            |socket, _| async move { Some(socket) },
        );
        let _first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        let _third = TcpStream::connect(addr).await.unwrap();
        let first = accepted.next().await.unwrap().unwrap();
        let _second_served = accepted.next().await.unwrap().unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(300), accepted.next()).await;
        assert!(
            waiting.is_err(),
            "a third connection was taken past the limit"
        );

        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), accepted.next()).await;
        assert!(
            matches!(third, Ok(Some(Ok(_)))),
            "the waiting connection is taken once one closes"
        );
    }

    #[tokio::test]
    async fn draining_closes_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (draining, receiver) = watch::channel(false);
        let mut accepted = accept(
            listener,
            ConnectionLimit::new(8),
            receiver,
            |socket, _| async move { Some(socket) },
        );
        draining.send(true).unwrap();
        assert!(accepted.next().await.is_none(), "the stream ends");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port no longer accepts"
        );
    }
}
