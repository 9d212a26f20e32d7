//! The `imap` store: `APPEND`s each copy with `(\Seen)` and the submission time as internal
//! date into the mailbox's folder on an IMAP server (Dovecot), logged in on the mailbox's behalf
//! as a master user (`LOGIN "<mailbox>*<master>" secret`) or with `AUTHENTICATE PLAIN` and the
//! mailbox as authorization identity. TLS (none, STARTTLS or implicit) is rustls with the
//! system's roots or a configured CA file.
//!
//! The protocol is spoken by `imap-client`'s typed tasks over `imap-next`'s state machine (no
//! parsing here); this module owns the transport, the login, and the delivery steps:
//!
//! 0. wait for the mailbox's turn: copies of one mailbox are stored one after the other, over
//!    one session;
//! 1. reuse an idle logged-in connection of this mailbox (unless the server closed it or spoke
//!    on it meanwhile), or connect and log in;
//! 2. when an earlier attempt's outcome is unknown: `EXAMINE` the folder and
//!    `UID SEARCH HEADER Message-ID "<id>"`; a hit counts as stored;
//! 3. `APPEND`; on `NO [TRYCREATE]`: `CREATE`, `SUBSCRIBE` and `APPEND` once more;
//! 4. put the connection back in the pool, for at most [`Settings::idle_timeout`], beside at
//!    most [`Settings::max_idle_connections`] others (the one idle longest is logged out to
//!    make room).
//!
//! A connection that fails in any way is dropped, never reused. Once the `APPEND` has been
//! started, a failure other than a tagged `NO`/`BAD` leaves the outcome unknown.
//!
//! Beside this file: `connection` (one connection and the answer helpers), `pool` (the idle
//! connections and the mailboxes' turns), `tasks` (the commands imap-client lacks), `tls` (the
//! rustls client).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use imap_client::client::tokio::MaybeTlsStream;
use imap_client::tasks::tasks::appenduid::AppendUidTask;
use imap_client::tasks::tasks::create::CreateTask;
use imap_client::tasks::tasks::logout::LogoutTask;
use imap_client::tasks::tasks::TaskError;
use imap_next::imap_types::flag::Flag;
use imap_next::imap_types::response::{Capability, Code};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::{SentCopy, SentItemsStore, StoreError, Stored};
use crate::sent_items::spool::EntryMeta;
pub use connection::internal_date;
use connection::{
    code_is, literal, mailbox_name, no_or_bad, probe_of, read_secret, within, Connection,
};
use pool::Pool;
use tasks::{StartTlsTask, SubscribeTask};
use tls::tls_connector;

/// How the connection to the IMAP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (loopback or a trusted network only).
    None,
    /// Plain TCP, then `STARTTLS` before logging in.
    Starttls,
    /// TLS from the first byte (port 993).
    Implicit,
}

/// How submitgate logs in on behalf of a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMode {
    /// Dovecot master user: `LOGIN "<mailbox>*<master_user>" secret`.
    MasterUser,
    /// `AUTHENTICATE PLAIN` with authorization identity = mailbox, authentication identity =
    /// `master_user`.
    SaslAuthzid,
}

/// The `imap` store's checked settings (built by the configuration's `sent_items.store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Host name or address to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connection protection.
    pub tls: TlsMode,
    /// The name the server certificate must carry (default: `host`).
    pub tls_server_name: String,
    /// Trust these CA certificates (PEM) instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Verify the server certificate (on unless explicitly turned off).
    pub tls_verify: bool,
    /// How to log in on a mailbox's behalf.
    pub login: LoginMode,
    /// The master (or SASL authentication) user.
    pub master_user: String,
    /// File holding the master user's secret (first line); never logged.
    pub master_password_file: PathBuf,
    /// Separator between mailbox and master user for [`LoginMode::MasterUser`]
    /// (Dovecot's `auth_master_user_separator`).
    pub master_separator: String,
    /// How long an idle logged-in connection is kept for reuse.
    pub idle_timeout: Duration,
    /// How many idle logged-in connections are kept, across all mailboxes.
    pub max_idle_connections: usize,
    /// Limit for connecting, TLS, and each command.
    pub timeout: Duration,
}

/// Idle logged-in connections kept when `max_idle_connections` is not set: enough for the
/// bursts of a few senders beside the default workers, few enough to leave a Dovecot server's
/// process limits to its users.
pub const DEFAULT_MAX_IDLE: usize = 16;

/// IMAP delivery with a small, bounded pool of logged-in connections.
pub struct ImapStore {
    settings: Settings,
    tls: Option<TlsConnector>,
    server_name: ServerName<'static>,
    pool: Pool,
}

