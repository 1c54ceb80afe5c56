//! Instance output: line-by-line to a size-rotated file per instance and, optionally,
//! multiplexed to stdout as `web.2 | line` (foreman/overmind style).
//!
//! File layout: `<logs.dir>/<service>.<index>.log` is the live file; on rotation it
//! becomes `.log.1`, the previous `.log.1` becomes `.log.2`, … up to `.log.<keep>`
//! (older ones are deleted). Lines from stdout and stderr go to the same file in arrival
//! order; lines the supervisor itself writes about the instance start with `[drove]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::event::InstanceId;
use crate::spec::LogSpec;

/// ANSI foreground colours cycled over instances (red is left out: it reads as an error).
const PALETTE: [u8; 6] = [36, 33, 32, 35, 34, 96];

/// A single line longer than this is cut (and continued as another line), so one
/// runaway write cannot grow memory without bound.
const MAX_LINE: usize = 64 * 1024;

/// Path of an instance's live log file: `<logs.dir>/<service>.<index>.log`.
///
/// Layout: the live file is appended to across restarts of the slot's process. When a
/// write would take it past `logs.max_size`, it is renamed to `<file>.1` (the previous
/// `.1` becomes `.2`, … up to `.<keep>`; older files are deleted) and a new live file is
/// started. stdout and stderr lines are interleaved in arrival order, without
/// timestamps; lines the supervisor writes about the instance (started, ready, exited,
/// restarting, stopped) start with `[drove] `. Following a file (`drove logs -f`) is left
/// to the reader: reopen `<file>` when its size shrinks or its inode changes.
pub fn log_path(dir: &Path, id: &InstanceId) -> PathBuf {
    dir.join(format!("{}.{}.log", id.service, id.index))
}

/// How often `tail` looks for new output when following.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Writes the last `last` lines of a log file to `out` and, with `follow`, keeps writing
/// what is appended (like `tail -F`): when the file is rotated (its inode changes) or
/// truncated, it continues from the start of the new file. Following ends only when the
/// future is dropped or `out` fails; without `follow`, at the end of the file.
pub async fn tail<W: AsyncWrite + Unpin>(
    path: &Path,
    last: usize,
    follow: bool,
    out: &mut W,
) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    let open = |p: PathBuf| async move {
        let f = tokio::fs::File::open(&p).await?;
        let ino = f.metadata().await?.ino();
        io::Result::Ok((f, ino))
    };
    let (mut file, mut ino) = match open(path.to_path_buf()).await {
        Ok(x) => x,
        Err(e) if follow && e.kind() == io::ErrorKind::NotFound => loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            if let Ok(x) = open(path.to_path_buf()).await {
                break x;
            }
        },
        Err(e) => return Err(e),
    };
    // The last `last` lines: read backwards in blocks until enough newlines are seen.
    let len = file.metadata().await?.len();
    let mut start = len;
    let mut newlines = 0usize;
    let mut block = vec![0u8; 8192];
    'back: while start > 0 && last > 0 {
        let n = block.len().min(start as usize);
        start -= n as u64;
        file.seek(io::SeekFrom::Start(start)).await?;
        file.read_exact(&mut block[..n]).await?;
        for (i, b) in block[..n].iter().enumerate().rev() {
            // The file's final newline ends the last line; it does not start one.
            if *b == b'\n' && start + (i as u64) + 1 != len {
                newlines += 1;
                if newlines == last {
                    start += i as u64 + 1;
                    break 'back;
                }
            }
        }
    }
    if last == 0 {
        start = len;
    }
    file.seek(io::SeekFrom::Start(start)).await?;
    let mut pos = start;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            out.write_all(&buf[..n]).await?;
            pos += n as u64;
            continue;
        }
        out.flush().await?;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        match tokio::fs::metadata(path).await {
            Ok(m) if m.ino() != ino || m.len() < pos => {
                // Rotated or truncated: finish the old file, then read the new one.
                loop {
                    let n = file.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&buf[..n]).await?;
                }
                if let Ok((f, i)) = open(path.to_path_buf()).await {
                    (file, ino, pos) = (f, i, 0);
                }
            }
            _ => {}
        }
    }
}

