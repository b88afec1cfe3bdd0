//! Start-up and shutdown: bind one SO_REUSEPORT listener per shard, start a
//! pinned glommio executor per shard, join them into the channel mesh, turn
//! SIGINT/SIGTERM into a mesh-wide graceful shutdown, and wait.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::processor::{Processor, ProcessorError, Processors};
use crate::registry::Registry;
use crate::shard::cluster::ClusterStart;
use crate::shard::{self, ShardStart};

/// Pending connections the kernel queues per shard listener. The kernel
/// caps it at `net.core.somaxconn`, so this only asks for the most and lets
/// the tuned sysctl decide (tuning/sysctl.conf).
pub const LISTEN_BACKLOG: i32 = 65_535;
/// Messages in flight per ordered pair of shards on the mesh.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// io_uring registered-buffer memory per shard. Storage I/O is small here,
/// and this memory is locked, which the memlock limit bounds.
pub const SHARD_IO_MEMORY_BYTES: usize = 64 * 1024;
/// How long start-up may take before we give up on a shard.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the server could not start or stopped abnormally. One line each,
/// saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start shard {shard}: {message}")]
    ShardStart { shard: usize, message: String },
    #[error("shard {shard} crashed")]
    ShardCrashed { shard: usize },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("cannot open the metrics export file {path}: {source}")]
    Export {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The whole server: `Server::new(config).run()` serves until SIGINT/SIGTERM.
pub struct Server {
    config: Arc<Config>,
    processors: Arc<Processors>,
}

/// Builds a server with custom processors:
/// `Server::builder(config).processor("op", p)?.build()`.
pub struct ServerBuilder {
    config: Config,
    processors: Processors,
}

impl ServerBuilder {
    /// Registers `processor` for commands with `op` (not a built-in op).
    pub fn processor(
        mut self,
        op: &str,
        processor: impl Processor,
    ) -> Result<Self, ProcessorError> {
        self.processors.register(op, Arc::new(processor))?;
        Ok(self)
    }

    pub fn build(self) -> Server {
        Server {
            config: Arc::new(self.config),
            processors: Arc::new(self.processors),
        }
    }
}

impl Server {
    pub fn new(config: Config) -> Self {
        Server::builder(config).build()
    }

    /// Starts building a server (to add processors).
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            processors: Processors::default(),
        }
    }

    /// Binds, starts every shard, logs `listening on HOST:PORT`, and blocks
    /// until every shard has shut down.
    pub fn run(self) -> Result<(), ServerError> {
        let config = self.config;
        let shards = config.shards;
        crate::limits::apply_and_warn(config.max_connections, shards);
        if !config.no_persist {
            crate::store::prepare_data_dir(std::path::Path::new(&config.data_dir), shards)?;
        }
        let cluster = cluster_start(&config)?;
        let tls = match config.tls_files() {
            Some((cert, key)) => Some(crate::tls::acceptor(cert, key)?),
            None => None,
        };
        let ip_limiter = config.ip_connection_limit().map(|(per_s, burst)| {
            Arc::new(crate::conn::ip_limit::IpConnectionLimiter::new(
                per_s, burst,
            ))
        });
        let (listeners, local_addr) = bind_listeners(config.bind_addr(), shards)?;

        // A write past the file-size limit (`ulimit -f`) must fail with
        // EFBIG, which the log writer handles like a full disk, rather than
        // kill the process (SIGXFSZ's default).
        // SAFETY: SIG_IGN installs no handler code; done before the shards
        // start.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let shutdown_flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // A second signal while shutting down exits at once.
            signal_hook::flag::register_conditional_shutdown(signal, 130, shutdown_flag.clone())
                .map_err(ServerError::Signals)?;
            signal_hook::flag::register(signal, shutdown_flag.clone())
                .map_err(ServerError::Signals)?;
        }

        let registry = Arc::new(Registry::new(config.max_connections));
        let resources: crate::shard::observe::SharedResources = Arc::default();
        let export_tx = start_sampler_thread(&config, resources.clone(), shutdown_flag.clone())?;
        let mesh = MeshBuilder::full(shards, MESH_CHANNEL_CAPACITY);
        let doorbells: shard::Doorbells = (0..shards).map(|_| OnceLock::new()).collect();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let started_at = Instant::now();
        let boot_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(shards);

        for (index, listener) in listeners.into_iter().enumerate() {
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let start = ShardStart {
                config: config.clone(),
                registry: registry.clone(),
                listener,
                mesh: mesh.clone(),
                doorbells: doorbells.clone(),
                shutdown_flag: shutdown_flag.clone(),
                started_at,
                boot_unix_ms,
                processors: self.processors.clone(),
                resources: Some(resources.clone()),
                export_tx: export_tx.clone(),
                tls: tls.clone(),
                ip_limiter: ip_limiter.clone(),
                ready: ready_tx.clone(),
                cluster: cluster.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || run_shard_thread(index, core, start))
                .map_err(|e| ServerError::ShardStart {
                    shard: index,
                    message: format!("cannot spawn its thread: {e}"),
                })?;
            threads.push(thread);
        }
        drop(ready_tx);

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for _ in 0..shards {
            let wait = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(wait) {
                Ok(Ok(_)) => {}
                Ok(Err(message)) => return Err(startup_error(message)),
                Err(_) => {
                    return Err(ServerError::ShardStart {
                        shard: usize::MAX,
                        message: "shards did not start within 30 s".into(),
                    })
                }
            }
        }
        log::info!(
            "listening on {local_addr} ({shards} shard{}, {} mode, path {}{})",
            if shards == 1 { "" } else { "s" },
            if config.echo { "echo" } else { "protocol" },
            config.path,
            if config.tls_files().is_some() {
                ", TLS only: wss:// and https://"
            } else {
                ""
            }
        );

        let mut crashed = None;
        for (index, thread) in threads.into_iter().enumerate() {
            if thread.join().is_err() && crashed.is_none() {
                crashed = Some(index);
            }
        }
        match crashed {
            Some(shard) => Err(ServerError::ShardCrashed { shard }),
            None => {
                log::info!("shutdown complete");
                Ok(())
            }
        }
    }
}

