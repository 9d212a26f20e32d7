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
-- The filter releases the lease when it reads QUIT; give it a moment.
mt.sleep(0.3)
expect_mail(fourth, "bob@contoso.com", SMFIR_CONTINUE, "fourth session after a QUIT")
for i = 2, 3 do mt.disconnect(conns[i]) end
mt.disconnect(fourth)
mt.echo("limit: ok")
