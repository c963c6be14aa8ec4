//! The flusher thread: makes applied groups durable with one `fdatasync`
//! of the write-ahead log file(s) they went to, then makes them visible
//! (counters, cache, head) and answers their callers, in commit order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::error;

use super::command::{Group, Meta};
use super::error::StoreError;
use super::faults::{Fault, Faults, injected};
use super::lock;
use super::recent::Recent;
use super::wal::Shared;
use crate::alert::Seq;

/// The watch senders and the cache through which committed groups become
/// visible to readers. Only the flusher (or the writer, when it syncs a
/// lone group itself) publishes, in commit order.
pub struct Outlet {
    pub head: watch::Sender<Seq>,
    /// The counters, for readers (`Store::meta`).
    pub meta: watch::Sender<Meta>,
    pub recent: Arc<Mutex<Recent>>,
    /// Bumped when receipts are committed; readers hold receivers.
    pub receipts: watch::Sender<u64>,
    /// Whether alerts are accepted (health, admin): set stopped before the
    /// callers of a failed sync are answered.
    pub writes: Arc<watch::Sender<super::Writes>>,
    pub space: Arc<super::space::Space>,
}

/// Takes every group waiting and syncs them together, until the writer
/// hangs up.
pub fn run(
    jobs: &std::sync::mpsc::Receiver<Group>,
    outlet: &Outlet,
    failed: &Mutex<Option<StoreError>>,
    in_flusher: &AtomicUsize,
    synced: Option<Arc<Shared>>,
    faults: Option<&Faults>,
) {
    while let Ok(first) = jobs.recv() {
        let mut groups = vec![first];
        groups.extend(jobs.try_iter());
        let n = groups.len();
        sync_and_answer(groups, outlet, failed, synced.as_deref(), faults);
        // Only now may the writer answer a group itself.
        in_flusher.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Syncs the files of `groups` once, then publishes and answers them; if
/// the sync fails, answers them with the error and stops the store's
/// writes (what was written but not synced may or may not be on disk).
pub fn sync_and_answer(
    groups: Vec<Group>,
    outlet: &Outlet,
    failed: &Mutex<Option<StoreError>>,
    synced: Option<&Shared>,
    faults: Option<&Faults>,
) {
    if let Some(cause) = lock(failed).clone() {
        let e = StoreError::Failed(Arc::new(cause));
        for group in groups {
            group.fail(&e);
        }
        return;
    }
    match sync(&groups, faults) {
        Ok(()) => {
            if let (Some(shared), Some(lsn)) = (synced, groups.iter().map(|g| g.lsn).max()) {
                shared.synced_through(lsn);
            }
            for group in groups {
                metrics::histogram!(crate::metrics::COMMIT_BATCH).record(group.commands as f64);
                publish(outlet, group);
            }
        }
        Err(e) => {
            let alerts: usize = groups.iter().map(|g| g.replies.len()).sum();
            error!(error = %e, alerts, "write-ahead log sync failed; nothing of it acknowledged; the store refuses further writes until restarted");
            lock(failed).get_or_insert_with(|| e.clone());
            super::report_writes(failed, &outlet.space, &outlet.writes);
            for group in groups {
                group.fail(&e);
            }
        }
    }
}

/// One `fdatasync` per file the groups that wait for the disk went to. A
/// sync covers every earlier write to the same file, and a full file is
/// synced before the next one is written to.
fn sync(groups: &[Group], faults: Option<&Faults>) -> Result<(), StoreError> {
    if injected(faults, Fault::WalSync) {
        let e = std::io::Error::from_raw_os_error(libc::EIO);
        return Err(StoreError::io("syncing the write-ahead log", e));
    }
    let started = std::time::Instant::now();
    let mut files: Vec<&Arc<std::fs::File>> = Vec::new();
    for f in groups.iter().filter(|g| g.sync).flat_map(|g| &g.files) {
        if !files.iter().any(|seen| Arc::ptr_eq(seen, f)) {
            files.push(f);
        }
    }
    let result = files
        .iter()
        .try_for_each(|f| f.sync_data())
        .map_err(|e| StoreError::io("syncing the write-ahead log", e));
    metrics::histogram!(crate::metrics::COMMIT_FLUSH_SECONDS)
        .record(started.elapsed().as_secs_f64());
    result
}

/// Makes a durable group visible — counters, cache, head — then answers its
/// callers. Counters first: whoever is answered and asks for the status must
/// see its own write.
fn publish(outlet: &Outlet, group: Group) {
    outlet.meta.send_if_modified(|m| {
        let changed = *m != group.meta;
        *m = group.meta;
        changed
    });
    if !group.receipts.is_empty() {
        outlet
            .receipts
            .send_modify(|n| *n += group.receipts.len() as u64);
    }
    if let Some((last, _)) = group.records.last() {
        let head = last.seq;
        let mut recent = lock(&outlet.recent);
        for (r, size) in group.records {
            recent.push(r, size);
        }
        drop(recent);
        outlet.head.send_replace(head);
    }
    for (reply, appended) in group.replies {
        let _ = reply.send(Ok(appended));
    }
    for (reply, r) in group.done {
        let _ = reply.send(r);
    }
    for (reply, r) in group.pruned {
        let _ = reply.send(r);
    }
}
