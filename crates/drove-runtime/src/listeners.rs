//! The balancer's listening sockets and the proxy workers serving them, as one
//! generation that a reload can replace: the new generation is bound and serving before
//! the old one stops accepting, so no connection is refused; the old one then finishes
//! the requests it has (within `timeouts.shutdown_grace`) and closes.

use std::net::{SocketAddr, TcpListener};

use drove_proxy::Proxy;
use tokio::sync::watch;

/// One generation of listeners and their workers.
pub(crate) struct ProxyListeners {
    /// The address they are bound to.
    pub(crate) addr: SocketAddr,
    /// Duplicates of the sockets, so a next generation on the same address can take
    /// over the very same sockets (and the connections queued on them).
    sockets: Vec<TcpListener>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ProxyListeners {
    /// Starts workers on `sockets` (bound and listening) until they are retired or drove
    /// shuts down.
    pub(crate) fn start(
        sockets: Vec<TcpListener>,
        proxy: Proxy,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let addr = sockets
            .first()
            .ok_or_else(|| std::io::Error::other("no listening socket"))?
            .local_addr()?;
        let dups = sockets
            .iter()
            .map(TcpListener::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(drove_proxy::serve_until(sockets, proxy, rx, shutdown));
        Ok(ProxyListeners {
            addr,
            sockets: dups,
            stop,
            task,
        })
    }

    /// The listening sockets' descriptors (an upgrade keeps them open across `execve`).
    pub(crate) fn raw_fds(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        self.sockets.iter().map(|s| s.as_raw_fd()).collect()
    }

    /// After a failed upgrade (its workers handed everything over and ended): workers
    /// again on the very same sockets.
    pub(crate) fn restart(
        self,
        proxy: Proxy,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let sockets = self
            .sockets
            .iter()
            .map(TcpListener::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let _ = self.stop.send(true);
        Self::start(sockets, proxy, shutdown)
    }

    /// Binds the sockets of a next generation: on the same address the current sockets
    /// are taken over (duplicates) and completed; elsewhere new ones are bound.
    pub(crate) fn bind_next(
        &self,
        addr: SocketAddr,
        workers: usize,
        defer_accept: bool,
    ) -> std::io::Result<Vec<TcpListener>> {
        if addr == self.addr {
            drove_proxy::bind_reusing(addr, workers, defer_accept, &self.sockets)
        } else {
            drove_proxy::bind(addr, workers, defer_accept)
        }
    }

    /// Stops accepting; every connection ends by itself (after its next response, at
    /// its idle timeout, when its tunnel closes — or within the shutdown grace once
    /// drove shuts down); resolves when the workers are gone. Sockets shared with a
    /// newer generation stay open through its duplicates.
    pub(crate) fn retire(self) -> tokio::task::JoinHandle<()> {
        let _ = self.stop.send(true);
        // Our duplicates go now: a socket no newer generation holds closes as soon as
        // its workers have taken what was queued on it, instead of queueing
        // connections nobody accepts until the grace ends.
        drop(self.sockets);
        let task = self.task;
        tokio::spawn(async move {
            match task.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "proxy ended with an error"),
                Err(e) => tracing::warn!(error = %e, "proxy task failed"),
                Ok(Ok(())) => {}
            }
        })
    }
}
