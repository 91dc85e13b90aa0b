//! Upgrades without a dropped connection, as Pingora and Envoy do them: the running process
//! starts its binary again, hands the new process every listening socket over a Unix socket
//! (SCM_RIGHTS), and stops accepting only once the new process says it serves on them. The
//! kernel sockets never close, so no connection is refused or lost from an accept queue.
//!
//! One frame per message: a 4-byte big-endian length, then text.
//! - old → new: `listener <key> <addr>` with the socket attached, once per listener, then `end`;
//! - new → old: `ready <pid>` once it serves (or it exits, and the old one keeps serving);
//! - old → new: `go`: the old process stops accepting and drains; the new one takes over the
//!   pid file and tells systemd its pid.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr,
};

/// Names the hand-over socket in the new process's environment.
pub const SOCKET_ENV: &str = "SANDGATE_UPGRADE_SOCKET";
/// How long the new process has to start and say it serves.
pub const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long the new process waits for the old one's `go` after saying it is ready.
const GO_WITHIN: Duration = Duration::from_secs(10);
/// Frames are a few words; anything longer is not ours.
const MAX_FRAME: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot create the hand-over socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process (pid {pid}) exited before it was ready ({status})")]
    Exited {
        pid: u32,
        status: std::process::ExitStatus,
    },
    #[error("the new process (pid {pid}) was not ready within {}s", READY_WITHIN.as_secs())]
    NotReady { pid: u32 },
    #[error("hand-over connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("hand-over connection: {0}")]
    Sys(#[from] nix::Error),
    #[error("hand-over connection: unexpected message {0:?}")]
    Protocol(String),
    #[error("hand-over socket: connected to pid {pid} (uid {uid}), not the process that started this one")]
    Impostor { pid: i32, uid: u32 },
    #[error("this process was told to stop during the hand-over")]
    Stopping,
}

/// A listening socket to hand over: the config key it serves (`server.listen`, `tls.listen`,
/// `admin.listen`) and its bound address.
pub struct Handed {
    pub key: &'static str,
    pub addr: SocketAddr,
    pub socket: TcpListener,
}

/// The listening sockets the old process handed over (none when not started by an upgrade),
/// and the connection to it until the new process is ready.
#[derive(Default)]
pub struct Inherited {
    sockets: Vec<(String, SocketAddr, TcpListener)>,
    channel: Option<UnixStream>,
}

impl Inherited {
    /// Connects to the old process when [`SOCKET_ENV`] names its socket and takes its
    /// listeners; nothing otherwise.
    pub fn from_env() -> Result<Inherited, UpgradeError> {
        let Some(path) = std::env::var_os(SOCKET_ENV) else {
            return Ok(Inherited::default());
        };
        let mut channel = UnixStream::connect(&path)?;
        check_parent(&channel)?;
        channel.set_read_timeout(Some(GO_WITHIN))?;
        let mut sockets = Vec::new();
        loop {
            let (text, fd) = recv_frame(&mut channel)?;
            let mut words = text.split(' ');
            match (words.next(), words.next(), fd) {
                (Some("end"), None, None) => break,
                (Some("listener"), Some(key), Some(fd)) => {
                    let socket = listening_socket(fd)?;
                    let addr = socket.local_addr()?;
                    sockets.push((key.to_string(), addr, socket));
                }
                _ => return Err(UpgradeError::Protocol(text)),
            }
        }
        Ok(Inherited {
            sockets,
            channel: Some(channel),
        })
    }

    /// Started by an upgrade.
    pub fn is_upgrade(&self) -> bool {
        self.channel.is_some()
    }

    /// The inherited sockets of `key` when they are on the address the config asks for (port 0
    /// asks for any port, so it keeps the one the old process got).
    pub fn take(&mut self, key: &str, wanted: SocketAddr) -> Vec<TcpListener> {
        let matches = |k: &str, addr: &SocketAddr| {
            k == key
                && addr.ip() == wanted.ip()
                && (wanted.port() == 0 || addr.port() == wanted.port())
        };
        let (taken, kept) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(k, addr, _)| matches(k, addr));
        self.sockets = kept;
        taken.into_iter().map(|(_, _, socket)| socket).collect()
    }

    /// Tells the old process this one serves and waits for its `go`. Sockets the config no
    /// longer listens on are closed here (the old process stops serving them too).
    pub fn confirm_ready(&mut self) -> Result<(), UpgradeError> {
        for (key, addr, _) in self.sockets.drain(..) {
            tracing::warn!(key, %addr, "the new config no longer listens here: closed");
        }
        let Some(channel) = self.channel.as_mut() else {
            return Ok(());
        };
        send_frame(channel, &format!("ready {}", std::process::id()), None)?;
        match recv_frame(channel)? {
            (text, None) if text == "go" => Ok(()),
            (text, _) => Err(UpgradeError::Protocol(text)),
        }
    }
}