/// The rotated file number `n` (1 = newest) of a live log file.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// An append-only log file rotated by size.
pub(crate) struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: u64,
    keep: u32,
}

impl RotatingFile {
    pub fn open(path: PathBuf, spec: &LogSpec) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file: Some(file),
            size,
            max_size: spec.max_size,
            keep: spec.keep,
        })
    }

    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.max_size > 0 && self.size > 0 && self.size + len > self.max_size {
            self.rotate()?;
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        f.write_all(&buf)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            fs::remove_file(rotated(&self.path, self.keep)).or_else(ignore_missing)?;
            for n in (1..self.keep).rev() {
                fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1))
                    .or_else(ignore_missing)?;
            }
            fs::rename(&self.path, rotated(&self.path, 1)).or_else(ignore_missing)?;
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Where one instance's lines go.
#[derive(Clone)]
pub(crate) struct InstanceLog {
    file: Option<Arc<Mutex<RotatingFile>>>,
    /// `Some(prefix)` when lines are also printed to stdout.
    stdout_prefix: Option<Arc<str>>,
}

impl InstanceLog {
    pub fn new(
        id: &InstanceId,
        spec: &LogSpec,
        to_stdout: bool,
        color: bool,
        width: usize,
    ) -> Self {
        let path = log_path(&spec.dir, id);
        let file = match RotatingFile::open(path.clone(), spec) {
            Ok(f) => Some(Arc::new(Mutex::new(f))),
            Err(e) => {
                tracing::warn!(instance = %id, path = %path.display(), error = %e, "cannot open log file; output is not kept");
                None
            }
        };
        let stdout_prefix = to_stdout.then(|| prefix(id, color, width).into());
        InstanceLog {
            file,
            stdout_prefix,
        }
    }

    pub fn line(&self, line: &[u8]) {
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_line(line) {
                tracing::warn!(path = %f.path.display(), error = %e, "log write failed");
            }
        }
        if let Some(p) = &self.stdout_prefix {
            let mut out = io::stdout().lock();
            let _ = out
                .write_all(p.as_bytes())
                .and_then(|_| out.write_all(line))
                .and_then(|_| out.write_all(b"\n"));
        }
    }

    /// Whether lines are printed to stdout too.
    pub fn to_stdout(&self) -> bool {
        self.stdout_prefix.is_some()
    }

    /// A line from the supervisor about this instance.
    pub fn system(&self, msg: &str) {
        self.line(format!("[drove] {msg}").as_bytes());
    }
}

/// `web.2  | ` padded to `width`, coloured per instance when `color`.
fn prefix(id: &InstanceId, color: bool, width: usize) -> String {
    let name = format!("{:<width$}", id.to_string());
    if color {
        let c = PALETTE[color_index(id)];
        format!("\x1b[{c}m{name} |\x1b[0m ")
    } else {
        format!("{name} | ")
    }
}

/// A stable colour per instance: services spread by name, instances by index.
fn color_index(id: &InstanceId) -> usize {
    let h = id
        .service
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    h.wrapping_add(id.index as usize) % PALETTE.len()
}

/// Copies a process stream into the log until EOF.
pub(crate) async fn pump<R: AsyncRead + Unpin>(stream: R, log: InstanceLog) {
    let mut r = BufReader::new(stream);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match take_line(&mut r, &mut buf).await {
            Ok(0) => return,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                log.line(&buf);
            }
            Err(_) => return,
        }
    }
}

