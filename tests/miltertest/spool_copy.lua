-- A message's spool entry is byte-identical to what the client sent (run.sh compares it with
-- expected-copy.eml). With SMFIP_HDR_LEADSPC negotiated, header values arrive as written
-- after the colon, folds as "\n" + whitespace; miltertest then writes "Name: value", i.e. it
-- puts the one space after the colon on the wire itself.
dofile(dir .. "/common.lua")

local conn = open_session()
if not mt.test_option(conn, SMFIP_HDR_LEADSPC) then
  fail("the filter did not negotiate SMFIP_HDR_LEADSPC")
end
expect_mail(conn, "bob@contoso.com", SMFIR_CONTINUE, "allowed mailbox")
local r = message(conn, "MTCOPY1", {"carol@example.org", "dave@example.net"}, {
    {"From", "Bob <bob@contoso.com>"},
    {"To", "carol@example.org,\n dave@example.net"},
    {"Subject", "a folded\n\tsubject line"},
    {"Message-ID", "<copy-1@client.example>"},
    {"X-Mailer", "miltertest"},
  }, {
    "First line.\r\n",
    ".leading dot stays as received\r\n",
    "\r\n",
    "Last line.\r\n",
  })
if r ~= SMFIR_CONTINUE then fail("end-of-message reply " .. string.char(r)) end
mt.disconnect(conn)
mt.echo("spool_copy: ok")
