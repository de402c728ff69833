//! `mercato serve` as a real child process on a loopback port: its stdout
//! lines, its stderr (kept for assertions and failure messages), signals.
//! Killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::helpers::*;

pub struct Serve {
    child: Child,
    lines: Receiver<String>,
    /// Every line the process printed on stdout so far.
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    pub addr: Option<SocketAddr>,
    client: reqwest::Client,
}

impl Serve {
    /// Start `mercato serve` (no demo, the tests' admin token, `RUST_LOG=info`,
    /// then `envs`) and return at once: it may still be starting.
    pub fn spawn(data_dir: &Path, database_url: Option<&str>, envs: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mercato"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--no-demo", "--data-dir"])
            .arg(data_dir)
            .env("MERCATO_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            // The test's shoppers share 127.0.0.1 (see helpers::test_config).
            .env("MERCATO_RATE_LIMIT__WRITES_PER_SECOND", "0")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = database_url {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd.spawn().expect("spawn mercato");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let kept = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                kept.lock().expect("lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        Serve { child, lines, stdout: printed, stderr, addr: None, client: reqwest::Client::new() }
    }

    /// Start it with the tests' shared precompiled cache (unless `data_dir`
    /// has its own) and wait until it is ready.
    pub fn start(data_dir: &Path, database_url: Option<&str>, envs: &[(&str, &str)]) -> Serve {
        let cache = data_dir.join("cache");
        if !cache.exists() {
            std::fs::create_dir_all(data_dir).expect("data dir");
            let _ = std::os::unix::fs::symlink(shared_cache_dir(), &cache);
        }
        let mut p = Serve::spawn(data_dir, database_url, envs);
        p.wait_for("mercato ready");
        p
    }

    /// Wait for a stdout line starting with `prefix`; returns the rest.
    pub fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                if let Some(a) = line.strip_prefix("mercato listening on http://") {
                    self.addr = Some(a.parse().expect("address"));
                }
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.to_string();
                }
            }
        }
        panic!("no line {prefix:?}; stderr: {:?}", self.stderr.lock().expect("lock"));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.expect("listening"))
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn sigterm(&self) {
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// Wait for the process to exit; its exit status and how long it took.
    pub fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("mercato did not exit within {within:?}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
