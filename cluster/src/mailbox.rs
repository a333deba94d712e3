//! A session's mailbox: many senders (the router, rooms, the node's ticker), one
//! receiver (the session's task), and a bound on what may wait in it.
//!
//! A queue under a mutex plus a wake-up, rather than a tokio channel, because every
//! bound session holds one for as long as it is connected: a tokio channel preallocates
//! its first block of 32 slots and pads its halves to cache lines (about 1.3 KiB per
//! session here), while this one is a small header and a queue that is empty, with no
//! allocation, whenever the session is idle and has not just been busy.
//!
//! A mailbox that would hold more than its limit overflows instead: it closes, drops
//! what it held, and tells the receiver, which ends the session. What waits here is
//! what the session has not got round to handling, so a session stuck behind a slow
//! operation while a busy room keeps sending is ended rather than grown without bound.
//! The bound is in items and, for items whose size the sender states
//! ([`Sender::send_sized`]: fan-out's shared stanzas, whose bytes each waiting copy keeps
//! alive), in bytes: a session that stopped handling its mailbox cannot pin a busy
//! room's recent messages however large they are.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Queue capacity kept once drained: a burst's larger buffer is given back.
const KEEP_WHEN_DRAINED: usize = 8;

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    ready: Notify,
    senders: AtomicUsize,
}

