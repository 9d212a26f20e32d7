//! One IMAP connection (`imap-client`'s task resolver over our transport) and the helpers
//! that turn the server's answers into [`StoreError`]s.

use std::borrow::Cow;
use std::future::Future;
use std::num::NonZeroU32;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use imap_client::client::tokio::MaybeTlsStream;
use imap_client::stream::{Error as StreamError, Stream};
use imap_client::tasks::resolver::Resolver;
use imap_client::tasks::tasks::capability::CapabilityTask;
use imap_client::tasks::tasks::list::ListTask;
use imap_client::tasks::tasks::login::LoginTask;
use imap_client::tasks::tasks::search::SearchTask;
use imap_client::tasks::tasks::select::SelectTask;
use imap_client::tasks::tasks::TaskError;
use imap_client::tasks::{SchedulerError, SchedulerEvent, Task};
use imap_next::client::{Client as NextClient, Options as NextOptions};
use imap_next::imap_types::core::{AString, Literal, LiteralMode, Vec1};
use imap_next::imap_types::datetime::DateTime;
use imap_next::imap_types::extensions::binary::{Literal8, LiteralOrLiteral8};
use imap_next::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_next::imap_types::response::{Capability, Code, GreetingKind, StatusBody};
use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::secret::Secret;
use tokio::net::TcpStream;

use super::tasks::PlainAuthzidTask;
use super::{LoginMode, Settings};
use crate::sent_items::store::{modified_utf7, StoreError};

/// One connection: `imap-client`'s task resolver over our transport.
pub(super) struct Connection {
    pub(super) resolver: Resolver,
    pub(super) stream: Stream<MaybeTlsStream>,
    pub(super) capabilities: Vec<Capability<'static>>,
    pub(super) server: String,
    pub(super) timeout: Duration,
    /// The TCP socket again (a duplicate descriptor), to look at it between commands without
    /// going through TLS or the protocol state (see [`Connection::idle_and_open`]).
    probe: Option<std::net::TcpStream>,
}

