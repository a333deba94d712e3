//! The bytes waiting to be written to one client.
//!
//! The session serializes each outgoing stanza straight onto the end of one shared
//! buffer; its writer task takes everything queued in one go and writes it with one
//! call (one syscall, one TLS record under load). Compared with a channel of per-stanza
//! buffers this saves an allocation and a copy per stanza, and an idle session holds no
//! channel blocks: only this struct, with an empty buffer.
//!
//! What waits is bounded in stanzas and in bytes, the bytes the writer has taken but not
//! yet written included: a client that does not read fills its socket, the writer's
//! write stops there, and the next stanzas are refused instead of piling up here.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Why bytes were not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// More stanzas or bytes are waiting than the limits: the client does not read fast
    /// enough.
    #[error("the client does not read fast enough")]
    Full,
    /// The outbox was closed (the session is ending).
    #[error("the outbox is closed")]
    Closed,
}

pub struct Outbox {
    pending: Mutex<Pending>,
    /// Wakes the writer: bytes queued, or the outbox closed.
    ready: Notify,
    /// Wakes the writer out of a blocked write: the outbox was abandoned.
    stop: Notify,
    /// Wakes the session: the writer gave up on a write that took too long.
    stalled: Notify,
    /// Wakes the session: the writer finished a write, so what waits shrank.
    drained: Notify,
    max_stanzas: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Stanzas appended since the writer last took the bytes.
    stanzas: usize,
    /// Bytes the writer took and is still writing (they count against the limit).
    in_flight: usize,
    closed: bool,
    /// Set by [`Outbox::abandon`]: what the writer may still try to send before it lets
    /// go of the socket.
    last_words: Option<Vec<u8>>,
    abandoned: bool,
    stalled: bool,
}

/// Room reserved when an empty buffer gets its first stanza (typical stanzas fit).
const FIRST_RESERVE: usize = 512;

impl Outbox {
    /// An open outbox that refuses more than `max_stanzas` waiting stanzas or, once
    /// anything waits, more than `max_bytes` waiting bytes.
    pub fn new(max_stanzas: usize, max_bytes: usize) -> Outbox {
        Outbox {
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            stop: Notify::new(),
            stalled: Notify::new(),
            drained: Notify::new(),
            max_stanzas,
            max_bytes,
        }
    }

