//! Real Redis deployments for tests, each started by the test on free loopback ports and
//! stopped when dropped: one server ([`Server`]), a 3-master Redis Cluster made with
//! `redis-cli --cluster create` ([`Cluster`]), and a master + replica watched by one
//! `redis-sentinel` ([`Sentinels`]). Without redis-server (or redis-cli, redis-sentinel) the
//! constructors return `None` after [`super::require`]'s note, and fail under CI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{require, wait_for_sync};

/// A loopback port nothing listens on now (and, for a cluster node, whose bus port
/// `port + 10000` is free too).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// `redis-cli -p PORT ARGS…`: its standard output, trimmed.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One redis-server (or redis-sentinel) process.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    pub dir: PathBuf,
}

impl Server {
    /// Starts `program --port P ARGS…` in `dir` and waits until it answers PING.
    pub fn spawn(
        program: &str,
        dir: &Path,
        port: u16,
        config: Option<&Path>,
        args: &[&str],
    ) -> Server {
        let mut cmd = Command::new(program);
        if let Some(c) = config {
            cmd.arg(c);
        }
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if program == "redis-server" {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd.spawn().expect("spawn redis");
        let s = Server {
            port,
            child: Some(child),
            dir: dir.to_path_buf(),
        };
        wait_for_sync(Duration::from_secs(10), "redis to answer PING", || {
            cli(port, &["ping"]) == "PONG"
        });
        s
    }

    /// A plain server on a free port.
    pub fn start(dir: &Path) -> Option<Server> {
        require("redis-server")?;
        require("redis-cli")?;
        Some(Server::spawn(
            "redis-server",
            dir,
            free_port(false),
            None,
            &[],
        ))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it (SIGKILL: no goodbye).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `INFO commandstats`: calls per command.
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        cli(self.port, &["info", "commandstats"])
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters (no replicas).
pub struct Cluster {
    pub nodes: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Option<Cluster> {
        require("redis-server")?;
        require("redis-cli")?;
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port(true);
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            nodes.push(Server::spawn(
                "redis-server",
                &node_dir,
                port,
                None,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_for_sync(Duration::from_secs(20), "cluster_state:ok", || {
                cli(n.port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        Some(Cluster { nodes, _dir: dir })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// Keys held by each master.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| cli(n.port, &["dbsize"]).parse().unwrap_or(0))
            .collect()
    }
}

/// A master, a replica and one sentinel watching them under the name `sgmaster`.
pub struct Sentinels {
    pub master: Server,
    pub replica: Server,
    pub sentinel: Server,
    _dir: tempfile::TempDir,
}

/// The name the sentinel monitors the master under.
pub const MASTER_NAME: &str = "sgmaster";

impl Sentinels {
    pub fn start() -> Option<Sentinels> {
        require("redis-server")?;
        require("redis-cli")?;
        require("redis-sentinel")?;
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let master = Server::spawn("redis-server", &mk("master"), free_port(false), None, &[]);
        let replica_port = free_port(false);
        let replica = Server::spawn(
            "redis-server",
            &mk("replica"),
            replica_port,
            None,
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
        );
        wait_for_sync(Duration::from_secs(20), "the replica to sync", || {
            cli(replica_port, &["info", "replication"]).contains("master_link_status:up")
        });
        let sdir = mk("sentinel");
        let conf = sdir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                master.port
            ),
        )
        .unwrap();
        let sentinel = Server::spawn("redis-sentinel", &sdir, free_port(false), Some(&conf), &[]);
        wait_for_sync(
            Duration::from_secs(20),
            "the sentinel to see the replica",
            || {
                cli(sentinel.port, &["sentinel", "replicas", MASTER_NAME])
                    .contains(&replica_port.to_string())
            },
        );
        Some(Sentinels {
            master,
            replica,
            sentinel,
            _dir: dir,
        })
    }

    /// The port of the master as the sentinel sees it now.
    pub fn current_master_port(&self) -> u16 {
        let out = cli(
            self.sentinel.port,
            &["sentinel", "get-master-addr-by-name", MASTER_NAME],
        );
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `redis-cli monitor` on a server: every command it executes, as MONITOR prints them
/// (`TIME [DB CLIENT] "CMD" …`, with `lua` as client for commands a script ran).
pub struct Monitor {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    /// Starts monitoring; returns once the server confirmed (`OK`).
    pub fn start(port: u16) -> Monitor {
        use std::io::BufRead;
        let mut child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli monitor");
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "OK" {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                sink.lock().unwrap().push(line);
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("MONITOR answered OK");
        Monitor {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Stops and returns the commands clients sent (not those scripts ran), lower-case names.
    pub fn client_commands(mut self) -> Vec<String> {
        // Let the last commands reach the monitor before it stops.
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| !l.contains(" lua]"))
            .filter_map(|l| {
                let after = l.split_once("] \"")?.1;
                Some(after.split('"').next()?.to_ascii_lowercase())
            })
            .collect()
    }
}
