//! The `imap` store: `APPEND`s each copy with `(\Seen)` and the submission time as internal
//! date into the mailbox's folder on an IMAP server (Dovecot), logged in on the mailbox's behalf
//! as a master user (`LOGIN "<mailbox>*<master>" secret`) or with `AUTHENTICATE PLAIN` and the
//! mailbox as authorization identity. TLS (none, STARTTLS or implicit) is rustls with the
//! system's roots or a configured CA file.
//!
//! The protocol is spoken by `imap-client`'s typed tasks over `imap-next`'s state machine (no
//! parsing here); this module owns the transport, the login, and the delivery steps:
//!
//! 1. reuse an idle logged-in connection of this mailbox, or connect and log in;
//! 2. when an earlier attempt's outcome is unknown: `EXAMINE` the folder and
//!    `UID SEARCH HEADER Message-ID "<id>"`; a hit counts as stored;
//! 3. `APPEND`; on `NO [TRYCREATE]`: `CREATE`, `SUBSCRIBE` and `APPEND` once more;
//! 4. put the connection back for [`Settings::idle_timeout`].
//!
//! A connection that fails in any way is dropped, never reused. Once the `APPEND` has been
//! started, a failure other than a tagged `NO`/`BAD` leaves the outcome unknown.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use imap_client::client::tokio::MaybeTlsStream;
use imap_client::stream::{Error as StreamError, Stream};
use imap_client::tasks::resolver::Resolver;
use imap_client::tasks::tasks::appenduid::AppendUidTask;
use imap_client::tasks::tasks::capability::CapabilityTask;
use imap_client::tasks::tasks::create::CreateTask;
use imap_client::tasks::tasks::list::ListTask;
use imap_client::tasks::tasks::login::LoginTask;
use imap_client::tasks::tasks::logout::LogoutTask;
use imap_client::tasks::tasks::search::SearchTask;
use imap_client::tasks::tasks::select::SelectTask;
use imap_client::tasks::tasks::TaskError;
use imap_client::tasks::{SchedulerError, SchedulerEvent, Task};
use imap_next::client::{Client as NextClient, Options as NextOptions};
use imap_next::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_next::imap_types::command::CommandBody;
use imap_next::imap_types::core::{AString, Literal, LiteralMode, Vec1};
use imap_next::imap_types::datetime::DateTime;
use imap_next::imap_types::extensions::binary::{Literal8, LiteralOrLiteral8};
use imap_next::imap_types::flag::Flag;
use imap_next::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_next::imap_types::response::{
    Capability, Code, CommandContinuationRequest, Data, GreetingKind, StatusBody, StatusKind,
};
use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::secret::Secret;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tokio_rustls::TlsConnector;

use super::{modified_utf7, SentCopy, SentItemsStore, StoreError, Stored};
use crate::sent_items::spool::EntryMeta;

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
    /// Limit for connecting, TLS, and each command.
    pub timeout: Duration,
}

