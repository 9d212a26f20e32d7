//! The connection to Redis in its three deployments, behind one [`Conn`] that scripts run on:
//! a single server (the redis crate's `ConnectionManager`, which reconnects by itself),
//! **Redis Cluster** (the crate's cluster client: commands go to the master of their key's hash
//! slot, MOVED/ASK and failovers are followed) and **Redis Sentinel** (the master is asked from
//! the sentinels, and asked again after an error that says the connection or the master's role
//! is gone: a failover). [`Conn::scan`] lists keys on every master (SCAN per node in a cluster).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};

/// Which Redis deployment holds the limiter's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (or a proxy in front of several): `url`.
    Single,
    /// Redis Cluster: the seed nodes (`redis://host:port`); the rest is discovered.
    Cluster(Vec<String>),
    /// Redis Sentinel: the sentinels (`redis://host:26379`) and the monitored master's name.
    Sentinel { master: String, nodes: Vec<String> },
}

/// A connection that scripts and commands run on (cheap to clone).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<ClusterConn>),
    Sentinel(Arc<SentinelConn>),
}

/// A cluster connection made at first use (a cluster down at start is an outage, not a start
/// failure), then kept: the crate's cluster connection follows failovers and slot moves.
pub struct ClusterConn {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

impl ClusterConn {
    async fn connection(&self) -> RedisResult<redis::cluster_async::ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

/// The current master of a Sentinel deployment, found again after a failover.
pub struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl SentinelConn {
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.current.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        // Another task may have connected while this one waited.
        if let Some(c) = self.current.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client.get_async_connection_with_config(&config).await?;
        if let Ok(mut current) = self.current.lock() {
            *current = Some(conn.clone());
        }
        tracing::debug!("redis sentinel: connected to the current master");
        Ok(conn)
    }

    /// Forgets the master: the next command asks the sentinels again.
    pub fn reset(&self) {
        if let Ok(mut current) = self.current.lock() {
            *current = None;
        }
    }

    fn check<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if gone(e) {
                tracing::info!("redis sentinel: {e}; asking the sentinels for the master again");
                self.reset();
            }
        }
        result
    }
}

/// Whether an error means the connection or the server's role is gone (not a script error).
fn gone(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

impl Conn {
    /// Connects (lazily where the crate allows: a Redis down at start is an outage, not a
    /// start failure). Needs a running tokio runtime.
    pub fn open(url: &str, topology: &Topology, timeout: Duration) -> RedisResult<Conn> {
        let timeout = timeout.max(Duration::from_millis(200));
        match topology {
            Topology::Single => {
                let client = redis::Client::open(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            Topology::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()?;
                Ok(Conn::Cluster(Arc::new(ClusterConn {
                    client,
                    conn: tokio::sync::OnceCell::new(),
                })))
            }
            Topology::Sentinel { master, nodes } => {
                let client = SentinelClient::build(
                    nodes.clone(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )?;
                Ok(Conn::Sentinel(Arc::new(SentinelConn {
                    client: tokio::sync::Mutex::new(client),
                    current: Mutex::new(None),
                    timeout,
                })))
            }
        }
    }

    /// After a timeout: a Sentinel connection asks for the master again (the old one may be
    /// unreachable without the socket noticing); the others reconnect by themselves.
    pub fn reset(&self) {
        if let Conn::Sentinel(s) = self {
            s.reset();
        }
    }

    /// Every key matching `pattern` (a glob), from every master.
    pub async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        match self {
            Conn::Cluster(c) => {
                let c = c.connection().await?;
                let mut keys = Vec::new();
                for (host, port) in cluster_masters(&c).await? {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port,
                    });
                    let mut cursor = 0u64;
                    loop {
                        let mut cmd = redis::cmd("SCAN");
                        cmd.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(500);
                        let value = c.clone().route_command(cmd, routing.clone()).await?;
                        let (next, batch): (u64, Vec<String>) = redis::from_redis_value(value)?;
                        keys.extend(batch);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
                keys.sort();
                keys.dedup();
                Ok(keys)
            }
            _ => {
                let mut conn = self.clone();
                let mut keys = Vec::new();
                let mut cursor = 0u64;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn)
                        .await?;
                    keys.extend(batch);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                Ok(keys)
            }
        }
    }
}

/// The masters of a cluster (host, port), from `CLUSTER SLOTS`.
async fn cluster_masters(
    c: &redis::cluster_async::ClusterConnection,
) -> RedisResult<Vec<(String, u16)>> {
    let value = c
        .clone()
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    // [[start, end, [host, port, id, …], replicas…], …]
    let ranges: Vec<Vec<Value>> = redis::from_redis_value(value)?;
    let mut masters = Vec::new();
    for range in ranges {
        let Some(master) = range.get(2) else { continue };
        let node: Vec<Value> = redis::from_redis_value(master.clone())?;
        let (Some(host), Some(port)) = (node.first(), node.get(1)) else {
            continue;
        };
        let host: String = redis::from_redis_value(host.clone())?;
        let port: u16 = redis::from_redis_value(port.clone())?;
        if !masters.contains(&(host.clone(), port)) {
            masters.push((host, port));
        }
    }
    Ok(masters)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move { c.connection().await?.req_packed_command(cmd).await })
            }
            Conn::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = s.check(s.connection().await)?;
                    let result = conn.req_packed_command(cmd).await;
                    s.check(result)
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => {
                let c = c.clone();
                Box::pin(async move {
                    c.connection()
                        .await?
                        .req_packed_commands(pipeline, offset, count)
                        .await
                })
            }
            Conn::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = s.check(s.connection().await)?;
                    let result = conn.req_packed_commands(pipeline, offset, count).await;
                    s.check(result)
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) | Conn::Sentinel(_) => 0,
        }
    }
}
