//! The responder: one thread per interface named by an L2 advertisement, reconciled to each snapshot.

use crate::iface::{self, IfShared, Table};
use crate::policy;
use model::l2::L2InterfaceStatus;
use model::snapshot::Snapshot;
use model::subsystem::{ApplyError, Report, Subsystem};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

#[derive(Debug, Default)]
struct Inner {
    interfaces: RwLock<BTreeMap<String, Arc<IfShared>>>,
}

/// Read-only access to the responder's state, for the REST layer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponderHandle {
    inner: Arc<Inner>,
}

impl ResponderHandle {
    /// Every interface named by an L2 advertisement, by name, with its VIPs (announced or not).
    pub fn status(&self) -> Vec<L2InterfaceStatus> {
        let interfaces: Vec<Arc<IfShared>> =
            self.inner.interfaces.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        interfaces.iter().map(|i| i.status()).collect()
    }
}

struct Worker {
    shared: Arc<IfShared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn stop(&mut self) {
        // Empty the table first: nothing is answered from here on, even before the thread sees the flag.
        self.shared.set_table(Arc::new(Table::default()));
        self.shared.stop.store(true, Ordering::Release);
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(interface = %self.shared.name, "L2 responder thread panicked");
        }
    }
}

/// Portico's ARP/NDP responder, a [`Subsystem`] named `l2`.
///
/// Each interface gets a thread, started in the network namespace of the thread that calls
/// [`Subsystem::apply`] (threads inherit it).
pub struct Responder {
    inner: Arc<Inner>,
    workers: BTreeMap<String, Worker>,
    /// Interfaces whose thread could not be started.
    problems: Vec<String>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("interfaces", &self.workers.len()).finish_non_exhaustive()
    }
}

impl Default for Responder {
    fn default() -> Self {
        Responder::new()
    }
}

impl Responder {
    pub fn new() -> Responder {
        Responder { inner: Arc::new(Inner::default()), workers: BTreeMap::new(), problems: Vec::new() }
    }

    pub fn handle(&self) -> ResponderHandle {
        ResponderHandle { inner: self.inner.clone() }
    }

    /// Stops answering on every interface and waits for the interface threads to end (within ~20 ms).
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for w in self.workers.values_mut() {
            w.stop();
        }
        for (_, mut w) in std::mem::take(&mut self.workers) {
            w.join();
        }
        self.inner.interfaces.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Report {
        let plan = policy::plan(snapshot);
        let gone: Vec<String> = self.workers.keys().filter(|n| !plan.contains_key(*n)).cloned().collect();
        let mut stopped = Vec::new();
        for name in gone {
            if let Some(mut w) = self.workers.remove(&name) {
                w.stop();
                stopped.push(w);
            }
        }
        self.problems.clear();
        for (name, vips) in &plan {
            if !self.workers.contains_key(name) {
                let shared = Arc::new(IfShared::new(name));
                let for_thread = shared.clone();
                let spawned =
                    std::thread::Builder::new().name(format!("l2-{name}")).spawn(move || iface::run(for_thread));
                match spawned {
                    Ok(t) => {
                        self.workers.insert(name.clone(), Worker { shared, thread: Some(t) });
                    }
                    Err(e) => {
                        tracing::error!(interface = %name, error = %e, "cannot start the L2 responder thread");
                        self.problems.push(format!("{name}: cannot start a thread: {e}"));
                        continue;
                    }
                }
            }
            if let Some(w) = self.workers.get(name) {
                let table = Table::new(vips, &w.shared.table());
                w.shared.set_table(Arc::new(table));
            }
        }
        *self.inner.interfaces.write().unwrap_or_else(|e| e.into_inner()) =
            self.workers.iter().map(|(n, w)| (n.clone(), w.shared.clone())).collect();
        for mut w in stopped {
            w.join();
        }
        self.current_report()
    }

    fn current_report(&self) -> Report {
        let mut problems = self.problems.clone();
        let mut announced = 0usize;
        for w in self.workers.values() {
            let up = w.shared.is_up();
            let table = w.shared.table();
            let n = table.all.values().filter(|e| e.plan.announce).count();
            if up {
                announced += n;
            }
            match w.shared.last_error() {
                Some(e) => problems.push(format!("{}: {e}", w.shared.name)),
                None if !up => problems.push(format!("{}: not up yet", w.shared.name)),
                None => {}
            }
        }
        let detail = format!("{announced} VIP announcements on {} interfaces", self.workers.len());
        if problems.is_empty() {
            Report::ok(detail)
        } else {
            Report::degraded(format!("{detail}; {}", problems.join("; ")))
        }
    }
}

impl Subsystem for Responder {
    fn name(&self) -> &'static str {
        "l2"
    }

    async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
        Ok(self.apply_snapshot(&snapshot))
    }

    fn report(&self) -> Option<Report> {
        Some(self.current_report())
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // A responder dropped without `shutdown` must not keep answering behind it.
        for w in self.workers.values_mut() {
            w.stop();
        }
    }
}
