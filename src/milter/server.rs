//! The milter server: accept loops for every configured listener and one task per Postfix
//! milter connection (= one SMTP session). The task owns the socket and a
//! [`Session`]; every read and write has a timeout; a bad frame, a protocol violation or a
//! timeout closes that one connection with a warning naming the peer. However the connection
//! ends (QUIT, end-of-file, error, timeout, daemon shutdown), [`Session::finish`] runs once and
//! gives the session's lease back. It depends on [`crate::context`] (what the front ends
//! share), never on `daemon`, which only spawns [`serve`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{Command, MilterCodec};
use super::session::{Session, State};
use crate::context::Context;
use crate::endpoint::{accept_loop, ConnectionCaps, Listener, Stream};
use crate::sent_items::spool::Spool;

/// Settings of the milter front end.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A read (the next command) or a write (our reply) that takes longer closes the
    /// connection.
    pub timeout: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Where allowed messages are captured for Sent Items; `None`: no capture.
    pub spool: Option<Spool>,
}

/// Accepts connections until `shutdown`; each runs in its own task on `tracker`.
pub async fn serve(
    listener: Listener,
    ctx: Context,
    settings: Arc<Settings>,
    caps: ConnectionCaps,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let stop = shutdown.clone();
    accept_loop(
        "milter",
        listener,
        caps,
        stop,
        tracker,
        move |stream, peer| {
            let (ctx, settings, shutdown) = (ctx.clone(), settings.clone(), shutdown.clone());
            async move { handle_connection(stream, peer, ctx, &settings, shutdown).await }
        },
    )
    .await
}

/// Serves one milter connection to its end.
async fn handle_connection(
    stream: Stream,
    peer: String,
    ctx: Context,
    settings: &Settings,
    shutdown: CancellationToken,
) {
    tracing::debug!(peer, "milter connection opened");
    // With the no-reply flags Postfix sends packet after packet without waiting for a reply:
    // a delayed ACK from us would hold each one back (see `Stream`).
    let stream = stream.keep_quickack();
    let mut framed = Framed::new(stream, MilterCodec::new(settings.max_frame));
    let mut session = Session::new(ctx, settings.spool.clone(), peer.clone());
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                tracing::debug!(peer, "daemon shutting down; closing milter connection");
                break;
            }
            next = tokio::time::timeout(settings.timeout, framed.next()) => next,
        };
        let command = match next {
            Err(_) => {
                tracing::warn!(
                    peer,
                    "closing milter connection: nothing received for {:?}",
                    settings.timeout
                );
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(command))) => command,
            Ok(Some(Err(e))) => {
                tracing::warn!(peer, "closing milter connection: {e}");
                break;
            }
        };
        let quit = matches!(command, Command::Quit);
        let reply = match session.handle(command).await {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(peer, "closing milter connection: {e}");
                break;
            }
        };
        if let Some(reply) = reply {
            match tokio::time::timeout(settings.timeout, framed.send(reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(peer, "milter connection: cannot send reply: {e}");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        peer,
                        "milter connection: reply not taken within {:?}",
                        settings.timeout
                    );
                    break;
                }
            }
        }
        if quit || session.state() == State::Closed {
            break;
        }
    }
    session.finish().await;
    tracing::debug!(peer, "milter connection closed");
}
