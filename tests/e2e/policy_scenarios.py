#!/usr/bin/env python3
"""Policy delegation front end against a real Postfix (issue 2, "Real Postfix" (a)-(f)).

Run by run.sh with policy_suite.sh's set-up: Postfix's submission service on
127.0.0.1:10587 asks submitgate (check_policy_service) at RCPT and at END-OF-MESSAGE; logins
are checked by Dovecot. Policies: contoso.com enabled (alice disabled for her mailbox,
scanner limited to 1 session), fabrikam.com disabled (printer enabled for its mailbox),
unknown.example in no organization; default_domain contoso.com.
"""

import json
import os
import re
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e_lib import (  # noqa: E402
    MAILBOX_TEXT,
    TENANT_TEXT,
    THREAD_LIMIT_TEXT,
    AuditLog,
    Scenarios,
    Submission,
    check,
    expect_reply,
    matching,
    queue_id,
    text,
)

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

# What each scenario saw, for the audit checks at the end.
queue_ids = {}  # login -> [queue ids of accepted messages]


def accepted(login, qid):
    queue_ids.setdefault(login, []).append(qid)


def sends(login):
    s = Submission(login).authenticate_ok()
    try:
        qid = s.send()
    finally:
        s.quit()
    accepted(login, qid)
    return f"250, queued as {qid}"


def refused_at_rcpt(login, code, enhanced, reply_text):
    s = Submission(login).authenticate_ok()
    try:
        s.mail()
        reply = s.rcpt()
        expect_reply(reply, code, enhanced, reply_text)
        # Nothing may get through: with no accepted recipient, DATA is refused.
        final = s.data()
        check(final[0] != 250, f"message accepted after a refused RCPT: {text(final)}")
    finally:
        s.quit()
    return text(reply)


def scenario_a():
    """(a) a normal mailbox (bob, inheriting an enabled org) sends."""
    return sends("bob@contoso.com")


def scenario_b():
    """(b) org disabled (dave inherits fabrikam's true) -> the Tenant reply."""
    return refused_at_rcpt("dave@fabrikam.com", 550, "5.7.139", TENANT_TEXT)


def scenario_c():
    """(c) mailbox true under an enabled org (alice) -> the Mailbox reply."""
    return refused_at_rcpt("alice@contoso.com", 550, "5.7.139", MAILBOX_TEXT)


def scenario_d():
    """(d) mailbox false under a disabled org (printer@fabrikam.com) -> sends."""
    return sends("printer@fabrikam.com")


def hold_transactions(login, n):
    """Opens n sessions of login at once, each AUTH + MAIL, then all send RCPT together.

    Returns (sessions, replies), in session order.
    """
    sessions = [None] * n
    replies = [None] * n
    errors = []
    ready = threading.Barrier(n, timeout=20)

    def one(i):
        try:
            s = Submission(login).authenticate_ok()
            sessions[i] = s
            s.mail()
            ready.wait()
            replies[i] = s.rcpt()
        except Exception as e:  # reported below, in the main thread
            errors.append(f"session {i + 1}: {type(e).__name__}: {e}")
            try:
                ready.abort()
            except threading.BrokenBarrierError:
                pass

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    if errors or any(t.is_alive() for t in threads):
        for s in sessions:
            if s is not None:
                s.quit()
        raise AssertionError("; ".join(errors) or "sessions hung")
    return sessions, replies


def scenario_e():
    """(e) four sessions of carol hold MAIL+RCPT -> one gets 432 4.3.2; after DATA in one of
    the other three a new session gets through."""
    login = "carol@contoso.com"
    sessions, replies = hold_transactions(login, 4)
    extra = None
    try:
        ok = [i for i, r in enumerate(replies) if r[0] == 250]
        refused = [i for i, r in enumerate(replies) if r[0] != 250]
        summary = ", ".join(text(r) for r in replies)
        check(len(ok) == 3 and len(refused) == 1, f"expected 3 x 250 and 1 x 432, got {summary}")
        expect_reply(replies[refused[0]], 432, "4.3.2", THREAD_LIMIT_TEXT)

        first = sessions[ok[0]]
        final = first.data()
        check(final[0] == 250, f"end of DATA in a holding session answered {text(final)}")
        accepted(login, queue_id(final))

        extra = Submission(login).authenticate_ok()
        qid = extra.send(subject="after a slot was freed")
        accepted(login, qid)
    finally:
        for s in sessions + [extra]:
            if s is not None:
                s.quit()
    return f"refused: {text(replies[refused[0]])}; then a new session queued {qid}"


