//! The logged-in connections kept between deliveries, and the turns a mailbox's copies take.
//!
//! A connection is logged in as one mailbox and serves only that mailbox's copies. The copies
//! of one mailbox take turns ([`Pool::turn`]), so that a burst of copies from one sender goes
//! over one session and one login instead of one login per worker (the server locks the folder
//! for each `APPEND` anyway). Between deliveries a connection waits here for at most
//! `idle_timeout`, and at most `max_idle` wait across all mailboxes: every idle connection is a
//! process on a Dovecot server, whose process and client limits its users share, so when the
//! pool is full the connection idle longest is handed back to be logged out. A connection is
//! looked at before it is reused: one the server closed or spoke on while it waited (Dovecot
//! says `* BYE` when it stops or logs an idle session out) is dropped instead, so that a server
//! restart costs a new login, not a failed attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

use super::connection::Connection;

/// Idle connections and the mailboxes whose copies are being delivered.
pub(super) struct Pool {
    max_idle: usize,
    idle_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    idle: Vec<Idle>,
    /// One lock per mailbox with a delivery under way or waiting; removed with its last user.
    turns: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

struct Idle {
    mailbox: String,
    conn: Connection,
    since: Instant,
}

/// A mailbox's turn: while it is held, no other delivery to that mailbox runs.
pub(super) struct Turn<'a> {
    pool: &'a Pool,
    mailbox: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let lock = Arc::clone(OwnedMutexGuard::mutex(&guard));
        drop(guard);
        let mut state = self.pool.lock();
        // Nobody else holds or awaits it (the map's reference and `lock` are the two left):
        // takers clone it under this same lock, so none can appear meanwhile.
        if Arc::strong_count(&lock) == 2 {
            state.turns.remove(&self.mailbox);
        }
    }
}

