#!/usr/bin/env python3
"""Authentication policies (issue 16) against real Postfix and Dovecot, with real OAuth.

Run by run.sh with authpol_suite.sh's set-up: one submitgate serves the milter (submission
service 127.0.0.1:10587), the policy front end (a second submission service on
E2E_AUTHPOL_POLICY_SMTP_PORT) and the Dovecot auth policy endpoint. Both services offer
STARTTLS and accept TLS 1.0/1.1 (their OpenSSL level is lowered for them only). Dovecot checks
PLAIN/LOGIN passwords in its passwd-file and XOAUTH2/OAUTHBEARER bearer tokens through its
`oauth2` passdb, which introspects every token at the HTTP server this file starts.

Policies: contoso.com with the defaults (Basic allowed, legacy TLS refused, TLS not required),
alice off Basic authentication, erin allowed TLS 1.0/1.1, scanner required to use TLS;
fabrikam.com with every rule on but report_only (printer keeps Basic authentication).
"""

import base64
import http.server
import json
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e_lib import (  # noqa: E402
    HOST,
    PASSWORD,
    RECIPIENT,
    SMTP_TIMEOUT,
    SUBMISSION_PORT,
    AuditLog,
    Scenarios,
    check,
    expect_reply,
    matching,
    message,
    text,
)

OAUTH_PORT = int(os.environ["E2E_OAUTH_PORT"])
POLICY_SMTP_PORT = int(os.environ["E2E_AUTHPOL_POLICY_SMTP_PORT"])
TLS_DIR = os.environ["E2E_AUTHPOL_TLS_DIR"]
CONFIG = os.environ["E2E_CONFIG"]
BIN = os.environ["E2E_SUBMITGATE_BIN"]
AUDIT_PATH = os.environ["E2E_AUDIT_LOG"]
DOVECOT_CONF = os.environ["E2E_DOVECOT_CONF"]
DOVECOT_AUTHPOL_CONF = os.environ["E2E_AUTHPOL_DOVECOT_CONF"]

# Exchange Online's texts, which submitgate answers by default.
BASIC_TEXT = "Basic authentication is not supported for Client Submission."
LEGACY_TLS_TEXT = (
    "TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2."
)
TLS_REQUIRED_TEXT = "Must issue a STARTTLS command first."
# At AUTH Postfix fixes the code and prefix; Dovecot passes our text (no trailing period).
AUTH_PREFIX = "Error: authentication failed: "

audit = AuditLog()

# TLS 1.0/1.1 are deprecated in Python's ssl module; this file uses them on purpose.
warnings.filterwarnings("ignore", category=DeprecationWarning)


# --------------------------------------------------------------------------------------------
# The OAuth authorization server's token introspection endpoint (RFC 7662), as Dovecot's
# oauth2 passdb calls it with `introspection_mode = post`: form field `token`, JSON answer.
TOKENS = {}
INTROSPECTIONS = []


def token_for(login):
    t = TOKENS.get(login)
    if t is None:
        t = "e2e-" + base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=")
        TOKENS[login] = t
    return t


