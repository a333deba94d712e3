//! The packet-delay helper (`waddle-chaos --delay-packets`) against the real kernel: in a
//! network namespace of its own, a TCP connect over loopback takes two delayed packets
//! (SYN, SYN-ACK) once every packet sent is queued to the helper. Needs root, `ip` and
//! `iptables` (installed by `scripts/chaos-setup.sh`, which `scripts/test.sh` runs first);
//! without them it says so and checks nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Seconds a TCP connect to a listener on loopback takes inside namespace `ns`.
fn connect_secs(ns: &str) -> f64 {
    let script = "import socket,time\n\
                  s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n\
                  c=socket.socket(); t=time.monotonic(); c.connect(s.getsockname())\n\
                  print(time.monotonic()-t)";
    let out = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn queued_packets_are_let_go_150_ms_later() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    if !root || !ok("ip", &["-V"]) || !ok("iptables", &["--version"]) || !ok("python3", &["--version"]) {
        eprintln!("skipped: needs root, ip, iptables and python3");
        return;
    }
    let ns = Namespace(format!("wchdelay{}", std::process::id()));
    assert!(ok("ip", &["netns", "add", &ns.0]));
    assert!(ok("ip", &["-n", &ns.0, "link", "set", "lo", "up"]));
    let before = connect_secs(&ns.0);
    assert!(before < 0.1, "a loopback connect took {before} s before any delay");

    let mut helper = Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_waddle-chaos"), "--delay-packets"])
        .args(["--queue", "5", "--delay-ms", "150", "--secs", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "bound");
    let rule = ["OUTPUT", "-o", "lo", "-j", "NFQUEUE", "--queue-num", "5", "--queue-bypass"];
    let add: Vec<&str> = ["netns", "exec", &ns.0, "iptables", "-A"].into_iter().chain(rule).collect();
    assert!(ok("ip", &add));
    let delayed = connect_secs(&ns.0);
    assert!((0.28..2.0).contains(&delayed), "a connect (SYN and SYN-ACK delayed) took {delayed} s");

    // Closing its stdin stops the helper, which lets go what it holds and says how much
    // it let through.
    let del: Vec<&str> = ["netns", "exec", &ns.0, "iptables", "-D"].into_iter().chain(rule).collect();
    assert!(ok("ip", &del));
    drop(helper.stdin.take());
    let released: u64 = lines.next().unwrap().unwrap().trim_start_matches("released ").parse().unwrap();
    assert!(released >= 2, "{released} packets released");
    assert!(helper.wait().unwrap().success());
    let after = connect_secs(&ns.0);
    assert!(after < 0.1, "a loopback connect took {after} s once the rule was gone");
}
