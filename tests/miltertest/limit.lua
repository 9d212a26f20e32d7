-- Exchange's per-mailbox session limit (3): three connections of one mailbox pass MAIL, the
-- fourth gets 432 4.3.2 (SMFIR_REPLYCODE; run.sh checks the text); once one of the three
-- disconnects, the fourth's next MAIL passes.
dofile(dir .. "/common.lua")

local conns = {}
for i = 1, 3 do
  conns[i] = open_session()
  expect_mail(conns[i], "bob@contoso.com", SMFIR_CONTINUE, "session " .. i)
end
local fourth = open_session()
expect_mail(fourth, "bob@contoso.com", SMFIR_REPLYCODE, "fourth session")

mt.disconnect(conns[1])
-- The filter releases the lease when it reads QUIT, a moment after miltertest sent it: the
-- fourth session retries (as a client would after 432) for up to 5 s.
local reply = SMFIR_REPLYCODE
for _ = 1, 50 do
  mt.sleep(0.1)
  reply = mail(fourth, "bob@contoso.com")
  if reply ~= SMFIR_REPLYCODE then break end
end
if reply ~= SMFIR_CONTINUE then fail("fourth session after a QUIT: reply " .. string.char(reply)) end
for i = 2, 3 do mt.disconnect(conns[i]) end
mt.disconnect(fourth)
mt.echo("limit: ok")
