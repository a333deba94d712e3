//! Packet delay without `sch_netem`: the kernel queues a node's outgoing packets to
//! userspace (an iptables `NFQUEUE` rule in the node's namespace), and this process,
//! started in that namespace (`waddle-chaos --delay-packets ...`), lets each one go a
//! fixed time after it arrived, in order. Kernels built without `sch_netem` (such as
//! this project's CI machines) still have NFQUEUE.
//!
//! The helper stops when its stdin closes (the harness drops the pipe) or after its
//! time limit, whichever comes first, and lets everything it still holds go at once.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// What `--delay-packets` was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayArgs {
    pub queue: u16,
    pub delay: Duration,
    pub limit: Duration,
}

impl DelayArgs {
    /// `--queue N --delay-ms D --secs S` (all required).
    pub fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<DelayArgs> {
        let (mut queue, mut delay, mut secs) = (None, None, None);
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let number: u64 = value.parse().map_err(|_| anyhow::anyhow!("{flag}: not a number: {value}"))?;
            match flag.as_str() {
                "--queue" => queue = Some(u16::try_from(number).context("--queue: at most 65535")?),
                "--delay-ms" => delay = Some(Duration::from_millis(number)),
                "--secs" => secs = Some(Duration::from_secs(number)),
                other => bail!("--delay-packets: unknown argument {other:?}"),
            }
        }
        match (queue, delay, secs) {
            (Some(queue), Some(delay), Some(limit)) if delay <= Duration::from_secs(10) && !limit.is_zero() => {
                Ok(DelayArgs { queue, delay, limit })
            }
            _ => bail!("--delay-packets needs --queue N --delay-ms D (at most 10000) --secs S (over 0)"),
        }
    }
}

/// Holds each queued packet for `args.delay`, then accepts it. Prints `bound` once the
/// queue is bound (the harness adds its rule only then), and the count at the end.
pub fn run(args: DelayArgs) -> anyhow::Result<u64> {
    let mut queue = nfq::Queue::open().context("opening a netfilter queue socket")?;
    queue.bind(args.queue).with_context(|| format!("binding netfilter queue {}", args.queue))?;
    // A full kernel queue lets packets through rather than dropping them: this fault
    // delays, the loss fault loses.
    queue.set_fail_open(args.queue, true).context("fail-open")?;
    queue.set_nonblocking(true);
    say("bound");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        watcher.store(true, Ordering::Relaxed);
    });
    let deadline = Instant::now() + args.limit;
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut released = 0u64;
    loop {
        let now = Instant::now();
        let ending = stop.load(Ordering::Relaxed) || now >= deadline;
        while held.front().is_some_and(|(due, _)| ending || *due <= now) {
            if let Some((_, msg)) = held.pop_front() {
                queue.verdict(msg).context("accepting a held packet")?;
                released += 1;
            }
        }
        if ending {
            return Ok(released);
        }
        match queue.recv() {
            Ok(mut msg) => {
                msg.set_verdict(nfq::Verdict::Accept);
                held.push_back((now + args.delay, msg));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e).context("reading the netfilter queue"),
        }
    }
}

/// One line to whoever started the helper; a reader that went away is no error.
pub fn say(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<DelayArgs> {
        DelayArgs::parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn arguments_are_all_required_and_bounded() {
        let a = parse("--queue 3 --delay-ms 150 --secs 9").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, DelayArgs { queue: 3, delay: Duration::from_millis(150), limit: Duration::from_secs(9) });
        assert!(parse("--queue 3 --delay-ms 150").is_err());
        assert!(parse("--queue 70000 --delay-ms 150 --secs 9").is_err());
        assert!(parse("--queue 3 --delay-ms 20000 --secs 9").is_err());
        assert!(parse("--queue 3 --delay-ms 150 --secs 0").is_err());
        assert!(parse("--queue 3 --delay-ms x --secs 9").is_err());
        assert!(parse("--queue 3 --delay-ms 150 --secs 9 --what 1").is_err());
    }
}
