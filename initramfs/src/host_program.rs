//! Host programs the lab image carries as they are (dynamically linked, like iproute2's `ip`):
//! the program and every shared library `ldd` resolves for it, the dynamic loader included,
//! each at the path the program will look for it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A host program to ship, with the files it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProgram {
    /// Where it goes in the image.
    pub dest: String,
    /// The program itself.
    pub source: PathBuf,
    /// Its shared libraries and loader: (path in the image = path on the host).
    pub libraries: Vec<PathBuf>,
}

/// A program whose libraries cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum HostProgramError {
    /// `ldd` could not run.
    #[error("cannot run ldd on {program}: {source}; install libc-bin")]
    Ldd {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A library is missing on this host.
    #[error(
        "{program} needs {library}, which ldd cannot find; install the package that provides it"
    )]
    NotFound {
        /// The program.
        program: PathBuf,
        /// The library.
        library: String,
    },
}

/// The shared libraries in `ldd` output: resolved paths (`name => /path (addr)`) and the
/// loader (`/lib64/ld-linux-x86-64.so.2 (addr)`); the vDSO has no file.
pub fn parse_ldd(program: &Path, output: &str) -> Result<Vec<PathBuf>, HostProgramError> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim) {
        if let Some((name, rest)) = line.split_once("=>") {
            let path = rest.split_whitespace().next().unwrap_or("");
            if path == "not" || path.is_empty() {
                return Err(HostProgramError::NotFound {
                    program: program.into(),
                    library: name.trim().into(),
                });
            }
            libs.push(PathBuf::from(path));
        } else if line.starts_with('/') {
            if let Some(path) = line.split_whitespace().next() {
                libs.push(PathBuf::from(path));
            }
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

impl HostProgram {
    /// Resolves `source`'s libraries with the host's `ldd`.
    pub fn resolve(source: &Path, dest: &str) -> Result<Self, HostProgramError> {
        let out = Command::new("ldd")
            .arg(source)
            .output()
            .map_err(|e| HostProgramError::Ldd {
                program: source.into(),
                source: e,
            })?;
        let libraries = parse_ldd(source, &String::from_utf8_lossy(&out.stdout))?;
        Ok(Self {
            dest: dest.into(),
            source: source.into(),
            libraries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP_LDD: &str = "\
\tlinux-vdso.so.1 (0x00007f9c21ed8000)
\tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f9c21d6f000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9c21b46000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f9c21eda000)
";

    #[test]
    fn libraries_and_the_loader_are_found_and_the_vdso_skipped() {
        let libs = parse_ldd(Path::new("/bin/ip"), IP_LDD).unwrap();
        let names: Vec<&str> = libs.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(
            names,
            [
                "/lib/x86_64-linux-gnu/libbpf.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn a_missing_library_is_named() {
        let err = parse_ldd(Path::new("/bin/x"), "\tlibfoo.so.2 => not found\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/bin/x needs libfoo.so.2, which ldd cannot find; install the package that provides it"
        );
    }

    #[test]
    fn the_real_ip_resolves() {
        let ip = Path::new("/bin/ip");
        assert!(
            ip.exists(),
            "this test needs iproute2 (apt-get install iproute2)"
        );
        let program = HostProgram::resolve(ip, "usr/lib/hostd-lab/bin/ip").unwrap();
        assert!(
            program
                .libraries
                .iter()
                .any(|l| l.ends_with("ld-linux-x86-64.so.2"))
        );
        assert!(
            program
                .libraries
                .iter()
                .any(|l| l.to_string_lossy().contains("libc.so"))
        );
    }
}
