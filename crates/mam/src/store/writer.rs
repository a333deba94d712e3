//! The writer thread: every change to every archive file goes through it.
//!
//! Commands arrive on one bounded queue. The thread takes whatever is queued (up to
//! [`BATCH_ROWS`] messages, waiting at most [`COMMIT_DELAY`] for more once it holds an
//! insert), groups consecutive inserts by file and commits each group in one
//! transaction, then acknowledges each insert. This is group commit: the fsync cost is
//! paid per batch, not per row, both under a steady trickle and under load.
//! Retractions, deletions, flushes and file preparation ([`WriteCmd::Ensure`]) are
//! executed in queue order after the inserts before them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use waddle_storage::db::Tx;

use super::ops::{self, NewMessage};
use super::pool::{Pool, Role};
use super::Sql;
use crate::MamError;

/// Most messages committed in one transaction.
pub const BATCH_ROWS: usize = 1024;

/// Longest an insert waits for others to share its transaction.
pub const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// Commands waiting beyond this make `append` wait (back-pressure, bounded memory).
pub const QUEUE_DEPTH: usize = 65_536;

/// What the writer has committed so far (see [`crate::Archive::write_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Insert transactions committed (each holds up to [`BATCH_ROWS`] messages).
    pub batches: u64,
    /// Messages committed.
    pub rows: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    rows: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> WriteStats {
        WriteStats { batches: self.batches.load(Ordering::Relaxed), rows: self.rows.load(Ordering::Relaxed) }
    }

    fn committed(&self, rows: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(u64::try_from(rows).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

pub(crate) type Ack<T = ()> = oneshot::Sender<Result<T, MamError>>;

pub(crate) enum WriteCmd {
    Insert {
        file: String,
        msg: NewMessage,
        done: Ack,
    },
    Retract {
        file: String,
        archive: String,
        target: String,
        done: Ack<bool>,
    },
    Delete {
        file: String,
        archive: String,
        done: Ack,
    },
    /// Acknowledged once everything queued before it is committed.
    Flush {
        done: Ack,
    },
    /// Creates and migrates `file` if needed (the reader asks before its first read).
    Ensure {
        file: String,
        done: Ack,
    },
}

/// Sends a command to the writer thread.
///
/// The command is queued at once when there is room, so a caller that drops the
/// returned future (fire-and-forget) loses nothing. When the queue is full the future
/// waits for room (back-pressure); if it is dropped before that, the command is handed
/// to a task on the current tokio runtime that keeps waiting, so it is still not lost.
pub(crate) fn enqueue(tx: &mpsc::Sender<WriteCmd>, cmd: WriteCmd) -> Queued {
    match tx.try_send(cmd) {
        Ok(()) => Queued::Ready(Some(Ok(()))),
        Err(TrySendError::Closed(_)) => Queued::Ready(Some(Err(MamError::Closed))),
        Err(TrySendError::Full(cmd)) => {
            let mut pending = Pending { tx: tx.clone(), cmd: Some(cmd) };
            Queued::Waiting(Box::pin(async move { pending.send().await }))
        }
    }
}

/// The future [`enqueue`] returns: already resolved when the command went straight into
/// the queue, the usual case. Only a full queue allocates the waiting future. The
/// routing path awaits this once per archived message, inside every stanza's routing
/// future, so its size is paid by each of them: an `async` block holding the waiting
/// state inline made every session's routing future 2.4 KiB larger.
pub(crate) enum Queued {
    /// `None` once the outcome has been returned.
    Ready(Option<Result<(), MamError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), MamError>> + Send>>),
}

impl Queued {
    /// A future that resolves at once with `error`.
    pub(crate) fn failed(error: MamError) -> Queued {
        Queued::Ready(Some(Err(error)))
    }
}

impl Future for Queued {
    type Output = Result<(), MamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Queued::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or(Ok(()))),
            Queued::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

/// A command waiting for room in a full queue.
struct Pending {
    tx: mpsc::Sender<WriteCmd>,
    cmd: Option<WriteCmd>,
}

impl Pending {
    async fn send(&mut self) -> Result<(), MamError> {
        let permit = self.tx.reserve().await.map_err(|_| MamError::Closed)?;
        if let Some(cmd) = self.cmd.take() {
            permit.send(cmd);
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(cmd) = self.cmd.take() else { return };
        let cmd = match self.tx.try_send(cmd) {
            Ok(()) | Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(cmd)) => cmd,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let tx = self.tx.clone();
                handle.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
            Err(_) => tracing::error!("mam: archive queue full and no runtime to wait on: a write was dropped"),
        }
    }
}

/// Starts the writer thread; returns once its runtime is up.
pub(crate) async fn start(dir: PathBuf, counters: Arc<Counters>) -> Result<mpsc::Sender<WriteCmd>, MamError> {
    let (tx, queue) = mpsc::channel(QUEUE_DEPTH);
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("waddle-mam-writer".into())
        .spawn(move || run(dir, counters, queue, ready_tx))
        .map_err(|e| MamError::Database(format!("cannot start the archive writer thread: {e}")))?;
    ready_rx.await.map_err(|_| MamError::Closed)??;
    Ok(tx)
}

fn run(
    dir: PathBuf,
    counters: Arc<Counters>,
    mut queue: mpsc::Receiver<WriteCmd>,
    ready: oneshot::Sender<Result<(), MamError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(MamError::Database(format!("cannot start the archive writer runtime: {e}"))));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut writer = Writer { pool: Pool::new(dir, Role::Writer), counters };
    while let Some(first) = queue.blocking_recv() {
        let mut rows = first.rows();
        let mut batch = vec![first];
        // Group commit: an insert waits up to COMMIT_DELAY for company, so a steady
        // trickle shares one fsync per few milliseconds instead of paying one per row
        // (the fan-out never waits: only the durability ack does). The thread sleeps
        // through the window rather than waiting on the queue: woken by every arriving
        // message, it cost each one a cross-thread wake-up (a futex call on the sender's
        // side, a context switch on this one) under exactly the load that fills batches.
        let deadline = std::time::Instant::now() + COMMIT_DELAY;
        while rows < BATCH_ROWS {
            let cmd = match queue.try_recv() {
                Ok(cmd) => cmd,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if rows == 0 || left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left);
                    continue;
                }
            };
            rows += cmd.rows();
            batch.push(cmd);
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(writer.process(batch))));
        if outcome.is_err() {
            // The callers of this batch see `Closed` (their acks were dropped).
            tracing::error!("mam: an archive write batch panicked");
            rt.block_on(writer.pool.rollback_all());
        }
    }
    drop(writer);
    tracing::debug!("mam: writer thread stopped");
}

