//! `initramfs --out <file>`: builds the appliance boot image from the lab inputs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use initramfs::binaries::{self, APPLIANCE_BINARIES};
use initramfs::image::{self, DEFAULT_HUGEPAGES, DEFAULT_ZSTD_LEVEL, ImageConfig, LabExtras};
use initramfs::inputs::{self, LabInputs};

/// Build the appliance boot image (zstd-compressed newc cpio).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where to write the image.
    #[arg(long)]
    out: PathBuf,
    /// The lab inputs manifest written by hw-tests/setup.sh.
    #[arg(long, default_value_os_t = inputs::default_manifest())]
    inputs: PathBuf,
    /// Take our binaries from this directory instead of building them.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Default number of 2 MiB hugepages init reserves (the kernel command line's
    /// `appliance.hugepages=<n>` overrides it at boot).
    #[arg(long, default_value_t = DEFAULT_HUGEPAGES)]
    hugepages: u32,
    /// Build the QEMU lab's image: add the lab tests (built static), a guest kernel and its
    /// initramfs under /usr/lib/hostd-lab.
    #[arg(long)]
    lab: bool,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("initramfs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let inputs = LabInputs::load(&args.inputs)?;
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => binaries::build_static(APPLIANCE_BINARIES)?,
    };
    let mut config = ImageConfig::appliance(inputs, bin_dir, args.hugepages);
    if args.lab {
        config.lab = Some(LabExtras::build()?);
    }
    let summary = image::build(&config, &args.out, args.level)?;
    println!(
        "{}: {} entries, {} KiB archive, {} KiB compressed (kernel {})",
        args.out.display(),
        summary.entries,
        summary.archive_bytes / 1024,
        summary.compressed_bytes / 1024,
        config.inputs.kernel_version
    );
    Ok(())
}
