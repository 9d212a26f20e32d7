#!/usr/bin/env python3
"""Milter front end against a real Postfix (issue 3, "Real Postfix").

Run by run.sh with milter_suite.sh's set-up: Postfix's submission service on 127.0.0.1:10587
has submitgate as its milter (smtpd_milters, milter_default_action = tempfail); logins are
checked by Dovecot. Policies: contoso.com enabled (alice disabled for her mailbox, limit 3),
fabrikam.com disabled (printer enabled for its mailbox).

What only the milter can do is checked here: the client sees the exact 5.7.139 and 432 4.3.2
texts with no Postfix prefix; the fourth concurrent session is refused until one of the three
QUITs (sessions are counted, not submissions in flight); each accepted message is copied once
into the sender's Sent Items in the real Dovecot (IMAP APPEND as Dovecot's master user), marked
\\Seen and byte-identical to what the client sent (issue 4, "End to end"); a mailbox with
sent_items.enabled: false gets no copy.
"""

import email.utils
import imaplib
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e_lib import (  # noqa: E402
    MAILBOX_TEXT,
    TENANT_TEXT,
    THREAD_LIMIT_TEXT,
    AuditLog,
    Scenarios,
    Submission,
    check,
    matching,
    text,
)

SUBMITGATE_BIN = os.environ.get("SUBMITGATE_BIN", "submitgate")
CONFIG = os.environ.get("E2E_CONFIG", "submitgate.yaml")
IMAP_PORT = int(os.environ.get("E2E_IMAP_PORT", "10143"))
HOST = os.environ.get("E2E_HOST", "127.0.0.1")
PASSWORD = os.environ.get("E2E_PASSWORD", "")
RECIPIENT = "someone@example.net"


def exact(reply, code, line):
    """The client sees `code line` exactly: the milter's text, verbatim."""
    got = text(reply)
    check(got == f"{code} {line}", f"expected exactly {code} {line!r}, got {got!r}")


def sent_items(user):
    """Every message in the user's Sent Items: {Message-ID: [(flags, raw bytes), ...]}."""
    imap = imaplib.IMAP4(HOST, IMAP_PORT, timeout=10)
    try:
        imap.login(user, PASSWORD)
        typ, _ = imap.select('"Sent Items"', readonly=True)
        check(typ == "OK", f"cannot select Sent Items of {user}")
        typ, data = imap.uid("SEARCH", None, "ALL")
        found = {}
        for uid in data[0].split():
            typ, parts = imap.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
            check(typ == "OK", f"FETCH {uid} failed")
            flags = parts[0][0].decode()
            raw = parts[0][1]
            mid = re.search(rb"(?im)^message-id:\s*(<[^>]+>)", raw)
            key = mid.group(1).decode() if mid else f"uid {uid.decode()}"
            found.setdefault(key, []).append((flags, raw))
        return found
    finally:
        try:
            imap.logout()
        except Exception:  # noqa: BLE001 - best effort
            pass


