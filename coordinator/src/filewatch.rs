//! Has a file changed since we last looked? On Linux an inotify watch answers
//! with one non-blocking `read` (the kernel queues the event before the
//! writer's `write` returns, so a change made by another process is seen by
//! the very next call after it). Elsewhere, or when a watch cannot be set, the
//! answer is always "maybe", and the caller checks the file itself.
//!
//! The token store uses it so that a revocation made by
//! `stylefarm-coordinator token revoke` applies at once without a SQLite query
//! on every call.

use std::path::{Path, PathBuf};

pub struct FileWatch {
    paths: Vec<PathBuf>,
    #[cfg(target_os = "linux")]
    inner: std::sync::Mutex<linux::Inotify>,
}

impl FileWatch {
    /// Watches `paths` (files that exist now; one that does not is watched
    /// once it appears, and until then every look says "maybe").
    pub fn new(paths: &[&Path]) -> FileWatch {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        #[cfg(target_os = "linux")]
        {
            let inner = linux::Inotify::new(&paths);
            FileWatch { paths, inner: std::sync::Mutex::new(inner) }
        }
        #[cfg(not(target_os = "linux"))]
        FileWatch { paths }
    }

    /// True if any watched file may have changed since the last call (and
    /// always where changes cannot be watched).
    pub fn changed(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.changed(&self.paths)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = &self.paths;
            true
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    const MASK: u32 = libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_CLOSE_WRITE | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;

    pub struct Inotify {
        fd: i32,
        /// Every path has a watch: otherwise each look says "maybe".
        complete: bool,
        /// Read buffer, made once (a fresh zeroed one per look costs more than the read).
        buf: Box<[u8; 4096]>,
    }

    impl Inotify {
        pub fn new(paths: &[PathBuf]) -> Inotify {
            // SAFETY: plain syscall; a negative result is handled.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            let mut inotify = Inotify { fd, complete: false, buf: Box::new([0u8; 4096]) };
            inotify.add_watches(paths);
            inotify
        }

        fn add_watches(&mut self, paths: &[PathBuf]) {
            if self.fd < 0 {
                return;
            }
            self.complete = paths.iter().all(|path| {
                let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
                // SAFETY: fd is ours and c is a valid C string; watching a path twice is allowed.
                unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), MASK) >= 0 }
            });
        }

        pub fn changed(&mut self, paths: &[PathBuf]) -> bool {
            if self.fd < 0 {
                return true;
            }
            let buf = &mut self.buf;
            let mut any = false;
            let mut lost_watch = false;
            loop {
                // SAFETY: reads into our buffer from our descriptor.
                let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                any = true;
                let mut offset = 0usize;
                while offset + std::mem::size_of::<libc::inotify_event>() <= n as usize {
                    // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                    let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(buf.as_ptr().add(offset).cast()) };
                    if event.mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                        lost_watch = true;
                    }
                    offset += std::mem::size_of::<libc::inotify_event>() + event.len as usize;
                }
            }
            if lost_watch || !self.complete {
                // a file was replaced or removed (or never there): watch what exists now
                self.add_watches(paths);
                return true;
            }
            any
        }
    }

    impl Drop for Inotify {
        fn drop(&mut self) {
            if self.fd >= 0 {
                // SAFETY: closes our own descriptor once.
                unsafe { libc::close(self.fd) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_write_by_anyone_is_seen_by_the_next_look_and_quiet_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let watch = FileWatch::new(&[&a, &b]);
        assert!(!watch.changed(), "nothing happened yet");
        std::fs::OpenOptions::new().append(true).open(&b).unwrap().write_all(b"2").unwrap();
        assert!(watch.changed(), "the write is seen at once");
        assert!(!watch.changed(), "and only once");
        // another file in the same folder is not ours
        std::fs::write(dir.path().join("c"), "x").unwrap();
        assert!(!watch.changed());
        // a removed file: "maybe" until it is back and watched again
        std::fs::remove_file(&a).unwrap();
        assert!(watch.changed());
        assert!(watch.changed(), "a missing file cannot be watched: always maybe");
        std::fs::write(&a, "3").unwrap();
        assert!(watch.changed());
        assert!(!watch.changed(), "watched again");
        std::fs::write(&a, "4").unwrap();
        assert!(watch.changed());
    }
}
