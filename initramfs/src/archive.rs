//! A newc (SVR4) cpio archive whose bytes depend only on its contents: entries sorted by path,
//! parents before children, owner root, mtime 0, inode numbers by position; then compressed
//! with zstd, whose frames carry no timestamp or file name ([`compress`]).

use std::collections::BTreeMap;
use std::io::{self, Write};

use cpio::newc::{Builder, ModeFileType, trailer};

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory (mode bits only).
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A character device node (`/dev/console` must exist before devtmpfs is mounted).
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
    },
}

/// An archive under construction: a map from path (no leading `/`) to node.
#[derive(Debug, Default)]
pub struct Archive {
    nodes: BTreeMap<String, Node>,
}

/// Archive assembly failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Two different entries for one path.
    #[error("image path /{path} is added twice with different contents")]
    Conflict {
        /// The path.
        path: String,
    },
    /// A file over the newc format's 4 GiB limit.
    #[error("image file /{path} is {size} bytes, over the cpio newc limit of 4 GiB")]
    TooLarge {
        /// The path.
        path: String,
        /// Its size.
        size: usize,
    },
    /// Writing or compressing failed.
    #[error("cannot write the image: {0}")]
    Io(#[from] io::Error),
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node at `path` (leading `/` optional); its parent directories are added as 0755.
    /// Adding the same node twice is harmless; a different one is a conflict.
    pub fn add(&mut self, path: &str, node: Node) -> Result<(), ArchiveError> {
        let path = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        match self.nodes.get(&path) {
            Some(existing) if *existing == node => Ok(()),
            // An implicit parent may be given its real mode later.
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => {
                self.nodes.insert(path, node);
                Ok(())
            }
            Some(_) => Err(ArchiveError::Conflict { path }),
            None => {
                self.nodes.insert(path, node);
                Ok(())
            }
        }
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Writes the uncompressed newc archive.
    pub fn write_newc<W: Write>(&self, mut out: W) -> Result<W, ArchiveError> {
        for (index, (path, node)) in self.nodes.iter().enumerate() {
            // Inode numbers only need to be unique; positions are, and are stable.
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let header = Builder::new(path).ino(ino).uid(0).gid(0).mtime(0);
            let (header, data): (Builder, &[u8]) = match node {
                Node::Dir { mode } => (
                    header
                        .mode(*mode)
                        .set_mode_file_type(ModeFileType::Directory)
                        .nlink(2),
                    &[],
                ),
                Node::File { mode, data } => (
                    header.mode(*mode).set_mode_file_type(ModeFileType::Regular),
                    data.as_slice(),
                ),
                Node::Symlink { target } => (
                    header.mode(0o777).set_mode_file_type(ModeFileType::Symlink),
                    target.as_bytes(),
                ),
                Node::CharDev { mode, major, minor } => (
                    header
                        .mode(*mode)
                        .set_mode_file_type(ModeFileType::Char)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            let size = u32::try_from(data.len()).map_err(|_| ArchiveError::TooLarge {
                path: path.clone(),
                size: data.len(),
            })?;
            let mut writer = header.write(out, size);
            writer.write_all(data)?;
            out = writer.finish()?;
        }
        Ok(trailer(out)?)
    }
}

/// Compresses an archive with zstd at `level`, single-threaded (so the frame layout, and hence
/// the bytes, do not depend on the machine), with a content checksum the kernel verifies.
pub fn compress(plain: &[u8], level: i32) -> Result<Vec<u8>, ArchiveError> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    encoder.include_checksum(true)?;
    encoder.write_all(plain)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let mut rest = bytes;
        loop {
            let mut reader = cpio::NewcReader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                return entries;
            }
            let (name, mode, mtime) = (
                reader.entry().name().to_string(),
                reader.entry().mode(),
                reader.entry().mtime(),
            );
            let mut data = Vec::new();
            io::Read::read_to_end(&mut reader, &mut data).unwrap();
            entries.push((name, mode, mtime, data));
            rest = reader.finish().unwrap();
        }
    }

    #[test]
    fn entries_come_out_sorted_with_parents_first_and_fixed_metadata() {
        let mut a = Archive::new();
        a.add(
            "/usr/bin/tool",
            Node::File {
                mode: 0o755,
                data: b"x".to_vec(),
            },
        )
        .unwrap();
        a.add(
            "/bin/sh",
            Node::Symlink {
                target: "busybox".into(),
            },
        )
        .unwrap();
        a.add(
            "/dev/console",
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        let bytes = a.write_newc(Vec::new()).unwrap();
        let entries = read_back(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 0), "mtime is always 0");
        assert_eq!(entries[1].1, 0o120777);
        assert_eq!(entries[1].3, b"busybox");
        assert_eq!(entries[3].1, 0o020600);
        assert_eq!(entries[6].1, 0o100755);
    }

    #[test]
    fn insertion_order_does_not_change_the_bytes() {
        let files = [("a/x", "1"), ("b", "2"), ("a/y/z", "3")];
        let build = |order: &[usize]| {
            let mut a = Archive::new();
            for &i in order {
                let (p, d) = files[i];
                a.add(
                    p,
                    Node::File {
                        mode: 0o644,
                        data: d.into(),
                    },
                )
                .unwrap();
            }
            compress(&a.write_newc(Vec::new()).unwrap(), 3).unwrap()
        };
        assert_eq!(build(&[0, 1, 2]), build(&[2, 1, 0]));
    }

    #[test]
    fn conflicting_entries_are_refused() {
        let mut a = Archive::new();
        a.add(
            "etc/x",
            Node::File {
                mode: 0o644,
                data: b"1".to_vec(),
            },
        )
        .unwrap();
        a.add(
            "etc/x",
            Node::File {
                mode: 0o644,
                data: b"1".to_vec(),
            },
        )
        .unwrap();
        let err = a
            .add(
                "etc/x",
                Node::File {
                    mode: 0o644,
                    data: b"2".to_vec(),
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image path /etc/x is added twice with different contents"
        );
        a.add("etc", Node::Dir { mode: 0o700 }).unwrap();
        assert_eq!(
            a.entries().next().map(|(_, n)| n.clone()),
            Some(Node::Dir { mode: 0o700 })
        );
    }

    #[test]
    fn the_compressed_image_decompresses_to_the_archive() {
        let mut a = Archive::new();
        a.add(
            "init",
            Node::File {
                mode: 0o755,
                data: b"#!/bin/sh\n".to_vec(),
            },
        )
        .unwrap();
        let plain = a.write_newc(Vec::new()).unwrap();
        let packed = compress(&plain, 3).unwrap();
        assert_eq!(zstd::decode_all(packed.as_slice()).unwrap(), plain);
    }
}