impl WriteCmd {
    fn rows(&self) -> usize {
        usize::from(matches!(self, WriteCmd::Insert { .. }))
    }
}

struct Insert {
    file: String,
    msg: NewMessage,
    done: Ack,
}

struct Writer {
    pool: Pool,
    counters: Arc<Counters>,
}

impl Writer {
    async fn process(&mut self, batch: Vec<WriteCmd>) {
        let mut inserts = Vec::new();
        for cmd in batch {
            match cmd {
                WriteCmd::Insert { file, msg, done } => inserts.push(Insert { file, msg, done }),
                other => {
                    self.commit(std::mem::take(&mut inserts)).await;
                    self.execute(other).await;
                }
            }
        }
        self.commit(inserts).await;
    }

    /// Commits `inserts`, one transaction per file, and acknowledges each.
    async fn commit(&mut self, inserts: Vec<Insert>) {
        let mut groups: Vec<(String, Vec<Insert>)> = Vec::new();
        for ins in inserts {
            match groups.iter_mut().find(|(file, _)| *file == ins.file) {
                Some((_, group)) => group.push(ins),
                None => groups.push((ins.file.clone(), vec![ins])),
            }
        }
        for (file, group) in groups {
            let conn = match self.pool.get(&file).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::error!(file, error = %e, "mam: cannot open archive file");
                    for ins in group {
                        let _ = ins.done.send(Err(e.clone()));
                    }
                    continue;
                }
            };
            let together = Sql::in_tx(&conn, Tx::Write, async {
                ops::insert_batch(&conn, &group.iter().map(|ins| &ins.msg).collect::<Vec<_>>()).await
            })
            .await;
            match together {
                Ok(outcomes) => {
                    self.counters.committed(outcomes.iter().filter(|o| o.is_ok()).count());
                    for (ins, outcome) in group.into_iter().zip(outcomes) {
                        let _ = ins.done.send(outcome);
                    }
                }
                Err(e) => {
                    // One bad row must not fail its neighbours: retry each on its own.
                    tracing::warn!(file, error = %e, rows = group.len(), "mam: batch failed, retrying row by row");
                    for ins in group {
                        let alone = async { ops::insert_batch(&conn, &[&ins.msg]).await };
                        let outcome = Sql::in_tx(&conn, Tx::Write, alone).await.and_then(|mut outcomes| {
                            outcomes
                                .pop()
                                .unwrap_or_else(|| Err(MamError::Database("the insert gave no outcome".into())))
                        });
                        match &outcome {
                            Ok(()) => self.counters.committed(1),
                            Err(e) => tracing::error!(file, error = %e, "mam: archive write failed"),
                        }
                        let _ = ins.done.send(outcome);
                    }
                }
            }
        }
    }

    async fn execute(&mut self, cmd: WriteCmd) {
        match cmd {
            WriteCmd::Insert { file, msg, done } => self.commit(vec![Insert { file, msg, done }]).await,
            WriteCmd::Retract { file, archive, target, done } => {
                let outcome = match self.pool.get(&file).await {
                    Ok(conn) => ops::retract(&conn, &archive, &target).await,
                    Err(e) => Err(e),
                };
                let _ = done.send(outcome);
            }
            WriteCmd::Delete { file, archive, done } => {
                let outcome = match self.pool.get(&file).await {
                    Ok(conn) => ops::delete_archive(&conn, &archive).await,
                    Err(e) => Err(e),
                };
                let _ = done.send(outcome);
            }
            WriteCmd::Flush { done } => {
                let _ = done.send(Ok(()));
            }
            WriteCmd::Ensure { file, done } => {
                let _ = done.send(self.pool.get(&file).await.map(drop));
            }
        }
    }
}
