-- Two messages on one connection take one lease: solo@contoso.com may hold one session, and
-- its second message on the same connection passes, while a second connection is refused.
dofile(dir .. "/common.lua")

local conn = open_session()
for i = 1, 2 do
  expect_mail(conn, "solo@contoso.com", SMFIR_CONTINUE, "message " .. i)
  local r = message(conn, "MTTWO" .. i, {"carol@example.org"},
                    {{"Subject", "message " .. i}}, {"body " .. i .. "\r\n"})
  if r ~= SMFIR_CONTINUE then fail("message " .. i .. " end-of-message") end
  if mt.abort(conn) ~= nil then fail("abort") end
end
local other = open_session()
expect_mail(other, "solo@contoso.com", SMFIR_REPLYCODE, "second connection")
mt.disconnect(other)
mt.disconnect(conn)
mt.echo("two_messages: ok")
