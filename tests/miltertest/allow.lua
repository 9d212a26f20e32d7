-- An allowed authenticated submission: MAIL and end-of-message answered "continue"; an
-- unauthenticated one is accepted at MAIL (nothing to count or copy).
dofile(dir .. "/common.lua")

local conn = open_session()
expect_mail(conn, "bob@contoso.com", SMFIR_CONTINUE, "allowed mailbox")
local r = message(conn, "MTALLOW1", {"carol@example.org"},
                  {{"From", "bob@contoso.com"}, {"Subject", "allowed"}},
                  {"hello\r\n"})
if r ~= SMFIR_CONTINUE then fail("end-of-message reply " .. string.char(r)) end
mt.disconnect(conn)

local anon = mt.connect("inet:" .. port .. "@127.0.0.1")
if mt.conninfo(anon, "client.example", "192.0.2.11") ~= nil then fail("conninfo") end
if mt.mailfrom(anon, "<someone@example.net>") ~= nil then fail("mailfrom") end
if mt.getreply(anon) ~= SMFIR_ACCEPT then fail("unauthenticated MAIL not accepted") end
mt.disconnect(anon)
mt.echo("allow: ok")