/// IMAP delivery with a small pool of logged-in connections per mailbox.
pub struct ImapStore {
    settings: Settings,
    tls: Option<TlsConnector>,
    server_name: ServerName<'static>,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
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

struct Idle {
    conn: Connection,
    since: Instant,
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
            StoreError::permanent(format!(
                "imap: TLS server name {:?}: {e}",
                settings.tls_server_name
            ))
        })?;
        read_secret(&settings)?;
        Ok(ImapStore {
            settings,
            tls,
            server_name,
            idle: Mutex::new(HashMap::new()),
        })
    }

    fn server(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// An idle connection of `mailbox` that has not outlived the idle time.
    fn checkout(&self, mailbox: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        let conns = idle.get_mut(mailbox)?;
        let mut found = None;
        while let Some(c) = conns.pop() {
            if c.since.elapsed() < self.settings.idle_timeout {
                found = Some(c.conn);
                break;
            }
        }
        if conns.is_empty() {
            idle.remove(mailbox);
        }
        found
    }

    fn checkin(&self, mailbox: &str, conn: Connection) {
        if self.settings.idle_timeout.is_zero() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.entry(mailbox.to_string()).or_default().push(Idle {
                conn,
                since: Instant::now(),
            });
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
                    StoreError::transient(format!("imap {server}: STARTTLS refused: {e}"))
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
        conn.login(&self.settings, mailbox).await?;
        Ok(conn)
    }

    async fn handshake(
        &self,
        tls: &TlsConnector,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, StoreError> {
        within(
            self.settings.timeout,
            tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|e| StoreError::transient(format!("imap {}: TLS handshake: {e}", self.server())))
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
        // A reused connection may have been closed by the server meanwhile; then, if the
        // failure came before the APPEND was sent, try once on a fresh one.
        if let Some(mut conn) = self.checkout(mailbox) {
            match self.store_on(&mut conn, meta, maybe_stored, &bytes).await {
                Ok(stored) => {
                    self.checkin(mailbox, conn);
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
        self.checkin(mailbox, conn);
        Ok(stored)
    }

    async fn release_idle(&self, all: bool) {
        let expired: Vec<Connection> = match self.idle.lock() {
            Ok(mut idle) => {
                let mut out = Vec::new();
                for conns in idle.values_mut() {
                    let (keep, drop): (Vec<Idle>, Vec<Idle>) = conns
                        .drain(..)
                        .partition(|c| !all && c.since.elapsed() < self.settings.idle_timeout);
                    *conns = keep;
                    out.extend(drop.into_iter().map(|c| c.conn));
                }
                idle.retain(|_, v| !v.is_empty());
                out
            }
            Err(_) => Vec::new(),
        };
        // Polite, concurrent and bounded; the server copes with a dropped connection too.
        let logouts = expired.into_iter().map(|mut conn| async move {
            let _ = conn.run(LogoutTask::new()).await;
        });
        let _ = within(
            Duration::from_secs(2),
            futures_util::future::join_all(logouts),
        )
        .await;
    }
}

/// One connection: `imap-client`'s task resolver over our transport.
struct Connection {
    resolver: Resolver,
    stream: Stream<MaybeTlsStream>,
    capabilities: Vec<Capability<'static>>,
    server: String,
    timeout: Duration,
}

impl Connection {
    fn new(
        transport: MaybeTlsStream,
        greeting_done: bool,
        server: &str,
        timeout: Duration,
    ) -> Connection {
        let mut options = NextOptions::default();
        options.crlf_relaxed = true;
        options.discard_greeting = greeting_done;
        Connection {
            resolver: Resolver::new(NextClient::new(options)),
            stream: Stream::new(transport),
            capabilities: Vec::new(),
            server: server.to_string(),
            timeout,
        }
    }

    fn has(&self, capability: &Capability<'static>) -> bool {
        self.capabilities.contains(capability)
    }

    fn literal_plus(&self) -> bool {
        self.has(&Capability::LiteralPlus)
    }

    /// Runs one command; the outer error means the connection is unusable (I/O, timeout,
    /// `BYE`, a protocol error), the inner one is the server's tagged `NO`/`BAD`.
    async fn run<T: Task>(&mut self, task: T) -> Result<T::Output, StoreError> {
        let server = &self.server;
        match tokio::time::timeout(self.timeout, self.stream.next(self.resolver.resolve(task)))
            .await
        {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => Err(StoreError::transient(format!(
                "imap {server}: connection failed: {}",
                stream_error(&e)
            ))),
            Err(_) => Err(StoreError::transient(format!(
                "imap {server}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    async fn greeting(&mut self) -> Result<(), StoreError> {
        let server = self.server.clone();
        let event = tokio::time::timeout(self.timeout, self.stream.next(&mut self.resolver))
            .await
            .map_err(|_| {
                StoreError::transient(format!(
                    "imap {server}: no greeting within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| {
                StoreError::transient(format!("imap {server}: no greeting: {}", stream_error(&e)))
            })?;
        match event {
            SchedulerEvent::GreetingReceived(greeting) => {
                if greeting.kind == GreetingKind::Bye {
                    return Err(StoreError::transient(format!(
                        "imap {server}: server refused the connection: {}",
                        greeting.text
                    )));
                }
                match greeting.code {
                    Some(Code::Capability(caps)) => self.capabilities = caps.into_inner(),
                    _ => self.refresh_capabilities().await?,
                }
                Ok(())
            }
            other => Err(StoreError::transient(format!(
                "imap {server}: expected a greeting, got {other:?}"
            ))),
        }
    }

    async fn refresh_capabilities(&mut self) -> Result<(), StoreError> {
        let caps = self
            .run(CapabilityTask::new())
            .await?
            .map_err(|e| no_or_bad(e, &self.server, "CAPABILITY"))?;
        self.capabilities = caps.into_inner();
        Ok(())
    }

    async fn login(&mut self, settings: &Settings, mailbox: &str) -> Result<(), StoreError> {
        let secret = read_secret(settings)?;
        let server = self.server.clone();
        let outcome = match settings.login {
            LoginMode::MasterUser => {
                if self.has(&Capability::LoginDisabled) {
                    return Err(StoreError::permanent(format!(
                        "imap {server}: LOGIN is disabled here (use TLS, or login: sasl_authzid)"
                    )));
                }
                let user = format!(
                    "{mailbox}{}{}",
                    settings.master_separator, settings.master_user
                );
                let user = AString::try_from(user).map_err(|e| {
                    StoreError::permanent(format!("imap: mailbox {mailbox:?} as a login: {e}"))
                })?;
                let password = AString::try_from(secret).map_err(|_| {
                    StoreError::permanent(format!(
                        "imap: the secret in {} cannot be sent with LOGIN",
                        settings.master_password_file.display()
                    ))
                })?;
                self.run(LoginTask::new(user, Secret::new(password)))
                    .await?
            }
            LoginMode::SaslAuthzid => {
                let ir = self.has(&Capability::SaslIr);
                self.run(PlainAuthzidTask::new(
                    mailbox,
                    &settings.master_user,
                    &secret,
                    ir,
                ))
                .await?
            }
        };
        match outcome {
            Ok(caps) => {
                match caps {
                    Some(caps) => self.capabilities = caps.into_inner(),
                    None => self.refresh_capabilities().await?,
                }
                Ok(())
            }
            Err(TaskError::UnexpectedNoResponse(body))
                if code_is(&body, b"AUTHENTICATIONFAILED")
                    || code_is(&body, b"AUTHORIZATIONFAILED")
                    || body.code.is_none() =>
            {
                Err(StoreError::auth(format!(
                    "imap {server}: login as {mailbox} (master user {}) refused: {}{}",
                    settings.master_user,
                    code_text(&body),
                    body.text
                )))
            }
            Err(e) => Err(no_or_bad(e, &server, "login")),
        }
    }

    /// Whether `LIST "" <folder>` shows the folder as an existing mailbox.
    async fn exists(&mut self, folder: &Mailbox<'static>) -> Result<bool, StoreError> {
        let pattern = match folder {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(other) => String::from_utf8_lossy(other.as_ref()).into_owned(),
        };
        let reference = Mailbox::try_from("")
            .map_err(|e| StoreError::permanent(format!("imap: LIST reference: {e}")))?;
        let pattern = ListMailbox::try_from(pattern.clone()).map_err(|e| {
            StoreError::permanent(format!("imap: folder {pattern:?} as a LIST pattern: {e}"))
        })?;
        let listed = self
            .run(ListTask::new(reference, pattern))
            .await?
            .map_err(|e| no_or_bad(e, &self.server, "LIST"))?;
        Ok(listed.iter().any(|(name, _, attributes)| {
            name == folder
                && !attributes.iter().any(|a| {
                    let a = a.to_string();
                    a.eq_ignore_ascii_case("\\NonExistent") || a.eq_ignore_ascii_case("\\Noselect")
                })
        }))
    }

    /// `EXAMINE` + `UID SEARCH HEADER Message-ID`: the `(UIDVALIDITY, UID)` of a copy already
    /// in `folder`, if any. A folder the server says does not exist holds nothing.
    async fn find(
        &mut self,
        folder: &Mailbox<'static>,
        message_id: &str,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        let selected = match self.run(SelectTask::read_only(folder.clone())).await? {
            Ok(data) => data,
            // Only a folder known not to exist holds nothing (Dovecot 2.3 refuses without a
            // code, so ask LIST); any other refusal leaves the question open.
            Err(TaskError::UnexpectedNoResponse(body)) => {
                if code_is(&body, b"NONEXISTENT") || !self.exists(folder).await? {
                    return Ok(None);
                }
                return Err(no_or_bad(
                    TaskError::UnexpectedNoResponse(body),
                    &self.server,
                    "EXAMINE",
                ));
            }
            Err(e) => return Err(no_or_bad(e, &self.server, "EXAMINE")),
        };
        let id = AString::try_from(message_id.to_string()).map_err(|e| {
            StoreError::permanent(format!(
                "imap: Message-ID {message_id:?} cannot be searched: {e}"
            ))
        })?;
        let name = AString::try_from("Message-ID")
            .map_err(|e| StoreError::permanent(format!("imap: header name: {e}")))?;
        let uids = self
            .run(SearchTask::new(Vec1::from(SearchKey::Header(name, id))).with_uid(true))
            .await?
            .map_err(|e| no_or_bad(e, &self.server, "UID SEARCH"))?;
        Ok(uids
            .first()
            .map(|uid| (selected.uid_validity.map_or(0, NonZeroU32::get), uid.get())))
    }
}

/// Runs `fut` with a time limit, the elapsed case as a message.
async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))
}

fn stream_error(e: &StreamError<SchedulerError>) -> String {
    match e {
        StreamError::Closed => "closed by the server".to_string(),
        StreamError::Io(e) => e.to_string(),
        StreamError::State(SchedulerError::UnexpectedByeResponse(bye)) => {
            format!("server said BYE: {}", bye.text)
        }
        StreamError::State(e) => format!("protocol error: {e}"),
    }
}

fn code_is(body: &StatusBody<'_>, name: &[u8]) -> bool {
    matches!(&body.code, Some(Code::Other(other)) if other.inner().eq_ignore_ascii_case(name))
}

fn code_text(body: &StatusBody<'_>) -> String {
    match &body.code {
        Some(Code::Other(other)) => format!("[{}] ", String::from_utf8_lossy(other.inner())),
        Some(code) => format!("[{code:?}] "),
        None => String::new(),
    }
}

/// A tagged `NO` is transient (the server may recover: quota, a lock); `BAD` is permanent
/// (the server cannot parse what we send, which retrying will not change).
fn no_or_bad(e: TaskError, server: &str, command: &str) -> StoreError {
    match e {
        TaskError::UnexpectedNoResponse(body) => StoreError::transient(format!(
            "imap {server}: {command} refused: {}{}",
            code_text(&body),
            body.text
        )),
        TaskError::UnexpectedBadResponse(body) => StoreError::permanent(format!(
            "imap {server}: {command} rejected as malformed: {}{}",
            code_text(&body),
            body.text
        )),
        TaskError::MissingData(what) => {
            StoreError::transient(format!("imap {server}: {command}: missing {what}"))
        }
    }
}

fn mailbox_name(folder: &str) -> Result<Mailbox<'static>, StoreError> {
    Mailbox::try_from(modified_utf7(folder))
        .map_err(|e| StoreError::permanent(format!("imap: folder {folder:?} cannot be named: {e}")))
}

/// The message as an `APPEND` literal: `literal8` when it holds NUL bytes and the server has
/// `BINARY`; non-synchronizing with `LITERAL+` (saves a round trip).
fn literal(
    bytes: &[u8],
    binary: bool,
    literal_plus: bool,
) -> Result<LiteralOrLiteral8<'static>, StoreError> {
    let mode = if literal_plus {
        LiteralMode::NonSync
    } else {
        LiteralMode::Sync
    };
    match Literal::try_from(bytes.to_vec()) {
        Ok(mut lit) => {
            lit.set_mode(mode);
            Ok(LiteralOrLiteral8::Literal(lit))
        }
        Err(_) if binary => Ok(LiteralOrLiteral8::Literal8(Literal8 {
            data: Cow::Owned(bytes.to_vec()),
            mode,
        })),
        Err(e) => Err(StoreError::permanent(format!(
            "imap: the message cannot be sent as a literal ({e}) and the server lacks BINARY"
        ))),
    }
}

/// The internal date: the submission time in UTC, whole seconds.
pub fn internal_date(at: SystemTime) -> Result<DateTime, StoreError> {
    let utc: chrono::DateTime<chrono::Utc> = at.into();
    let secs = utc.timestamp();
    let whole = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0).ok_or_else(|| {
        StoreError::permanent(format!("imap: submission time {at:?} out of range"))
    })?;
    DateTime::try_from(whole.fixed_offset())
        .map_err(|e| StoreError::permanent(format!("imap: submission time {at:?}: {e}")))
}

/// The first line of the master password file; its content is never logged.
fn read_secret(settings: &Settings) -> Result<String, StoreError> {
    let path = &settings.master_password_file;
    let text = std::fs::read_to_string(path).map_err(|e| {
        StoreError::transient(format!(
            "imap: cannot read master_password_file {}: {e}",
            path.display()
        ))
    })?;
    let secret = text.lines().next().unwrap_or_default().to_string();
    if secret.is_empty() {
        return Err(StoreError::permanent(format!(
            "imap: master_password_file {} is empty",
            path.display()
        )));
    }
    Ok(secret)
}

fn tls_connector(settings: &Settings) -> Result<TlsConnector, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::permanent(format!("imap: TLS set-up: {e}")))?;
    let client = if settings.tls_verify {
        let mut roots = rustls::RootCertStore::empty();
        match &settings.ca_file {
            Some(path) => {
                use rustls::pki_types::{pem::PemObject, CertificateDer};
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        StoreError::permanent(format!("imap: ca_file {}: {e}", path.display()))
                    })?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(StoreError::permanent(format!(
                        "imap: ca_file {} holds no usable certificate",
                        path.display()
                    )));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!(error = %e, "imap: some system CA certificates could not be loaded");
                }
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(StoreError::permanent(
                        "imap: no system CA certificates found; set ca_file".to_string(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        tracing::warn!("imap: TLS certificate verification is off (tls_verify: false)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(client)))
}

/// `tls_verify: false`: accepts any certificate (handshake signatures are still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `STARTTLS` (imap-client has no task for it).
struct StartTlsTask;

impl Task for StartTlsTask {
    type Output = Result<(), TaskError>;

    fn command_body(&self) -> CommandBody<'static> {
        CommandBody::StartTLS
    }

    fn process_tagged(self, status_body: StatusBody<'static>) -> Self::Output {
        tagged_unit(status_body)
    }
}

/// `SUBSCRIBE` (imap-client has no task for it).
struct SubscribeTask(Mailbox<'static>);

impl Task for SubscribeTask {
    type Output = Result<(), TaskError>;

    fn command_body(&self) -> CommandBody<'static> {
        CommandBody::Subscribe {
            mailbox: self.0.clone(),
        }
    }

    fn process_tagged(self, status_body: StatusBody<'static>) -> Self::Output {
        tagged_unit(status_body)
    }
}

fn tagged_unit(status_body: StatusBody<'static>) -> Result<(), TaskError> {
    match status_body.kind {
        StatusKind::Ok => Ok(()),
        StatusKind::No => Err(TaskError::UnexpectedNoResponse(status_body)),
        StatusKind::Bad => Err(TaskError::UnexpectedBadResponse(status_body)),
    }
}

/// `AUTHENTICATE PLAIN` with an authorization identity (imap-client's own PLAIN task always
/// sends an empty one): `authzid NUL authcid NUL password`.
struct PlainAuthzidTask {
    line: Option<Vec<u8>>,
    ir: bool,
    capabilities: Option<Vec1<Capability<'static>>>,
}

impl PlainAuthzidTask {
    fn new(authzid: &str, authcid: &str, password: &str, ir: bool) -> PlainAuthzidTask {
        let mut line = Vec::with_capacity(authzid.len() + authcid.len() + password.len() + 2);
        line.extend_from_slice(authzid.as_bytes());
        line.push(0);
        line.extend_from_slice(authcid.as_bytes());
        line.push(0);
        line.extend_from_slice(password.as_bytes());
        PlainAuthzidTask {
            line: Some(line),
            ir,
            capabilities: None,
        }
    }
}

impl Task for PlainAuthzidTask {
    type Output = Result<Option<Vec1<Capability<'static>>>, TaskError>;

    fn command_body(&self) -> CommandBody<'static> {
        let initial_response = if self.ir {
            self.line.clone().map(|l| Secret::new(Cow::Owned(l)))
        } else {
            None
        };
        CommandBody::Authenticate {
            mechanism: AuthMechanism::Plain,
            initial_response,
        }
    }

    fn process_data(&mut self, data: Data<'static>) -> Option<Data<'static>> {
        if let Data::Capability(caps) = data {
            self.capabilities = Some(caps);
            None
        } else {
            Some(data)
        }
    }

    fn process_continuation_request_authenticate(
        &mut self,
        _continuation: CommandContinuationRequest<'static>,
    ) -> Result<AuthenticateData<'static>, CommandContinuationRequest<'static>> {
        // With an initial response, a further challenge means the server wants more than
        // PLAIN gives: cancel.
        match (self.ir, self.line.take()) {
            (false, Some(line)) => Ok(AuthenticateData::r#continue(line)),
            _ => Ok(AuthenticateData::Cancel),
        }
    }

    fn process_tagged(self, status_body: StatusBody<'static>) -> Self::Output {
        match status_body.kind {
            StatusKind::Ok => Ok(match status_body.code {
                Some(Code::Capability(caps)) => Some(caps),
                _ => self.capabilities,
            }),
            StatusKind::No => Err(TaskError::UnexpectedNoResponse(status_body)),
            StatusKind::Bad => Err(TaskError::UnexpectedBadResponse(status_body)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn internal_date_drops_subseconds() {
        let at = UNIX_EPOCH + Duration::new(1_718_022_896, 987_654_321);
        let date = internal_date(at).unwrap();
        assert_eq!(date.as_ref().timestamp(), 1_718_022_896);
        assert_eq!(date.as_ref().timestamp_subsec_nanos(), 0);
    }

    #[test]
    fn literals_fall_back_to_literal8_for_nul() {
        assert!(matches!(
            literal(b"a\r\nb", false, true).unwrap(),
            LiteralOrLiteral8::Literal(l) if l.mode() == LiteralMode::NonSync
        ));
        assert!(matches!(
            literal(b"a\0b", true, false).unwrap(),
            LiteralOrLiteral8::Literal8(_)
        ));
        assert!(literal(b"a\0b", false, false).is_err());
    }

    #[test]
    fn plain_with_authzid_orders_identities() {
        let task = PlainAuthzidTask::new("alice@contoso.com", "submitgate", "s3cret", true);
        assert_eq!(
            task.line.as_deref(),
            Some(&b"alice@contoso.com\0submitgate\0s3cret"[..])
        );
    }
}