    /// Appends one stanza, written by `serialize` onto the end of the buffer. A stanza
    /// is always accepted when nothing waits, so one larger than the byte limit can
    /// still be sent to a client that reads.
    pub fn push(&self, serialize: impl FnOnce(&mut Vec<u8>)) -> Result<(), OutboxError> {
        {
            let mut pending = self.lock();
            if pending.closed {
                return Err(OutboxError::Closed);
            }
            if pending.stanzas >= self.max_stanzas {
                return Err(OutboxError::Full);
            }
            if pending.bytes.capacity() == 0 {
                pending.bytes.reserve(FIRST_RESERVE);
            }
            let before = pending.bytes.len();
            serialize(&mut pending.bytes);
            let waiting = pending.bytes.len().saturating_add(pending.in_flight);
            if before + pending.in_flight > 0 && waiting > self.max_bytes {
                pending.bytes.truncate(before);
                return Err(OutboxError::Full);
            }
            pending.stanzas += 1;
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Refuses further bytes; the writer writes what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Whether [`Outbox::close`] was called (bytes queued before it may still be there).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Closes the outbox and drops what waits, freeing its buffer; the writer stops at
    /// once, even in the middle of a write, tries to send `last_words` (a stream error)
    /// for a moment and lets go of the socket. Only the first call's words count.
    pub fn abandon(&self, last_words: Vec<u8>) {
        {
            let mut pending = self.lock();
            if pending.abandoned {
                return;
            }
            pending.closed = true;
            pending.abandoned = true;
            pending.bytes = Vec::new();
            pending.stanzas = 0;
            pending.last_words = Some(last_words);
        }
        self.ready.notify_one();
        self.stop.notify_one();
    }

    /// Resolves once [`Outbox::abandon`] was called (for the writer, during a write).
    pub async fn abandoned(&self) {
        self.wait_until(&self.stop, |pending| pending.abandoned).await;
    }

    /// Whether the writer was told to stop at once, or gave up on a write.
    pub fn is_abandoned(&self) -> bool {
        let pending = self.lock();
        pending.abandoned || pending.stalled
    }

    /// What [`Outbox::abandon`] left for the writer to try, once.
    pub fn take_last_words(&self) -> Option<Vec<u8>> {
        self.lock().last_words.take()
    }

    /// The writer gave up on a write that took too long: closes the outbox, drops what
    /// waits and tells the session ([`Outbox::stalled`]).
    pub fn stall(&self) {
        {
            let mut pending = self.lock();
            pending.closed = true;
            pending.stalled = true;
            pending.bytes = Vec::new();
            pending.stanzas = 0;
        }
        self.stalled.notify_one();
    }

    /// Resolves once the writer gave up on a write ([`Outbox::stall`]).
    pub async fn stalled(&self) {
        self.wait_until(&self.stalled, |pending| pending.stalled).await;
    }

    /// Waits for queued bytes and swaps them into `into` (which must be empty; its
    /// capacity is handed back for the next stanzas). `false` once the outbox is closed
    /// and everything queued has been taken, or it was abandoned. The caller writes the
    /// bytes before it takes again: until then they count as waiting.
    pub async fn take(&self, into: &mut Vec<u8>) -> bool {
        loop {
            {
                let mut pending = self.lock();
                if pending.in_flight > 0 {
                    self.drained.notify_one();
                }
                pending.in_flight = 0;
                if pending.abandoned {
                    return false;
                }
                if !pending.bytes.is_empty() {
                    into.clear();
                    std::mem::swap(&mut pending.bytes, into);
                    pending.stanzas = 0;
                    pending.in_flight = into.len();
                    return true;
                }
                if pending.closed {
                    return false;
                }
            }
            // `notify_one` stores a permit when nobody waits, so a push between the
            // check above and this wait is not missed.
            self.ready.notified().await;
        }
    }

    /// Whether half the byte bound or more waits (queued or being written): the session
    /// then stops taking deliveries from its mailbox until the writer catches up, so a
    /// burst larger than the bound (an offline queue, a page of history) reaches a
    /// client that reads, paced by how fast it reads, while one that does not read is
    /// still cut off by the write deadline or the mailbox bound.
    pub fn congested(&self) -> bool {
        self.is_congested(&self.lock())
    }

    fn is_congested(&self, pending: &Pending) -> bool {
        pending.bytes.len().saturating_add(pending.in_flight) >= self.max_bytes / 2
    }

    /// Resolves once the outbox is no longer [`Outbox::congested`].
    pub async fn decongested(&self) {
        self.wait_until(&self.drained, |pending| !self.is_congested(pending)).await;
    }

    /// Resolves once `done` holds, re-checking whenever `notify` fires. `notify_one`
    /// keeps a permit when nobody waits, so a change between a check and the wait is
    /// not missed.
    async fn wait_until(&self, notify: &Notify, done: impl Fn(&Pending) -> bool) {
        loop {
            if done(&self.lock()) {
                return;
            }
            notify.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock cannot leave the bytes half-appended in a way
        // that matters more than losing the connection; keep serving what is there.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The session's end of an outbox. Dropping it closes the outbox, so the writer task
/// finishes (and the socket is shut) however the session ends: closed on purpose or a
/// handler panic.
pub struct OutboxHandle(Arc<Outbox>);

impl OutboxHandle {
    /// A new outbox (see [`Outbox::new`]): the handle for the session, the `Arc` for the
    /// writer task.
    pub fn new(max_stanzas: usize, max_bytes: usize) -> (OutboxHandle, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(max_stanzas, max_bytes));
        (OutboxHandle(Arc::clone(&outbox)), outbox)
    }
}

impl std::ops::Deref for OutboxHandle {
    type Target = Outbox;

    fn deref(&self) -> &Outbox {
        &self.0
    }
}

impl Drop for OutboxHandle {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn push(outbox: &Outbox, text: &str) -> Result<(), OutboxError> {
        outbox.push(|out| out.extend_from_slice(text.as_bytes()))
    }

    #[tokio::test]
    async fn stanzas_queued_together_are_taken_in_one_piece_in_order() {
        let outbox = Outbox::new(10, 1 << 20);
        push(&outbox, "<a/>").unwrap();
        push(&outbox, "<b/>").unwrap();
        let mut chunk = Vec::new();
        assert!(outbox.take(&mut chunk).await);
        assert_eq!(chunk, b"<a/><b/>");
        push(&outbox, "<c/>").unwrap();
        chunk.clear();
        assert!(outbox.take(&mut chunk).await);
        assert_eq!(chunk, b"<c/>");
    }

    #[tokio::test]
    async fn take_waits_for_a_push() {
        let outbox = Arc::new(Outbox::new(10, 1 << 20));
        let taker = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move {
                let mut chunk = Vec::new();
                outbox.take(&mut chunk).await.then_some(chunk)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!taker.is_finished());
        push(&outbox, "<late/>").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), taker).await.unwrap().unwrap();
        assert_eq!(got.as_deref(), Some(&b"<late/>"[..]));
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_until_the_writer_takes() {
        let outbox = Outbox::new(2, 1 << 20);
        push(&outbox, "1").unwrap();
        push(&outbox, "2").unwrap();
        assert_eq!(push(&outbox, "3"), Err(OutboxError::Full));
        let mut chunk = Vec::new();
        assert!(outbox.take(&mut chunk).await);
        assert_eq!(chunk, b"12");
        push(&outbox, "3").unwrap();
    }

    #[tokio::test]
    async fn close_lets_the_writer_drain_then_stop() {
        let outbox = Outbox::new(10, 1 << 20);
        push(&outbox, "<last/>").unwrap();
        outbox.close();
        assert_eq!(push(&outbox, "<after/>"), Err(OutboxError::Closed));
        let mut chunk = Vec::new();
        assert!(outbox.take(&mut chunk).await);
        assert_eq!(chunk, b"<last/>");
        chunk.clear();
        assert!(!tokio::time::timeout(Duration::from_secs(5), outbox.take(&mut chunk)).await.unwrap());
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_writer() {
        let outbox = Arc::new(Outbox::new(10, 1 << 20));
        let taker = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move { outbox.take(&mut Vec::new()).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.close();
        assert!(!tokio::time::timeout(Duration::from_secs(5), taker).await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn dropping_the_session_handle_stops_the_writer() {
        let (handle, writer_end) = OutboxHandle::new(10, 1 << 20);
        handle.push(|out| out.extend_from_slice(b"<bye/>")).unwrap();
        drop(handle);
        let mut chunk = Vec::new();
        assert!(writer_end.take(&mut chunk).await);
        assert_eq!(chunk, b"<bye/>");
        assert!(!tokio::time::timeout(Duration::from_secs(5), writer_end.take(&mut chunk)).await.unwrap());
    }

    #[tokio::test]
    async fn bytes_beyond_the_limit_are_refused_counting_those_being_written() {
        let outbox = Outbox::new(100, 10);
        push(&outbox, "12345").unwrap();
        push(&outbox, "67890").unwrap();
        assert_eq!(push(&outbox, "x"), Err(OutboxError::Full), "the eleventh byte");
        let mut chunk = Vec::new();
        assert!(outbox.take(&mut chunk).await);
        assert_eq!(chunk, b"1234567890");
        // Taken but not written yet: still waiting.
        assert_eq!(push(&outbox, "x"), Err(OutboxError::Full));
        // The writer takes again only once it has written: now there is room.
        let mut next = Vec::new();
        let taker = outbox.take(&mut next);
        tokio::pin!(taker);
        assert!(futures_util::FutureExt::now_or_never(taker.as_mut()).is_none());
        push(&outbox, "abcdefghij").unwrap();
        assert!(taker.await);
    }

    #[tokio::test]
    async fn a_refused_stanza_leaves_no_bytes_behind() {
        let outbox = Outbox::new(100, 10);
        push(&outbox, "<a/>").unwrap();
        assert_eq!(push(&outbox, "<too-long/>"), Err(OutboxError::Full));
        let mut chunk = Vec::new();
        assert!(outbox.take(&mut chunk).await);
        assert_eq!(chunk, b"<a/>");
    }

    #[test]
    fn one_stanza_larger_than_the_limit_passes_when_nothing_waits() {
        let outbox = Outbox::new(100, 10);
        push(&outbox, "<a-rather-long-stanza/>").unwrap();
        assert_eq!(push(&outbox, "<b/>"), Err(OutboxError::Full));
    }

    #[tokio::test]
    async fn abandon_frees_what_waits_and_stops_the_writer() {
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        push(&outbox, "<queued/>").unwrap();
        let writer = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move {
                // A writer stuck in a write that never finishes.
                tokio::select! {
                    () = std::future::pending::<()>() => false,
                    () = outbox.abandoned() => true,
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.abandon(b"<stream:error/>".to_vec());
        assert!(tokio::time::timeout(Duration::from_secs(5), writer).await.unwrap().unwrap());
        assert_eq!(outbox.lock().bytes.capacity(), 0, "the buffer is freed");
        assert!(!outbox.take(&mut Vec::new()).await, "nothing more to write");
        outbox.abandon(Vec::new());
        assert_eq!(outbox.take_last_words().as_deref(), Some(&b"<stream:error/>"[..]), "the first words count");
        assert_eq!(outbox.take_last_words(), None);
        assert_eq!(push(&outbox, "<later/>"), Err(OutboxError::Closed));
    }

    #[tokio::test]
    async fn a_stalled_writer_wakes_the_session() {
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        push(&outbox, "<queued/>").unwrap();
        let session = {
            let outbox = Arc::clone(&outbox);
            tokio::spawn(async move { outbox.stalled().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!session.is_finished());
        outbox.stall();
        tokio::time::timeout(Duration::from_secs(5), session).await.unwrap().unwrap();
        assert_eq!(push(&outbox, "<later/>"), Err(OutboxError::Closed));
        assert_eq!(outbox.lock().bytes.capacity(), 0);
    }
}