impl Pool {
    /// A pool keeping at most `max_idle` connections, each for at most `idle_timeout`.
    pub(super) fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            max_idle,
            idle_timeout,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain pushes and removes: the state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for `mailbox`'s turn.
    pub(super) async fn turn(&self, mailbox: &str) -> Turn<'_> {
        let lock = Arc::clone(self.lock().turns.entry(mailbox.to_string()).or_default());
        let guard = lock.lock_owned().await;
        Turn {
            pool: self,
            mailbox: mailbox.to_string(),
            guard: Some(guard),
        }
    }

    /// The most recently used idle connection of `mailbox` that is still usable. Connections
    /// of it that outlived `idle_timeout`, or that the server closed or spoke on, are returned
    /// in `stale` to be closed.
    pub(super) fn checkout(
        &self,
        mailbox: &str,
        stale: &mut Vec<Connection>,
    ) -> Option<Connection> {
        let mut state = self.lock();
        while let Some(at) = state.idle.iter().rposition(|i| i.mailbox == mailbox) {
            let idle = state.idle.remove(at);
            if idle.since.elapsed() >= self.idle_timeout || !idle.conn.idle_and_open() {
                stale.push(idle.conn);
                continue;
            }
            return Some(idle.conn);
        }
        None
    }

    /// Keeps `conn` for `mailbox`'s next copy. Returns the connections to log out: `conn`
    /// itself when nothing may be kept, else the oldest idle one if the pool was full.
    pub(super) fn checkin(&self, mailbox: &str, conn: Connection) -> Option<Connection> {
        if self.max_idle == 0 || self.idle_timeout.is_zero() {
            return Some(conn);
        }
        let mut state = self.lock();
        let evicted = if state.idle.len() >= self.max_idle {
            Some(state.idle.remove(0).conn)
        } else {
            None
        };
        state.idle.push(Idle {
            mailbox: mailbox.to_string(),
            conn,
            since: Instant::now(),
        });
        evicted
    }

    /// Takes the idle connections that outlived `idle_timeout` (every one when `all`).
    pub(super) fn take_expired(&self, all: bool) -> Vec<Connection> {
        let mut state = self.lock();
        let idle = std::mem::take(&mut state.idle);
        let (keep, expired): (Vec<Idle>, Vec<Idle>) = idle
            .into_iter()
            .partition(|i| !all && i.since.elapsed() < self.idle_timeout);
        state.idle = keep;
        if state.idle.capacity() > 4 * self.max_idle.max(16) {
            let keep = state.idle.len().max(16);
            state.idle.shrink_to(keep);
        }
        expired.into_iter().map(|i| i.conn).collect()
    }

    /// Idle connections now (for tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    /// Mailboxes with a turn taken or awaited (for tests).
    #[cfg(test)]
    pub(super) fn turns(&self) -> usize {
        self.lock().turns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_client::client::tokio::MaybeTlsStream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection named `name` over loopback, and the server's end of it.
    async fn connection(name: &str) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let probe = super::super::connection::probe_of(&client);
        let mut conn = Connection::new(
            MaybeTlsStream::Plain(client),
            true,
            name,
            Duration::from_secs(1),
        );
        conn.keep_probe(probe);
        (conn, server)
    }

    #[tokio::test]
    async fn a_mailbox_gets_its_own_connection_back_and_the_oldest_makes_room() {
        let pool = Pool::new(2, Duration::from_secs(60));
        let (a, _a) = connection("alice-1").await;
        let (b, _b) = connection("bob-1").await;
        let (c, _c) = connection("carol-1").await;
        assert!(pool.checkin("alice", a).is_none());
        assert!(pool.checkin("bob", b).is_none());
        let out = pool
            .checkin("carol", c)
            .expect("full: the one idle longest goes");
        assert_eq!(out.server, "alice-1");
        assert_eq!(pool.idle_count(), 2);
        let mut stale = Vec::new();
        assert!(pool.checkout("alice", &mut stale).is_none());
        assert_eq!(pool.checkout("bob", &mut stale).unwrap().server, "bob-1");
        assert!(pool.checkout("bob", &mut stale).is_none());
        assert!(stale.is_empty());
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_or_spoke_on_is_not_reused() {
        let pool = Pool::new(8, Duration::from_secs(60));
        let (closed, server) = connection("closed").await;
        let (spoken, mut talker) = connection("spoken").await;
        let (fine, _quiet) = connection("fine").await;
        pool.checkin("alice", fine);
        pool.checkin("alice", closed);
        pool.checkin("alice", spoken);
        drop(server);
        talker
            .write_all(b"* BYE Server shutting down.\r\n")
            .await
            .unwrap();
        // Let loopback deliver the FIN and the bytes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut stale = Vec::new();
        let conn = pool.checkout("alice", &mut stale).expect("the quiet one");
        assert_eq!(conn.server, "fine");
        let mut names: Vec<&str> = stale.iter().map(|c| c.server.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["closed", "spoken"]);
        assert!(conn.idle_and_open());
    }

    #[tokio::test]
    async fn expired_connections_are_not_reused_and_nothing_is_kept_without_room() {
        let pool = Pool::new(8, Duration::from_millis(20));
        let (a, _a) = connection("old").await;
        pool.checkin("alice", a);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut stale = Vec::new();
        assert!(pool.checkout("alice", &mut stale).is_none());
        assert_eq!(stale.len(), 1);
        let (b, _b) = connection("b").await;
        pool.checkin("bob", b);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(pool.take_expired(false).len(), 1);
        assert_eq!(pool.idle_count(), 0);

        let none = Pool::new(0, Duration::from_secs(60));
        let (c, _c) = connection("c").await;
        assert_eq!(none.checkin("carol", c).unwrap().server, "c");
    }

    #[tokio::test]
    async fn copies_of_one_mailbox_take_turns_and_the_turn_goes_with_its_last_user() {
        let pool = Arc::new(Pool::new(4, Duration::from_secs(60)));
        let first = pool.turn("alice").await;
        let other = pool.turn("bob").await;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiting = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let _second = pool.turn("alice").await;
                let _ = tx.send(());
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(rx.try_recv().is_err(), "alice's second copy waits");
        drop(other);
        assert_eq!(pool.turns(), 1, "bob's turn is gone with its last user");
        drop(first);
        waiting.await.unwrap();
        assert!(rx.try_recv().is_ok());
        assert_eq!(pool.turns(), 0);
    }
}
