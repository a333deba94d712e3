//! Things that run by key (room actors by room JID), each started at most once.
//!
//! Looking a running one up is a read lock on a map, held for a hash lookup and never
//! across an `.await`: this is on the path of every stanza to a room. Starting one
//! (loading it from the database, spawning it) happens under a lock of its own key only,
//! so a slow start never holds up stanzas to other keys, and two stanzas racing to start
//! the same key get the same value.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Mutex as AsyncMutex;

pub struct Running<V> {
    live: RwLock<HashMap<String, V>>,
    /// Keys being started, each with the lock its starters queue on.
    starting: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl<V: Clone> Default for Running<V> {
    fn default() -> Self {
        Running::new()
    }
}

impl<V: Clone> Running<V> {
    pub fn new() -> Running<V> {
        Running { live: RwLock::new(HashMap::new()), starting: Mutex::new(HashMap::new()) }
    }

    /// Every running key with its value.
    pub fn entries(&self) -> Vec<(String, V)> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// How many values are running.
    pub fn len(&self) -> usize {
        self.live.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The running value for `key`, if any.
    pub fn get(&self, key: &str) -> Option<V> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Removes `key`'s value if `is_it` says it is the one the caller means (a stopped
    /// actor must not remove the successor started in its place).
    pub fn remove_if(&self, key: &str, is_it: impl FnOnce(&V) -> bool) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        if live.get(key).is_some_and(is_it) {
            live.remove(key);
        }
    }

    /// The running value for `key`, started with `start` if there is none. Concurrent
    /// callers for one key wait for the first one's start and share its value; a failed
    /// start is reported to its caller, and the next caller tries again.
    pub async fn get_or_start<E, Fut>(&self, key: &str, start: impl FnOnce() -> Fut) -> Result<V, E>
    where
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let gate = {
            let mut starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(starting.entry(key.to_owned()).or_default())
        };
        let _turn = gate.lock().await;
        // Whoever held the gate before may have started it.
        if let Some(value) = self.get(key) {
            return Ok(value);
        }
        let started = start().await;
        if let Ok(value) = &started {
            self.live.write().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), value.clone());
        }
        // Callers already queued on this gate find the value (or start again after a
        // failure); later callers find the value without the gate.
        self.starting.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        started
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn racing_starters_of_one_key_start_it_once() {
        let running = Arc::new(Running::<usize>::new());
        let starts = Arc::new(AtomicUsize::new(0));
        let mut callers = Vec::new();
        for _ in 0..20 {
            let (running, starts) = (Arc::clone(&running), Arc::clone(&starts));
            callers.push(tokio::spawn(async move {
                running
                    .get_or_start("room", || async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(starts.fetch_add(1, Ordering::SeqCst) + 100)
                    })
                    .await
            }));
        }
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Ok(100), "every caller shares the one start");
        }
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(running.get("room"), Some(100));
        assert!(running.starting.lock().unwrap().is_empty(), "no gate is left behind");
    }

    #[tokio::test]
    async fn a_slow_start_does_not_hold_up_other_keys() {
        let running = Arc::new(Running::<&'static str>::new());
        let (release, released) = oneshot::channel::<()>();
        let slow = {
            let running = Arc::clone(&running);
            tokio::spawn(async move {
                running
                    .get_or_start("slow", || async {
                        released.await.unwrap();
                        Ok::<_, ()>("slow room")
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let fast = tokio::time::timeout(
            Duration::from_secs(5),
            running.get_or_start("fast", || async { Ok::<_, ()>("fast room") }),
        )
        .await
        .expect("the other key started while the slow one was still starting");
        assert_eq!(fast, Ok("fast room"));
        release.send(()).unwrap();
        assert_eq!(slow.await.unwrap(), Ok("slow room"));
    }

    #[tokio::test]
    async fn a_failed_start_is_retried_by_the_next_caller() {
        let running = Running::<u8>::new();
        assert_eq!(running.get_or_start("r", || async { Err("not found") }).await, Err("not found"));
        assert_eq!(running.get("r"), None);
        assert_eq!(running.get_or_start("r", || async { Ok::<_, &str>(7) }).await, Ok(7));
    }

    #[test]
    fn only_the_value_meant_is_removed() {
        let running = Running::<u8>::new();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(running.get_or_start("r", || async { Ok::<_, ()>(2) })).unwrap();
        running.remove_if("r", |v| *v == 1);
        assert_eq!(running.get("r"), Some(2), "a stopped predecessor does not remove its successor");
        running.remove_if("r", |v| *v == 2);
        assert_eq!(running.get("r"), None);
    }
}
