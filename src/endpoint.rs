//! Listener addresses in Postfix's own notation (`inet:host:port`, `unix:/path`), binding them,
//! and accepting connections from either kind behind one stream type, so that the same string
//! goes into `main.cf` and `submitgate.yaml`. An accepted TCP stream never waits for Nagle, and
//! a milter stream keeps delayed ACKs off (see [`Stream`]). [`cap`]: the per-front-end
//! connection caps the accept loop asks before serving a connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod cap;

pub use cap::{ConnectionCap, ConnectionCaps};

/// Where a front end listens (or where a client connects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `inet:host:port` (`inet:[::1]:port` for IPv6); port 0 picks a free port.
    Inet { host: String, port: u16 },
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
}

/// Why an endpoint string is not in Postfix notation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{0:?}: expected inet:HOST:PORT or unix:/PATH")]
    Syntax(String),
    #[error("{0:?}: invalid port")]
    Port(String),
}

impl Endpoint {
    /// Parses `inet:host:port`, `inet:[v6]:port`, `unix:/path` (Postfix notation). A bare
    /// `host:port` is taken as `inet:`, as Postfix does.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(EndpointError::Syntax(s.to_string()));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("inet:").unwrap_or(s);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| EndpointError::Syntax(s.to_string()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| EndpointError::Syntax(s.to_string()))?;
            (host, port)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| EndpointError::Syntax(s.to_string()))?
        };
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(EndpointError::Syntax(s.to_string()));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| EndpointError::Port(s.to_string()))?;
        Ok(Endpoint::Inet {
            host: host.to_string(),
            port,
        })
    }

    /// Binds a listener; a stale unix socket left by an earlier run is replaced, and the socket
    /// gets `mode`.
    pub async fn bind(&self, unix_mode: u32) -> io::Result<Listener> {
        match self {
            Endpoint::Inet { host, port } => {
                let l = TcpListener::bind((host.as_str(), *port)).await?;
                Ok(Listener::Tcp(l))
            }
            Endpoint::Unix(path) => {
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix_mode))?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// Connects to the endpoint (used by the CLI and the tests).
    pub async fn connect(&self) -> io::Result<Stream> {
        match self {
            Endpoint::Inet { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Ok(Stream::client(Either::Left(s)))
            }
            Endpoint::Unix(path) => Ok(Stream::client(Either::Right(
                UnixStream::connect(path).await?,
            ))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            Endpoint::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Removes a unix socket file left behind by a previous run; refuses to remove anything that is
/// not a socket, and refuses to steal a socket that a live process still answers on.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A bound listener of either kind.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Accepts one connection and names its peer for log lines.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, addr) = l.accept().await?;
                Ok((Stream::accepted_tcp(s), addr.to_string()))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((
                    Stream::client(Either::Right(s)),
                    format!("unix:{}", path.display()),
                ))
            }
        }
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Listener::Tcp(l) => {
                let a: SocketAddr = l.local_addr()?;
                Ok(Endpoint::Inet {
                    host: a.ip().to_string(),
                    port: a.port(),
                })
            }
            Listener::Unix(_, p) => Ok(Endpoint::Unix(p.clone())),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The accept loop every front end shares: until `shutdown`, each connection is accepted and,
/// when `caps` admit it, served by `handle(stream, peer)` in its own task on `tracker`, holding
/// its slots until it ends. A connection over a cap is closed at once (never left waiting in the
/// listen backlog, where Postfix would only time out) and logged by the cap. Accept errors (out
/// of file descriptors and the like) back off instead of spinning. `name` labels log lines.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: Listener,
    caps: ConnectionCaps,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handle: F,
) where
    F: Fn(Stream, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let Some(slots) = caps.admit(name, &peer) else {
                    drop(stream);
                    continue;
                };
                let connection = handle(stream, peer);
                tracker.spawn(async move {
                    connection.await;
                    drop(slots);
                });
            }
            Err(e) => {
                tracing::warn!("{name} listener: accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A connected stream of either kind (TCP or unix socket).
///
/// An accepted TCP stream has `TCP_NODELAY` set: replies are small and latency-bound, never
/// wait for Nagle. A front end whose peer sends several packets without waiting for a reply
/// asks for [`Stream::keep_quickack`]: with the no-reply milter flags Postfix writes several
/// small packets in a row with Nagle on, so each waits for the ACK of the one before, and a
/// peer that has nothing to send back delays that ACK by up to 40 ms. `TCP_QUICKACK` is then
/// set at once and again after every read that returned bytes, since Linux leaves quick-ACK
/// mode by itself after a few segments: one `setsockopt` per read, nothing on unix sockets (no
/// ACKs there). The policy front end does not ask: each of its requests is answered at once,
/// so the ACK rides on the reply, and the `setsockopt` would cost ~10 % of its CPU.
#[derive(Debug)]
pub struct Stream {
    inner: Either<TcpStream, UnixStream>,
    quickack: bool,
}

impl Stream {
    fn accepted_tcp(s: TcpStream) -> Stream {
        // Best effort: a socket that refuses the option still works, only slower.
        let _ = s.set_nodelay(true);
        Stream::client(Either::Left(s))
    }

    fn client(inner: Either<TcpStream, UnixStream>) -> Stream {
        Stream {
            inner,
            quickack: false,
        }
    }

    /// Keeps delayed ACKs off on a TCP stream: `TCP_QUICKACK` now and after every read (see
    /// above). Nothing for a unix stream, or where the system has no such option.
    pub fn keep_quickack(mut self) -> Stream {
        if let Either::Left(tcp) = &self.inner {
            self.quickack = set_quickack(tcp);
        }
        self
    }

    /// True when the stream re-arms `TCP_QUICKACK` after each read.
    pub fn quickack(&self) -> bool {
        self.quickack
    }
}

/// Sets `TCP_QUICKACK`; false where the system has no such option or refuses it, so that the
/// stream stops trying.
#[cfg(target_os = "linux")]
fn set_quickack(s: &TcpStream) -> bool {
    s.set_quickack(true).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn set_quickack(_: &TcpStream) -> bool {
    false
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.quickack && buf.filled().len() > before {
            if let Either::Left(tcp) = &this.inner {
                this.quickack = set_quickack(tcp);
            }
        }
        polled
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postfix_notation() {
        assert_eq!(
            Endpoint::parse("inet:127.0.0.1:10040").unwrap(),
            Endpoint::Inet {
                host: "127.0.0.1".into(),
                port: 10040
            }
        );
        assert_eq!(
            Endpoint::parse("inet:[::1]:10041").unwrap(),
            Endpoint::Inet {
                host: "::1".into(),
                port: 10041
            }
        );
        assert_eq!(
            Endpoint::parse("unix:/run/sg.sock").unwrap(),
            Endpoint::Unix("/run/sg.sock".into())
        );
        assert_eq!(
            Endpoint::parse("localhost:25").unwrap(),
            Endpoint::Inet {
                host: "localhost".into(),
                port: 25
            }
        );
        assert_eq!(
            Endpoint::parse("inet:[::1]:10041").unwrap().to_string(),
            "inet:[::1]:10041"
        );
    }

    /// A TCP stream that keeps quick ACKs asks for them again after each read (Linux drops
    /// quick-ACK mode once the connection looks interactive, e.g. after a reply went out); unix
    /// streams and client streams are left alone.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_tcp_streams_keep_quickack_after_each_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = Endpoint::parse("inet:127.0.0.1:0")
            .unwrap()
            .bind(0o600)
            .await
            .unwrap();
        let mut client = listener.local_endpoint().unwrap().connect().await.unwrap();
        assert!(!client.quickack());
        let (server, _) = listener.accept().await.unwrap();
        // Only when asked (the milter asks, the policy front end does not).
        assert!(!server.quickack());
        let mut server = server.keep_quickack();
        assert!(server.quickack());
        let Either::Left(tcp) = &server.inner else {
            panic!("not TCP")
        };
        assert!(tcp.nodelay().unwrap());
        let mut buf = [0u8; 16];
        for round in 0..20u8 {
            client.write_all(&[round; 3]).await.unwrap();
            server.read_exact(&mut buf[..3]).await.unwrap();
            let Either::Left(tcp) = &server.inner else {
                panic!("not TCP")
            };
            assert!(tcp.quickack().unwrap(), "round {round}");
            // A reply makes the connection interactive, which is when Linux stops quick ACKs.
            server.write_all(b"ok").await.unwrap();
            client.read_exact(&mut buf[..2]).await.unwrap();
        }

        let dir = tempfile::tempdir().unwrap();
        let unix = Endpoint::Unix(dir.path().join("s.sock"));
        let listener = unix.bind(0o600).await.unwrap();
        let _client = unix.connect().await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(!server.keep_quickack().quickack());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Endpoint::parse("inet:127.0.0.1").is_err());
        assert!(Endpoint::parse("inet:127.0.0.1:99999").is_err());
        assert!(Endpoint::parse("unix:").is_err());
        assert!(Endpoint::parse("inet::25").is_err());
        assert!(Endpoint::parse("inet:[::1]10041").is_err());
    }
}
