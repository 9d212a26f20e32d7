"""Shared helpers for the end-to-end scenario files (tests/e2e/*_scenarios.py).

Standard library only. run.sh sets the E2E_* environment variables, starts Postfix, Dovecot and
submitgate, and counts the "PASS name" / "FAIL name: why" lines that `Scenarios` prints.
"""

import base64
import email.utils
import json
import os
import re
import smtplib
import sys
import time
import traceback
import uuid

HOST = os.environ.get("E2E_HOST", "127.0.0.1")
SUBMISSION_PORT = int(os.environ.get("E2E_SUBMISSION_PORT", "10587"))
PASSWORD = os.environ.get("E2E_PASSWORD", "")
AUDIT_LOG = os.environ.get("E2E_AUDIT_LOG", "")
SUITE = os.environ.get("E2E_SUITE", os.path.basename(sys.argv[0]).split("_")[0])

# Every SMTP command must answer within this many seconds: a hang fails fast.
SMTP_TIMEOUT = 10
# The audit log is written off the request path: give its lines this long to appear.
AUDIT_WAIT = 5.0

# The texts Exchange Online sends (DESIGN.md), which submitgate answers by default.
TENANT_TEXT = "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
MAILBOX_TEXT = "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."
THREAD_LIMIT_TEXT = "STOREDRV.ClientSubmit; sender thread limit exceeded"

RECIPIENT = "someone@example.net"


class ScenarioFailure(AssertionError):
    """A scenario's expectation did not hold."""


def check(condition, message):
    if not condition:
        raise ScenarioFailure(message)


def text(reply):
    """An smtplib reply (code, bytes) as 'code text' on one line."""
    code, msg = reply
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return f"{code} {msg}".replace("\n", " / ")


class Submission:
    """One SMTP session on the submission service, authenticated with AUTH PLAIN."""

    def __init__(self, login=None, password=None, helo="e2e-client.submitgate-e2e.test"):
        self.login = login
        self.smtp = smtplib.SMTP(HOST, SUBMISSION_PORT, timeout=SMTP_TIMEOUT)
        code, msg = self.smtp.ehlo(helo)
        check(code == 250, f"EHLO answered {text((code, msg))}")
        if login is not None:
            token = base64.b64encode(
                b"\0" + login.encode() + b"\0" + (password or PASSWORD).encode()
            ).decode()
            self.auth_reply = self.smtp.docmd("AUTH", "PLAIN " + token)

    def authenticate_ok(self):
        check(
            self.auth_reply[0] == 235,
            f"AUTH PLAIN as {self.login} answered {text(self.auth_reply)}",
        )
        return self

    def mail(self, sender=None):
        reply = self.smtp.mail(sender or self.login)
        check(reply[0] == 250, f"MAIL FROM answered {text(reply)}")
        return reply

    def rcpt(self, recipient=RECIPIENT):
        return self.smtp.rcpt(recipient)

    def data(self, sender=None, recipient=RECIPIENT, subject="submitgate e2e"):
        """Sends DATA and the message; returns the final reply (code, bytes)."""
        try:
            return self.smtp.data(message(sender or self.login, recipient, subject))
        except smtplib.SMTPDataError as e:
            return (e.smtp_code, e.smtp_error)

    def rset(self):
        return self.smtp.rset()

    def quit(self):
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            self.smtp.close()

    def send(self, recipient=RECIPIENT, subject="submitgate e2e"):
        """MAIL, RCPT (must be 250), DATA (must be 250); returns the queue id."""
        self.mail()
        reply = self.rcpt(recipient)
        check(reply[0] == 250, f"RCPT TO answered {text(reply)}")
        reply = self.data(recipient=recipient, subject=subject)
        check(reply[0] == 250, f"end of DATA answered {text(reply)}")
        return queue_id(reply)


def message(sender, recipient, subject):
    return (
        f"From: <{sender}>\r\n"
        f"To: <{recipient}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\n"
        f"Message-ID: <{uuid.uuid4()}@submitgate-e2e.test>\r\n"
        "\r\n"
        "A message from submitgate's end-to-end tests.\r\n"
    ).encode()


def queue_id(reply):
    m = re.search(r"queued as ([0-9A-Za-z]+)", text(reply))
    check(m is not None, f"no queue id in {text(reply)}")
    return m.group(1)


def expect_reply(reply, code, enhanced, contains):
    """Asserts an SMTP reply's code, enhanced status code and a piece of its text."""
    t = text(reply)
    check(reply[0] == code, f"expected {code} {enhanced} ...{contains}, got {t}")
    check(t.startswith(f"{code} {enhanced} "), f"expected enhanced code {enhanced}, got {t}")
    check(contains in t, f"expected the text {contains!r}, got {t}")


class AuditLog:
    """The JSON-lines audit log written by submitgate."""

    def __init__(self, path=AUDIT_LOG):
        self.path = path

    def events(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ScenarioFailure(f"{self.path}:{n} is not JSON ({e}): {line[:200]}")
        return events

    def wait_until(self, predicate, timeout=AUDIT_WAIT):
        """Polls until predicate(events) is true; returns the events seen last."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if predicate(events) or time.monotonic() >= deadline:
                return events
            time.sleep(0.1)


def matching(events, **fields):
    return [e for e in events if all(e.get(k) == v for k, v in fields.items())]


class Scenarios:
    """Runs named scenarios in order; prints PASS/FAIL lines; exit code 1 if one failed."""

    def __init__(self):
        self.failed = 0
        self.passed = 0

    def run(self, name, fn, *args):
        full = f"{SUITE}/{name}"
        started = time.monotonic()
        try:
            detail = fn(*args)
        except ScenarioFailure as e:
            self.failed += 1
            print(f"FAIL {full}: {e}", flush=True)
            return None
        except Exception as e:  # a crash (timeout, refused connection) is a failure too
            self.failed += 1
            print(f"FAIL {full}: {type(e).__name__}: {e}", flush=True)
            for line in traceback.format_exc().splitlines():
                print(f"    {line}", flush=True)
            return None
        self.passed += 1
        took = time.monotonic() - started
        print(f"PASS {full} ({took:.2f} s)" + (f": {detail}" if detail else ""), flush=True)
        return True

    def exit(self):
        print(f"{SUITE} scenarios: {self.passed} passed, {self.failed} failed", flush=True)
        sys.exit(1 if self.failed else 0)