/// Reads up to and including `\n`, but at most `MAX_LINE` bytes.
async fn take_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(buf.len());
        }
        let room = MAX_LINE - buf.len();
        let (n, done) = match avail.iter().take(room).position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len().min(room), avail.len() >= room),
        };
        buf.extend_from_slice(&avail[..n]);
        r.consume(n);
        if done {
            return Ok(buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("drove-sup-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tmpdir("rot");
        let spec = LogSpec {
            dir: dir.clone(),
            max_size: 20,
            keep: 2,
        };
        let id = InstanceId::new("web", 2);
        let path = log_path(&dir, &id);
        assert!(path.ends_with("web.2.log"));
        let mut f = RotatingFile::open(path.clone(), &spec).unwrap();
        for i in 0..10 {
            f.write_line(format!("line-{i:04}").as_bytes()).unwrap(); // 10 bytes + \n
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "line-0008\nline-0009\n");
        assert_eq!(
            fs::read_to_string(rotated(&path, 1)).unwrap(),
            "line-0006\nline-0007\n"
        );
        assert_eq!(
            fs::read_to_string(rotated(&path, 2)).unwrap(),
            "line-0004\nline-0005\n"
        );
        assert!(!rotated(&path, 3).exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stdout_prefixes() {
        let id = InstanceId::new("web", 2);
        assert_eq!(prefix(&id, false, 7), "web.2   | ");
        let colored = prefix(&id, true, 5);
        assert_eq!(colored, prefix(&id, true, 5), "stable");
        assert!(colored.starts_with("\x1b[") && colored.ends_with("web.2 |\x1b[0m "));
        assert_ne!(colored, prefix(&InstanceId::new("web", 3), true, 5));
    }

    #[tokio::test]
    async fn tail_last_lines_and_follow_across_rotation() {
        let dir = tmpdir("tail");
        let spec = LogSpec {
            dir: dir.clone(),
            max_size: 40,
            keep: 1,
        };
        let id = InstanceId::new("web", 1);
        let path = log_path(&dir, &id);
        let mut f = RotatingFile::open(path.clone(), &spec).unwrap();
        for i in 0..3 {
            f.write_line(format!("line-{i}").as_bytes()).unwrap();
        }
        let mut out = Vec::new();
        tail(&path, 2, false, &mut out).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "line-1\nline-2\n");
        out.clear();
        tail(&path, 10, false, &mut out).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "line-0\nline-1\nline-2\n");
        out.clear();
        tail(&path, 0, false, &mut out).await.unwrap();
        assert!(out.is_empty());

        let (mut w, mut r) = tokio::io::duplex(4096);
        let p = path.clone();
        let follower = tokio::spawn(async move { tail(&p, 1, true, &mut w).await });
        let mut got = Vec::new();
        async fn read_until(r: &mut tokio::io::DuplexStream, got: &mut Vec<u8>, want: &str) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while got.len() < want.len() {
                let mut b = [0u8; 256];
                let n = tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(r, &mut b))
                    .await
                    .expect("follow output")
                    .unwrap();
                got.extend_from_slice(&b[..n]);
            }
            assert_eq!(String::from_utf8_lossy(got), want);
        }
        read_until(&mut r, &mut got, "line-2\n").await;
        // Appends, a rotation (at 40 bytes), then more appends to the new file.
        for i in 3..9 {
            f.write_line(format!("line-{i}").as_bytes()).unwrap();
        }
        read_until(
            &mut r,
            &mut got,
            "line-2\nline-3\nline-4\nline-5\nline-6\nline-7\nline-8\n",
        )
        .await;
        assert!(rotated(&path, 1).exists());
        follower.abort();
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn pump_splits_lines_and_caps_length() {
        let dir = tmpdir("pump");
        let spec = LogSpec {
            dir: dir.clone(),
            max_size: 0,
            keep: 0,
        };
        let id = InstanceId::new("w", 1);
        let log = InstanceLog::new(&id, &spec, false, false, 3);
        let mut input = b"a\r\nb\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 5));
        pump(&input[..], log).await;
        let s = fs::read_to_string(log_path(&dir, &id)).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[..2], ["a", "b"]);
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "xxxxx");
        fs::remove_dir_all(dir).unwrap();
    }
}