def wait_for_copies(user, message_ids, timeout=20):
    """Waits until every Message-ID is in the user's Sent Items; returns what is there."""
    deadline = time.monotonic() + timeout
    while True:
        found = sent_items(user)
        if all(m in found for m in message_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def spool_pending():
    """Ids of the entries waiting in the spool, as `submitgate spool list --json` shows them."""
    out = subprocess.run(
        [SUBMITGATE_BIN, "spool", "list", "--json", "--config", CONFIG],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    return [e["id"] for e in json.loads(out)]


def send_raw(s, sender, subject, body_lines):
    """Sends a message with our own Message-ID and body; returns (queue id, Message-ID, bytes)."""
    mid = email.utils.make_msgid(domain="e2e.submitgate.test")
    raw = (
        f"From: <{sender}>\r\nTo: <{RECIPIENT}>\r\nSubject: {subject}\r\n"
        f"Message-ID: {mid}\r\nDate: {email.utils.formatdate()}\r\n"
        "X-Folded: first part\r\n second part\r\n\r\n"
        + "".join(line + "\r\n" for line in body_lines)
    ).encode()
    s.mail(sender)
    reply = s.rcpt(RECIPIENT)
    check(reply[0] == 250, f"RCPT TO answered {text(reply)}")
    code, msg = s.smtp.data(raw)
    check(code == 250, f"end of DATA answered {code} {msg!r}")
    qid = msg.decode().rsplit(" ", 1)[-1]
    return qid, mid, raw


def allowed_message_is_copied():
    s = Submission("bob@contoso.com").authenticate_ok()
    try:
        body = ["line one", ".leading dot survives", "", "x" * 900, "last line"]
        qid, mid, raw = send_raw(s, "bob@contoso.com", "milter e2e allowed", body)
    finally:
        s.quit()
    found = wait_for_copies("bob@contoso.com", [mid])
    copies = found.get(mid, [])
    check(len(copies) == 1, f"{len(copies)} copies of {mid} in bob's Sent Items")
    flags, stored = copies[0]
    check("\\Seen" in flags, f"copy not \\Seen: {flags}")
    # The copy is the message as the client submitted it (Postfix adds its headers only to the
    # delivered message, not to what the milter sees before its own Received line).
    check(stored == raw, f"copy differs from what was sent:\n{stored!r}\n!=\n{raw!r}")
    return f"250, queued as {qid}; one \\Seen copy in Dovecot, byte-identical"


def no_copy_when_sent_items_disabled():
    s = Submission("nocopy@contoso.com").authenticate_ok()
    try:
        qid, mid, _ = send_raw(s, "nocopy@contoso.com", "milter e2e no copy", ["no copy"])
    finally:
        s.quit()
    # Give a copy time to appear if one were (wrongly) made.
    time.sleep(2)
    found = sent_items("nocopy@contoso.com")
    check(mid not in found, "a copy was stored although sent_items.enabled is false")
    events = AuditLog().events()
    stored = matching(events, event="sent_copy_stored", mailbox="nocopy@contoso.com")
    check(not stored, f"sent_copy_stored for nocopy: {stored}")
    return f"250, queued as {qid}; no copy"


def mailbox_disabled_verbatim():
    s = Submission("alice@contoso.com").authenticate_ok()
    try:
        reply = s.smtp.mail("alice@contoso.com")
        exact(reply, 550, f"5.7.139 {MAILBOX_TEXT}")
    finally:
        s.quit()
    return text(reply)


def org_disabled_verbatim():
    s = Submission("dave@fabrikam.com").authenticate_ok()
    try:
        reply = s.smtp.mail("dave@fabrikam.com")
        exact(reply, 550, f"5.7.139 {TENANT_TEXT}")
    finally:
        s.quit()
    # The organization's exception for one mailbox still sends.
    s = Submission("printer@fabrikam.com").authenticate_ok()
    try:
        s.send(subject="milter e2e printer")
    finally:
        s.quit()
    return text(reply)


def fourth_session_waits_for_a_quit():
    sessions = [Submission("carol@contoso.com").authenticate_ok() for _ in range(3)]
    fourth = Submission("carol@contoso.com").authenticate_ok()
    try:
        for s in sessions:
            s.mail()
            s.rset()  # the transaction ends, the session (and its lease) stays
        reply = fourth.smtp.mail("carol@contoso.com")
        exact(reply, 432, f"4.3.2 {THREAD_LIMIT_TEXT}")
        # Still refused while the three stay connected, even with no message in flight.
        fourth.rset()
        exact(fourth.smtp.mail("carol@contoso.com"), 432, f"4.3.2 {THREAD_LIMIT_TEXT}")
        fourth.rset()
        sessions.pop(0).quit()
        events = AuditLog().wait_until(
            lambda ev: len(matching(ev, event="session_closed", mailbox="carol@contoso.com")) >= 1
        )
        check(matching(events, event="session_closed", mailbox="carol@contoso.com"),
              "no session_closed after QUIT")
        qid = fourth.send(subject="milter e2e fourth")
    finally:
        for s in sessions + [fourth]:
            s.quit()
    return f"432 4.3.2 for the fourth until a QUIT, then 250 ({qid})"


def one_copy_per_message():
    sent = []
    s = Submission("erin@contoso.com").authenticate_ok()
    try:
        sent.append(send_raw(s, "erin@contoso.com", "milter e2e one", ["one"])[1])
        sent.append(send_raw(s, "erin@contoso.com", "milter e2e two", ["two"])[1])
    finally:
        s.quit()
    s = Submission("erin@contoso.com").authenticate_ok()
    try:
        sent.append(send_raw(s, "erin@contoso.com", "milter e2e three", ["three"])[1])
    finally:
        s.quit()
    found = wait_for_copies("erin@contoso.com", sent)
    counts = {m: len(found.get(m, [])) for m in sent}
    check(all(n == 1 for n in counts.values()), f"copies per message: {counts}")
    events = AuditLog().wait_until(
        lambda ev: len(matching(ev, event="session_closed", mailbox="erin@contoso.com")) >= 2
    )
    closed = matching(events, event="session_closed", mailbox="erin@contoso.com")
    check([e.get("messages") for e in closed] == [2, 1], f"session_closed events: {closed}")
    check(all(e.get("front_end") == "milter" for e in closed), "front_end is not milter")
    stored = matching(events, event="sent_copy_stored", mailbox="erin@contoso.com")
    check(len(stored) == 3, f"{len(stored)} sent_copy_stored events for 3 messages")
    # Delivered entries leave the spool.
    deadline = time.monotonic() + 10
    while spool_pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    check(not spool_pending(), f"entries left in the spool: {spool_pending()}")
    return f"{len(sent)} messages, one copy each, spool empty"


def audit_has_the_decisions():
    events = AuditLog().wait_until(
        lambda ev: len(matching(ev, event="submission_decision", reason="mailbox_disabled")) >= 1
    )
    rejects = matching(events, event="submission_decision", decision="reject")
    reasons = sorted({e.get("reason") for e in rejects})
    check(reasons == ["mailbox_disabled", "org_disabled"], f"reject reasons {reasons}")
    defers = matching(events, event="submission_decision", reason="concurrency_limit")
    check(len(defers) == 2, f"expected 2 concurrency_limit deferrals, got {len(defers)}")
    allows = matching(events, event="submission_decision", decision="allow")
    check(all(e.get("sasl_method") == "PLAIN" for e in allows), "sasl_method missing")
    check(all(e.get("queue_id") for e in matching(events, event="submission_completed")),
          "submission_completed without queue id")
    return f"{len(events)} events"


if __name__ == "__main__":
    sc = Scenarios()
    sc.run("allowed_message_is_copied", allowed_message_is_copied)
    sc.run("mailbox_disabled_verbatim", mailbox_disabled_verbatim)
    sc.run("org_disabled_verbatim", org_disabled_verbatim)
    sc.run("fourth_session_waits_for_a_quit", fourth_session_waits_for_a_quit)
    sc.run("one_copy_per_message", one_copy_per_message)
    sc.run("no_copy_when_sent_items_disabled", no_copy_when_sent_items_disabled)
    sc.run("audit_has_the_decisions", audit_has_the_decisions)
    sc.exit()
