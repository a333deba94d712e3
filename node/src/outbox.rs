//! The bytes waiting to be written to one client.
//!
//! The session serializes each outgoing stanza straight onto the end of one shared
//! buffer; its writer task takes everything queued in one go and writes it with one
//! call (one syscall, one TLS record under load). Compared with a channel of per-stanza
//! buffers this saves an allocation and a copy per stanza, and an idle session holds no
//! channel blocks: only this struct, with an empty buffer.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Why bytes were not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// More stanzas are waiting than the limit: the client does not read fast enough.
    #[error("the client does not read fast enough")]
    Full,
    /// The outbox was closed (the session is ending).
    #[error("the outbox is closed")]
    Closed,
}

pub struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
    max_stanzas: usize,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Stanzas appended since the writer last took the bytes.
    stanzas: usize,
    closed: bool,
}

/// Room reserved when an empty buffer gets its first stanza (typical stanzas fit).
const FIRST_RESERVE: usize = 512;

impl Outbox {
    /// An open outbox that refuses more than `max_stanzas` waiting stanzas.
    pub fn new(max_stanzas: usize) -> Outbox {
        Outbox { pending: Mutex::new(Pending::default()), ready: Notify::new(), max_stanzas }
    }

    /// Appends one stanza, written by `serialize` onto the end of the buffer.
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
            serialize(&mut pending.bytes);
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

    /// Waits for queued bytes and swaps them into `into` (which must be empty; its
    /// capacity is handed back for the next stanzas). `false` once the outbox is closed
    /// and everything queued has been taken.
    pub async fn take(&self, into: &mut Vec<u8>) -> bool {
        loop {
            {
                let mut pending = self.lock();
                if !pending.bytes.is_empty() {
                    into.clear();
                    std::mem::swap(&mut pending.bytes, into);
                    pending.stanzas = 0;
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
    pub fn new(max_stanzas: usize) -> (OutboxHandle, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(max_stanzas));
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
        let outbox = Outbox::new(10);
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
        let outbox = Arc::new(Outbox::new(10));
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
        let outbox = Outbox::new(2);
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
        let outbox = Outbox::new(10);
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
        let outbox = Arc::new(Outbox::new(10));
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
        let (handle, writer_end) = OutboxHandle::new(10);
        handle.push(|out| out.extend_from_slice(b"<bye/>")).unwrap();
        drop(handle);
        let mut chunk = Vec::new();
        assert!(writer_end.take(&mut chunk).await);
        assert_eq!(chunk, b"<bye/>");
        assert!(!tokio::time::timeout(Duration::from_secs(5), writer_end.take(&mut chunk)).await.unwrap());
    }
}
