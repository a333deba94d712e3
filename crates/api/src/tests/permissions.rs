//! [`Permissions`] over a replicated [`ControlStore`]: a fake one that commits tuple changes
//! at increasing log indexes and lets the test play the node's replication feed.

use std::collections::{BTreeSet, VecDeque};

use tokio::task::JoinHandle;
use waddle_authz::{ObjectRef, Subject, Tuple, TupleFilter};
use waddle_storage::{ChannelRecord, StorageError, WaddleRecord};

use super::*;
use crate::control::{Commit, ControlFuture, ControlStore};

/// One committed tuple change: (index, written, deleted).
type Entry = (u64, Vec<String>, Vec<String>);

#[derive(Default)]
struct Log {
    last: u64,
    /// The replicated tuple state (what every node's state machine holds).
    state: BTreeSet<String>,
    /// Committed entries the feed has not delivered yet, in index order.
    undelivered: VecDeque<Entry>,
}

/// A replicated control store in miniature: every tuple change is committed at the next
/// index and reported as [`Commit::Replicated`]; memory only changes when the test delivers
/// the entries ([`Fake::deliver`]).
#[derive(Default)]
struct Fake {
    log: Mutex<Log>,
}

impl Fake {
    fn commit(&self, write: Vec<String>, delete: Vec<String>) -> u64 {
        let mut log = self.log.lock().unwrap();
        log.last += 1;
        let index = log.last;
        for t in &delete {
            log.state.remove(t);
        }
        log.state.extend(write.iter().cloned());
        log.undelivered.push_back((index, write, delete));
        index
    }

    /// A change made through another node: committed, not yet delivered here.
    fn commit_elsewhere(&self, write: &[&str]) -> u64 {
        self.commit(write.iter().map(|s| (*s).to_owned()).collect(), Vec::new())
    }

    /// Removal by pattern, evaluated on the replicated state at commit time.
    fn remove_matching(&self, doomed: impl Fn(&Tuple) -> bool) -> (u64, Vec<String>) {
        let removed: Vec<String> = {
            let log = self.log.lock().unwrap();
            log.state.iter().filter(|t| t.parse::<Tuple>().is_ok_and(|t| doomed(&t))).cloned().collect()
        };
        (self.commit(Vec::new(), removed.clone()), removed)
    }

    fn undelivered(&self) -> usize {
        self.log.lock().unwrap().undelivered.len()
    }

    /// Plays the feed: applies every committed entry to `p`, in index order.
    fn deliver(&self, p: &Permissions) {
        let entries: Vec<Entry> = self.log.lock().unwrap().undelivered.drain(..).collect();
        for (index, write, delete) in entries {
            p.apply_replicated(index, &write, &delete);
        }
    }

    /// Waits until `n` entries are committed and undelivered.
    async fn wait_undelivered(&self, n: usize) {
        for _ in 0..500 {
            if self.undelivered() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("expected {n} undelivered entries, have {}", self.undelivered());
    }
}

fn unsupported<T>() -> ControlFuture<T> {
    Box::pin(async { Err(StorageError::Invalid("not supported by the fake".into())) })
}

impl ControlStore for Arc<Fake> {
    fn tuples_all(&self) -> ControlFuture<Vec<String>> {
        let all = self.log.lock().unwrap().state.iter().cloned().collect();
        Box::pin(async move { Ok(all) })
    }

    fn change_tuples(&self, write: Vec<String>, delete: Vec<String>) -> ControlFuture<Commit> {
        let index = self.commit(write, delete);
        Box::pin(async move { Ok(Commit::Replicated(index)) })
    }

    fn delete_object(&self, object: String, _known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        let userset = format!("{object}#");
        let (index, removed) = self.remove_matching(|t| {
            let subject = t.subject.to_string();
            t.object.to_string() == object || subject == object || subject.starts_with(&userset)
        });
        Box::pin(async move { Ok((Commit::Replicated(index), removed)) })
    }

    fn remove_user(&self, username: String, _known: Vec<String>) -> ControlFuture<(Commit, Vec<String>)> {
        let subject = format!("user:{username}");
        let (index, removed) = self.remove_matching(|t| t.subject.to_string() == subject);
        Box::pin(async move { Ok((Commit::Replicated(index), removed)) })
    }