/// Starts the thread that reads `/proc` every `metrics_interval_ms` (so no
/// shard ever does) and appends `--metrics-export` lines. Returns the sender
/// for export lines when an export file is configured.
fn start_sampler_thread(
    config: &Config,
    resources: crate::shard::observe::SharedResources,
    shutdown: Arc<AtomicBool>,
) -> Result<Option<mpsc::Sender<crate::shard::observe::ExportLine>>, ServerError> {
    use std::io::Write;
    let period = Duration::from_millis(config.metrics_interval_ms);
    let (tx, rx) = mpsc::channel::<crate::shard::observe::ExportLine>();
    let export = if config.metrics_export.is_empty() {
        None
    } else {
        let path = std::path::PathBuf::from(&config.metrics_export);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ServerError::Export {
                path: path.clone(),
                source: e,
            })?;
        let fresh = file.metadata().map(|m| m.len() == 0).unwrap_or(true);
        Some((path, file, fresh))
    };
    let wants_export = export.is_some();
    std::thread::Builder::new()
        .name("metrics-sampler".into())
        .spawn(move || {
            let mut sampler = crate::metrics::resources::ResourceSampler::new();
            let mut export = export;
            while !shutdown.load(std::sync::atomic::Ordering::Acquire) {
                let sample = sampler.sample(Instant::now());
                if let Ok(mut r) = resources.lock() {
                    *r = sample;
                }
                // Export lines arrive once per interval from shard 0.
                let wait = if export.is_some() {
                    period
                } else {
                    Duration::ZERO
                };
                if let Ok(line) = rx.recv_timeout(wait) {
                    if let Some((path, file, fresh)) = &mut export {
                        let text = if path.extension().is_some_and(|e| e == "csv") {
                            // The header row only once, at the top of the file.
                            let skip_header = !std::mem::replace(fresh, false);
                            let mut rows = line.csv.split_inclusive("\r\n");
                            if skip_header {
                                rows.next();
                            }
                            rows.collect::<String>()
                        } else {
                            format!("{}\n", line.json)
                        };
                        if let Err(e) = file.write_all(text.as_bytes()) {
                            log::warn!("cannot append to {}: {e}", path.display());
                        }
                    }
                }
                if export.is_none() {
                    std::thread::sleep(period);
                }
            }
        })
        .map_err(|e| ServerError::ShardStart {
            shard: usize::MAX,
            message: format!("cannot start the metrics sampler thread: {e}"),
        })?;
    Ok(wants_export.then_some(tx))
}

