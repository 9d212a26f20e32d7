#!/usr/bin/env python3
"""Sending limits and restricted senders against a real Postfix (issue 15).

Run by run.sh with limits_suite.sh's set-up: Postfix's submission service on 127.0.0.1:10587
has submitgate as its milter, a second one (E2E_LIMITS_POLICY_PORT) asks submitgate's policy
front end; logins are checked by Dovecot. Exchange's limits for everyone; erin@contoso.com is
blocked (until released) past 3 external recipients an hour, grace@fabrikam.com (for the rest
of the day) past 2 recipients a day. The memory limiter keeps its state in a state_dir.

One scenario of each kind, as the client sees it through Postfix: the 31st message in a minute
deferred (milter: at MAIL, verbatim; policy: at RCPT, with Postfix's prefix); the 10 001st
recipient of a day refused (554 5.2.0); 501 recipients refused (550 5.5.3); a mailbox blocked
by an outbound spam threshold (550 5.1.8), listed and released with `submitgate blocked-sender`
(the real CLI, through the control socket); the block and the counters after a restart of
submitgate.
"""

import json
import os
import signal
import smtplib
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e_lib import (  # noqa: E402
    HOST,
    PASSWORD,
    SMTP_TIMEOUT,
    AuditLog,
    Scenarios,
    Submission,
    check,
    matching,
    message,
    text,
)

CONFIG = os.environ.get("E2E_CONFIG", "")
POLICY_SUBMISSION_PORT = int(os.environ.get("E2E_LIMITS_POLICY_PORT", "10588"))
MILTER_PORT = int(os.environ.get("E2E_MILTER_PORT", "10041"))
SUBMITGATE_LOG = os.environ.get("E2E_SUBMITGATE_LOG", "")

RATE = "451 4.7.0 Message submission rate for this mailbox has exceeded the configured limit, try again later"
QUOTA = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
RECIP_LIMIT = "550 5.5.3 RESOLVER.ADR.RecipLimit; too many recipients"
RESTRICTED = "550 5.1.8 Access denied, bad outbound sender"

# The submitgate process: run.sh's until the restart scenario starts its own.
PID = {"pid": int(os.environ.get("E2E_SUBMITGATE_PID", "0")), "own": None}


class Session:
    """An authenticated SMTP session on one of the two submission services."""

    def __init__(self, login, port):
        self.login = login
        self.smtp = smtplib.SMTP(HOST, port, timeout=SMTP_TIMEOUT)
        self.smtp.ehlo("e2e-client.submitgate-e2e.test")
        self.smtp.login(login, PASSWORD)

    def send(self, recipients):
        """MAIL, an RCPT each, DATA when one was accepted: the replies as text, the first
        refusal ending the message early (as a client would), and the final reply last."""
        replies = []
        r = self.smtp.mail(self.login)
        replies.append(text(r))
        if r[0] != 250:
            return replies
        accepted = 0
        for rcpt in recipients:
            r = self.smtp.rcpt(rcpt)
            replies.append(text(r))
            if r[0] == 250:
                accepted += 1
        if accepted == 0:
            self.smtp.rset()
            return replies
        try:
            r = self.smtp.data(message(self.login, recipients[0], "limits e2e"))
        except smtplib.SMTPDataError as e:
            r = (e.smtp_code, e.smtp_error)
        replies.append(text(r))
        if r[0] != 250:
            self.smtp.rset()
        return replies

    def quit(self):
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            self.smtp.close()


def rcpts(n, domain="example.net", start=0):
    return [f"r{i}@{domain}" for i in range(start, start + n)]


def cli(*args):
    out = subprocess.run(
        [binary(), *args, "--config", CONFIG], capture_output=True, text=True, timeout=30
    )
    return out


def binary():
    return os.readlink(f"/proc/{PID['pid']}/exe") if PID["own"] is None else PID["own"][1]


