//! `hostctl console NAME`: the guest's serial console on this terminal, raw, until Ctrl-].

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use hostd_proto::{InstanceRef, Request, name};
use nix::sys::termios::{self, SetArg, Termios};

use super::CliError;
use crate::client::Client;

/// The escape byte: Ctrl-] (as telnet and virsh).
pub const ESCAPE: u8 = 0x1d;

/// Puts the terminal back as it was when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Attaches to `instance`'s console.
pub fn attach(socket: &Path, instance: &str) -> Result<(), CliError> {
    let mut client = Client::connect(socket)?;
    client.call(Request::AttachConsole(InstanceRef {
        instance: name(instance),
    }))?;
    let stream = client.into_stream();
    eprintln!("Connected to the console of {instance}. Leave with Ctrl-].\r");
    let raw = RawMode::enter();
    let mut from_guest = stream.try_clone()?;
    std::thread::Builder::new()
        .name("console out".into())
        .spawn(move || {
            let mut stdout = std::io::stdout();
            let mut buf = [0u8; 4096];
            while let Ok(n) = from_guest.read(&mut buf) {
                if n == 0
                    || stdout
                        .write_all(&buf[..n])
                        .and_then(|()| stdout.flush())
                        .is_err()
                {
                    break;
                }
            }
        })?;
    let mut to_guest = stream;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 256];
    loop {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        if let Some(at) = chunk.iter().position(|&b| b == ESCAPE) {
            to_guest.write_all(&chunk[..at])?;
            break;
        }
        to_guest.write_all(chunk)?;
    }
    let _ = to_guest.shutdown(std::net::Shutdown::Both);
    drop(raw);
    eprintln!("\nDetached from {instance}.");
    Ok(())
}
