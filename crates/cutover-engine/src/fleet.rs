//! The connections of one run: one per worker, opened in parallel up
//! front, reused by every step, closed at the end. A worker that cannot be
//! reached fails its own allocations and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use cutover_model::{KnownHostsPolicy, SshSettings, TransportKind, Worker};
use cutover_transport::{Host, HostSpec, KnownHosts, SshOptions};
use tokio::sync::Semaphore;

use crate::events::{Event, Reporter};
use crate::EngineError;

pub(crate) struct Fleet {
    hosts: BTreeMap<String, Result<Arc<Host>, String>>,
    _control_dir: tempfile::TempDir,
}

fn spec(w: &Worker) -> HostSpec {
    HostSpec {
        name: w.name.clone(),
        host: w.host.clone(),
        port: w.port,
        user: w.user.clone(),
        local: w.transport == TransportKind::Local,
    }
}

impl Fleet {
    pub async fn connect(
        ssh: &SshSettings,
        workers: Vec<Worker>,
        reporter: &Arc<dyn Reporter>,
    ) -> Result<Fleet, EngineError> {
        // Short path: control sockets must fit in sun_path.
        let control_dir = tempfile::Builder::new()
            .prefix("cutover-ssh-")
            .tempdir_in("/tmp")
            .map_err(EngineError::io("creating the ssh control directory"))?;
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
            control_dir: control_dir.path().to_path_buf(),
        };
        let limit = Arc::new(Semaphore::new(ssh.max_parallel));
        let mut tasks = tokio::task::JoinSet::new();
        for w in workers {
            let opts = opts.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let r = Host::connect(&spec(&w), &opts).await;
                (w.name, r)
            });
        }
        let mut hosts = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((name, r)) = joined else { continue };
            let entry = match r {
                Ok(h) => Ok(Arc::new(h)),
                Err(e) => {
                    reporter.event(&Event::ConnectFailed {
                        worker: name.clone(),
                        error: e.to_string(),
                    });
                    Err(e.to_string())
                }
            };
            hosts.insert(name, entry);
        }
        Ok(Fleet {
            hosts,
            _control_dir: control_dir,
        })
    }

    pub fn get(&self, worker: &str) -> Result<Arc<Host>, String> {
        self.hosts
            .get(worker)
            .cloned()
            .unwrap_or_else(|| Err(format!("no connection to {worker}")))
    }

    pub async fn close(self) {
        for (_, h) in self.hosts {
            if let Ok(h) = h {
                if let Ok(h) = Arc::try_unwrap(h) {
                    h.close().await;
                }
            }
        }
    }
}
