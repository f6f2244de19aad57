//! What goes into the appliance image, and where.

use std::fs;
use std::path::{Path, PathBuf};

use crate::archive::{Archive, ArchiveError, Node, compress};
use crate::binaries::OurBinary;
use crate::host_program::HostProgram;
use crate::init_script::{self, InitConfig, Service};
use crate::inputs::LabInputs;
use crate::modules::{self, ModuleError, ModuleIndex, WantedModule};

/// What to build the image from.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The kernel, its modules and busybox.
    pub inputs: LabInputs,
    /// Modules to load at boot (with their dependencies).
    pub modules: Vec<WantedModule>,
    /// Our binaries, and the directory holding their built files.
    pub binaries: Vec<OurBinary>,
    /// Where the built binaries are.
    pub bin_dir: PathBuf,
    /// Factory profiles (`*.toml`) to ship under `/etc/hw-test/profiles`.
    pub profiles_dir: Option<PathBuf>,
    /// Default number of 2 MiB hugepages to reserve.
    pub hugepages: u32,
    /// Services init starts.
    pub services: Vec<Service>,
    /// What the QEMU lab's image adds; `None` for the appliance image.
    pub lab: Option<LabExtras>,
}

/// What the lab image adds to the appliance's, under [`LAB_DIR`]: the lab tests, a Linux
/// kernel with a small initramfs for a guest of our VMM, and host programs the tests compare
/// against (iproute2's `ip`).
#[derive(Debug, Clone, Default)]
pub struct LabExtras {
    /// Lab test executables, by their file name in the image (`tests/<name>`).
    pub tests: Vec<(String, PathBuf)>,
    /// Host programs, with their shared libraries.
    pub host_programs: Vec<HostProgram>,
    /// Modules the lab guest's initramfs loads (from the same kernel).
    pub guest_modules: Vec<WantedModule>,
}

impl LabExtras {
    /// What the lab image adds: the lab tests, built static (cargo), and iproute2's `ip` as
    /// `usr/lib/hostd-lab/bin/ip`.
    pub fn build() -> Result<Self, ImageError> {
        let tests = crate::binaries::build_static_tests(crate::binaries::LAB_TESTS)?;
        let ip = HostProgram::resolve(Path::new("/bin/ip"), &format!("{LAB_DIR}/bin/ip"))?;
        Ok(Self {
            tests,
            host_programs: vec![ip],
            guest_modules: crate::modules::GUEST_MODULES.to_vec(),
        })
    }
}

/// Where the lab's files go in the image.
pub const LAB_DIR: &str = "usr/lib/hostd-lab";
/// What the lab guest's init prints first.
pub const GUEST_INIT_LINE: &str = "lab-guest: init started";

impl ImageConfig {
    /// The appliance's image: its modules, binaries and shipped profiles, from `inputs`, with
    /// our binaries taken from `bin_dir`.
    pub fn appliance(inputs: LabInputs, bin_dir: PathBuf, hugepages: u32) -> Self {
        Self {
            inputs,
            modules: crate::modules::APPLIANCE_MODULES.to_vec(),
            binaries: crate::binaries::APPLIANCE_BINARIES.to_vec(),
            bin_dir,
            profiles_dir: Some(crate::binaries::workspace_root().join("hw-tests/profiles")),
            hugepages,
            services: vec![Service {
                name: "hostd".into(),
                command: "/usr/bin/hostd".into(),
            }],
            lab: None,
        }
    }
}