class Introspection(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = min(int(self.headers.get("Content-Length") or 0), 65536)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        user = next((u for u, t in TOKENS.items() if t == token), None)
        INTROSPECTIONS.append(user)
        body = json.dumps(
            {"active": True, "username": user, "scope": "https://outlook.office.com/SMTP.Send"}
            if user
            else {"active": False}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def start_introspection_server():
    server = http.server.ThreadingHTTPServer((HOST, OAUTH_PORT), Introspection)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------------------------
# An SMTP client that chooses its TLS version and SASL mechanism.
def tls_context(version):
    """A client context that verifies the suite's throwaway CA; `version` pins the protocol
    (e.g. "TLSv1_1"), None lets OpenSSL choose (TLS 1.3 here)."""
    ctx = ssl.create_default_context(cafile=os.path.join(TLS_DIR, "ca.pem"))
    if version:
        v = getattr(ssl.TLSVersion, version)
        ctx.minimum_version = v
        ctx.maximum_version = v
        # OpenSSL 3 signs TLS 1.0/1.1 handshakes with SHA-1: only security level 0 allows it.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def initial_response(mechanism, login, secret):
    if mechanism == "PLAIN":
        raw = b"\0" + login.encode() + b"\0" + secret.encode()
    elif mechanism == "XOAUTH2":
        raw = f"user={login}\x01auth=Bearer {secret}\x01\x01".encode()
    elif mechanism == "OAUTHBEARER":
        raw = f"n,a={login},\x01host={HOST}\x01port=587\x01auth=Bearer {secret}\x01\x01".encode()
    else:
        raise ValueError(mechanism)
    return base64.b64encode(raw).decode()


class Client:
    """One SMTP session: EHLO, optionally STARTTLS (+ EHLO), AUTH with one mechanism."""

    def __init__(self, login, mechanism="PLAIN", tls="default", port=SUBMISSION_PORT, secret=None):
        self.login = login
        self.smtp = smtplib.SMTP(HOST, port, timeout=SMTP_TIMEOUT)
        code, msg = self.smtp.ehlo("e2e-client.submitgate-e2e.test")
        check(code == 250, f"EHLO answered {text((code, msg))}")
        self.tls_version = None
        if tls is not None:
            code, msg = self.smtp.starttls(context=tls_context(None if tls == "default" else tls))
            check(code == 220, f"STARTTLS answered {text((code, msg))}")
            self.tls_version = self.smtp.sock.version()
            self.smtp.ehlo("e2e-client.submitgate-e2e.test")
        if secret is None:
            secret = token_for(login) if mechanism in ("XOAUTH2", "OAUTHBEARER") else PASSWORD
        reply = self.smtp.docmd("AUTH", f"{mechanism} {initial_response(mechanism, login, secret)}")
        if reply[0] == 334:
            # An OAuth failure: the server's JSON error, then the client's empty answer.
            reply = self.smtp.docmd("" if mechanism == "XOAUTH2" else "AQ==")
        self.auth_reply = reply

    def authenticated(self):
        check(
            self.auth_reply[0] == 235,
            f"AUTH as {self.login} answered {text(self.auth_reply)}",
        )
        return self

    def mail(self):
        return self.smtp.docmd("MAIL", f"FROM:<{self.login}>")

    def rcpt(self):
        return self.smtp.docmd("RCPT", f"TO:<{RECIPIENT}>")

    def send(self):
        """MAIL, RCPT, DATA: every step must succeed."""
        for step, reply in (("MAIL FROM", self.mail()), ("RCPT TO", self.rcpt())):
            check(reply[0] == 250, f"{step} as {self.login} answered {text(reply)}")
        try:
            reply = self.smtp.data(message(self.login, RECIPIENT, "submitgate e2e authpol"))
        except smtplib.SMTPDataError as e:
            reply = (e.smtp_code, e.smtp_error)
        check(reply[0] == 250, f"end of DATA as {self.login} answered {text(reply)}")

    def closed_by_server(self):
        """Whether the server has hung up (after a 421)."""
        try:
            self.smtp.sock.settimeout(5)
            self.smtp.putcmd("NOOP")
            return self.smtp.sock.recv(1) == b""
        except (OSError, smtplib.SMTPException):
            return True

    def quit(self):
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            self.smtp.close()


def refused_at_mail(login, reply, enhanced, contains, **kw):
    """AUTH succeeds, MAIL FROM is refused (the milter's verbatim reply)."""
    c = Client(login, **kw).authenticated()
    try:
        expect_reply(c.mail(), reply, enhanced, contains)
        return c
    finally:
        c.quit()


def sends(login, **kw):
    c = Client(login, **kw).authenticated()
    try:
        c.send()
        return c.tls_version
    finally:
        c.quit()


def wait_events(**fields):
    events = audit.wait_until(lambda evs: matching(evs, **fields))
    found = matching(events, **fields)
    check(found, f"no audit event with {fields}")
    return found


def dovecot_hook(on):
    """Switches Dovecot's auth policy hook and reloads Dovecot, then Postfix (an idle smtpd
    keeps its connection to the auth process it first talked to)."""
    shutil.copyfile(f"{DOVECOT_AUTHPOL_CONF}.{'hook' if on else 'oauth'}", DOVECOT_AUTHPOL_CONF)
    subprocess.run(["doveadm", "-c", DOVECOT_CONF, "reload"], check=True, timeout=20)
    subprocess.run(["postfix", "reload"], check=True, timeout=20, capture_output=True)
    time.sleep(1.5)


def cli(*args):
    out = subprocess.run(
        [BIN, *args, "--config", CONFIG], capture_output=True, text=True, timeout=30
    )
    check(out.returncode == 0, f"submitgate {' '.join(args)} failed: {out.stdout}{out.stderr}")
    return out.stdout


def until(predicate, timeout=10, step=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def auth_code(login, **kw):
    c = Client(login, **kw)
    try:
        return c.auth_reply[0]
    finally:
        c.quit()


def mail_reply(login, **kw):
    c = Client(login, **kw).authenticated()
    try:
        return c.mail()
    finally:
        c.quit()


# --------------------------------------------------------------------------------------------
# The milter (refusal at MAIL FROM), Dovecot's hook off.
def scenario_milter_plain_refused_xoauth2_allowed():
    refused_at_mail("alice@contoso.com", 550, "5.7.30", BASIC_TEXT)
    ev = wait_events(mailbox="alice@contoso.com", reason="basic_auth_disabled", front_end="milter")[0]
    check(ev["decision"] == "reject", f"{ev}")
    check(ev["sasl_method"] == "PLAIN" and ev["tls"] == "TLSv1.3", f"{ev}")
    check(ev["reply"] == f"550 5.7.30 {BASIC_TEXT}", f"{ev}")
    before = len(INTROSPECTIONS)
    version = sends("alice@contoso.com", mechanism="XOAUTH2")
    check(len(INTROSPECTIONS) > before, "Dovecot never asked the introspection endpoint")
    sent = wait_events(
        event="submission_completed", mailbox="alice@contoso.com", sasl_method="XOAUTH2"
    )
    check(sent[0]["tls"] == version, f"{sent[0]}")
    return f"PLAIN refused at MAIL, XOAUTH2 over {version} sent"


def scenario_oauthbearer_and_a_bad_token():
    sends("alice@contoso.com", mechanism="OAUTHBEARER")
    wait_events(event="submission_completed", mailbox="alice@contoso.com", sasl_method="OAUTHBEARER")
    bad = Client("alice@contoso.com", mechanism="XOAUTH2", secret="not-a-token")
    try:
        check(bad.auth_reply[0] == 535, f"a bad token answered {text(bad.auth_reply)}")
    finally:
        bad.quit()


def scenario_milter_legacy_tls_refused_with_421_and_hangup():
    c = Client("bob@contoso.com", tls="TLSv1_1").authenticated()
    try:
        check(c.tls_version == "TLSv1.1", f"negotiated {c.tls_version}")
        expect_reply(c.mail(), 421, "4.7.66", LEGACY_TLS_TEXT)
        check(c.closed_by_server(), "Postfix did not close the connection after the 421")
    finally:
        c.quit()
    ev = wait_events(mailbox="bob@contoso.com", reason="legacy_tls")[0]
    check(ev["tls"] == "TLSv1.1" and ev["decision"] == "defer", f"{ev}")
    # TLS 1.0 too; TLS 1.2 is fine.
    refused_at_mail("bob@contoso.com", 421, "4.7.66", LEGACY_TLS_TEXT, tls="TLSv1")
    sends("bob@contoso.com", tls="TLSv1_2")


def scenario_milter_legacy_tls_allowed_for_the_mailbox():
    version = sends("erin@contoso.com", tls="TLSv1_1")
    wait_events(event="submission_completed", mailbox="erin@contoso.com", tls="TLSv1.1")
    return f"erin sent over {version}"


def scenario_milter_tls_required():
    refused_at_mail("scanner@contoso.com", 530, "5.7.0", TLS_REQUIRED_TEXT, tls=None)
    ev = wait_events(mailbox="scanner@contoso.com", reason="tls_required")[0]
    check("tls" not in ev, f"{ev}")
    sends("scanner@contoso.com")
    # Without TLS, bob (no require_tls) still sends.
    sends("bob@contoso.com", tls=None)


def scenario_no_ehlo_after_starttls():
    """Postfix 3.7 takes AUTH and MAIL right after STARTTLS without a new EHLO, so a client can
    keep {tls_version} from ever coming with HELO: the suite (like examples/postfix/main.cf.milter)
    adds it to milter_mail_macros, and the TLS 1.1 session is still refused at MAIL."""
    seen = dict(mailbox="bob@contoso.com", reason="legacy_tls", front_end="milter")
    before = len(matching(audit.events(), **seen))
    s = smtplib.SMTP(HOST, SUBMISSION_PORT, timeout=SMTP_TIMEOUT)
    try:
        s.ehlo("e2e-client.submitgate-e2e.test")
        s.starttls(context=tls_context("TLSv1_1"))
        check(s.sock.version() == "TLSv1.1", f"negotiated {s.sock.version()}")
        reply = s.docmd("AUTH", f"PLAIN {initial_response('PLAIN', 'bob@contoso.com', PASSWORD)}")
        check(reply[0] == 235, f"AUTH without a second EHLO answered {text(reply)}")
        expect_reply(s.docmd("MAIL", "FROM:<bob@contoso.com>"), 421, "4.7.66", LEGACY_TLS_TEXT)
    finally:
        s.close()
    evs = audit.wait_until(lambda evs: len(matching(evs, **seen)) > before)
    new = matching(evs, **seen)[before:]
    check(len(new) == 1 and new[0]["tls"] == "TLSv1.1", f"{new}")
    return "AUTH accepted without EHLO; MAIL refused with the TLS text all the same"


def scenario_milter_report_only():
    c = Client("dave@fabrikam.com", tls="TLSv1_1").authenticated()
    try:
        c.send()
    finally:
        c.quit()
    evs = wait_events(event="would_refuse", mailbox="dave@fabrikam.com", front_end="milter")
    reasons = sorted(e["reason"] for e in evs)
    check(reasons == ["basic_auth_disabled", "legacy_tls"], f"{reasons}")
    check(any(e["reply"] == f"550 5.7.30 {BASIC_TEXT}" for e in evs), f"{evs}")
    wait_events(event="submission_completed", mailbox="dave@fabrikam.com", front_end="milter")
    # The mailbox's own Basic authentication; OAuth over TLS 1.3 breaks no rule.
    sends("printer@fabrikam.com")
    sends("grace@fabrikam.com", mechanism="XOAUTH2")
    time.sleep(0.5)
    for who in ("printer@fabrikam.com", "grace@fabrikam.com"):
        check(
            not matching(audit.events(), event="would_refuse", mailbox=who),
            f"{who} should break no rule",
        )


# --------------------------------------------------------------------------------------------
# The policy front end (refusal at RCPT), on the second submission service.
def scenario_policy_front_end():
    c = Client("alice@contoso.com", port=POLICY_SMTP_PORT).authenticated()
    try:
        check(c.mail()[0] == 250, "MAIL refused by the policy service's submission port")
        expect_reply(c.rcpt(), 550, "5.7.30", BASIC_TEXT)
    finally:
        c.quit()
    wait_events(mailbox="alice@contoso.com", reason="basic_auth_disabled", front_end="policy")
    sends("alice@contoso.com", mechanism="XOAUTH2", port=POLICY_SMTP_PORT)
    wait_events(
        event="submission_completed",
        mailbox="alice@contoso.com",
        front_end="policy",
        sasl_method="XOAUTH2",
    )
    c = Client("bob@contoso.com", tls="TLSv1_1", port=POLICY_SMTP_PORT).authenticated()
    try:
        c.mail()
        expect_reply(c.rcpt(), 421, "4.7.66", LEGACY_TLS_TEXT)
        check(c.closed_by_server(), "Postfix did not close the connection after the 421")
    finally:
        c.quit()
    wait_events(mailbox="bob@contoso.com", reason="legacy_tls", front_end="policy")
    c = Client("scanner@contoso.com", tls=None, port=POLICY_SMTP_PORT).authenticated()
    try:
        c.mail()
        expect_reply(c.rcpt(), 530, "5.7.0", TLS_REQUIRED_TEXT)
    finally:
        c.quit()
    sends("dave@fabrikam.com", tls=None, port=POLICY_SMTP_PORT)
    evs = wait_events(event="would_refuse", mailbox="dave@fabrikam.com", front_end="policy")
    check(
        sorted(e["reason"] for e in evs) == ["basic_auth_disabled", "tls_required"],
        f"{evs}",
    )


# --------------------------------------------------------------------------------------------
# Dovecot's auth policy hook (refusal at AUTH).
def scenario_hook_refuses_plain_at_auth_allows_xoauth2():
    dovecot_hook(True)
    c = Client("alice@contoso.com")
    try:
        expect_reply(c.auth_reply, 535, "5.7.8", AUTH_PREFIX + BASIC_TEXT.rstrip("."))
    finally:
        c.quit()
    ev = wait_events(event="auth_refused_by_policy", mailbox="alice@contoso.com")[0]
    check(ev["reason"] == "basic_auth_disabled" and ev["sasl_method"] == "PLAIN", f"{ev}")
    # The same mailbox with a token: authenticated and sent.
    sends("alice@contoso.com", mechanism="XOAUTH2")
    ok = wait_events(event="auth_succeeded", mailbox="alice@contoso.com", sasl_method="XOAUTH2")
    check(ok[-1].get("secured") is True, f"Postfix said TLS, the audit says {ok[-1]}")


def scenario_hook_tls_required_at_auth():
    c = Client("scanner@contoso.com", tls=None)
    try:
        expect_reply(c.auth_reply, 535, "5.7.8", AUTH_PREFIX + TLS_REQUIRED_TEXT.rstrip("."))
    finally:
        c.quit()
    ev = wait_events(event="auth_refused_by_policy", mailbox="scanner@contoso.com")[0]
    check(ev["reason"] == "tls_required" and ev["secured"] is False, f"{ev}")
    sends("scanner@contoso.com")


def scenario_hook_report_only_at_auth():
    sends("dave@fabrikam.com")
    evs = wait_events(event="would_refuse", mailbox="dave@fabrikam.com", front_end="auth_policy")
    check(evs[-1]["reason"] == "basic_auth_disabled", f"{evs}")


# --------------------------------------------------------------------------------------------
# The CLI and the report.
def scenario_cli_shows_sources_and_flips_rules():
    out = cli("mailbox", "get", "alice@contoso.com")
    check("AllowBasicAuthSmtp" in out and "False (mailbox)" in out, out)
    check("AllowLegacyTLSClients" in out and "False (default)" in out, out)
    out = cli("org", "get", "fabrikam")
    check("BasicAuthMode" in out and "ReportOnly (organization)" in out, out)
    data = json.loads(cli("org", "get", "fabrikam", "--json"))
    auth = data["authentication"]
    check(auth["allow_basic_auth_smtp"] == {"value": False, "source": "organization"}, f"{auth}")

    # fabrikam enforces: dave's PLAIN is refused at AUTH now; back to report_only.
    cli("org", "set", "fabrikam", "--basic-auth-mode", "enforce")
    refused = until(lambda: auth_code("dave@fabrikam.com") == 535)
    check(refused, "dave still authenticates 10 s after `org set --basic-auth-mode enforce`")
    cli("org", "set", "fabrikam", "--basic-auth-mode", "report_only")
    check(
        until(lambda: auth_code("dave@fabrikam.com") == 235),
        "dave still refused 10 s after `--basic-auth-mode report_only`",
    )
    # alice inherits contoso's Basic authentication again, then loses it.
    cli("mailbox", "set", "alice@contoso.com", "--allow-basic-auth-smtp", "inherit")
    check(
        until(lambda: auth_code("alice@contoso.com") == 235),
        "alice still refused after `mailbox set --allow-basic-auth-smtp inherit`",
    )
    cli("mailbox", "set", "alice@contoso.com", "--allow-basic-auth-smtp", "false")
    check(
        until(lambda: auth_code("alice@contoso.com") == 535),
        "alice still authenticates after `mailbox set --allow-basic-auth-smtp false`",
    )
    # The organization opts in to legacy TLS clients (Set-TransportConfig
    # -AllowLegacyTLSClients $true): bob's TLS 1.1 submission goes through.
    cli("org", "set", "contoso", "--allow-legacy-tls-clients", "true")
    check(
        until(lambda: mail_reply("bob@contoso.com", tls="TLSv1_1")[0] == 250),
        "bob's TLS 1.1 still refused after `org set --allow-legacy-tls-clients true`",
    )
    cli("org", "set", "contoso", "--allow-legacy-tls-clients", "false")
    check(
        until(lambda: mail_reply("bob@contoso.com", tls="TLSv1_1")[0] == 421),
        "bob's TLS 1.1 still allowed after `org set --allow-legacy-tls-clients false`",
    )


def scenario_report():
    audit.wait_until(lambda evs: False, timeout=0.5)  # let the writer catch up
    out = subprocess.run(
        [BIN, "report", "--audit", AUDIT_PATH, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    check(out.returncode == 0, out.stderr)
    doc = json.loads(out.stdout)
    rows = {r["sender"]: r for r in doc["rows"]}
    alice = rows["alice@contoso.com"]
    check(alice["auth_protocol"]["oauth"] >= 3 and alice["auth_protocol"]["basic"] == 0, f"{alice}")
    check(alice["auth_protocol_share_percent"]["oauth"] == 100.0, f"{alice}")
    check(alice["refusals"]["basic_auth_disabled"] >= 2, f"{alice}")
    check(alice["auth_refusals"]["basic_auth_disabled"] >= 1, f"{alice}")
    check(rows["bob@contoso.com"]["refusals"]["legacy_tls"] >= 3, f"{rows['bob@contoso.com']}")
    dave = rows["dave@fabrikam.com"]
    check(dave["would_refuse"]["basic_auth_disabled"] >= 2, f"{dave}")
    check(dave["would_refuse_at_auth"]["basic_auth_disabled"] >= 1, f"{dave}")
    table = subprocess.run(
        [BIN, "report", "--audit", AUDIT_PATH], capture_output=True, text=True, timeout=30
    ).stdout
    for piece in ("Basic %", "OAuth %", "Basic auth disabled", "Would be refused"):
        check(piece in table, f"{piece!r} not in the report table:\n{table}")
    check("Would be refused (report_only rules), submissions:" in table, table)
    return next(l for l in table.splitlines() if l.startswith("Would be refused"))


def main():
    server = start_introspection_server()
    s = Scenarios()
    try:
        s.run("milter: PLAIN refused at MAIL, XOAUTH2 of the same mailbox sent",
              scenario_milter_plain_refused_xoauth2_allowed)
        s.run("OAUTHBEARER sent, a bad token refused", scenario_oauthbearer_and_a_bad_token)
        s.run("milter: TLS 1.1/1.0 refused with 421 and hang-up",
              scenario_milter_legacy_tls_refused_with_421_and_hangup)
        s.run("milter: mailbox allowed legacy TLS sends over TLS 1.1",
              scenario_milter_legacy_tls_allowed_for_the_mailbox)
        s.run("milter: TLS required", scenario_milter_tls_required)
        s.run("milter: no EHLO after STARTTLS, TLS 1.1 still refused ({tls_version} with MAIL)",
              scenario_no_ehlo_after_starttls)
        s.run("milter: report_only lets through and audits would_refuse", scenario_milter_report_only)
        s.run("policy front end: Basic, legacy TLS, TLS required, report_only",
              scenario_policy_front_end)
        s.run("auth policy hook: PLAIN refused at AUTH, XOAUTH2 allowed",
              scenario_hook_refuses_plain_at_auth_allows_xoauth2)
        s.run("auth policy hook: TLS required at AUTH", scenario_hook_tls_required_at_auth)
        s.run("auth policy hook: report_only at AUTH", scenario_hook_report_only_at_auth)
        s.run("CLI: get shows sources, set flips the rules", scenario_cli_shows_sources_and_flips_rules)
        s.run("report: authentication protocol, refusals, would be refused", scenario_report)
    finally:
        server.shutdown()
    s.exit()


if __name__ == "__main__":
    main()