    fn waddle(&self, _id: &str) -> ControlFuture<Option<WaddleRecord>> {
        unsupported()
    }
    fn waddles_by_ids(&self, _ids: &[String]) -> ControlFuture<Vec<WaddleRecord>> {
        unsupported()
    }
    fn waddle_create(&self, _waddle: &WaddleRecord) -> ControlFuture<()> {
        unsupported()
    }
    fn waddle_update(&self, _waddle: &WaddleRecord) -> ControlFuture<()> {
        unsupported()
    }
    fn waddle_delete(&self, _id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        unsupported()
    }
    fn channel(&self, _id: &str) -> ControlFuture<Option<ChannelRecord>> {
        unsupported()
    }
    fn channels(&self, _waddle_id: &str) -> ControlFuture<Vec<ChannelRecord>> {
        unsupported()
    }
    fn channel_create_limited(&self, _channel: &ChannelRecord, _max: u64) -> ControlFuture<bool> {
        unsupported()
    }
    fn channel_update(&self, _channel: &ChannelRecord) -> ControlFuture<()> {
        unsupported()
    }
    fn channel_delete(&self, _id: &str) -> ControlFuture<()> {
        unsupported()
    }
}

fn t(s: &str) -> Tuple {
    s.parse().unwrap()
}

fn w1() -> ObjectRef {
    ObjectRef::new("waddle", "w1")
}

async fn replicated(timeout: Duration) -> (Arc<Fake>, Arc<Permissions>) {
    let fake = Arc::new(Fake::default());
    let p = Permissions::load_from(Arc::new(fake.clone())).await.unwrap().with_replication_timeout(timeout);
    (fake, Arc::new(p))
}

fn spawn_write(p: &Arc<Permissions>, tuple: &str) -> JoinHandle<Result<(), ApiError>> {
    let (p, tuple) = (p.clone(), t(tuple));
    tokio::spawn(async move { p.write(tuple).await })
}

#[tokio::test]
async fn replicated_write_returns_only_after_the_feed_applied_it() {
    let (fake, p) = replicated(Duration::from_secs(10)).await;
    let write = spawn_write(&p, "waddle:w1#member@user:bob");
    fake.wait_undelivered(1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!write.is_finished(), "the write waits for the feed");
    assert!(!p.check(&w1(), "view", "bob"), "memory changes only through the feed");

    fake.deliver(&p);
    write.await.unwrap().unwrap();
    assert_eq!(p.applied_index(), 1);
    assert!(p.check(&w1(), "view", "bob"), "visible to the very next check");

    // A revocation likewise.
    let p2 = p.clone();
    let revoke = tokio::spawn(async move { p2.delete(&t("waddle:w1#member@user:bob")).await });
    fake.wait_undelivered(1).await;
    assert!(!revoke.is_finished());
    assert!(p.check(&w1(), "view", "bob"));
    fake.deliver(&p);
    revoke.await.unwrap().unwrap();
    assert!(!p.check(&w1(), "view", "bob"));
    assert_eq!(p.applied_index(), 2);
}

#[tokio::test]
async fn replicated_changes_apply_in_index_order() {
    let (fake, p) = replicated(Duration::from_secs(10)).await;
    // Two changes made through other nodes, then one through this one.
    fake.commit_elsewhere(&["waddle:w1#member@user:bob"]);
    fake.commit_elsewhere(&["waddle:w1#admin@user:carol"]);
    let write = spawn_write(&p, "waddle:w1#owner@user:alice");
    fake.wait_undelivered(3).await;
    fake.deliver(&p);
    write.await.unwrap().unwrap();
    assert_eq!(p.applied_index(), 3);
    for user in ["alice", "bob", "carol"] {
        assert!(p.check(&w1(), "view", user), "{user}");
    }

    // An index at or below the applied one was already applied: ignored.
    p.apply_replicated(2, &[], &["waddle:w1#member@user:bob".to_owned()]);
    assert!(p.check(&w1(), "view", "bob"));
    assert_eq!(p.applied_index(), 3);

    // An entry changing no tuple just moves the index.
    p.apply_replicated(5, &[], &[]);
    assert_eq!(p.applied_index(), 5);

    // Invalid tuples are skipped, the rest of the entry applies.
    p.apply_replicated(
        6,
        &["garbage".to_owned(), "waddle:w1#view@user:dave".to_owned(), "waddle:w1#member@user:erin".to_owned()],
        &[],
    );
    assert_eq!(p.applied_index(), 6);
    assert!(!p.check(&w1(), "view", "dave"));
    assert!(p.check(&w1(), "view", "erin"));
}

#[tokio::test]
async fn replicated_write_never_applied_times_out() {
    let (fake, p) = replicated(Duration::from_millis(100)).await;
    let e = p.write(t("waddle:w1#member@user:bob")).await.unwrap_err();
    assert_eq!((e.status().as_u16(), e.code()), (500, "internal_error"));
    assert!(e.to_string().contains("index 1"), "{e}");
    assert!(!p.check(&w1(), "view", "bob"));
    assert_eq!(fake.undelivered(), 1, "committed all the same");
    // The feed still applies it later.
    fake.deliver(&p);
    assert!(p.check(&w1(), "view", "bob"));
}

#[tokio::test]
async fn replicated_removals_report_what_the_state_machine_removed() {
    let (fake, p) = replicated(Duration::from_secs(10)).await;
    fake.commit_elsewhere(&[
        "waddle:w1#owner@user:alice",
        "waddle:w1#member@user:bob",
        "channel:c1#parent@waddle:w1",
        "channel:c1#viewer@user:bob",
    ]);
    fake.deliver(&p);
    // Granted through another node; this node's memory has not seen it yet.
    fake.commit_elsewhere(&["waddle:w2#member@user:bob"]);

    let p2 = p.clone();
    let remove = tokio::spawn(async move { p2.remove_user("bob").await });
    fake.wait_undelivered(2).await;
    assert!(!remove.is_finished());
    fake.deliver(&p);
    let removed = remove.await.unwrap().unwrap();
    assert_eq!(
        removed,
        [t("channel:c1#viewer@user:bob"), t("waddle:w1#member@user:bob"), t("waddle:w2#member@user:bob")]
    );
    assert!(p.list(&TupleFilter { subject: Some(Subject::user("bob")), ..TupleFilter::default() }).is_empty());

    let p2 = p.clone();
    let delete = tokio::spawn(async move { p2.delete_object(&w1()).await });
    fake.wait_undelivered(1).await;
    assert!(p.check(&w1(), "view", "alice"));
    fake.deliver(&p);
    delete.await.unwrap().unwrap();
    assert!(!p.check(&w1(), "view", "alice"));
    assert!(p.list(&TupleFilter::default()).is_empty(), "the channel's parent link went too");
}

#[tokio::test]
async fn reset_replaces_memory_releases_waiters_and_never_moves_the_index_back() {
    let (fake, p) = replicated(Duration::from_secs(10)).await;
    fake.commit_elsewhere(&["waddle:w1#member@user:bob"]);
    fake.deliver(&p);
    // The feed lagged: it rebuilds memory from the replicated state at a later index, which
    // releases a write waiting for an index it skipped.
    let write = spawn_write(&p, "waddle:w1#member@user:carol");
    fake.wait_undelivered(1).await;
    let state: Vec<String> = fake.log.lock().unwrap().state.iter().cloned().collect();
    p.reset_replicated(7, state.into_iter().chain(["garbage".to_owned()]));
    write.await.unwrap().unwrap();
    assert_eq!(p.applied_index(), 7);
    assert!(p.check(&w1(), "view", "bob") && p.check(&w1(), "view", "carol"));
    // What the feed delivers at or below the reset index is ignored.
    fake.deliver(&p);
    assert_eq!(p.applied_index(), 7);

    p.reset_replicated(3, Vec::new());
    assert_eq!(p.applied_index(), 7, "never back");
    assert!(p.list(&TupleFilter::default()).is_empty());
}
