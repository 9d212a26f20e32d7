#!/usr/bin/env bash
# Runs the Sent Items tests that need a real Dovecot (and openssl, for the TLS ones).
# As root on a throw-away machine (CI): installs Debian's dovecot-imapd and openssl when missing
# and creates the `vmail` user; every test starts its own private Dovecot on a free loopback
# port from a config in a temp dir, and stops it afterwards. Without Dovecot those tests print a
# note and pass, so a plain `cargo test` stays green anywhere.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v dovecot >/dev/null || ! command -v openssl >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/dovecot/run.sh: dovecot/openssl missing and not root; install dovecot-imapd and openssl" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd openssl >/dev/null
fi
if ! getent passwd vmail >/dev/null; then
    useradd --system --no-create-home --shell /usr/sbin/nologin vmail
fi
# The package may have started a system-wide Dovecot; ours use their own ports, so it may stay.

cargo test --test sent_items_maildir --test sent_items_imap --test sent_items_tls --test sent_items_daemon --test sent_items_milter "$@"
