//! The connections of one run: at most one per worker, opened on first use
//! (or all at once with [`Fleet::connect`]), reused by every step, closed at
//! the end. A worker that cannot be reached fails its own allocations and
//! nothing else.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cutover_model::{KnownHostsPolicy, TransportKind, Worker};
use cutover_transport::{Fence, Host, HostSpec, KnownHosts, SshOptions};
use tokio::sync::{OnceCell, Semaphore};

use crate::events::{Event, Reporter};
use crate::scratch::Scratch;
use crate::{Context, EngineError};

type Conn = Result<Arc<Host>, String>;

pub(crate) struct Fleet {
    workers: BTreeMap<String, (Worker, OnceCell<Conn>)>,
    opts: SshOptions,
    /// Handshakes in flight at once (`[ssh] max_parallel`).
    limit: Semaphore,
    reporter: Arc<dyn Reporter>,
    runtime_dir: PathBuf,
    project_root: PathBuf,
    /// The ssh control sockets' private dir, made on the first connection.
    control_dir: std::sync::OnceLock<Result<Scratch, String>>,
    /// Whose lock's fencing token each connection carries.
    store: Arc<cutover_state::Store>,
}

fn spec(w: &Worker, fence: Option<(String, u64)>) -> HostSpec {
    HostSpec {
        name: w.name.clone(),
        host: w.host.clone(),
        port: w.port,
        user: w.user.clone(),
        local: w.transport == TransportKind::Local,
        fence: fence.map(|(store_id, token)| Fence {
            file: format!("{}/.fence", w.root.trim_end_matches('/')),
            store_id,
            token,
        }),
    }
}

impl Fleet {
    /// A fleet that connects to each worker when it is first used.
    pub fn lazy(ctx: &Context, workers: Vec<Worker>) -> Result<Fleet, EngineError> {
        let ssh = &ctx.project.config.ssh;
        let reporter = &ctx.reporter;
        let opts = SshOptions {
            user: ssh.user.clone(),
            port: ssh.port,
            identity_file: ssh.identity_file.clone(),
            known_hosts: match ssh.known_hosts {
                KnownHostsPolicy::Strict => KnownHosts::Strict,
                KnownHostsPolicy::AcceptNew => KnownHosts::AcceptNew,
            },
            known_hosts_file: ssh.known_hosts_file.clone(),
            config_file: ssh.config_file.clone(),
            connect_timeout: ssh.connect_timeout,
            // Set when the first connection is made (see `options`).
            control_dir: PathBuf::new(),
        };
        Ok(Fleet {
            workers: workers
                .into_iter()
                .map(|w| (w.name.clone(), (w, OnceCell::new())))
                .collect(),
            opts,
            limit: Semaphore::new(ssh.max_parallel),
            reporter: reporter.clone(),
            runtime_dir: ctx.runtime_dir.clone(),
            project_root: ctx.project.root.clone(),
            control_dir: std::sync::OnceLock::new(),
            store: ctx.store.clone(),
        })
    }

    /// A fleet with every worker connected (in parallel) before it returns.
    pub async fn connect(ctx: &Context, workers: Vec<Worker>) -> Result<Fleet, EngineError> {
        let fleet = Fleet::lazy(ctx, workers)?;
        let names: Vec<String> = fleet.workers.keys().cloned().collect();
        crate::join::join_all(names.iter().map(|n| fleet.host(n))).await;
        Ok(fleet)
    }

    /// The worker's connection, opening it if this is the first use.
    pub async fn host(&self, worker: &str) -> Conn {
        let Some((w, cell)) = self.workers.get(worker) else {
            return Err(format!("no connection to {worker}"));
        };
        cell.get_or_init(|| async {
            let _permit = self.limit.acquire().await;
            let opts = self.options()?;
            match Host::connect(&spec(w, self.store.fence_token()), &opts).await {
                Ok(h) => Ok(Arc::new(h)),
                Err(e) => {
                    self.reporter.event(&Event::ConnectFailed {
                        worker: w.name.clone(),
                        error: e.to_string(),
                    });
                    Err(e.to_string())
                }
            }
        })
        .await
        .clone()
    }

    /// The ssh options, with the control dir made on first use: a fleet
    /// that never connects (a run with nothing to do) makes no dir. The
    /// runtime dir is short, so control sockets fit in sun_path; what a run
    /// killed with -9 left there is swept first (its owner is provably gone).
    fn options(&self) -> Result<SshOptions, String> {
        let dir = self.control_dir.get_or_init(|| {
            Scratch::sweep(&self.runtime_dir);
            Scratch::create(&self.runtime_dir, "ssh", &self.project_root).map_err(|e| e.to_string())
        });
        let dir = dir.as_ref().map_err(Clone::clone)?;
        Ok(SshOptions {
            control_dir: dir.path().to_path_buf(),
            ..self.opts.clone()
        })
    }

    /// The connection of a worker already connected by [`Fleet::connect`].
    pub fn get(&self, worker: &str) -> Conn {
        self.workers
            .get(worker)
            .and_then(|(_, cell)| cell.get().cloned())
            .unwrap_or_else(|| Err(format!("no connection to {worker}")))
    }

    /// Closes every master connection, all at once.
    pub async fn close(self) {
        let hosts = self
            .workers
            .into_values()
            .filter_map(|(_, cell)| Arc::try_unwrap(cell.into_inner()?.ok()?).ok());
        crate::join::join_all(hosts.map(Host::close)).await;
    }
}