impl fmt::Debug for ImapStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapStore")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("tls", &self.settings.tls)
            .finish_non_exhaustive()
    }
}

impl ImapStore {
    /// Prepares the TLS client (reading the CA file) and checks that the master secret can be
    /// read. Nothing is connected yet.
    pub fn new(settings: Settings) -> Result<ImapStore, StoreError> {
        let tls = match settings.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Implicit => Some(tls_connector(&settings)?),
        };
        let server_name = ServerName::try_from(settings.tls_server_name.clone()).map_err(|e| {
            StoreError::configuration(format!(
                "imap: TLS server name {:?}: {e}",
                settings.tls_server_name
            ))
        })?;
        read_secret(&settings)?;
        Ok(ImapStore {
            pool: Pool::new(settings.max_idle_connections, settings.idle_timeout),
            settings,
            tls,
            server_name,
        })
    }

    fn server(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// Puts a connection back in the pool; what the pool lets go (this one, or the one idle
    /// longest) is logged out in the background.
    fn put_back(&self, mailbox: &str, conn: Connection) {
        if let Some(out) = self.pool.checkin(mailbox, conn) {
            tokio::spawn(log_out(vec![out]));
        }
    }

    async fn connect(&self, mailbox: &str) -> Result<Connection, StoreError> {
        let server = self.server();
        let limit = self.settings.timeout;
        let tcp = within(
            limit,
            TcpStream::connect((self.settings.host.as_str(), self.settings.port)),
        )
        .await
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| StoreError::transient(format!("imap {server}: cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let probe = probe_of(&tcp);
        let mut conn = match (self.settings.tls, &self.tls) {
            (TlsMode::Implicit, Some(tls)) => {
                let stream = self.handshake(tls, tcp).await?;
                let mut conn =
                    Connection::new(MaybeTlsStream::Rustls(stream), false, &server, limit);
                conn.greeting().await?;
                conn
            }
            (TlsMode::Starttls, Some(tls)) => {
                let mut plain = Connection::new(MaybeTlsStream::Plain(tcp), false, &server, limit);
                plain.greeting().await?;
                plain.run(StartTlsTask).await?.map_err(|e| {
                    StoreError::configuration(format!("imap {server}: STARTTLS refused: {e}"))
                })?;
                // Anything the server sent after its answer is dropped with the old state.
                let MaybeTlsStream::Plain(tcp) = plain.stream.into_inner() else {
                    return Err(StoreError::transient(format!(
                        "imap {server}: STARTTLS on a TLS connection"
                    )));
                };
                let stream = self.handshake(tls, tcp).await?;
                let mut conn =
                    Connection::new(MaybeTlsStream::Rustls(stream), true, &server, limit);
                conn.refresh_capabilities().await?;
                conn
            }
            _ => {
                let mut conn = Connection::new(MaybeTlsStream::Plain(tcp), false, &server, limit);
                conn.greeting().await?;
                conn
            }
        };
        conn.keep_probe(probe);
        conn.login(&self.settings, mailbox).await?;
        Ok(conn)
    }

    async fn handshake(
        &self,
        tls: &TlsConnector,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, StoreError> {
        let server = self.server();
        match within(
            self.settings.timeout,
            tls.connect(self.server_name.clone(), tcp),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(tls::handshake_error(&server, &e)),
            Err(e) => Err(StoreError::transient(format!(
                "imap {server}: TLS handshake: {e}"
            ))),
        }
    }

    /// Steps 2 and 3 of the module doc on one logged-in connection. A failure keeps the copy
    /// "maybe stored" unless this attempt proved it absent.
    async fn store_on(
        &self,
        conn: &mut Connection,
        meta: &EntryMeta,
        maybe_stored: bool,
        bytes: &[u8],
    ) -> Result<Stored, StoreError> {
        let mut still_maybe = maybe_stored;
        self.store_steps(conn, meta, &mut still_maybe, bytes)
            .await
            .map_err(|e| {
                let unknown = e.outcome_unknown || still_maybe;
                e.maybe_stored(unknown)
            })
    }

    async fn store_steps(
        &self,
        conn: &mut Connection,
        meta: &EntryMeta,
        maybe_stored: &mut bool,
        bytes: &[u8],
    ) -> Result<Stored, StoreError> {
        let folder = mailbox_name(&meta.folder)?;
        if *maybe_stored {
            match &meta.message_id {
                Some(message_id) => {
                    if let Some(found) = conn.find(&folder, message_id).await? {
                        return Ok(Stored {
                            appenduid: Some(found),
                            already_stored: true,
                        });
                    }
                    *maybe_stored = false;
                }
                None => tracing::warn!(
                    mailbox = %meta.mailbox,
                    queue_id = %meta.queue_id,
                    "earlier attempt may have stored this copy, but it has no Message-ID to look for; storing again"
                ),
            }
        }
        let message = literal(bytes, conn.has(&Capability::Binary), conn.literal_plus())?;
        let date = internal_date(meta.submitted_at)?;
        let append = || {
            AppendUidTask::new(folder.clone(), message.clone())
                .with_flags(vec![Flag::Seen])
                .with_date(date.clone())
        };
        let first = conn.run(append()).await.map_err(|e| e.maybe_stored(true))?;
        let result = match first {
            Err(TaskError::UnexpectedNoResponse(body)) if body.code == Some(Code::TryCreate) => {
                tracing::info!(mailbox = %meta.mailbox, folder = %meta.folder, "folder missing; creating it");
                match conn.run(CreateTask::new(folder.clone())).await? {
                    Ok(()) => {}
                    // Created meanwhile by someone else: fine.
                    Err(TaskError::UnexpectedNoResponse(b)) if code_is(&b, b"ALREADYEXISTS") => {}
                    Err(e) => return Err(no_or_bad(e, &conn.server, "CREATE")),
                }
                if let Err(e) = conn.run(SubscribeTask(folder.clone())).await? {
                    tracing::warn!(mailbox = %meta.mailbox, folder = %meta.folder, error = %e, "SUBSCRIBE failed");
                }
                conn.run(append()).await.map_err(|e| e.maybe_stored(true))?
            }
            other => other,
        };
        match result {
            Ok(uid) => Ok(Stored {
                appenduid: uid.map(|(uid, validity)| (validity.get(), uid.get())),
                already_stored: false,
            }),
            Err(e) => Err(no_or_bad(e, &conn.server, "APPEND")),
        }
    }
}

impl SentItemsStore for ImapStore {
    fn name(&self) -> &'static str {
        "imap"
    }

    fn idempotent(&self) -> bool {
        false
    }

    async fn deliver(&self, copy: SentCopy<'_>) -> Result<Stored, StoreError> {
        let SentCopy {
            meta,
            message,
            maybe_stored,
            ..
        } = copy;
        let mailbox = meta.mailbox.as_str();
        let bytes = message.read_to_vec().await.map_err(|e| {
            StoreError::transient(format!("imap: reading the spooled message: {e}"))
        })?;
        let _turn = self.pool.turn(mailbox).await;
        let mut stale = Vec::new();
        let reused = self.pool.checkout(mailbox, &mut stale);
        if !stale.is_empty() {
            tracing::debug!(mailbox = %mailbox, closed = stale.len(), "idle connection closed or spoken on by the server; not reused");
            // Whatever the server has said, it was not to this delivery: just close them.
            drop(stale);
        }
        // A reused connection may have been closed by the server meanwhile; then, if the
        // failure came before the APPEND was sent, try once on a fresh one.
        if let Some(mut conn) = reused {
            match self.store_on(&mut conn, meta, maybe_stored, &bytes).await {
                Ok(stored) => {
                    self.put_back(mailbox, conn);
                    return Ok(stored);
                }
                Err(e) if e.kind == super::FailureKind::Transient && !e.outcome_unknown => {
                    tracing::debug!(mailbox = %mailbox, error = %e, "reused connection failed; reconnecting");
                }
                Err(e) => return Err(e),
            }
        }
        let mut conn = self
            .connect(mailbox)
            .await
            .map_err(|e| e.maybe_stored(maybe_stored))?;
        let stored = self.store_on(&mut conn, meta, maybe_stored, &bytes).await?;
        self.put_back(mailbox, conn);
        Ok(stored)
    }

    async fn release_idle(&self, all: bool) {
        let expired = self.pool.take_expired(all);
        if !expired.is_empty() {
            log_out(expired).await;
        }
    }
}

/// Logs connections out: polite, concurrent and bounded (the server copes with a dropped
/// connection too).
async fn log_out(conns: Vec<Connection>) {
    let logouts = conns.into_iter().map(|mut conn| async move {
        let _ = conn.run(LogoutTask::new()).await;
    });
    let _ = within(
        Duration::from_secs(2),
        futures_util::future::join_all(logouts),
    )
    .await;
}

mod connection;
mod pool;
mod tasks;
mod tls;

#[cfg(test)]
mod tests;
