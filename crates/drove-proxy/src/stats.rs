//! Data path counters (atomics; read by the admin API and /metrics) and the retry budget.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Counters of one proxy, summed over its workers.
#[derive(Debug)]
pub struct ProxyStats {
    /// Requests received (including rejected ones).
    pub requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub responses: [AtomicU64; 5],
    /// Retries made.
    pub retries: AtomicU64,
    /// Retries skipped because the budget was spent.
    pub retry_budget_exhausted: AtomicU64,
    /// Failed connects to backends.
    pub connect_errors: AtomicU64,
    /// Tries that timed out.
    pub timeouts: AtomicU64,
    /// 503s because nothing was available.
    pub no_backend: AtomicU64,
    /// Requests rejected before reaching a backend (400, 413).
    pub rejected: AtomicU64,
    /// Requests refused by a rate limit (429).
    pub rate_limited: AtomicU64,
    /// Client connections open now.
    pub active_connections: AtomicI64,
    /// Client connections accepted in total.
    pub connections: AtomicU64,
    /// Upgrade tunnels open now.
    pub active_tunnels: AtomicI64,
    /// Panics contained, by where they happened (index: [`PanicSite`] as usize).
    pub panics: [AtomicU64; 3],
    /// Retry budget in thousandths of a retry.
    budget: AtomicI64,
    /// Budget credit per request, in thousandths of a retry (`retries.budget`; a reload
    /// may change it).
    deposit: AtomicI64,
}

/// Where in the data path a panic was contained; each costs what its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicSite {
    /// In a request's walk: that request (a 500 if nothing was sent yet) and its
    /// connection.
    Request = 0,
    /// In a connection's task outside a request: that connection.
    Connection = 1,
    /// In a worker thread (its accept loop or its pool sweeper): the worker's open
    /// connections; the worker starts again on the same listening socket.
    Worker = 2,
}

impl PanicSite {
    /// Every site, in index order.
    pub const ALL: [PanicSite; 3] = [PanicSite::Request, PanicSite::Connection, PanicSite::Worker];

    /// The `where` label of `drove_panics_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            PanicSite::Request => "request",
            PanicSite::Connection => "connection",
            PanicSite::Worker => "worker",
        }
    }
}

/// Budget credit a fresh proxy starts with and the most it can save up, in retries:
/// enough for a burst of failures at low traffic, small enough that a sick fleet under
/// load is quickly held to the percentage.
const BUDGET_INITIAL: i64 = 10;
const BUDGET_MAX: i64 = 100;

impl ProxyStats {
    pub(crate) fn new(budget_percent: u32) -> ProxyStats {
        ProxyStats {
            requests: AtomicU64::new(0),
            responses: Default::default(),
            retries: AtomicU64::new(0),
            retry_budget_exhausted: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            no_backend: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            active_connections: AtomicI64::new(0),
            connections: AtomicU64::new(0),
            active_tunnels: AtomicI64::new(0),
            panics: Default::default(),
            budget: AtomicI64::new(BUDGET_INITIAL * 1000),
            deposit: AtomicI64::new(budget_percent as i64 * 10),
        }
    }

    /// The monotonic counters by name (carried to the next drove by an upgrade).
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.monotonic()
            .into_iter()
            .map(|(n, c)| (n, c.load(Relaxed)))
            .collect()
    }

    /// Puts counters carried over by an upgrade back (names it does not know are
    /// ignored: a newer drove may count more).
    pub fn restore(&self, values: &[(String, u64)]) {
        let mine = self.monotonic();
        for (name, v) in values {
            if let Some((_, c)) = mine.iter().find(|(n, _)| n == name) {
                c.store(*v, Relaxed);
            }
        }
    }

    fn monotonic(&self) -> Vec<(String, &AtomicU64)> {
        let mut v: Vec<(String, &AtomicU64)> = vec![
            ("requests".into(), &self.requests),
            ("retries".into(), &self.retries),
            (
                "retry_budget_exhausted".into(),
                &self.retry_budget_exhausted,
            ),
            ("connect_errors".into(), &self.connect_errors),
            ("timeouts".into(), &self.timeouts),
            ("no_backend".into(), &self.no_backend),
            ("rejected".into(), &self.rejected),
            ("rate_limited".into(), &self.rate_limited),
            ("connections".into(), &self.connections),
        ];
        for (i, c) in self.responses.iter().enumerate() {
            v.push((format!("responses_{}xx", i + 1), c));
        }
        for site in PanicSite::ALL {
            v.push((
                format!("panics_{}", site.as_str()),
                &self.panics[site as usize],
            ));
        }
        v
    }

    /// A new `retries.budget` (percent of requests); the credit saved so far is kept.
    pub(crate) fn set_budget_percent(&self, percent: u32) {
        self.deposit.store(percent as i64 * 10, Relaxed);
    }

    /// A panic was contained at `site`.
    pub(crate) fn panicked(&self, site: PanicSite) {
        self.panics[site as usize].fetch_add(1, Relaxed);
    }

    /// Panics contained at `site` so far.
    pub fn panics(&self, site: PanicSite) -> u64 {
        self.panics[site as usize].load(Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        self.active_connections.fetch_add(1, Relaxed);
        self.connections.fetch_add(1, Relaxed);
    }
    pub(crate) fn connection_closed(&self) {
        self.active_connections.fetch_sub(1, Relaxed);
    }

    /// A request arrived: count it and credit the retry budget.
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
        let deposit = self.deposit.load(Relaxed);
        if deposit > 0 && self.budget.load(Relaxed) < BUDGET_MAX * 1000 {
            self.budget.fetch_add(deposit, Relaxed);
        }
    }

    pub(crate) fn response(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    /// Whether the budget has a retry left (without taking it).
    pub(crate) fn retry_budget_available(&self) -> bool {
        self.budget.load(Relaxed) >= 1000
    }

    /// A retry was not made because the budget was spent.
    pub(crate) fn budget_spent(&self) {
        self.retry_budget_exhausted.fetch_add(1, Relaxed);
    }

    /// A retry was made.
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(crate) fn withdraw_retry(&self) -> bool {
        if self.budget.fetch_sub(1000, Relaxed) >= 1000 {
            true
        } else {
            self.budget.fetch_add(1000, Relaxed);
            self.retry_budget_exhausted.fetch_add(1, Relaxed);
            false
        }
    }
}
