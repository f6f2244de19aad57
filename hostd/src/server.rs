//! The API socket: accepts connections, tells the binary form from JSON lines by the first
//! byte, decodes requests, hands them to the state owner and writes its replies. One thread
//! per connection; a connection's requests are answered in order.
//!
//! Framing errors: an oversized frame gets a `frame_too_large` reply and the connection is
//! closed (the rest of the stream cannot be trusted); a frame cut short closes it. A body
//! that does not decode (garbage, unknown version, wrong JSON types) gets a typed error
//! reply and the connection stays usable.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use hostd_proto::frame::{self, ReadError};
use hostd_proto::{
    ApiError, DecodeError, ErrorCode, Event, MAX_FRAME_BYTES, Reply, ReplyEnvelope,
    RequestEnvelope, Response, decode_request, json,
};

use crate::access::Peer;
use crate::daemon::{Command, Handled};

/// Most connections served at once; more are answered `busy` and closed.
pub const MAX_CONNECTIONS: usize = 256;
/// Stack of a connection thread (virtual memory; only what is touched is used).
const CONNECTION_STACK: usize = 16 << 20;
/// How long a frame may take to arrive once its first byte has.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another hostd serves the socket.
    #[error("another hostd is serving {path}: stop it first")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// The socket cannot be created.
    #[error("cannot create the API socket {path}: check that its directory exists and is writable")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The socket group does not exist.
    #[error("socket_group {group} does not exist: create it or fix the config")]
    NoGroup {
        /// The group.
        group: String,
    },
}

/// Binds the API socket (mode 0660, group `group`), replacing a stale socket file.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, ServerError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse {
                path: path.to_owned(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    if let Some(group) = group {
        let gid = crate::access::group_gid(group).ok_or_else(|| ServerError::NoGroup {
            group: group.to_owned(),
        })?;
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| bind_err(e.into()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

/// Accepts connections forever, one thread each.
pub fn serve(listener: UnixListener, commands: Sender<Command>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut serial = 0u64;
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("accept failed: {err}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            let err = ApiError::new(
                ErrorCode::Busy,
                &format!("hostd serves at most {MAX_CONNECTIONS} connections: retry later"),
            );
            let _ = frame::write_frame(&mut stream, &error_reply(0, err));
            continue;
        }
        serial += 1;
        let commands = commands.clone();
        let active = active.clone();
        active.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("conn {serial}"))
            // Replies are fixed-capacity (heapless) values of tens of KiB that debug
            // builds copy several times while encoding: give the thread room.
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                if let Err(err) = Connection::new(stream, commands).and_then(Connection::serve) {
                    log::debug!("connection {serial} ended: {err}");
                }
                active.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(err) = spawned {
            log::error!("cannot start a connection thread: {err}");
        }
    }
}

fn error_reply(id: u32, error: ApiError) -> ReplyEnvelope {
    ReplyEnvelope {
        id,
        reply: Reply::Error(error),
    }
}

fn decode_error(err: &DecodeError) -> ApiError {
    let code = match err {
        DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        DecodeError::Malformed { .. } => ErrorCode::BadRequest,
    };
    ApiError::new(code, &err.to_string())
}

/// Which form a connection speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Binary,
    Json,
}

struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    peer: Peer,
    commands: Sender<Command>,
    form: Form,
}

