-- Helpers shared by the miltertest scripts. miltertest plays Postfix; these run against a
-- submitgate started by run.sh, which passes the listener as -D port=N and this directory as
-- -D dir=PATH.

-- Fails the script (miltertest exits non-zero) with a message.
function fail(msg)
  error("FAIL: " .. msg)
end

-- A negotiated, connected session that said HELO, like a Postfix submission session.
function open_session()
  local conn = mt.connect("inet:" .. port .. "@127.0.0.1")
  if conn == nil then fail("cannot connect to inet:" .. port .. "@127.0.0.1") end
  if mt.conninfo(conn, "client.example", "192.0.2.10") ~= nil then fail("conninfo") end
  if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("conninfo reply") end
  mt.macro(conn, SMFIC_HELO, "{tls_version}", "TLSv1.3")
  if mt.helo(conn, "client.example") ~= nil then fail("helo") end
  return conn
end

-- MAIL FROM by an authenticated login; returns the reply command.
function mail(conn, login)
  mt.macro(conn, SMFIC_MAIL, "{auth_type}", "PLAIN", "{auth_authen}", login,
           "{mail_addr}", login)
  if mt.mailfrom(conn, "<" .. login .. ">") ~= nil then fail("mailfrom " .. login) end
  return mt.getreply(conn)
end

-- Expects `reply` for MAIL FROM by `login`.
function expect_mail(conn, login, reply, what)
  local got = mail(conn, login)
  if got ~= reply then
    fail(what .. ": MAIL by " .. login .. " got reply " .. string.char(got) ..
         ", expected " .. string.char(reply))
  end
end

-- A whole message after an accepted MAIL: recipients, headers ({name, value}; miltertest
-- sends "Name: value", adding the space after the colon itself when the filter negotiated
-- SMFIP_HDR_LEADSPC), body chunks; returns the end-of-message reply.
function message(conn, queue_id, rcpts, headers, chunks)
  for i, rcpt in ipairs(rcpts) do
    if i == #rcpts then mt.macro(conn, SMFIC_RCPT, "i", queue_id) end
    if mt.rcptto(conn, "<" .. rcpt .. ">") ~= nil then fail("rcptto") end
  end
  if mt.data(conn) ~= nil then fail("data") end
  for _, h in ipairs(headers) do
    if mt.header(conn, h[1], h[2]) ~= nil then fail("header " .. h[1]) end
  end
  if mt.eoh(conn) ~= nil then fail("eoh") end
  for _, chunk in ipairs(chunks) do
    if mt.bodystring(conn, chunk) ~= nil then fail("body") end
  end
  if mt.eom(conn) ~= nil then fail("eom") end
  return mt.getreply(conn)
end
