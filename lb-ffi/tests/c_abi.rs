//! The C ABI from C: each program under `tests/c/` is compiled with the system C compiler (C99,
//! `-Wall -Wextra -Werror -pedantic`), linked against `liblb_ffi.a`, and run; it must exit 0 and
//! print its sections' names. Where the toolchain supports it, each is built and run once more under
//! AddressSanitizer + UndefinedBehaviorSanitizer (leak checking on: every instance is freed).
//!
//! The programs build their frames byte by byte in C (with their own checksums) and check the bytes
//! the library hands back: see `tests/c/lbtest.h`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn c_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c")
}

/// Builds `tests/c/<name>.c`, runs it with `args`, and checks that it printed `ok <section>` for
/// every section in order, then the check count; again under the sanitizers where they work.
fn run_c_program(name: &str, args: &[&str], sections: &[&str]) {
    let dir = scratch(name);
    let src = c_dir().join(format!("{name}.c"));
    let mut builds = vec![(dir.join(name), false)];
    if sanitizers_work() {
        builds.push((dir.join(format!("{name}-asan")), true));
    }
    for (exe, sanitize) in builds {
        compile(&src, &exe, if sanitize { SANITIZE } else { &[] });
        let mut cmd = Command::new(&exe);
        cmd.args(args);
        if sanitize {
            sanitized(&mut cmd);
        }
        let out = run_ok(&mut cmd);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        let expected: Vec<String> = sections.iter().map(|s| format!("ok {s}")).collect();
        assert_eq!(lines.len(), expected.len() + 1, "{}: {stdout}", exe.display());
        assert_eq!(lines[..expected.len()], expected[..], "{}", exe.display());
        let last = lines[expected.len()];
        let checks: u32 = last
            .strip_prefix("all ")
            .and_then(|r| r.strip_suffix(" checks passed"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: last line {last:?}", exe.display()));
        assert!(checks > 20, "{}: only {checks} checks", exe.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("runtime error"), "{}: {stderr}", exe.display());
    }
}

#[test]
fn c_mux_encapsulates_steers_probes_updates_expires() {
    run_c_program(
        "mux",
        &[],
        &[
            "syn_to_vip_is_encapsulated",
            "same_flow_same_host",
            "no_vip_is_dropped",
            "burst",
            "counters",
            "new_flows_spread",
            "probes",
            "update",
            "expire",
        ],
    );
}

#[test]
fn c_host_agent_delivers_what_the_mux_sends() {
    run_c_program(
        "host",
        &[],
        &[
            "vxlan_from_mux_is_delivered_dnated",
            "response_goes_back_through_the_mux",
            "mux_relays_the_response",
            "host_drops",
            "backend_connection_is_snated",
            "host_counters",
            "host_roles",
        ],
    );
}

#[test]
fn c_error_paths() {
    run_c_program(
        "errors",
        &[env!("CARGO_PKG_VERSION")],
        &[
            "static_strings",
            "null_arguments",
            "bad_json",
            "bad_config",
            "update_errors",
            "frames_outside_buffers",
            "probe_errors",
        ],
    );
}

/// `lb.h` alone compiles as strict C99 and, where a C++ compiler is installed, as C++11; and its
/// constants have the values the library uses.
#[test]
fn header_compiles_standalone() {
    let dir = scratch("header");
    let src = dir.join("only_header.c");
    std::fs::write(
        &src,
        "#include \"lb.h\"\n\
         _Static_assert(LB_ROLE_MUX == 1 && LB_ROLE_HOST == 2, \"roles\");\n\
         _Static_assert(LB_DIRECTION_AUTO == 0 && LB_DIRECTION_FROM_FABRIC == 1, \"dirs\");\n\
         _Static_assert(LB_DIRECTION_FROM_BACKEND == 2, \"dirs\");\n\
         _Static_assert(LB_RESULT_OK == 0 && LB_RESULT_NULL_ARGUMENT == 7000, \"results\");\n\
         _Static_assert(LB_RESULT_PANIC == 7005 && LB_RESULT_POISONED == 7006, \"results\");\n\
         _Static_assert(sizeof(lb_verdict) == 12 && sizeof(lb_frame) == 4 * sizeof(size_t), \"layouts\");\n\
         int main(void) { return lb_version() == 0; }\n",
    )
    .unwrap();
    // C11 for _Static_assert; the header itself is checked as C99 by the other programs.
    let mut cmd = Command::new(cc());
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .arg(&src);
    run_ok(&mut cmd);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    if Command::new(&cxx).arg("--version").output().is_ok_and(|o| o.status.success()) {
        let cpp = dir.join("only_header.cpp");
        std::fs::write(&cpp, "#include \"lb.h\"\nint main() { lb_instance_free(nullptr); return LB_ROLE_MUX - 1; }\n")
            .unwrap();
        let mut cmd = Command::new(&cxx);
        cmd.args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
            .arg(root().join("include"))
            .arg(&cpp);
        run_ok(&mut cmd);
    } else {
        eprintln!("note: no C++ compiler ({cxx}): the header's C++ mode is not checked");
    }
}

/// `lb-ffi/lb.pc.in`, filled in for a prefix holding `include/lb.h` and `lib/liblb_ffi.a`, gives
/// `pkg-config` the flags to build a program against the library (skipped without pkg-config).
#[test]
fn pkg_config_file_builds_a_program() {
    if !Command::new("pkg-config").arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("note: no pkg-config: lb.pc is not checked");
        return;
    }
    let dir = scratch("pkg-config");
    let prefix = dir.join("prefix");
    std::fs::create_dir_all(prefix.join("include")).unwrap();
    std::fs::create_dir_all(prefix.join("lib/pkgconfig")).unwrap();
    std::fs::copy(root().join("include/lb.h"), prefix.join("include/lb.h")).unwrap();
    std::fs::copy(staticlib(), prefix.join("lib/liblb_ffi.a")).unwrap();
    let template = std::fs::read_to_string(root().join("lb-ffi/lb.pc.in")).unwrap();
    let pc = template.replace("@PREFIX@", prefix.to_str().unwrap()).replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    assert!(!pc.contains('@'), "unfilled placeholder in lb.pc.in:\n{pc}");
    std::fs::write(prefix.join("lib/pkgconfig/lb.pc"), pc).unwrap();
    let query = |args: &[&str]| -> Vec<String> {
        let mut cmd = Command::new("pkg-config");
        cmd.args(args).env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"));
        let out = run_ok(&mut cmd);
        String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(query(&["--modversion", "lb"]), [env!("CARGO_PKG_VERSION")]);
    let flags = query(&["--cflags", "--libs", "--static", "lb"]);
    let src = dir.join("app.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <string.h>\n#include <lb.h>\n\
         int main(void) {\n\
           lb_instance *i = NULL;\n\
           char err[128];\n\
           lb_result r = lb_instance_new(\"{}\", 2, &i, err, sizeof err);\n\
           printf(\"%s %u %s\\n\", lb_version(), (unsigned)r, lb_result_name(r));\n\
           return r == LB_RESULT_BAD_JSON && i == NULL && strlen(err) > 0 ? 0 : 1;\n\
         }\n",
    )
    .unwrap();
    let exe = dir.join("app");
    let mut cmd = Command::new(cc());
    cmd.args(C_FLAGS).arg(&src).args(&flags).arg("-o").arg(&exe);
    run_ok(&mut cmd);
    let out = run_ok(&mut Command::new(&exe));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{} 7001 not UTF-8 or not JSON of the expected shape\n", env!("CARGO_PKG_VERSION"))
    );
}