/// What every initramfs of ours starts from: busybox, and `/dev/console`, which the kernel
/// opens for init before anything mounts devtmpfs.
fn busybox_root(busybox: Vec<u8>) -> Result<Archive, ImageError> {
    let mut a = Archive::new();
    a.add(
        "dev/console",
        Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    a.add(
        "bin/busybox",
        Node::File {
            mode: 0o755,
            data: busybox,
        },
    )?;
    Ok(a)
}

/// The lab guest's initramfs: busybox, the modules, and [`GUEST_INIT`].
fn guest_initramfs(
    busybox: Vec<u8>,
    modules: Vec<(String, Vec<u8>)>,
) -> Result<Vec<u8>, ImageError> {
    let mut a = busybox_root(busybox)?;
    let mut insmods = String::new();
    for (name, data) in modules {
        insmods.push_str(&format!(
            "$B insmod /lib/modules/{name}.ko || $B echo \"lab-guest: insmod {name} failed\"\n"
        ));
        a.add(
            &format!("lib/modules/{name}.ko"),
            Node::File { mode: 0o644, data },
        )?;
    }
    let init = GUEST_INIT
        .replace("{INIT_LINE}", GUEST_INIT_LINE)
        .replace("{INSMODS}", &insmods);
    a.add(
        "init",
        Node::File {
            mode: 0o755,
            data: init.into_bytes(),
        },
    )?;
    Ok(compress(&a.write_newc(Vec::new())?, DEFAULT_ZSTD_LEVEL)?)
}

/// The lab guest's init: says it started, loads the virtio-mmio disk drivers, reads the
/// disk's first 16 bytes (the test's signature) and writes `written-by-guest` at byte 512,
/// then powers off. hostd/vmm/tests/lab_linux.rs checks both directions.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev
$B mount -t proc proc /proc
$B mount -t devtmpfs devtmpfs /dev
$B echo "{INIT_LINE}"
{INSMODS}i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do $B usleep 100000; i=$((i + 1)); done
if [ -b /dev/vda ]; then
    $B echo "lab-guest: disk says $($B dd if=/dev/vda bs=16 count=1 2>/dev/null)"
    $B printf 'written-by-guest' | $B dd of=/dev/vda bs=512 seek=1 conv=notrunc 2>/dev/null
    $B sync
    $B echo "lab-guest: disk written"
else
    $B echo "lab-guest: no disk"
fi
$B poweroff -f
"#;

/// Default number of 2 MiB hugepages the image reserves at boot.
pub const DEFAULT_HUGEPAGES: u32 = 64;

/// Label of the data disk's filesystem.
pub const DATA_LABEL: &str = "appliance-data";

/// Building the image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A module could not be resolved or read.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The archive could not be assembled or written.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// An input file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Input {
        /// Which input.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Our binaries or lab tests could not be built.
    #[error(transparent)]
    Build(#[from] crate::binaries::BuildError),
    /// A host program's libraries could not be resolved.
    #[error(transparent)]
    HostProgram(#[from] crate::host_program::HostProgramError),
    /// The output could not be written.
    #[error("cannot write the image to {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn read_input(what: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|source| ImageError::Input {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Assembles the image's archive.
pub fn assemble(config: &ImageConfig) -> Result<Archive, ImageError> {
    let mut a = busybox_root(read_input("busybox", &config.inputs.busybox)?)?;
    for dir in [
        "proc", "sys", "dev", "run", "tmp", "var/log", "data", "root", "sbin", "usr/sbin",
    ] {
        a.add(dir, Node::Dir { mode: 0o755 })?;
    }
    a.add("tmp", Node::Dir { mode: 0o1777 })?;
    a.add("root", Node::Dir { mode: 0o700 })?;
    a.add(
        "bin/sh",
        Node::Symlink {
            target: "busybox".into(),
        },
    )?;

    let dep_path = config.inputs.modules_dir.join("modules.dep");
    let dep_text = String::from_utf8_lossy(&read_input("modules.dep", &dep_path)?).into_owned();
    let read_text = |name: &str| -> Result<String, ImageError> {
        let path = config.inputs.modules_dir.join(name);
        Ok(String::from_utf8_lossy(&read_input("module index", &path)?).into_owned())
    };
    let index = ModuleIndex::parse(&dep_text)?
        .with_softdeps(&read_text("modules.softdep")?)
        .with_aliases(&read_text("modules.alias")?);
    let resolved = index.resolve(&config.modules)?;
    for m in &resolved {
        let data = modules::read_module(&config.inputs.modules_dir, &m.rel_path)?;
        a.add(
            &format!("lib/modules/{}.ko", m.name),
            Node::File { mode: 0o644, data },
        )?;
    }

    for b in &config.binaries {
        a.add(
            b.dest,
            Node::File {
                mode: 0o755,
                data: read_input("binary", &config.bin_dir.join(b.bin))?,
            },
        )?;
    }
    if let Some(dir) = &config.profiles_dir {
        let entries = fs::read_dir(dir).map_err(|source| ImageError::Input {
            what: "profiles directory",
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| ImageError::Input {
                    what: "profiles directory",
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                a.add(
                    &format!("etc/hw-test/profiles/{name}"),
                    Node::File {
                        mode: 0o644,
                        data: read_input("profile", &path)?,
                    },
                )?;
            }
        }
    }

    if let Some(lab) = &config.lab {
        for (name, path) in &lab.tests {
            a.add(
                &format!("{LAB_DIR}/tests/{name}"),
                Node::File {
                    mode: 0o755,
                    data: read_input("lab test", path)?,
                },
            )?;
        }
        for program in &lab.host_programs {
            let data = read_input("host program", &program.source)?;
            a.add(&program.dest, Node::File { mode: 0o755, data })?;
            for lib in &program.libraries {
                // Read through symlinks; stored as a file at the path the loader looks for.
                let data = read_input("shared library", lib)?;
                a.add(&lib.to_string_lossy(), Node::File { mode: 0o755, data })?;
            }
        }
        a.add(
            &format!("{LAB_DIR}/vmlinuz"),
            Node::File {
                mode: 0o644,
                data: read_input("kernel image", &config.inputs.vmlinuz)?,
            },
        )?;
        let mut guest_modules = Vec::new();
        for m in index.resolve(&lab.guest_modules)? {
            let data = modules::read_module(&config.inputs.modules_dir, &m.rel_path)?;
            guest_modules.push((m.name.clone(), data));
        }
        let guest = guest_initramfs(
            read_input("busybox", &config.inputs.busybox)?,
            guest_modules,
        )?;
        a.add(
            &format!("{LAB_DIR}/guest-initramfs.cpio.zst"),
            Node::File {
                mode: 0o644,
                data: guest,
            },
        )?;
    }

    let release = format!(
        "kernel={}\nkernel_package={}\nimage_builder={}\n",
        config.inputs.kernel_version,
        config.inputs.kernel_package,
        env!("CARGO_PKG_VERSION")
    );
    for (path, text) in crate::etc::FILES {
        a.add(
            path,
            Node::File {
                mode: 0o644,
                data: text.as_bytes().to_vec(),
            },
        )?;
    }
    a.add(
        "etc/appliance/release",
        Node::File {
            mode: 0o644,
            data: release.into_bytes(),
        },
    )?;
    let init = init_script::render(&InitConfig {
        modules: resolved,
        hugepages: config.hugepages,
        data_label: DATA_LABEL.into(),
        services: config.services.clone(),
    });
    a.add(
        "init",
        Node::File {
            mode: 0o755,
            data: init.into_bytes(),
        },
    )?;
    Ok(a)
}

/// What a build produced.
#[derive(Debug, Clone, Copy)]
pub struct ImageSummary {
    /// Number of archive entries.
    pub entries: usize,
    /// Size of the compressed image.
    pub compressed_bytes: u64,
    /// Size of the uncompressed archive.
    pub archive_bytes: u64,
}

/// zstd level: near the best ratio, and still a few seconds for the whole image.
pub const DEFAULT_ZSTD_LEVEL: i32 = 15;

/// Builds the image into `out` (written to a temporary file, then renamed into place).
pub fn build(config: &ImageConfig, out: &Path, level: i32) -> Result<ImageSummary, ImageError> {
    let archive = assemble(config)?;
    let plain = archive.write_newc(Vec::new())?;
    let packed = compress(&plain, level)?;
    let tmp = out.with_extension("partial");
    let output_err = |source| ImageError::Output {
        path: out.to_path_buf(),
        source,
    };
    fs::write(&tmp, &packed).map_err(output_err)?;
    fs::rename(&tmp, out).map_err(output_err)?;
    Ok(ImageSummary {
        entries: archive.entries().count(),
        compressed_bytes: packed.len() as u64,
        archive_bytes: plain.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::WantedModule;
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    /// A kernel tree, busybox and a binary of our own, all fake but in the real formats.
    fn fake_inputs(root: &Path) -> ImageConfig {
        let modules_dir = root.join("lib/modules/6.0-test");
        fs::create_dir_all(modules_dir.join("kernel")).unwrap();
        for name in ["a", "b"] {
            let mut xz = Vec::new();
            lzma_rs::xz_compress(&mut format!("ELF module {name}").as_bytes(), &mut xz).unwrap();
            fs::write(modules_dir.join(format!("kernel/{name}.ko.xz")), xz).unwrap();
        }
        fs::write(
            modules_dir.join("modules.dep"),
            "kernel/a.ko.xz: kernel/b.ko.xz\nkernel/b.ko.xz:\n",
        )
        .unwrap();
        fs::write(modules_dir.join("modules.softdep"), "").unwrap();
        fs::write(modules_dir.join("modules.alias"), "").unwrap();
        for b in crate::binaries::APPLIANCE_BINARIES {
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::write(root.join("bin").join(b.bin), format!("{} binary", b.bin)).unwrap();
        }
        for (file, data) in [
            ("busybox", "busybox binary"),
            ("profiles/x.toml", "sku = \"x\"\n"),
        ] {
            fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            fs::write(root.join(file), data).unwrap();
        }
        ImageConfig {
            inputs: LabInputs {
                kernel_version: "6.0-test".into(),
                kernel_package: "linux-image-test 1".into(),
                vmlinuz: root.join("busybox"),
                modules_dir,
                busybox: root.join("busybox"),
                qemu: root.join("busybox"),
                mkfs_ext4: root.join("busybox"),
            },
            modules: vec![WantedModule {
                name: "a",
                may_fail: false,
                cpu_flag: None,
            }],
            binaries: crate::binaries::APPLIANCE_BINARIES.to_vec(),
            bin_dir: root.join("bin"),
            profiles_dir: Some(root.join("profiles")),
            hugepages: 8,
            services: vec![],
            lab: None,
        }
    }

    fn touch_all(dir: &Path, when: SystemTime) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                touch_all(&path, when);
            } else {
                fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
        }
    }

    #[test]
    fn two_builds_of_the_same_inputs_are_identical_whatever_the_file_times() {
        let dir = tempfile::tempdir().unwrap();
        let config = fake_inputs(dir.path());
        let (one, two) = (dir.path().join("one.img"), dir.path().join("two.img"));
        build(&config, &one, 3).unwrap();
        touch_all(
            dir.path(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        );
        build(&config, &two, 3).unwrap();
        assert_eq!(fs::read(&one).unwrap(), fs::read(&two).unwrap());
    }

    #[test]
    fn the_lab_image_adds_tests_the_guest_kernel_and_its_initramfs() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = fake_inputs(dir.path());
        assert!(
            !assemble(&config)
                .unwrap()
                .entries()
                .any(|(p, _)| p.starts_with(LAB_DIR))
        );
        config.lab = Some(LabExtras {
            tests: vec![("sriov-lab_igb".into(), dir.path().join("bin/hw-test"))],
            host_programs: vec![HostProgram {
                dest: "usr/lib/hostd-lab/bin/ip".into(),
                source: dir.path().join("busybox"),
                libraries: vec![dir.path().join("bin/hw-test")],
            }],
            guest_modules: vec![WantedModule {
                name: "b",
                may_fail: false,
                cpu_flag: None,
            }],
        });
        let archive = assemble(&config).unwrap();
        let files: BTreeMap<&str, &Node> =
            archive.entries().map(|(p, n)| (p.as_str(), n)).collect();
        assert!(matches!(
            files["usr/lib/hostd-lab/tests/sriov-lab_igb"],
            Node::File { mode: 0o755, .. }
        ));
        assert!(files.contains_key("usr/lib/hostd-lab/vmlinuz"));
        assert!(matches!(
            files["usr/lib/hostd-lab/bin/ip"],
            Node::File { mode: 0o755, .. }
        ));
        let library = dir.path().join("bin/hw-test");
        let library = library.to_string_lossy();
        assert!(
            files.contains_key(library.trim_start_matches('/')),
            "the host program's library"
        );
        let Node::File { data, .. } = files["usr/lib/hostd-lab/guest-initramfs.cpio.zst"] else {
            panic!()
        };
        let guest =
            String::from_utf8_lossy(&zstd::decode_all(data.as_slice()).unwrap()).into_owned();
        assert!(
            guest.contains("lib/modules/b.ko") && guest.contains("$B insmod /lib/modules/b.ko")
        );
        assert!(
            guest.contains(GUEST_INIT_LINE) && guest.contains("bin/busybox"),
            "{guest}"
        );
    }

    #[test]
    fn the_image_holds_decompressed_modules_in_dependency_order() {
        let dir = tempfile::tempdir().unwrap();
        let archive = assemble(&fake_inputs(dir.path())).unwrap();
        let files: BTreeMap<&str, &Node> =
            archive.entries().map(|(p, n)| (p.as_str(), n)).collect();
        assert_eq!(
            files["lib/modules/a.ko"],
            &Node::File {
                mode: 0o644,
                data: b"ELF module a".to_vec()
            }
        );
        assert!(
            files.contains_key("usr/bin/hw-test")
                && files.contains_key("etc/hw-test/profiles/x.toml")
        );
        let Node::File { data, mode } = files["init"] else {
            panic!("init is not a file")
        };
        assert_eq!(*mode, 0o755);
        let init = String::from_utf8_lossy(data);
        assert!(
            init.find("load_module b required").unwrap()
                < init.find("load_module a required").unwrap(),
            "{init}"
        );
    }
}
