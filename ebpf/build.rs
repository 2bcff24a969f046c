//! Compiles the XDP program (`src/runnel_filter.c`) with clang into `$OUT_DIR/runnel_filter.o`,
//! which `lib.rs` embeds with `aya::include_bytes_aligned!`.
//!
//! `-mcpu=v3` enables the BPF atomics the program uses (compare-and-exchange, exchange,
//! fetch-add; kernel 5.12) and 32-bit ALU/jumps (5.1). `-g` produces the BTF that carries the
//! map definitions. The include path is the host's multiarch directory, where Debian keeps
//! `asm/types.h` for `<linux/bpf.h>`. Set `CLANG` to use another clang binary.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const SOURCE: &str = "src/runnel_filter.c";
const SETUP_HINT: &str = "run scripts/setup.sh (apt-get install -y clang libbpf-dev)";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let object = out_dir.join("runnel_filter.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let include = multiarch_include_dir();

    let output = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Wextra"])
        .arg(format!("-I{}", include.display()))
        .arg("-c")
        .arg(SOURCE)
        .arg("-o")
        .arg(&object)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            fail(&format!("clang not found: {SETUP_HINT}"));
        }
        Err(error) => fail(&format!("could not run {clang} ({error}): {SETUP_HINT}")),
    };
    // Compiler warnings would otherwise vanish into the build script's captured output.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning={line}");
    }
    if !output.status.success() {
        fail(&format!(
            "clang failed to compile {SOURCE} ({}); its messages are above. If <linux/bpf.h> or <bpf/bpf_helpers.h> \
             is missing: {SETUP_HINT}",
            output.status
        ));
    }
}

/// `/usr/include/<arch>-linux-gnu` for the machine running the build (the host's headers
/// only supply type definitions to the BPF target, so the host's are right).
fn multiarch_include_dir() -> PathBuf {
    let host = env::var("HOST").expect("cargo sets HOST for build scripts");
    let arch = host.split('-').next().unwrap_or("x86_64");
    let dir = Path::new("/usr/include").join(format!("{arch}-linux-gnu"));
    if !dir.join("asm/types.h").exists() {
        fail(&format!("{}/asm/types.h not found (kernel headers for <linux/bpf.h>): {SETUP_HINT}", dir.display()));
    }
    dir
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1);
}