impl Connection {
    pub(super) fn new(
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
            probe: None,
        }
    }

    /// Keeps `probe`, a duplicate of the descriptor of the socket under this connection (TLS
    /// or not; see [`probe_of`]), for [`Connection::idle_and_open`]. Without one that check
    /// always passes.
    pub(super) fn keep_probe(&mut self, probe: Option<std::net::TcpStream>) {
        self.probe = probe;
    }

    /// Whether the connection, idle since its last command completed, can take the next one:
    /// the server has neither closed it nor sent anything. An idle IMAP session gets nothing
    /// unasked for except a goodbye (`* BYE` when the server stops or logs the session out),
    /// so bytes waiting, end of stream or an error all mean "do not reuse". One non-blocking
    /// `recv(MSG_PEEK)` on the socket (tokio keeps it non-blocking); nothing is consumed.
    pub(super) fn idle_and_open(&self) -> bool {
        let Some(probe) = &self.probe else {
            return true;
        };
        let mut byte = [0u8; 1];
        match probe.peek(&mut byte) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }

    pub(super) fn has(&self, capability: &Capability<'static>) -> bool {
        self.capabilities.contains(capability)
    }

    pub(super) fn literal_plus(&self) -> bool {
        self.has(&Capability::LiteralPlus)
    }

    /// Runs one command; the outer error means the connection is unusable (I/O, timeout,
    /// `BYE`, a protocol error), the inner one is the server's tagged `NO`/`BAD`.
    pub(super) async fn run<T: Task>(&mut self, task: T) -> Result<T::Output, StoreError> {
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

    pub(super) async fn greeting(&mut self) -> Result<(), StoreError> {
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

    pub(super) async fn refresh_capabilities(&mut self) -> Result<(), StoreError> {
        let caps = self
            .run(CapabilityTask::new())
            .await?
            .map_err(|e| no_or_bad(e, &self.server, "CAPABILITY"))?;
        self.capabilities = caps.into_inner();
        Ok(())
    }

    pub(super) async fn login(
        &mut self,
        settings: &Settings,
        mailbox: &str,
    ) -> Result<(), StoreError> {
        let secret = read_secret(settings)?;
        let server = self.server.clone();
        let outcome = match settings.login {
            LoginMode::MasterUser => {
                if self.has(&Capability::LoginDisabled) {
                    return Err(StoreError::configuration(format!(
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
                    StoreError::configuration(format!(
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
            // The master (or SASL) user's own credentials: wrong for every mailbox.
            Err(TaskError::UnexpectedNoResponse(body))
                if code_is(&body, b"AUTHENTICATIONFAILED") =>
            {
                let cause = format!(
                    "imap {server}: login of master user {} refused: {}{} (check master_password_file {})",
                    settings.master_user,
                    code_text(&body),
                    body.text,
                    settings.master_password_file.display()
                );
                Err(StoreError {
                    message: format!(
                        "imap {server}: login as {mailbox} (master user {}) refused: {}{}",
                        settings.master_user,
                        code_text(&body),
                        body.text
                    ),
                    ..StoreError::configuration(cause)
                })
            }
            Err(TaskError::UnexpectedNoResponse(body))
                if code_is(&body, b"AUTHORIZATIONFAILED") || body.code.is_none() =>
            {
                Err(StoreError::auth(format!(
                    "imap {server}: login as {mailbox} (master user {}) refused: {}{}",
                    settings.master_user,
                    code_text(&body),
                    body.text
                )))
            }
            // The server cannot take the login as submitgate sends it (mechanism, syntax).
            Err(TaskError::UnexpectedBadResponse(body)) => Err(StoreError::configuration(format!(
                "imap {server}: login rejected as malformed: {}{} (check `login`)",
                code_text(&body),
                body.text
            ))),
            Err(e) => Err(no_or_bad(e, &server, "login")),
        }
    }

    /// Whether `LIST "" <folder>` shows the folder as an existing mailbox.
    pub(super) async fn exists(&mut self, folder: &Mailbox<'static>) -> Result<bool, StoreError> {
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
    pub(super) async fn find(
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

/// A duplicate of `tcp`'s descriptor for [`Connection::keep_probe`] (`None` if the system
/// refuses one: the connection then goes without the check).
pub(super) fn probe_of(tcp: &TcpStream) -> Option<std::net::TcpStream> {
    tcp.as_fd()
        .try_clone_to_owned()
        .ok()
        .map(std::net::TcpStream::from)
}

/// Runs `fut` with a time limit, the elapsed case as a message.
pub(super) async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, String> {
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

pub(super) fn code_is(body: &StatusBody<'_>, name: &[u8]) -> bool {
    matches!(&body.code, Some(Code::Other(other)) if other.inner().eq_ignore_ascii_case(name))
}

fn code_text(body: &StatusBody<'_>) -> String {
    match &body.code {
        Some(Code::Other(other)) => format!("[{}] ", String::from_utf8_lossy(other.inner())),
        Some(code) => format!("[{code:?}] "),
        None => String::new(),
    }
}

/// A tagged `NO` is transient (the server may recover: quota, a lock) unless its code says
/// otherwise: `[TOOBIG]`, `[PARSE]`, `[CANNOT]`, `[UNKNOWN-CTE]` are permanent (this message
/// can never be taken), `[NOPERM]`, `[CONTACTADMIN]` configuration (rights the operator must
/// grant, for the mailboxes that meet it). `BAD` is permanent (the server cannot parse what we
/// send, which retrying will not change).
pub(super) fn no_or_bad(e: TaskError, server: &str, command: &str) -> StoreError {
    match e {
        TaskError::UnexpectedNoResponse(body) => {
            let message = format!(
                "imap {server}: {command} refused: {}{}",
                code_text(&body),
                body.text
            );
            let permanent = matches!(
                body.code,
                Some(Code::TooBig | Code::Parse | Code::UnknownCte)
            ) || code_is(&body, b"CANNOT");
            if permanent {
                StoreError::permanent(message)
            } else if code_is(&body, b"NOPERM") || code_is(&body, b"CONTACTADMIN") {
                StoreError::configuration_for_mailboxes(message.clone(), message)
            } else {
                StoreError::transient(message)
            }
        }
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

pub(super) fn mailbox_name(folder: &str) -> Result<Mailbox<'static>, StoreError> {
    Mailbox::try_from(modified_utf7(folder))
        .map_err(|e| StoreError::permanent(format!("imap: folder {folder:?} cannot be named: {e}")))
}

/// The message as an `APPEND` literal: `literal8` when it holds NUL bytes and the server has
/// `BINARY`; non-synchronizing with `LITERAL+` (saves a round trip).
pub(super) fn literal(
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
pub(super) fn read_secret(settings: &Settings) -> Result<String, StoreError> {
    let path = &settings.master_password_file;
    let text = std::fs::read_to_string(path).map_err(|e| {
        StoreError::configuration(format!(
            "imap: cannot read master_password_file {}: {e}",
            path.display()
        ))
    })?;
    let secret = text.lines().next().unwrap_or_default().to_string();
    if secret.is_empty() {
        return Err(StoreError::configuration(format!(
            "imap: master_password_file {} is empty",
            path.display()
        )));
    }
    Ok(secret)
}
