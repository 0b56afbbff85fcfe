//! Headless Chromium (Debian's `chromium`, installed by `make setup`) driven
//! over the DevTools protocol on a pipe (`--remote-debugging-pipe`: fd 3 in,
//! fd 4 out, NUL-separated JSON), so no WebSocket client is needed. Collects
//! every console error, uncaught exception and failed load of the page.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

pub struct Browser {
    child: Child,
    to_chrome: File,
    from_chrome: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Console errors, exceptions and failed loads seen so far.
    pub errors: Vec<String>,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The browser binary: `STYLEFARM_CHROMIUM`, else `chromium` on PATH.
pub fn chromium() -> String {
    std::env::var("STYLEFARM_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

impl Browser {
    /// Starts headless Chromium with one page of `width`x`height`.
    pub fn start(width: u32, height: u32) -> Browser {
        use std::os::fd::AsRawFd;
        let profile = tempfile::tempdir().unwrap();
        let (chrome_reads, we_write) = pipe();
        let (we_read, chrome_writes) = pipe();
        let (r, w) = (chrome_reads.as_raw_fd(), chrome_writes.as_raw_fd());
        let mut command = Command::new(chromium());
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe", "--no-first-run", "--mute-audio"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // fds 3 and 4 in the child are the protocol's pipe ends (dup2 clears CLOEXEC)
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {} (installed by `make setup`: Debian package chromium): {e}", chromium()));
        drop((chrome_reads, chrome_writes));
        let (tx, rx) = channel();
        let reader = unsafe { File::from_raw_fd(we_read.into_raw_fd()) };
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        message.pop();
                        if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                            if tx.send(value).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let to_chrome = unsafe { File::from_raw_fd(we_write.into_raw_fd()) };
        let mut browser = Browser { child, to_chrome, from_chrome: rx, next_id: 0, session: String::new(), errors: Vec::new(), _profile: profile };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"].as_str().expect("a target").to_string();
        let attached = browser.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }));
        browser.session = attached["sessionId"].as_str().expect("a session").to_string();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable", "Network.enable"] {
            browser.page_call(domain, json!({}));
        }
        browser
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_chrome.write_all(&bytes).expect("writing to chromium");
        self.next_id
    }

    /// Notes what the page reports as an error.
    fn observe(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &params["exceptionDetails"];
                self.errors.push(format!("exception: {} {}", d["text"], d["exception"]["description"]));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" || params["type"] == "assert" => {
                self.errors.push(format!("console.{}: {}", params["type"], params["args"]));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors.push(format!("log: {} {}", params["entry"]["text"], params["entry"]["url"]));
            }
            Some("Network.loadingFailed") if params["canceled"] != true => {
                self.errors.push(format!("load failed: {} {}", params["errorText"], params["requestId"]));
            }
            _ => {}
        }
    }

    fn wait_for(&mut self, id: Option<u64>, event: Option<&str>, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.from_chrome.recv_timeout(left) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer {id:?}/{event:?} within {timeout:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium exited"),
            };
            self.observe(&message);
            if id.is_some() && message["id"].as_u64() == id {
                if let Some(error) = message.get("error") {
                    panic!("DevTools call failed: {error}");
                }
                return message["result"].clone();
            }
            if event.is_some() && message["method"].as_str() == event {
                return message["params"].clone();
            }
        }
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.send(session, method, params);
        self.wait_for(Some(id), None, Duration::from_secs(30))
    }

    fn page_call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Opens `url` and waits for its load event.
    pub fn open(&mut self, url: &str) {
        let session = self.session.clone();
        let id = self.send(Some(&session), "Page.navigate", json!({ "url": url }));
        self.wait_for(Some(id), None, Duration::from_secs(30));
        self.wait_for(None, Some("Page.loadEventFired"), Duration::from_secs(30));
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.page_call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        if let Some(e) = result.get("exceptionDetails") {
            panic!("evaluating {expression}: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is true; false after `timeout`.
    pub fn wait_until(&mut self, expression: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.eval(expression) == json!(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// A PNG of the whole page (beyond the window, up to 4000 px tall).
    pub fn screenshot(&mut self) -> Vec<u8> {
        let size = self.eval("JSON.stringify([document.documentElement.scrollWidth, Math.min(4000, document.documentElement.scrollHeight)])");
        let [w, h]: [f64; 2] = serde_json::from_str(size.as_str().unwrap()).unwrap();
        let shot = self.page_call(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true, "clip": { "x": 0, "y": 0, "width": w, "height": h, "scale": 1 } }),
        );
        base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().expect("image data")).expect("base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