impl Connection {
    fn new(stream: UnixStream, commands: Sender<Command>) -> io::Result<Self> {
        let peer = Peer::of(&stream)?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::with_capacity(8192, stream),
            writer,
            peer,
            commands,
            form: Form::Binary,
        })
    }

    fn write(&mut self, reply: &ReplyEnvelope) -> io::Result<()> {
        match self.form {
            Form::Binary => frame::write_frame(&mut self.writer, reply),
            Form::Json => {
                let line = json::encode_line(reply).map_err(io::Error::other)?;
                self.writer.write_all(&line)
            }
        }
    }

    fn serve(mut self) -> io::Result<()> {
        let first = match self.reader.fill_buf()?.first() {
            Some(byte) => *byte,
            None => return Ok(()),
        };
        if first == b'{' {
            self.form = Form::Json;
        }
        let mut body = Vec::new();
        loop {
            let decoded = match self.read_message(&mut body) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return Ok(()),
                Err(err) => return Err(err),
            };
            let envelope = match decoded {
                Ok(envelope) => envelope,
                Err(err) => {
                    let too_large = matches!(err, DecodeError::TooLarge { .. });
                    self.write(&error_reply(err.id(), decode_error(&err)))?;
                    if too_large {
                        return Ok(());
                    }
                    continue;
                }
            };
            if !self.call(envelope)? {
                return Ok(());
            }
        }
    }

    /// Reads one message. `Ok(None)`: the peer closed the connection between messages.
    fn read_message(
        &mut self,
        body: &mut Vec<u8>,
    ) -> io::Result<Option<Result<RequestEnvelope, DecodeError>>> {
        let stream = self.reader.get_ref();
        stream.set_read_timeout(None)?;
        let first = match self.reader.fill_buf()?.first() {
            Some(byte) => *byte,
            None => return Ok(None),
        };
        self.reader.consume(1);
        self.reader
            .get_ref()
            .set_read_timeout(Some(FRAME_TIMEOUT))?;
        match self.form {
            Form::Binary => match frame::read_frame_after(first, &mut self.reader, body) {
                Ok(()) => Ok(Some(decode_request(body))),
                Err(ReadError::TooLarge(err)) => Ok(Some(Err(err))),
                Err(ReadError::Closed) => Ok(None),
                Err(ReadError::Io(err)) => Err(err),
            },
            Form::Json => {
                body.clear();
                body.push(first);
                let limit = u64::from(MAX_FRAME_BYTES) + 1;
                (&mut self.reader).take(limit).read_until(b'\n', body)?;
                if body.last() == Some(&b'\n') {
                    body.pop();
                } else if body.len() as u64 >= limit {
                    return Ok(Some(Err(DecodeError::TooLarge {
                        len: body.len() as u64,
                    })));
                } else {
                    // End of stream inside a line: a truncated message.
                    return Ok(None);
                }
                if body.iter().all(u8::is_ascii_whitespace) {
                    return self.read_message(body);
                }
                Ok(Some(json::decode_request_line(body)))
            }
        }
    }

    /// Carries out one request; false when the connection is done (console, events).
    fn call(&mut self, envelope: RequestEnvelope) -> io::Result<bool> {
        let (tx, rx) = mpsc::channel();
        let id = envelope.id;
        let command = Command::Request {
            peer: self.peer.clone(),
            request: envelope.request,
            reply: tx,
        };
        if self.commands.send(command).is_err() {
            self.write(&error_reply(
                id,
                ApiError::new(ErrorCode::Internal, "hostd is shutting down"),
            ))?;
            return Ok(false);
        }
        match rx.recv() {
            Ok(Handled::Reply(reply)) => {
                self.write(&ReplyEnvelope { id, reply })?;
                Ok(true)
            }
            Ok(Handled::Subscribed(events)) => {
                self.write(&ReplyEnvelope {
                    id,
                    reply: Reply::Ok(Response::Subscribed),
                })?;
                self.forward_events(id, &events)?;
                Ok(false)
            }
            Ok(Handled::Console { instance, socket }) => {
                let vmm = match UnixStream::connect(&socket) {
                    Ok(vmm) => vmm,
                    Err(err) => {
                        self.write(&error_reply(
                            id,
                            ApiError::new(
                                ErrorCode::VmmFailed,
                                &format!(
                                    "the console of {} is not reachable: {err}",
                                    instance.instance
                                ),
                            ),
                        ))?;
                        return Ok(true);
                    }
                };
                self.write(&ReplyEnvelope {
                    id,
                    reply: Reply::Ok(Response::ConsoleAttached(instance)),
                })?;
                self.proxy_console(vmm)?;
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    /// Pushes events until the client goes away.
    fn forward_events(&mut self, id: u32, events: &Receiver<Event>) -> io::Result<()> {
        loop {
            match events.recv_timeout(Duration::from_millis(500)) {
                Ok(event) => self.write(&ReplyEnvelope {
                    id,
                    reply: Reply::Event(event),
                })?,
                Err(RecvTimeoutError::Timeout) => {
                    if peer_closed(self.reader.get_ref()) {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    /// Copies bytes both ways between the client and the VMM's console socket until
    /// either side closes.
    fn proxy_console(&mut self, vmm: UnixStream) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(None)?;
        let mut vmm_reader = vmm.try_clone()?;
        let mut client_writer = self.writer.try_clone()?;
        let to_client = std::thread::Builder::new()
            .name("console out".into())
            .spawn(move || {
                let _ = io::copy(&mut vmm_reader, &mut client_writer);
                let _ = client_writer.shutdown(std::net::Shutdown::Both);
            })?;
        // Bytes buffered after the request belong to the console.
        let buffered = self.reader.buffer().to_vec();
        let mut vmm_writer = vmm;
        vmm_writer.write_all(&buffered)?;
        self.reader.consume(buffered.len());
        let _ = io::copy(self.reader.get_mut(), &mut vmm_writer);
        let _ = vmm_writer.shutdown(std::net::Shutdown::Both);
        let _ = to_client.join();
        Ok(())
    }
}

/// True when the peer has closed its end (a non-blocking peek sees end of stream).
fn peer_closed(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let result = nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(stream),
        &mut byte,
        nix::sys::socket::MsgFlags::MSG_PEEK,
    );
    let _ = stream.set_nonblocking(false);
    matches!(result, Ok(0)) || matches!(result, Err(e) if e != nix::errno::Errno::EAGAIN)
}