def scenario_mailbox_limit():
    """A per-mailbox limit (scanner: 1) wins over the org's 3; a deferred client that retries
    after the other transaction ended gets through in the same session."""
    login = "scanner@contoso.com"
    first = Submission(login).authenticate_ok()
    second = None
    try:
        first.mail()
        reply = first.rcpt()
        check(reply[0] == 250, f"first RCPT answered {text(reply)}")
        second = Submission(login).authenticate_ok()
        second.mail()
        refused = second.rcpt()
        expect_reply(refused, 432, "4.3.2", THREAD_LIMIT_TEXT)
        final = first.data()
        check(final[0] == 250, f"end of DATA answered {text(final)}")
        accepted(login, queue_id(final))
        second.rset()
        accepted(login, second.send(subject="retry after 432"))
    finally:
        first.quit()
        if second is not None:
            second.quit()
    return f"second session first got {text(refused)}, then sent"


def scenario_rset_new_transaction():
    """RSET and a new transaction in the same session: the old transaction's lease goes back,
    so a mailbox with a limit of 1 (scanner) is not refused by its own earlier transaction."""
    login = "scanner@contoso.com"
    s = Submission(login).authenticate_ok()
    try:
        s.mail()
        reply = s.rcpt()
        check(reply[0] == 250, f"first RCPT answered {text(reply)}")
        s.rset()
        accepted(login, s.send(subject="after RSET"))
    finally:
        s.quit()
    return "second transaction sent"


def scenario_unknown_org():
    """A login whose domain no organization claims (and no "*" org) -> the Tenant reply."""
    return refused_at_rcpt("mallory@unknown.example", 550, "5.7.139", TENANT_TEXT)


def scenario_default_domain():
    """A login without @ (frank) resolves through default_domain contoso.com -> sends."""
    return sends("frank")


