//! A blocking client of the API socket (binary form), used by `hostctl`, the tests and the
//! load benchmark.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use hostd_proto::frame::{self, ReadError};
use hostd_proto::{
    ApiError, DecodeError, Event, PROTOCOL_VERSION, Reply, Request, RequestEnvelope, Response,
    decode_reply,
};

/// Errors of a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error(
        "cannot connect to hostd at {path}: is hostd running (or `hostd --sim`)? Use --socket or HOSTD_SOCKET to point elsewhere"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection failed mid-call.
    #[error("the connection to hostd failed")]
    Io(#[from] io::Error),
    /// hostd closed the connection.
    #[error("hostd closed the connection")]
    Closed,
    /// A reply that does not decode.
    #[error("hostd's reply cannot be decoded (is hostctl the same version as hostd?)")]
    Decode(#[from] DecodeError),
    /// hostd refused the call.
    #[error("{0}")]
    Api(ApiError),
    /// A reply of the wrong kind.
    #[error("hostd's reply does not fit the call")]
    Unexpected,
}

impl From<ReadError> for ClientError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Closed => Self::Closed,
            ReadError::Io(err) => Self::Io(err),
            ReadError::TooLarge(err) => Self::Decode(err),
        }
    }
}

/// A connection to hostd.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u32,
    body: Vec<u8>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            stream,
            next_id: 1,
            body: Vec::new(),
        })
    }

    /// Sends `request` and returns the response (a refusal is [`ClientError::Api`]).
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        frame::write_frame(
            &mut self.stream,
            &RequestEnvelope {
                version: PROTOCOL_VERSION,
                id,
                request,
            },
        )?;
        match self.read_reply()? {
            Reply::Ok(response) => Ok(response),
            Reply::Error(err) => Err(ClientError::Api(err)),
            Reply::Event(_) => Err(ClientError::Unexpected),
        }
    }

    fn read_reply(&mut self) -> Result<Reply, ClientError> {
        frame::read_frame(&mut self.stream, &mut self.body)?;
        Ok(decode_reply(&self.body)?.reply)
    }

    /// After a `subscribe` call: the next pushed event.
    pub fn next_event(&mut self) -> Result<Event, ClientError> {
        match self.read_reply()? {
            Reply::Event(event) => Ok(event),
            Reply::Error(err) => Err(ClientError::Api(err)),
            Reply::Ok(_) => Err(ClientError::Unexpected),
        }
    }

    /// After an `attach_console` call: the raw console stream.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The socket, for timeouts.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// The socket `hostctl` talks to: `$HOSTD_SOCKET`, else the system socket when it exists,
/// else `hostd --sim`'s.
pub fn default_socket() -> PathBuf {
    if let Some(path) = std::env::var_os("HOSTD_SOCKET") {
        return PathBuf::from(path);
    }
    let system = PathBuf::from("/run/hostd/hostd.sock");
    if system.exists() {
        return system;
    }
    match crate::config::sim_state_dir() {
        Some(dir) if dir.join("hostd.sock").exists() => dir.join("hostd.sock"),
        _ => system,
    }
}