def milter_rate():
    # Postfix asks the milter at MAIL: the client sees the milter's reply verbatim.
    s = Session("bob@contoso.com", int(os.environ.get("E2E_SUBMISSION_PORT", "10587")))
    try:
        for i in range(30):
            r = s.send(rcpts(1))
            check(r[-1].startswith("250"), f"message {i + 1}: {r}")
        r = s.send(rcpts(1))
        check(r == [RATE], f"the 31st message: expected exactly {RATE!r} at MAIL, got {r}")
    finally:
        s.quit()
    return "31st deferred at MAIL with 451 4.7.0"


def policy_rate():
    # The policy front end answers at RCPT; Postfix prefixes its own text.
    s = Session("carol@contoso.com", POLICY_SUBMISSION_PORT)
    try:
        for i in range(30):
            r = s.send(rcpts(1))
            check(r[-1].startswith("250"), f"message {i + 1}: {r}")
        r = s.send(rcpts(1))
        check(
            len(r) == 2 and r[1].startswith("451 4.7.0 ") and r[1].endswith(RATE[len("451 4.7.0 "):]),
            f"the 31st message: expected 451 4.7.0 …{RATE[10:]} at RCPT, got {r}",
        )
    finally:
        s.quit()
    return r[1]


def recipients_per_day():
    # 20 messages of 500 recipients through the milter: 10 000 today; the 10 001st is refused
    # at the end of its message, verbatim.
    s = Session("alice@contoso.com", int(os.environ.get("E2E_SUBMISSION_PORT", "10587")))
    started = time.monotonic()
    try:
        for i in range(20):
            r = s.send(rcpts(500, start=500 * i))
            check(r[-1].startswith("250"), f"message {i + 1}: {r[-1]}")
        r = s.send(rcpts(1, domain="example.org"))
        check(r[-1] == QUOTA, f"the 10 001st recipient: expected {QUOTA!r}, got {r}")
    finally:
        s.quit()
    # Through the policy service the same mailbox's next recipient is refused at RCPT.
    p = Session("alice@contoso.com", POLICY_SUBMISSION_PORT)
    try:
        r = p.send(rcpts(1, domain="example.org"))
        check(len(r) == 2 and r[1].startswith("554 5.2.0 "), f"policy: {r}")
        check(r[1].endswith("SubmissionQuotaExceededException"), f"policy: {r}")
    finally:
        p.quit()
    return f"10 000 recipients in {time.monotonic() - started:.1f} s, then {QUOTA[:9]}"


def recipients_per_message():
    # Milter: the whole message at the end of its data; policy: the 501st RCPT.
    s = Session("dave@fabrikam.com", int(os.environ.get("E2E_SUBMISSION_PORT", "10587")))
    try:
        r = s.send(rcpts(501))
        check(r[-1] == RECIP_LIMIT, f"milter: expected {RECIP_LIMIT!r}, got {r[-1]}")
    finally:
        s.quit()
    p = Session("printer@fabrikam.com", POLICY_SUBMISSION_PORT)
    try:
        r = p.send(rcpts(501))
        check(all(x.startswith("250") for x in r[1:501]), "the first 500 recipients")
        check(r[501].startswith("550 5.5.3 ") and r[501].endswith("too many recipients"), f"501st: {r[501]}")
        check(r[-1].startswith("250"), f"the message goes with 500: {r[-1]}")
    finally:
        p.quit()
    return r[501]