def scenario_unauthenticated():
    """No AUTH: submitgate answers DUNNO and Postfix's own rules refuse the relay."""
    s = Submission(None)
    try:
        reply = s.mail("stranger@example.org")
        reply = s.rcpt()
        check(reply[0] // 100 == 5, f"unauthenticated RCPT answered {text(reply)}")
        check("5.7.139" not in text(reply), f"unauthenticated RCPT got our reply: {text(reply)}")
    finally:
        s.quit()
    return text(reply)


def decisions(events, mailbox, **fields):
    return matching(events, event="submission_decision", mailbox=mailbox, **fields)


def scenario_f():
    """(f) the audit log holds the matching events."""
    log = AuditLog()
    expected_completed = [(login, q) for login, qs in queue_ids.items() for q in qs]

    def complete(events):
        done = {e.get("queue_id") for e in events if e.get("event") == "submission_completed"}
        return all(q in done for _, q in expected_completed) and bool(
            decisions(events, "mallory@unknown.example")
        )

    events = log.wait_until(complete)
    check(events, f"the audit log {log.path} is empty or missing")
    problems = []

    def expect(cond, msg):
        if not cond:
            problems.append(msg)

    def one_decision(mailbox, decision, reason, organization, reply_text=None):
        found = decisions(events, mailbox, decision=decision)
        if reason is not None:
            found = [e for e in found if e.get("reason") == reason]
        expect(found, f"no submission_decision {decision}/{reason} for {mailbox}")
        for e in found:
            expect(e.get("front_end") == "policy", f"front_end is not policy: {e}")
            if organization is not None:
                expect(
                    e.get("organization") == organization,
                    f"organization {e.get('organization')!r} != {organization!r}: {e}",
                )
            if reply_text is not None:
                expect(reply_text in str(e.get("reply", "")), f"reply lacks {reply_text!r}: {e}")
        return found

    # (a) bob: exactly one decision for his one transaction, then its completion.
    one_decision("bob@contoso.com", "allow", None, "contoso")
    expect(
        len(decisions(events, "bob@contoso.com")) == 1,
        f"bob's one transaction has {len(decisions(events, 'bob@contoso.com'))} decisions",
    )
    # (b), (c), unknown organization: one reject each, with the reason and the reply text.
    for mailbox, reason, org, reply_text in [
        ("dave@fabrikam.com", "org_disabled", "fabrikam", TENANT_TEXT),
        ("alice@contoso.com", "mailbox_disabled", "contoso", MAILBOX_TEXT),
        ("mallory@unknown.example", "unknown_organization", None, TENANT_TEXT),
    ]:
        one_decision(mailbox, "reject", reason, org, reply_text)
        n = len(decisions(events, mailbox))
        expect(n == 1, f"{mailbox}: {n} submission_decision events for one refused transaction")
        expect(
            not matching(events, event="submission_completed", mailbox=mailbox),
            f"{mailbox} was refused but has a submission_completed event",
        )
    # (d) printer allowed; (e) carol deferred once, allowed 4 times (3 holding + 1 new).
    one_decision("printer@fabrikam.com", "allow", None, "fabrikam")
    one_decision("carol@contoso.com", "defer", "concurrency_limit", "contoso", THREAD_LIMIT_TEXT)
    n = len(decisions(events, "carol@contoso.com", decision="defer"))
    expect(n == 1, f"carol: {n} defer decisions, expected 1")
    n = len(decisions(events, "carol@contoso.com", decision="allow"))
    expect(n == 4, f"carol: {n} allow decisions, expected 4 (3 held + 1 new session)")
    one_decision("scanner@contoso.com", "defer", "concurrency_limit", "contoso", THREAD_LIMIT_TEXT)
    # A deferral names the limit that applied: the org's 3 for carol, the mailbox's 1 for scanner.
    for mailbox, limit in [("carol@contoso.com", 3), ("scanner@contoso.com", 1)]:
        for e in decisions(events, mailbox, decision="defer"):
            expect(e.get("limit") == limit, f"{mailbox}: limit {e.get('limit')!r} != {limit}: {e}")
    # frank resolved through default_domain.
    frank = [
        e
        for e in events
        if e.get("event") == "submission_decision"
        and str(e.get("mailbox", "")).lower() in ("frank", "frank@contoso.com")
    ]
    expect(frank and all(e.get("decision") == "allow" for e in frank), f"frank: {frank}")
    expect(all(e.get("organization") == "contoso" for e in frank), f"frank's org: {frank}")
    # Every accepted message has its submission_completed with Postfix's queue id.
    completed = {e.get("queue_id"): e for e in events if e.get("event") == "submission_completed"}
    for login, qid in expected_completed:
        e = completed.get(qid)
        expect(e is not None, f"no submission_completed with queue_id {qid} ({login})")
        if e is None:
            continue
        if "mailbox" in e and "@" in login:
            expect(e["mailbox"] == login, f"submission_completed {qid}: mailbox {e['mailbox']}")
        expect(e.get("front_end") == "policy", f"submission_completed {qid}: {e}")
        expect(e.get("recipient_count") == 1, f"submission_completed {qid}: recipient_count: {e}")
        expect(isinstance(e.get("size"), int) and e["size"] > 0, f"completed {qid}: size: {e}")
        expect(e.get("sasl_method") == "PLAIN", f"submission_completed {qid}: sasl_method: {e}")
    n = len([e for e in events if e.get("event") == "submission_completed"])
    expect(
        n == len(expected_completed),
        f"{n} submission_completed events for {len(expected_completed)} accepted messages",
    )
    # Unauthenticated traffic is not audited.
    expect(
        not [e for e in events if "stranger@example.org" in str(e)],
        "the unauthenticated transaction was audited",
    )
    # Common fields.
    for e in events:
        expect(RFC3339_UTC.match(str(e.get("ts", ""))), f"ts is not RFC 3339 UTC: {e}")
        expect("event" in e, f"an event without event: {e}")
        if e.get("event") == "submission_decision":
            expect(e.get("client_address") == "127.0.0.1", f"client_address: {e}")

    check(not problems, "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
    return f"{len(events)} events checked"


def reload_policies(fabrikam_yaml):
    """Rewrites fabrikam's policy file, sends SIGHUP, and waits for the reload's audit event."""
    log = AuditLog()
    kinds = ("policy_reloaded", "policy_reload_failed")
    before = len([e for e in log.events() if e.get("event") in kinds])
    path = os.path.join(os.environ["E2E_SUITE_DIR"], "policies", "fabrikam.yaml")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(fabrikam_yaml)
    os.replace(path + ".tmp", path)
    os.kill(int(os.environ["E2E_SUBMITGATE_PID"]), signal.SIGHUP)
    events = log.wait_until(lambda ev: len([e for e in ev if e.get("event") in kinds]) > before)
    reloads = [e for e in events if e.get("event") in kinds]
    check(len(reloads) > before, "no policy_reloaded / policy_reload_failed event after SIGHUP")
    return reloads[-1]


def scenario_reload():
    """SIGHUP after fabrikam enables SMTP AUTH: dave, refused in (b), now sends."""
    event = reload_policies(
        "organization: fabrikam\n"
        "domains: [fabrikam.com]\n"
        "smtp_client_authentication_disabled: false\n"
        "mailboxes:\n"
        "  printer@fabrikam.com: { smtp_client_authentication_disabled: false }\n"
        "  dave@fabrikam.com: { smtp_client_authentication_disabled: null }\n"
    )
    check(event.get("event") == "policy_reloaded", f"reload audited as {event}")
    return sends("dave@fabrikam.com")


def scenario_reload_broken():
    """SIGHUP with a broken policy file: the old policy stays (dave still sends), and the
    failure is audited with the file's name."""
    event = reload_policies(
        "organization: fabrikam\n"
        "domains: [fabrikam.com]\n"
        "smtp_client_authentication_disabled: true\n"
        "smtp_client_authentication_disabledd: true\n"
    )
    check(event.get("event") == "policy_reload_failed", f"broken reload audited as {event}")
    check("fabrikam.yaml" in json.dumps(event), f"the failure does not name the file: {event}")
    return sends("dave@fabrikam.com")


def main():
    scenarios = Scenarios()
    scenarios.run("a normal mailbox sends", scenario_a)
    scenarios.run("b org disabled gets the 5.7.139 Tenant reply", scenario_b)
    scenarios.run("c mailbox disabled under an enabled org gets the Mailbox reply", scenario_c)
    scenarios.run("d mailbox enabled under a disabled org sends", scenario_d)
    scenarios.run("e 4th concurrent transaction gets 432 4.3.2, a freed slot lets the next in",
                  scenario_e)
    scenarios.run("per-mailbox session limit 1, retry after 432 succeeds", scenario_mailbox_limit)
    scenarios.run("RSET then a new transaction is not counted twice", scenario_rset_new_transaction)
    scenarios.run("unknown organization gets the Tenant reply", scenario_unknown_org)
    scenarios.run("login without @ resolves through default_domain", scenario_default_domain)
    scenarios.run("unauthenticated client is left to Postfix", scenario_unauthenticated)
    scenarios.run("f audit log holds the matching events", scenario_f)
    # These change the policy: they come last.
    scenarios.run("SIGHUP reloads the policy files", scenario_reload)
    scenarios.run("SIGHUP with a broken policy file keeps the old policy", scenario_reload_broken)
    scenarios.exit()


if __name__ == "__main__":
    main()
