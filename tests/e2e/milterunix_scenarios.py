#!/usr/bin/env python3
"""The milter front end on a unix socket inside Postfix's chroot (README, "Postfix set-up
(milter)"), set up by milterunix_suite.sh exactly as README says.

Checked: the socket and its directory have the recipe's owner, group and mode; submitgate runs
as its own user; a chrooted smtpd reaches it through `unix:submitgate/milter.sock` (the message is
copied into Dovecot, replies are verbatim, several sessions at once work); Postfix logged no
milter connection failure.
"""

import os
import pwd
import grp
import stat
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import milter_scenarios as m  # noqa: E402
from e2e_lib import Scenarios, Submission, check  # noqa: E402

SOCKET = os.environ.get("E2E_MILTER_SOCKET", "/var/spool/postfix/submitgate/milter.sock")
POSTFIX_LOG = os.environ.get("E2E_POSTFIX_LOG", "")
# Where Postfix's log stood when the scenarios started (submitgate up): run.sh's own probe of
# the submission port, made before submitgate starts, may have logged a failed milter connect.
LOG_START = os.path.getsize(POSTFIX_LOG) if POSTFIX_LOG and os.path.exists(POSTFIX_LOG) else 0


def owner(path):
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def socket_has_the_recipes_permissions():
    d_owner, d_group, d_mode = owner(os.path.dirname(SOCKET))
    check((d_owner, d_group) == ("submitgate", "postfix"), f"directory is {d_owner}:{d_group}")
    check(d_mode & 0o7777 == 0o2750, f"directory mode {d_mode:o}")
    check(stat.S_ISSOCK(os.stat(SOCKET).st_mode), f"{SOCKET} is not a socket")
    s_owner, s_group, s_mode = owner(SOCKET)
    check((s_owner, s_group) == ("submitgate", "postfix"), f"socket is {s_owner}:{s_group}")
    check(s_mode == 0o660, f"socket mode {s_mode:o}")
    pid = os.environ.get("E2E_SUBMITGATE_PID", "")
    with open(f"/proc/{pid}/status") as f:
        uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
    check(pwd.getpwuid(int(uid)).pw_name == "submitgate", f"daemon runs as uid {uid}")
    return f"{d_owner}:{d_group} {d_mode:o}, socket {s_owner}:{s_group} {s_mode:o}"


def concurrent_sessions_through_the_socket():
    errors = []

    def one(i):
        try:
            s = Submission("erin@contoso.com").authenticate_ok()
            try:
                m.send_raw(s, "erin@contoso.com", f"milterunix concurrent {i}", [f"line {i}"])
            finally:
                s.quit()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{i}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, f"sessions failed: {errors}")
    return "3 sessions at once, all 250"


def postfix_logged_no_milter_failure():
    with open(POSTFIX_LOG, errors="replace") as f:
        f.seek(LOG_START)
        bad = [line.strip() for line in f if "submitgate/milter.sock" in line and
               ("warning" in line or "fatal" in line or "can't" in line)]
    check(not bad, f"Postfix: {bad[:3]}")
    return "no warning about unix:submitgate/milter.sock since submitgate started"


if __name__ == "__main__":
    sc = Scenarios()
    sc.run("socket_has_the_recipes_permissions", socket_has_the_recipes_permissions)
    sc.run("allowed_message_is_copied", m.allowed_message_is_copied)
    sc.run("mailbox_disabled_verbatim", m.mailbox_disabled_verbatim)
    sc.run("concurrent_sessions_through_the_socket", concurrent_sessions_through_the_socket)
    sc.run("postfix_logged_no_milter_failure", postfix_logged_no_milter_failure)
    sc.exit()
