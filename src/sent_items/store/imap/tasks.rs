//! The IMAP commands `imap-client` has no task for: `STARTTLS`, `SUBSCRIBE`, and
//! `AUTHENTICATE PLAIN` with an authorization identity.

use std::borrow::Cow;

use imap_client::tasks::tasks::TaskError;
use imap_client::tasks::Task;
use imap_next::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_next::imap_types::command::CommandBody;
use imap_next::imap_types::core::Vec1;
use imap_next::imap_types::mailbox::Mailbox;
use imap_next::imap_types::response::{
    Capability, Code, CommandContinuationRequest, Data, StatusBody, StatusKind,
};
use imap_next::imap_types::secret::Secret;

/// `STARTTLS` (imap-client has no task for it).
pub(super) struct StartTlsTask;

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
pub(super) struct SubscribeTask(pub(super) Mailbox<'static>);

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
pub(super) struct PlainAuthzidTask {
    pub(super) line: Option<Vec<u8>>,
    ir: bool,
    capabilities: Option<Vec1<Capability<'static>>>,
}

impl PlainAuthzidTask {
    pub(super) fn new(authzid: &str, authcid: &str, password: &str, ir: bool) -> PlainAuthzidTask {
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