def block_and_release():
    port = int(os.environ.get("E2E_SUBMISSION_PORT", "10587"))
    s = Session("erin@contoso.com", port)
    try:
        r = s.send(rcpts(3))
        check(r[-1].startswith("250"), f"3 recipients: {r}")
        r = s.send(rcpts(1, domain="example.org"))
        check(r[-1] == RESTRICTED, f"the 4th external recipient: expected {RESTRICTED!r}, got {r}")
        r = s.send(rcpts(1, domain="contoso.com"))
        check(r == [RESTRICTED], f"restricted at MAIL: {r}")
    finally:
        s.quit()
    out = cli("blocked-sender", "list", "--json")
    check(out.returncode == 0, f"blocked-sender list: {out.stderr}")
    listed = json.loads(out.stdout)
    check([b["mailbox"] for b in listed] == ["erin@contoso.com"], f"listed: {listed}")
    check(listed[0]["until"] == 0, "block_user: until released")
    out = cli("blocked-sender", "remove", "erin@contoso.com")
    check(out.returncode == 0 and "released" in out.stdout, f"remove: {out.stdout} {out.stderr}")
    s = Session("erin@contoso.com", port)
    try:
        r = s.send(rcpts(1, domain="contoso.com"))
        check(r[-1].startswith("250"), f"after the release: {r}")
    finally:
        s.quit()
    events = AuditLog().wait_until(lambda ev: matching(ev, event="sender_released"))
    check(matching(events, event="sender_restricted", mailbox="erin@contoso.com"), "sender_restricted audited")
    check(matching(events, event="sender_released", mailbox="erin@contoso.com"), "sender_released audited")
    return "blocked, listed, released"


def restart():
    port = int(os.environ.get("E2E_SUBMISSION_PORT", "10587"))
    s = Session("grace@fabrikam.com", port)
    try:
        r = s.send(rcpts(3))
        check(r[-1] == RESTRICTED, f"3 recipients over a day threshold of 2: {r}")
    finally:
        s.quit()
    # A clean restart of submitgate: SIGTERM (counters saved), then the same binary and
    # configuration again.
    exe, cwd = binary(), os.readlink(f"/proc/{PID['pid']}/cwd")
    os.kill(PID["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{PID['pid']}") and time.monotonic() < deadline:
        with open(f"/proc/{PID['pid']}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                break  # exited; run.sh reaps it
        time.sleep(0.1)
    log = open(SUBMITGATE_LOG, "ab") if SUBMITGATE_LOG else subprocess.DEVNULL
    proc = subprocess.Popen([exe, "serve", "--config", CONFIG], cwd=cwd, stdout=log, stderr=log)
    PID["own"] = (proc, exe)
    wait_port(MILTER_PORT, proc)
    s = Session("grace@fabrikam.com", port)
    try:
        r = s.send(rcpts(1))
        check(r == [RESTRICTED], f"after the restart, still restricted: {r}")
    finally:
        s.quit()
    # alice's 10 000 recipients of the day came back with the counters.
    out = cli("mailbox", "get", "alice@contoso.com", "--json")
    check(out.returncode == 0, f"mailbox get: {out.stderr}")
    live = json.loads(out.stdout).get("live", {})
    day = live.get("usage", {}).get("recipients_last_day")
    check(day == 10_000, f"alice's recipients of the day after the restart: {day} (expected 10000)")
    return "restricted sender and counters restored"


def wait_port(port, proc, timeout=20):
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check(proc.poll() is None, f"the restarted submitgate exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the restarted submitgate does not listen on {port}")


def stop_own():
    """Stops the submitgate this script started (SIGTERM); it must exit 0."""
    if PID["own"] is None:
        return None
    proc = PID["own"][0]
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=15)
    check(rc == 0, f"the restarted submitgate exited {rc} on SIGTERM")
    return "exit 0"


if __name__ == "__main__":
    s = Scenarios()
    s.run("31st message in a minute deferred (milter)", milter_rate)
    s.run("31st message in a minute deferred (policy)", policy_rate)
    s.run("10 001st recipient of a day refused", recipients_per_day)
    s.run("501 recipients refused", recipients_per_message)
    s.run("restricted sender blocked and released with the CLI", block_and_release)
    s.run("restricted sender and counters survive a restart", restart)
    s.run("restarted submitgate exits 0 on SIGTERM", stop_own)
    s.exit()
