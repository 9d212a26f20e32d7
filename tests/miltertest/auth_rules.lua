-- Authentication policies (issue 16): {auth_type} with MAIL decides Basic vs OAuth for a
-- mailbox with allow_basic_auth_smtp: false; {tls_version} with HELO decides legacy TLS.
-- run.sh checks the exact reply texts miltertest received (strace) and the audit reasons.
dofile(dir .. "/common.lua")

-- MAIL FROM by `login` authenticated with `mechanism`; returns the reply command.
local function mail_with(conn, login, mechanism)
  mt.macro(conn, SMFIC_MAIL, "{auth_type}", mechanism, "{auth_authen}", login,
           "{mail_addr}", login)
  if mt.mailfrom(conn, "<" .. login .. ">") ~= nil then fail("mailfrom " .. login) end
  return mt.getreply(conn)
end

local conn = open_session()
if mail_with(conn, "oauthonly@contoso.com", "PLAIN") ~= SMFIR_REPLYCODE then
  fail("PLAIN for a mailbox without Basic authentication was not refused")
end
if mail_with(conn, "oauthonly@contoso.com", "XOAUTH2") ~= SMFIR_CONTINUE then
  fail("XOAUTH2 for a mailbox without Basic authentication was refused")
end
mt.disconnect(conn)

-- A TLS 1.1 session: refused for any mailbox of an organization that keeps the default.
conn = mt.connect("inet:" .. port .. "@127.0.0.1")
if conn == nil then fail("connect") end
if mt.conninfo(conn, "client.example", "192.0.2.10") ~= nil then fail("conninfo") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("conninfo reply") end
mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.1")
if mt.helo(conn, "client.example") ~= nil then fail("helo") end
if mail_with(conn, "someone@contoso.com", "XOAUTH2") ~= SMFIR_REPLYCODE then
  fail("a TLS 1.1 session was not refused")
end
mt.disconnect(conn)
mt.echo("auth_rules: ok")
