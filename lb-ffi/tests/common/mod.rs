//! Shared by the tests that compile C against the library (`c_abi`, `c_appliance`): where the static
//! library and the header are, how to compile and link a C program (plainly and under
//! AddressSanitizer + UndefinedBehaviorSanitizer), and how to run it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What `rustc --print native-static-libs` lists for a std staticlib on Linux: what a C program
/// linking `liblb_ffi.a` needs besides libc (glibc 2.34 and later merged most of them into libc, so
/// most are no-ops there; `-lgcc_s` provides the unwinder).
pub const NATIVE_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

/// The strict C flags every program is compiled with.
pub const C_FLAGS: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-g"];

/// The sanitizer flags (any report aborts the program, so a finding is a failed test).
pub const SANITIZE: &[&str] = &["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"];

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The C compiler: `$CC`, else `gcc`.
pub fn cc() -> String {
    std::env::var("CC").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "gcc".into())
}

/// A fresh scratch directory for `name` under cargo's per-target temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lb-ffi-c").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The static library cargo built for this test run.
///
/// Cargo builds a library target with every crate type it declares (`lib`, `staticlib`, `cdylib`)
/// in one rustc invocation, also when the library is only a dependency of an integration test, and
/// writes them next to the test executable (`target/<profile>/deps/`; `cargo build` also copies
/// them one directory up). So the `.a` beside this executable is the one built from the same sources
/// as the rlib this test links. If it is missing (another build layout), `cargo build -p lb-ffi`
/// with the same profile makes it.
pub fn staticlib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().unwrap();
        let profile_dir = deps.parent().unwrap();
        let name = "liblb_ffi.a";
        let candidates = [deps.join(name), profile_dir.join(name)];
        if let Some(found) = candidates.iter().find(|p| p.is_file()) {
            return found.clone();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "lb-ffi", "--lib"]).current_dir(root());
        // `target/debug` is the dev profile's directory; every other profile's is its own name.
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some(profile) => {
                cmd.args(["--profile", profile]);
            }
        }
        if let Some(target_dir) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let status = cmd.status().expect("run cargo build -p lb-ffi");
        assert!(status.success(), "cargo build -p lb-ffi failed");
        candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| panic!("no {name} beside {}", exe.display()))
    })
}

/// Compiles and links `source` into `out` with the strict flags, the header directory, `extra`
/// flags, and the static library. Panics with the compiler's output on failure.
pub fn compile(source: &Path, out: &Path, extra: &[&str]) {
    let mut cmd = Command::new(cc());
    cmd.args(C_FLAGS).args(extra).arg("-I").arg(root().join("include")).arg(source);
    cmd.arg(staticlib()).args(NATIVE_LIBS).arg("-o").arg(out);
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {} ({e}): install a C compiler", cc()));
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether the compiler can build and run a program with [`SANITIZE`] here (the runtime libraries
/// may be missing, or the sandbox may forbid what LeakSanitizer needs).
pub fn sanitizers_work() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let dir = scratch("sanitizer-probe");
        let src = dir.join("probe.c");
        std::fs::write(
            &src,
            "#include <stdlib.h>\nint main(void) { char *p = malloc(4); p[0] = 1; free(p); return 0; }\n",
        )
        .unwrap();
        let exe = dir.join("probe");
        let built = Command::new(cc()).args(SANITIZE).arg(&src).arg("-o").arg(&exe).output();
        let ok = matches!(built, Ok(ref o) if o.status.success())
            // Under a time limit: on some kernels (mmap_rnd_bits of 32) an older ASan runtime loops
            // on "DEADLYSIGNAL" instead of starting.
            && matches!(sanitized(Command::new("timeout").arg("20").arg(&exe)).output(), Ok(ref o) if o.status.success());
        if !ok {
            eprintln!(
                "note: {} cannot build or run -fsanitize=address,undefined programs here: skipping those runs",
                cc()
            );
        }
        ok
    })
}

/// `cmd` with the sanitizer options the tests run under.
pub fn sanitized(cmd: &mut Command) -> &mut Command {
    cmd.env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=86")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
}

/// Runs `cmd`, asserting exit status 0; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} exited with {}:\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}
