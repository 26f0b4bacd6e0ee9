//! Two network namespaces joined by a veth pair, created for one test and deleted by name
//! (before use, in case a killed run left them, and on Drop).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Runs `ip ARGS`, which must succeed; returns its stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (these tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails (never skips) unless the test runs as root; `why` says what needs it.
pub fn require_root(why: &str) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("effective uid");
    assert_eq!(euid, "0", "{why}");
}

/// Names and addresses of one topology.
pub struct NetnsSpec<'a> {
    /// Short prefix of every name this test family creates (e.g. `qx`).
    pub prefix: &'a str,
    /// Distinguishes topologies of one family (interface names stay under 16 bytes).
    pub tag: &'a str,
    /// RX/TX queues per veth end.
    pub queues: u32,
    /// `ADDR/LEN` of each end.
    pub server_cidr: &'a str,
    pub client_cidr: &'a str,
}

/// The server namespace and interface, and the client's.
pub struct NetnsPair {
    pub srv: String,
    pub cli: String,
    pub srv_if: String,
    pub cli_if: String,
}

impl NetnsPair {
    pub fn new(spec: &NetnsSpec<'_>) -> NetnsPair {
        let NetnsSpec { prefix, tag, .. } = *spec;
        let t = NetnsPair {
            srv: format!("{prefix}-{tag}-s"),
            cli: format!("{prefix}-{tag}-c"),
            srv_if: format!("{prefix}{tag}s"),
            cli_if: format!("{prefix}{tag}c"),
        };
        let q = spec.queues.to_string();
        t.remove();
        ip(&["netns", "add", &t.srv]);
        ip(&["netns", "add", &t.cli]);
        #[rustfmt::skip]
        ip(&[
            "link", "add", &t.srv_if, "netns", &t.srv, "numtxqueues", &q, "numrxqueues", &q,
            "type", "veth",
            "peer", "name", &t.cli_if, "netns", &t.cli, "numtxqueues", &q, "numrxqueues", &q,
        ]);
        ip(&[
            "-n",
            &t.srv,
            "addr",
            "add",
            spec.server_cidr,
            "dev",
            &t.srv_if,
        ]);
        ip(&[
            "-n",
            &t.cli,
            "addr",
            "add",
            spec.client_cidr,
            "dev",
            &t.cli_if,
        ]);
        for (ns, dev) in [(&t.srv, &t.srv_if), (&t.cli, &t.cli_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        t
    }

    /// Sets the MTU of the server's end: it cannot send larger packets, and a veth drops
    /// larger frames arriving from the other end without a word.
    pub fn set_server_mtu(&self, mtu: u32) {
        let m = mtu.to_string();
        ip(&[
            "-n",
            &self.srv,
            "link",
            "set",
            "dev",
            &self.srv_if,
            "mtu",
            &m,
        ]);
    }

    pub fn remove(&self) {
        for ns in [&self.srv, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    /// `cmd` run inside namespace `ns` (`ip netns exec` execs it: the pid is the command's).
    pub fn exec_in(ns: &str, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A server process inside a namespace (`quench serve`), its stdout read line by line;
/// SIGTERM (then SIGKILL) on Drop.
pub struct NsServer {
    pub child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr_log: PathBuf,
}

impl NsServer {
    /// Starts `serve` in namespace `ns` with stderr to `stderr_log`; returns once it printed
    /// its first line (the `listening on` line), with that line.
    pub fn start(ns: &str, serve: &Command, stderr_log: PathBuf) -> (NsServer, String) {
        let mut child = NetnsPair::exec_in(ns, serve)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("server log"))
            .spawn()
            .expect("spawning the server");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let server = NsServer {
            child: Some(child),
            lines,
            stderr_log,
        };
        let line = server
            .next_line(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no `listening on` line\n{}", server.stderr()));
        (server, line)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The stats line printed on SIGUSR1.
    pub fn stats(&self) -> Value {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGUSR1).expect("SIGUSR1");
        self.read_stats()
    }

    pub fn read_stats(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(line) = self.next_line(deadline.saturating_duration_since(Instant::now())) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let Some(s) = v.get("quench_stats") {
                    return s.clone();
                }
            }
        }
        panic!("no stats line\n{}", self.stderr());
    }

    /// SIGTERM; returns the final stats line. The process must exit 0 within 10 s.
    pub fn shutdown(mut self) -> Value {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM).expect("SIGTERM");
        let stats = self.read_stats();
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "server exited with {status}\n{}",
                    self.stderr()
                );
                return stats;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server ignored SIGTERM\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let _ = child.wait();
            if thread::panicking() {
                eprintln!("--- server stderr ---\n{}", self.stderr());
            }
        }
    }
}
