//! A client of fastpath's control socket: one request, one reply, in the binary form
//! (`hostd_proto::fastpath` framing), with time limits so a hung forwarder cannot hold the
//! state owner.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hostd_proto::fastpath::{self, FrameError, Request, Response};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Errors talking to the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens there.
    #[error("cannot connect to the fastpath control socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed (or timed out).
    #[error("the fastpath control socket did not answer")]
    Io(#[source] io::Error),
    /// The reply is not a fastpath reply.
    #[error("fastpath's reply cannot be decoded (is fastpath the same version as hostd?)")]
    Frame(#[source] FrameError),
    /// fastpath refused the request.
    #[error("fastpath refused: {0}")]
    Refused(String),
}

/// What answered, and its reply.
#[derive(Debug)]
pub struct Answer {
    /// The reply.
    pub response: Response,
    /// The pid of the process serving the socket (SO_PEERCRED: the kernel's word).
    pub pid: Option<u32>,
}

/// Sends `request` to the control socket at `path`; waits at most `timeout` for each step.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<Answer, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(ControlError::Io)?;
    let pid = getsockopt(&stream, PeerCredentials)
        .ok()
        .and_then(|cred| u32::try_from(cred.pid()).ok())
        .filter(|pid| *pid > 0);
    let frame = fastpath::encode_frame(request).map_err(ControlError::Frame)?;
    stream.write_all(&frame).map_err(ControlError::Io)?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).map_err(ControlError::Io)?;
    let len = fastpath::frame_length(header).map_err(ControlError::Frame)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(ControlError::Io)?;
    match fastpath::decode_body(&body).map_err(ControlError::Frame)? {
        Response::Error { message } => Err(ControlError::Refused(message)),
        response => Ok(Answer { response, pid }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_request_gets_its_reply_and_the_servers_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut header = [0u8; 4];
            conn.read_exact(&mut header).unwrap();
            let mut body = vec![0u8; fastpath::frame_length(header).unwrap()];
            conn.read_exact(&mut body).unwrap();
            let request: Request = fastpath::decode_body(&body).unwrap();
            let reply = match request {
                Request::GetStats => Response::Stats(vec![]),
                _ => Response::Error {
                    message: "no".into(),
                },
            };
            conn.write_all(&fastpath::encode_frame(&reply).unwrap())
                .unwrap();
        });
        let answer = call(&path, &Request::GetStats, Duration::from_secs(5)).unwrap();
        assert_eq!(answer.response, Response::Stats(vec![]));
        assert_eq!(answer.pid, Some(std::process::id()));
        server.join().unwrap();
        let gone = call(&dir.path().join("none"), &Request::GetStats, Duration::ZERO);
        assert!(matches!(gone, Err(ControlError::Connect { .. })));
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err = call(&path, &Request::GetStats, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, ControlError::Io(_)), "{err}");
    }
}
