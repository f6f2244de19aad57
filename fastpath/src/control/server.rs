//! The control socket server: a Unix stream socket; each connection is served by its own
//! thread, one request then one response, in the codec the client chose.

use std::io::{BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::control::framing::{self, Codec, FramingError};
use crate::control::messages::{AclRule, Config, Direction, Request, Response};
use crate::runtime::Fastpath;

/// How long a reply waits for the poll threads to adopt a change before answering anyway.
const ADOPT_WAIT: Duration = Duration::from_millis(200);

/// Errors of the control server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the socket failed.
    #[error("cannot listen on control socket {path}; check the directory exists and is writable")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// Spawning the accept thread failed.
    #[error("cannot spawn the control thread")]
    Spawn(#[source] std::io::Error),
}

fn port_mut<'a>(
    c: &'a mut Config,
    name: &str,
) -> Result<&'a mut crate::control::messages::PortConfig, String> {
    c.ports
        .iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("unknown port {name:?}"))
}

fn rules_mut<'a>(
    c: &'a mut Config,
    port: &str,
    d: Direction,
) -> Result<&'a mut Vec<AclRule>, String> {
    let p = port_mut(c, port)?;
    Ok(match d {
        Direction::In => &mut p.acl_in,
        Direction::Out => &mut p.acl_out,
    })
}

/// Executes one request against the running forwarder.
pub fn handle(fp: &Fastpath, req: Request) -> Response {
    let applied = |r: Result<u64, crate::runtime::ApplyError>| match r {
        Ok(generation) => {
            if !fp.wait_adopted(generation, ADOPT_WAIT) {
                log::warn!(
                    "generation {generation} not yet adopted by every poll thread after {ADOPT_WAIT:?}"
                );
            }
            Response::Applied { generation }
        }
        Err(e) => {
            log::warn!("control request refused: {e}");
            Response::Error {
                message: error_chain(&e),
            }
        }
    };
    match req {
        Request::GetConfig => Response::Config(fp.config()),
        Request::GetStats => Response::Stats(fp.stats()),
        Request::ReplaceConfig(c) => applied(fp.replace(c)),
        Request::SetVlan { port, vlan } => applied(fp.update(|c| {
            port_mut(c, &port)?.vlan = vlan;
            Ok(())
        })),
        Request::SetGuestFacing { port, guest_facing } => applied(fp.update(|c| {
            port_mut(c, &port)?.guest_facing = guest_facing;
            Ok(())
        })),
        Request::SetAclRule {
            port,
            direction,
            rule,
        } => applied(fp.update(|c| {
            let rules = rules_mut(c, &port, direction)?;
            match rules.iter_mut().find(|r| r.id == rule.id) {
                Some(r) => *r = rule,
                None => rules.push(rule),
            }
            Ok(())
        })),
        Request::DeleteAclRule {
            port,
            direction,
            id,
        } => applied(fp.update(|c| {
            let rules = rules_mut(c, &port, direction)?;
            let before = rules.len();
            rules.retain(|r| r.id != id);
            if rules.len() == before {
                Err(format!("port {port:?} has no rule {id}"))
            } else {
                Ok(())
            }
        })),
        Request::SetRateLimit {
            port,
            direction,
            limit,
        } => applied(fp.update(|c| {
            let p = port_mut(c, &port)?;
            match direction {
                Direction::In => p.rx_limit = limit,
                Direction::Out => p.tx_limit = limit,
            }
            Ok(())
        })),
        Request::SetMirror(m) => applied(fp.update(|c| {
            match c.mirrors.iter_mut().find(|x| x.name == m.name) {
                Some(x) => *x = m,
                None => c.mirrors.push(m),
            }
            Ok(())
        })),
        Request::DeleteMirror { name } => applied(fp.update(|c| {
            let before = c.mirrors.len();
            c.mirrors.retain(|m| m.name != name);
            if c.mirrors.len() == before {
                Err(format!("no mirror named {name:?}"))
            } else {
                Ok(())
            }
        })),
        Request::SetStaticMac(s) => applied(fp.update(|c| {
            match c
                .static_macs
                .iter_mut()
                .find(|x| x.mac.eq_ignore_ascii_case(&s.mac) && x.vlan == s.vlan)
            {
                Some(x) => *x = s,
                None => c.static_macs.push(s),
            }
            Ok(())
        })),
        Request::DeleteStaticMac { mac, vlan } => applied(fp.update(|c| {
            let before = c.static_macs.len();
            c.static_macs
                .retain(|x| !(x.mac.eq_ignore_ascii_case(&mac) && x.vlan == vlan));
            if c.static_macs.len() == before {
                Err(format!("no static entry {mac} VLAN {vlan}"))
            } else {
                Ok(())
            }
        })),
    }
}

/// The error and its sources, joined, for the reply text.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn serve(fp: &Fastpath, stream: UnixStream) -> Result<(), FramingError> {
    let mut writer = stream.try_clone().map_err(FramingError::Io)?;
    let mut reader = BufReader::new(stream);
    let mut first = [0u8; 4];
    if let Err(e) = reader.read_exact(&mut first) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(())
        } else {
            Err(FramingError::Io(e))
        };
    }
    match Codec::detect(first) {
        Codec::Postcard => {
            let mut req: Request = framing::read_postcard_body(&mut reader, first)?;
            loop {
                framing::write_postcard(&mut writer, &handle(fp, req))?;
                match framing::read_postcard(&mut reader)? {
                    Some(r) => req = r,
                    None => return Ok(()),
                }
            }
        }
        Codec::JsonLines => {
            let mut prefix: &[u8] = &first;
            loop {
                let reply = match framing::read_json_line::<_, Request>(&mut reader, prefix) {
                    Ok(Some(req)) => handle(fp, req),
                    Ok(None) => return Ok(()),
                    Err(FramingError::Json(e)) => Response::Error {
                        message: format!("bad request: {e}"),
                    },
                    Err(e) => return Err(e),
                };
                prefix = &[];
                framing::write_json_line(&mut writer, &reply)?;
            }
        }
    }
}

/// Listens on `path` (replacing a stale socket file) and serves requests in the background.
pub fn spawn(fp: Arc<Fastpath>, path: &Path) -> Result<std::thread::JoinHandle<()>, ServerError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    log::info!("control socket listening on {}", path.display());
    std::thread::Builder::new()
        .name("fp-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let fp = fp.clone();
                        let spawned = std::thread::Builder::new()
                            .name("fp-control-conn".into())
                            .spawn(move || {
                                if let Err(e) = serve(&fp, stream) {
                                    log::warn!("control connection: {}", error_chain(&e));
                                }
                            });
                        if let Err(e) = spawned {
                            log::error!("cannot spawn a control connection thread: {e}");
                        }
                    }
                    Err(e) => log::warn!("control socket accept failed: {e}"),
                }
            }
        })
        .map_err(ServerError::Spawn)
}