/// Cluster mode: the node id (kept in the data directory) and Redis's
/// address, resolved once.
fn cluster_start(config: &Config) -> Result<Option<Arc<ClusterStart>>, ServerError> {
    if !config.is_cluster() {
        return Ok(None);
    }
    let addr = crate::cluster::RedisAddr::parse(&config.cluster_redis).map_err(|e| {
        ServerError::Cluster(format!(
            "invalid cluster_redis {:?}: {e}",
            config.cluster_redis
        ))
    })?;
    let sock = addr.resolve().map_err(ServerError::Cluster)?;
    let data_dir = (!config.no_persist).then(|| std::path::Path::new(&config.data_dir));
    let node =
        crate::cluster::resolve_node_id(&config.node_id, data_dir).map_err(ServerError::Cluster)?;
    if data_dir.is_none() && config.node_id.is_empty() {
        log::warn!(
            "cluster node id {node} is new on every start without a data directory: set node_id to keep it"
        );
    }
    log::info!("cluster mode: node {node}, Redis at {addr}");
    Ok(Some(Arc::new(ClusterStart {
        node,
        addr,
        sock,
        subscribed: std::sync::atomic::AtomicBool::new(false),
    })))
}

/// The error for a shard that reported failure as `shard N: message`.
fn startup_error(message: String) -> ServerError {
    let (shard, message) = match message.split_once(": ") {
        Some((n, rest)) if n.starts_with("shard ") => (
            n.trim_start_matches("shard ").parse().unwrap_or(usize::MAX),
            rest.to_string(),
        ),
        _ => (usize::MAX, message),
    };
    ServerError::ShardStart { shard, message }
}

fn run_shard_thread(index: usize, core: Option<core_affinity::CoreId>, start: ShardStart) {
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            log::warn!("shard {index}: cannot pin to core {}", core.id);
        }
    }
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("shard-{index}"))
        .io_memory(SHARD_IO_MEMORY_BYTES)
        .make();
    match executor {
        Ok(executor) => executor.run(ws_uring_readiness::counted(shard::run(start))),
        Err(e) => {
            let _ = start.ready.send(Err(format!(
                "shard {index}: io_uring setup failed ({e}); glommio needs at least {} KiB of \
                 locked memory per shard and the limit is {}: raise it with `ulimit -l` \
                 (or run scripts/tune.sh)",
                crate::limits::MEMLOCK_PER_SHARD_BYTES / 1024,
                crate::limits::memlock_text()
            )));
        }
    }
}

/// One listening socket per shard on the same address (SO_REUSEPORT lets
/// the kernel spread connections over them). Port 0 resolves to one free
/// port that every shard then shares.
fn bind_listeners(
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), ServerError> {
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = bind_one(bound).map_err(|source| ServerError::Bind { addr, source })?;
        if let Some(local) = socket
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?
            .as_socket()
        {
            bound = local;
        }
        listeners.push(OwnedFd::from(socket));
    }
    Ok((listeners, bound))
}

fn bind_one(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_resolves_once_for_all_shards() {
        let (fds, addr) = bind_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(fds.len(), 3);
        assert_ne!(addr.port(), 0);
        for fd in fds {
            let s = Socket::from(fd);
            assert_eq!(s.local_addr().unwrap().as_socket().unwrap(), addr);
        }
    }

    #[test]
    fn startup_errors_keep_the_shard_number() {
        match startup_error("shard 3: io_uring setup failed".into()) {
            ServerError::ShardStart { shard, message } => {
                assert_eq!(shard, 3);
                assert_eq!(message, "io_uring setup failed");
            }
            other => panic!("{other:?}"),
        }
    }
}
