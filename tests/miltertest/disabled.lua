-- SMTP AUTH disabled for a mailbox (Set-CASMailbox) and for an organization
-- (Set-TransportConfig): MAIL gets SMFIR_REPLYCODE. miltertest returns only the reply command;
-- run.sh checks the exact text miltertest received (strace) and the audit log.
dofile(dir .. "/common.lua")

local conn = open_session()
expect_mail(conn, "blocked@contoso.com", SMFIR_REPLYCODE, "mailbox disabled")
mt.disconnect(conn)

conn = open_session()
expect_mail(conn, "anyone@fabrikam.com", SMFIR_REPLYCODE, "organization disabled")
-- The organization's exception for one mailbox passes on the same connection.
expect_mail(conn, "erp@fabrikam.com", SMFIR_CONTINUE, "mailbox exception")
mt.disconnect(conn)
mt.echo("disabled: ok")