/// The hand-over socket must be held by the process that started this one, as this user:
/// whatever else listens at the path named in the environment gets no say over what we serve.
fn check_parent(channel: &UnixStream) -> Result<(), UpgradeError> {
    let peer = getsockopt(channel, sockopt::PeerCredentials)?;
    let parent = nix::unistd::getppid().as_raw();
    let uid = nix::unistd::geteuid().as_raw();
    if peer.pid() != parent || peer.uid() != uid {
        return Err(UpgradeError::Impostor {
            pid: peer.pid(),
            uid: peer.uid(),
        });
    }
    Ok(())
}

/// A received descriptor that must be a listening TCP socket.
fn listening_socket(fd: OwnedFd) -> Result<TcpListener, UpgradeError> {
    if !getsockopt(&fd, sockopt::AcceptConn)? {
        return Err(UpgradeError::Protocol(
            "a socket that does not listen".into(),
        ));
    }
    let socket = TcpListener::from(fd);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Starts `exe` with `args`, hands it `listeners` and waits until it serves. `Ok(pid)`: the new
/// process serves and this one must stop accepting; on an error the new process is gone and
/// this one keeps serving.
pub async fn hand_over(
    listeners: Vec<Handed>,
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    socket_dir: PathBuf,
    stopping: Arc<AtomicBool>,
) -> Result<u32, UpgradeError> {
    tokio::task::spawn_blocking(move || {
        hand_over_blocking(listeners, &exe, &args, &socket_dir, &stopping)
    })
    .await
    .map_err(|e| UpgradeError::Io(std::io::Error::other(e)))?
}

fn hand_over_blocking(
    listeners: Vec<Handed>,
    exe: &Path,
    args: &[std::ffi::OsString],
    socket_dir: &Path,
    stopping: &AtomicBool,
) -> Result<u32, UpgradeError> {
    let path = socket_dir.join(format!("sandgate-upgrade-{}.sock", std::process::id()));
    let server = PrivateSocket::bind(path)?;
    let mut child = Command::new(exe)
        .args(args)
        .env(SOCKET_ENV, &server.path)
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
    let result = talk(&server.listener, &mut child, listeners, stopping);
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// The old side of the protocol, with the child it started.
fn talk(
    server: &UnixListener,
    child: &mut Child,
    listeners: Vec<Handed>,
    stopping: &AtomicBool,
) -> Result<u32, UpgradeError> {
    let deadline = Instant::now() + READY_WITHIN;
    let mut channel = accept_child(server, child, deadline)?;
    for handed in &listeners {
        let text = format!("listener {} {}", handed.key, handed.addr);
        send_frame(&mut channel, &text, Some(handed.socket.as_raw_fd()))?;
    }
    send_frame(&mut channel, "end", None)?;
    channel.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let pid = child.id();
    let reply = match recv_frame(&mut channel) {
        Ok((text, _)) => text,
        Err(error) => return Err(exit_status(child).unwrap_or(timed_out_or(error, pid))),
    };
    if reply != format!("ready {pid}") {
        return Err(UpgradeError::Protocol(reply));
    }
    // Told to stop meanwhile: the operator wants the service down, not a new process.
    if stopping.load(Ordering::Acquire) {
        return Err(UpgradeError::Stopping);
    }
    send_frame(&mut channel, "go", None)?;
    Ok(pid)
}

/// A read that timed out is "not ready in time"; anything else is the error itself.
fn timed_out_or(error: UpgradeError, pid: u32) -> UpgradeError {
    match &error {
        UpgradeError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            UpgradeError::NotReady { pid }
        }
        _ => error,
    }
}

/// The child's exit, when it has exited (or does within a moment: its socket closed first).
fn exit_status(child: &mut Child) -> Option<UpgradeError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(UpgradeError::Exited {
                pid: child.id(),
                status,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The connection from `child`: another process of the same user connecting first is turned
/// away (its peer credentials name another pid).
fn accept_child(
    server: &UnixListener,
    child: &mut Child,
    deadline: Instant,
) -> Result<UnixStream, UpgradeError> {
    loop {
        match server.accept() {
            Ok((stream, _)) => {
                let peer = getsockopt(&stream, sockopt::PeerCredentials)?.pid();
                if u32::try_from(peer).ok() == Some(child.id()) {
                    stream.set_nonblocking(false)?;
                    return Ok(stream);
                }
                tracing::warn!(
                    peer,
                    "hand-over socket: a connection from another process refused"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait()? {
                    let pid = child.id();
                    return Err(UpgradeError::Exited { pid, status });
                }
                if Instant::now() > deadline {
                    return Err(UpgradeError::NotReady { pid: child.id() });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The listening Unix socket, mode 0600; its file is removed when this is dropped.
struct PrivateSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl PrivateSocket {
    fn bind(path: PathBuf) -> Result<PrivateSocket, UpgradeError> {
        let at = path.clone();
        let fail = move |source| UpgradeError::Socket {
            path: at.clone(),
            source,
        };
        // A file left by a crashed upgrade (or planted) is replaced, never followed.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(&fail)?;
        let socket = PrivateSocket { path, listener };
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))
            .map_err(&fail)?;
        socket.listener.set_nonblocking(true).map_err(&fail)?;
        Ok(socket)
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send_frame(channel: &mut UnixStream, text: &str, fd: Option<RawFd>) -> Result<(), UpgradeError> {
    let length = u32::try_from(text.len()).map_err(|_| UpgradeError::Protocol(text.into()))?;
    let mut frame = length.to_be_bytes().to_vec();
    frame.extend_from_slice(text.as_bytes());
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<UnixAddr>(
        channel.as_raw_fd(),
        &[IoSlice::new(&frame)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    // The descriptor went with the first bytes; the rest, if any, is plain data.
    channel.write_all(&frame[sent..])?;
    Ok(())
}

/// One frame and the descriptor that came with it.
fn recv_frame(channel: &mut UnixStream) -> Result<(String, Option<OwnedFd>), UpgradeError> {
    let mut header = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (read, fd) = {
        let mut iov = [IoSliceMut::new(&mut header)];
        let message = recvmsg::<UnixAddr>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| UpgradeError::Io(e.into()))?;
        let mut fd = None;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: the kernel has just installed `raw` in this process's table for
                    // this message; nothing else knows or owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    // More than one is not our protocol: the extras are closed.
                    fd.get_or_insert(owned);
                }
            }
        }
        (message.bytes, fd)
    };
    if read == 0 {
        return Err(UpgradeError::Protocol("connection closed".into()));
    }
    channel.read_exact(&mut header[read..])?;
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME {
        return Err(UpgradeError::Protocol(format!("a frame of {length} bytes")));
    }
    let mut text = vec![0u8; length];
    channel.read_exact(&mut text)?;
    let text = String::from_utf8(text).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    Ok((text, fd))
}

/// Where the hand-over socket goes: beside the pid file, else `$XDG_RUNTIME_DIR`, else the
/// temporary folder.
pub fn socket_dir(pid_file: Option<&Path>) -> PathBuf {
    pid_file
        .and_then(Path::parent)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir)
}

/// Tells systemd (`Type=notify`, `NOTIFY_SOCKET`) that this process is ready and is the
/// service's main process: after an upgrade systemd then follows the new pid.
pub fn notify_systemd_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    if let Err(error) = send_notification(&path, message.as_bytes()) {
        tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

fn send_notification(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &addr)?;
        }
        None => {
            socket.send_to(message, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_sockets_are_taken_by_key_and_address() {
        let socket = || TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = socket();
        let port = plain.local_addr().unwrap().port();
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        for (key, wanted, taken) in [
            ("server.listen", at(port), 1),
            ("server.listen", at(0), 1),
            ("server.listen", at(port.wrapping_add(1)), 0),
            ("server.listen", SocketAddr::from(([0, 0, 0, 0], port)), 0),
            ("tls.listen", at(port), 0),
        ] {
            let socket = plain.try_clone().unwrap();
            let mut inherited = Inherited {
                sockets: vec![("server.listen".into(), at(port), socket)],
                channel: None,
            };
            assert_eq!(inherited.take(key, wanted).len(), taken, "{key} {wanted}");
        }
    }

    #[test]
    fn frames_carry_text_and_a_listening_socket() {
        let (mut old, mut new) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send_frame(
            &mut old,
            "listener server.listen x",
            Some(listener.as_raw_fd()),
        )
        .unwrap();
        send_frame(&mut old, "end", None).unwrap();
        let (text, fd) = recv_frame(&mut new).unwrap();
        assert_eq!(text, "listener server.listen x");
        let received = listening_socket(fd.unwrap()).unwrap();
        assert_eq!(received.local_addr().unwrap(), addr);
        assert_eq!(recv_frame(&mut new).unwrap().0, "end");
        // A socket that does not listen is refused.
        let stream = std::net::TcpStream::connect(addr).unwrap();
        send_frame(&mut old, "listener x y", Some(stream.as_raw_fd())).unwrap();
        let (_, fd) = recv_frame(&mut new).unwrap();
        assert!(listening_socket(fd.unwrap()).is_err());
    }
}
