//! A control socket client (postcard framing), for `fastpath ctl` and tests. hostd has its
//! own (it does not depend on fastpath), on the same `hostd_proto::fastpath` types.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::control::framing::{self, FramingError};
use crate::control::messages::{Request, Response};

/// Errors talking to the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to control socket {path}; is fastpath running with --control {path}?")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Exchange failed.
    #[error("control exchange failed")]
    Framing(#[source] FramingError),
    /// The server closed the connection without a reply.
    #[error("fastpath closed the control connection without replying")]
    NoReply,
}

/// A connection to the control socket.
#[derive(Debug)]
pub struct ControlClient {
    stream: UnixStream,
}

impl ControlClient {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self { stream })
    }

    /// Sends one request and waits for its response.
    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        framing::write_postcard(&mut self.stream, req).map_err(ClientError::Framing)?;
        framing::read_postcard(&mut self.stream)
            .map_err(ClientError::Framing)?
            .ok_or(ClientError::NoReply)
    }
}
