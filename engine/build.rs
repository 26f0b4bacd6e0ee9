//! Compiles the XDP steering program (../bpf/*.bpf.c) into OUT_DIR when the `xdp` feature
//! is on; `io::xdp::loader` embeds the object with `include_bytes!`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CLANG");
    if env::var_os("CARGO_FEATURE_XDP").is_none() {
        return;
    }
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../bpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&bpf_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", bpf_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    sources.sort();
    for path in &sources {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for src in sources
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
    {
        compile(src, &bpf_dir, &out_dir);
    }
}

fn compile(src: &Path, include: &Path, out_dir: &Path) {
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let stem = src
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".bpf.c"))
        .expect("filtered on .bpf.c");
    let out = out_dir.join(format!("{stem}.bpf.o"));
    let arch_include = format!(
        "/usr/include/{}-linux-gnu",
        env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I{arch_include}"))
        .arg(format!("-I{}", include.display()))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed ({s}) compiling {}", src.display()),
        Err(e) => panic!(
            "cannot run `{clang}` to build the XDP program {} ({e}). Install clang, llvm, libbpf-dev \
             (apt-get install clang llvm libbpf-dev libelf-dev zlib1g-dev), set CLANG=/path/to/clang, \
             or build without the `xdp` feature (--no-default-features)",
            src.display()
        ),
    }
}