struct Queue<T> {
    /// Each item with the bytes it was counted as.
    items: VecDeque<(T, usize)>,
    /// The sum of the items' stated sizes.
    bytes: usize,
    /// The receiver is gone or closed the mailbox, or it overflowed: nothing more is
    /// accepted.
    closed: bool,
    overflowed: bool,
    limit: usize,
    byte_limit: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A panic while holding this lock cannot leave the queue half-updated.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half; cloning it adds a sender.
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving half.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A new, open mailbox that overflows beyond `limit` waiting items or, once anything
/// waits, beyond `byte_limit` bytes of sized items.
pub fn mailbox<T>(limit: usize, byte_limit: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            bytes: 0,
            closed: false,
            overflowed: false,
            limit,
            byte_limit,
        }),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    (Sender(Arc::clone(&shared)), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item`; gives it back if the mailbox is closed, or overflows with it.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.send_sized(item, 0)
    }

    /// As [`Sender::send`], counting `item` as `bytes` against the byte limit (one item
    /// is accepted whatever its size when nothing waits).
    pub fn send_sized(&self, item: T, bytes: usize) -> Result<(), T> {
        let dropped = {
            let mut queue = self.0.lock();
            if queue.closed {
                return Err(item);
            }
            let fits_bytes = queue.items.is_empty() || queue.bytes.saturating_add(bytes) <= queue.byte_limit;
            if queue.items.len() < queue.limit && fits_bytes {
                queue.items.push_back((item, bytes));
                queue.bytes += bytes;
                None
            } else {
                queue.closed = true;
                queue.overflowed = true;
                queue.bytes = 0;
                Some((std::mem::take(&mut queue.items), item))
            }
        };
        if let Some((dropped, item)) = dropped {
            drop(dropped);
            self.0.ready.notify_one();
            return Err(item);
        }
        // Stores a permit if the receiver is not waiting yet, so no wake-up is lost.
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(Arc::clone(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: the receiver must see that nothing more can come.
            self.0.ready.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("senders", &self.0.senders.load(Ordering::Relaxed)).finish()
    }
}

impl<T> Receiver<T> {
    /// The next item, in the order sent; `None` once the mailbox is closed (see
    /// [`Receiver::overflowed`]), or empty with every sender gone.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut queue = self.0.lock();
                if let Some((item, bytes)) = queue.items.pop_front() {
                    queue.bytes -= bytes;
                    if queue.items.is_empty() && queue.items.capacity() > KEEP_WHEN_DRAINED {
                        queue.items.shrink_to(KEEP_WHEN_DRAINED);
                    }
                    return Some(item);
                }
                if queue.closed || self.0.senders.load(Ordering::Acquire) == 0 {
                    return None;
                }
            }
            self.0.ready.notified().await;
        }
    }

    /// Whether the mailbox closed because it overflowed.
    pub fn overflowed(&self) -> bool {
        self.0.lock().overflowed
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut queue = self.0.lock();
        let (item, bytes) = queue.items.pop_front()?;
        queue.bytes -= bytes;
        Some(item)
    }

    /// Refuses everything sent from now on and drops what is queued.
    pub fn close(&mut self) {
        let dropped = {
            let mut queue = self.0.lock();
            queue.closed = true;
            queue.bytes = 0;
            std::mem::take(&mut queue.items)
        };
        drop(dropped);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_wake_a_waiting_receiver() {
        let (tx, mut rx) = mailbox(usize::MAX, usize::MAX);
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(i) = rx.recv().await {
                got.push(i);
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = tx.clone();
        for i in 0..100 {
            if i % 2 == 0 { &tx } else { &second }.send(i).unwrap();
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop((tx, second));
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "all items, in order, then the end");
    }

    #[tokio::test]
    async fn the_receiver_ends_when_the_last_sender_goes() {
        let (tx, mut rx) = mailbox::<u8>(usize::MAX, usize::MAX);
        let clone = tx.clone();
        drop(tx);
        tx_send_then_drop(clone);
        assert_eq!(rx.recv().await, Some(7), "what was sent before the end is delivered");
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        assert_eq!(end, None);
    }

    fn tx_send_then_drop(tx: Sender<u8>) {
        tx.send(7).unwrap();
    }

    #[test]
    fn a_closed_mailbox_gives_items_back_and_drops_what_was_queued() {
        let (tx, mut rx) = mailbox(usize::MAX, usize::MAX);
        let queued = Arc::new(());
        tx.send(Arc::clone(&queued)).unwrap();
        rx.close();
        assert_eq!(Arc::strong_count(&queued), 1, "the queued item was dropped");
        assert!(tx.send(Arc::new(())).is_err());
        assert!(rx.try_recv().is_none());
        drop(rx);
        assert!(tx.send(Arc::new(())).is_err(), "a dropped receiver closes the mailbox");
    }

    #[tokio::test]
    async fn a_mailbox_beyond_its_limit_overflows_and_says_so() {
        let (tx, mut rx) = mailbox(3, usize::MAX);
        let held = Arc::new(());
        for _ in 0..3 {
            tx.send(Arc::clone(&held)).unwrap();
        }
        assert!(!rx.overflowed());
        assert!(tx.send(Arc::clone(&held)).is_err(), "the fourth overflows");
        assert_eq!(Arc::strong_count(&held), 1, "what it held is dropped");
        assert!(tx.send(Arc::new(())).is_err(), "and it stays closed");
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        assert!(end.is_none());
        assert!(rx.overflowed());
    }

    #[test]
    fn a_drained_queue_gives_a_burst_s_buffer_back() {
        let (tx, mut rx) = mailbox(usize::MAX, usize::MAX);
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for i in 0..1000 {
            assert_eq!(rt.block_on(rx.recv()), Some(i));
        }
        assert!(rx.0.lock().items.capacity() <= KEEP_WHEN_DRAINED);
    }

    #[tokio::test]
    async fn sized_items_beyond_the_byte_limit_overflow_it() {
        let (tx, mut rx) = mailbox(100, 1000);
        let held = Arc::new(());
        tx.send_sized(Arc::clone(&held), 600).unwrap();
        tx.send(Arc::clone(&held)).unwrap();
        assert_eq!(rx.recv().await.map(|_| ()), Some(()), "the receiver handled the first: 600 bytes freed");
        tx.send_sized(Arc::clone(&held), 900).unwrap();
        assert!(tx.send_sized(Arc::clone(&held), 101).is_err(), "1001 bytes waiting would be one too many");
        assert_eq!(Arc::strong_count(&held), 1, "what it held is dropped");
        assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().is_none());
        assert!(rx.overflowed());
    }

    #[test]
    fn one_sized_item_larger_than_the_byte_limit_passes_when_nothing_waits() {
        let (tx, mut rx) = mailbox(100, 10);
        tx.send_sized(1, 50).unwrap();
        assert_eq!(rx.try_recv(), Some(1));
        tx.send_sized(2, 50).unwrap();
        assert!(tx.send_sized(3, 1).is_err());
    }
}
