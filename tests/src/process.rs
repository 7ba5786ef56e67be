//! Child processes that cannot outlive the test that started them.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// A child process, killed when dropped and also (through `PR_SET_PDEATHSIG`) if the test
/// process dies first.
pub struct Guarded {
    pub child: Child,
}

impl Guarded {
    pub fn spawn(mut cmd: Command) -> std::io::Result<Guarded> {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Ok(Guarded {
            child: cmd.spawn()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn has_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}
