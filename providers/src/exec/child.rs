//! One running provider process: starting it, writing request lines, reading response
//! lines with a length limit, forwarding its stderr to `tracing`, and killing it.
//!
//! The child leads its own process group, and killing it kills the whole group: helper
//! processes it started (a shell's children, a worker pool) do not outlive it.

use super::orphans;
use super::protocol::short;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Longest line accepted from a provider, in bytes (without the newline): 16 MiB.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Longest stderr line forwarded to `tracing`; the rest of a longer line is dropped.
const MAX_STDERR_LINE: usize = 8 * 1024;

/// How long to wait for a killed or exiting child to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// How to start the process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Provider name, for logs.
    pub name: String,
    /// Program and arguments (non-empty).
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
}

/// Reading one line went wrong.
#[derive(Debug)]
pub enum ReadError {
    /// The stream ended (the child closed stdout or exited).
    Eof,
    /// The line is longer than [`MAX_LINE`].
    TooLong,
    /// The pipe failed.
    Io(io::Error),
}

/// A running provider process with its pipes.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// The process group the child leads (its pid at start).
    group: Option<u32>,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr_task: Option<JoinHandle<()>>,
    /// The child's record in the provider's state folder, removed once it was reaped.
    record: Option<PathBuf>,
}

impl Running {
    /// Starts the process: stdin/stdout piped, stderr forwarded line by line to `tracing`,
    /// killed when dropped.
    pub fn start(launch: &Launch) -> io::Result<Running> {
        let Some((program, args)) = launch.command.split_first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group (id = its pid), so that killing it reaches its children.
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(dir) = &launch.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn()?;
        let group = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            // Cannot happen with piped stdio; do not leave the process behind.
            let _ = child.start_kill();
            return Err(io::Error::other("the child's pipes were not created"));
        };
        let stderr_task = child.stderr.take().map(|stderr| {
            let name = launch.name.clone();
            let pid = child.id().unwrap_or_default();
            tokio::spawn(forward_stderr(name, pid, BufReader::new(stderr)))
        });
        Ok(Running {
            child,
            group,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(64 * 1024, stdout),
            stderr_task,
            record: None,
        })
    }

    /// Records the child (process group and start time) in `dir`, synced, so that the
    /// next start kills it if this engine is killed while it runs.
    pub fn record(&mut self, dir: &std::path::Path) -> io::Result<()> {
        let pid = self
            .group
            .ok_or_else(|| io::Error::other("the child has no pid"))?;
        self.record = Some(orphans::record(dir, pid)?);
        Ok(())
    }

    /// Drops the record once the child is known to be reaped.
    fn forget_if_reaped(&mut self, reaped: bool) {
        if reaped {
            if let Some(path) = self.record.take() {
                orphans::remove(&path);
            }
        }
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Writes one line (a newline is appended) and flushes.
    pub async fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"));
        };
        stdin.write_all(line).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await
    }

    /// Reads the next non-blank line (without its `\n` or `\r\n`).
    pub async fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            let line = read_limited_line(&mut self.stdout, MAX_LINE).await?;
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(line);
            }
        }
    }

    /// The exit status if the process has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits a little for the process to exit on its own (after EOF or a broken pipe).
    pub async fn wait_briefly(&mut self) -> Option<ExitStatus> {
        tokio::time::timeout(Duration::from_millis(500), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Kills the process group (the child and what it started), then reaps the child
    /// (bounded wait).
    pub async fn kill(mut self) {
        self.kill_group();
        let _ = self.child.start_kill();
        let reaped = matches!(
            tokio::time::timeout(REAP_WAIT, self.child.wait()).await,
            Ok(Ok(_))
        );
        self.forget_if_reaped(reaped);
        self.finish_stderr().await;
    }

    /// Closes stdin, gives the process `grace` to exit, then kills it.
    pub async fn shutdown(mut self, grace: Duration) {
        // Dropping stdin closes the pipe: the child reads end of file.
        drop(self.stdin.take());
        let mut reaped = matches!(
            tokio::time::timeout(grace, self.child.wait()).await,
            Ok(Ok(_))
        );
        if !reaped {
            let _ = self.child.start_kill();
            reaped = matches!(
                tokio::time::timeout(REAP_WAIT, self.child.wait()).await,
                Ok(Ok(_))
            );
        }
        // What it started goes with it, whether it exited on its own or not.
        self.kill_group();
        self.forget_if_reaped(reaped);
        self.finish_stderr().await;
    }

    /// Sends SIGKILL to the child's process group. Best effort: a group that is already
    /// empty is fine. (The group id stays reserved while any member lives, so this cannot
    /// reach an unrelated process.)
    fn kill_group(&self) {
        #[cfg(unix)]
        if let Some(pgid) = self
            .group
            .and_then(|g| i32::try_from(g).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    /// Lets the stderr forwarder drain what the dead child left (bounded), then stops it.
    async fn finish_stderr(&mut self) {
        if let Some(mut task) = self.stderr_task.take() {
            if tokio::time::timeout(Duration::from_millis(200), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
        // `kill_on_drop` kills the child itself; this kills what it started.
        self.kill_group();
        // SIGKILL was sent to it and its group (or it exited already): it cannot act on
        // anything any more, so its record goes.
        let _ = self.child.start_kill();
        self.forget_if_reaped(true);
    }
}

/// Describes how a process ended: `exited with status 3` or `was killed by signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    format!("exited ({status})")
}

/// Reads up to and including the next `\n`; returns the line without `\n`/`\r\n`.
/// Never buffers more than `max` bytes: a longer line is [`ReadError::TooLong`].
pub async fn read_limited_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(ReadError::Io)?;
        if buf.is_empty() {
            return Err(ReadError::Eof);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                reader.consume(i + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > max {
                    return Err(ReadError::TooLong);
                }
                return Ok(line);
            }
            None => {
                let n = buf.len();
                // `max + 1` allows a final `\r` before the newline.
                if line.len() + n > max + 1 {
                    return Err(ReadError::TooLong);
                }
                line.extend_from_slice(buf);
                reader.consume(n);
            }
        }
    }
}

/// Forwards the child's stderr to `tracing` at info, one event per line.
async fn forward_stderr<R: AsyncBufRead + Unpin>(name: String, pid: u32, mut reader: R) {
    loop {
        match read_limited_line(&mut reader, MAX_STDERR_LINE).await {
            Ok(line) => {
                let text = String::from_utf8_lossy(&line);
                tracing::info!(provider = %name, pid, "{}", text.trim_end());
            }
            Err(ReadError::TooLong) => {
                // Log what fits and drop the rest of the line.
                tracing::info!(provider = %name, pid, "(stderr line longer than {MAX_STDERR_LINE} bytes, dropped)");
                if skip_line(&mut reader).await.is_err() {
                    return;
                }
            }
            Err(ReadError::Eof) | Err(ReadError::Io(_)) => return,
        }
    }
}

/// Discards input up to and including the next newline.
async fn skip_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<(), ReadError> {
    loop {
        let buf = reader.fill_buf().await.map_err(ReadError::Io)?;
        if buf.is_empty() {
            return Err(ReadError::Eof);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// A line as text for an error message: lossy UTF-8, escaped, shortened.
pub fn quote_line(line: &[u8]) -> String {
    short(&String::from_utf8_lossy(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, String>> {
        let mut r = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            match read_limited_line(&mut r, max).await {
                Ok(l) => out.push(Ok(l)),
                Err(ReadError::Eof) => return out,
                Err(ReadError::TooLong) => {
                    out.push(Err("too long".into()));
                    return out;
                }
                Err(ReadError::Io(e)) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_enforces_the_limit() {
        let got = lines(b"ab\r\ncdefgh\n\nx", 6).await;
        assert_eq!(
            got,
            vec![Ok(b"ab".to_vec()), Ok(b"cdefgh".to_vec()), Ok(Vec::new())]
        );
        let got = lines(b"abcdefg\n", 6).await;
        assert_eq!(got, vec![Err("too long".to_string())]);
        let got = lines(b"abcdef\r\n", 6).await;
        assert_eq!(got, vec![Ok(b"abcdef".to_vec())]);
    }
}
