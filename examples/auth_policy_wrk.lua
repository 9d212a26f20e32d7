-- wrk script for submitgate's Dovecot auth policy endpoint (examples/auth_policy_bench.sh).
-- Bodies exactly as Dovecot 2.3 sends them; logins rotate over 1000 mailboxes
-- (user0..user999@bench.example; every tenth is disabled in the benchmark's policy).
-- COMMAND=allow (default) or report; API_KEY when the endpoint has one.
local command = os.getenv("COMMAND") or "allow"
local key = os.getenv("API_KEY")
local counter = 0

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["User-Agent"] = "dovecot/auth-policy-client"
  if key then
    wrk.headers["X-API-Key"] = key
  end
end

function request()
  counter = counter + 1
  local login = "user" .. (counter % 1000) .. "@bench.example"
  local body = '{"device_id":"","login":"' .. login ..
    '","mechanism":"PLAIN","protocol":"smtp","pwhash":"08fd","remote":"127.0.0.1","session_id":""'
  if command == "report" then
    body = body .. ',"success":true,"policy_reject":false'
  end
  body = body .. ',"tls":false}'
  return wrk.format(nil, "/?command=" .. command, nil, body)
end
