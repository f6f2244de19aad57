//! Link arguments for the guest binary (not for the library or its host unit tests): no C
//! runtime, a static non-PIE image laid out by linker.ld.

use std::env;
use std::path::PathBuf;

fn main() -> Result<(), env::VarError> {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let script = dir.join("linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    let args = [
        // No crt1.o / libc: boot.rs is the entry.
        "-nostartfiles".to_string(),
        "-nostdlib".to_string(),
        // An ET_EXEC at the addresses of the linker script; `-static` also makes the compiler
        // driver drop the `-pie` that rustc asks for on this target.
        "-static".to_string(),
        "-no-pie".to_string(),
        format!("-Wl,-T,{}", script.display()),
        // linux-loader requires PT_LOAD alignment of 2 MiB (see linker.ld).
        "-Wl,-z,max-page-size=0x200000".to_string(),
        "-Wl,--build-id=none".to_string(),
    ];
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    Ok(())
}
