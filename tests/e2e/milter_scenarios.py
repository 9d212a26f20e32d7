#!/usr/bin/env python3
"""Milter front end against a real Postfix (issue 3, "Real Postfix").

Run by run.sh with milter_suite.sh's set-up: Postfix's submission service on 127.0.0.1:10587
has submitgate as its milter (smtpd_milters, milter_default_action = tempfail); logins are
checked by Dovecot. Policies: contoso.com enabled (alice disabled for her mailbox, limit 3),
fabrikam.com disabled (printer enabled for its mailbox).

What only the milter can do is checked here: the client sees the exact 5.7.139 and 432 4.3.2
texts with no Postfix prefix; the fourth concurrent session is refused until one of the three
QUITs (sessions are counted, not submissions in flight); each accepted message has exactly one
committed spool entry.
"""

import json
import os
import sys

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

SPOOL_QUEUE = os.path.join(os.environ.get("E2E_SUITE_DIR", "."), "spool", "queue")


def exact(reply, code, line):
    """The client sees `code line` exactly: the milter's text, verbatim."""
    got = text(reply)
    check(got == f"{code} {line}", f"expected exactly {code} {line!r}, got {got!r}")


def spool_queue_ids():
    """Queue ids of the committed spool entries (read from each entry's metadata trailer)."""
    ids = []
    for name in sorted(os.listdir(SPOOL_QUEUE)) if os.path.isdir(SPOOL_QUEUE) else []:
        if not name.endswith(".msg"):
            continue
        with open(os.path.join(SPOOL_QUEUE, name), "rb") as f:
            data = f.read()
        check(data[-8:] == b"SGSPOOL1", f"{name}: not a whole entry")
        msg_len = int.from_bytes(data[-24:-16], "big")
        meta_len = int.from_bytes(data[-16:-8], "big")
        ids.append(json.loads(data[msg_len : msg_len + meta_len])["queue_id"])
    return ids


def allowed_message_is_copied():
    s = Submission("bob@contoso.com").authenticate_ok()
    try:
        qid = s.send(subject="milter e2e allowed")
    finally:
        s.quit()
    check(qid in spool_queue_ids(), f"no spool entry for queue id {qid}")
    return f"250, queued as {qid}, copy spooled"


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


def one_spool_entry_per_message():
    before = spool_queue_ids()
    sent = []
    s = Submission("erin@contoso.com").authenticate_ok()
    try:
        sent.append(s.send(subject="milter e2e one"))
        sent.append(s.send(subject="milter e2e two"))
    finally:
        s.quit()
    s = Submission("erin@contoso.com").authenticate_ok()
    try:
        sent.append(s.send(subject="milter e2e three"))
    finally:
        s.quit()
    new = spool_queue_ids()[len(before):]
    check(sorted(new) == sorted(sent), f"spool entries {new} for messages {sent}")
    events = AuditLog().wait_until(
        lambda ev: len(matching(ev, event="session_closed", mailbox="erin@contoso.com")) >= 2
    )
    closed = matching(events, event="session_closed", mailbox="erin@contoso.com")
    check([e.get("messages") for e in closed] == [2, 1], f"session_closed events: {closed}")
    check(all(e.get("front_end") == "milter" for e in closed), "front_end is not milter")
    return f"{len(sent)} messages, {len(new)} entries"


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
    sc.run("one_spool_entry_per_message", one_spool_entry_per_message)
    sc.run("audit_has_the_decisions", audit_has_the_decisions)
    sc.exit()
