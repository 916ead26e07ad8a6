//! Build script. Without the `dpdk` feature it does nothing. With it, it binds the system DPDK:
//! `pkg-config libdpdk` gives the compiler flags (all of `--cflags`, including `-include
//! rte_config.h` and the `-march` DPDK was built for) and the libraries to link; bindgen turns
//! `src/dpdk/shim.h` (the DPDK headers plus the shim's declarations) into `$OUT_DIR/dpdk_sys.rs`;
//! cc compiles `src/dpdk/shim.c`, which wraps DPDK's `static inline` functions (bursts, mbuf
//! allocation, `rte_errno`, the lcore id, the TSC) as real functions Rust can call.
//!
//! Always, it compiles the AF_XDP port's XDP program (`bpf/steer.c`) with clang into
//! `$OUT_DIR/steer.o`, which `src/afxdp.rs` embeds (see [`xdp`]).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    xdp::build();
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

/// The XDP program: `clang -O2 -g -target bpf -I/usr/include/<multiarch> -c bpf/steer.c`. Without
/// clang (or when the compile fails) the crate still builds: a cargo warning says why, cfg
/// `lb_no_xdp` is set and the AF_XDP port refuses to start with that reason (`--live afpacket`
/// still works). `LB_XDP_REQUIRED=1` turns that into a build failure (release builds, CI).
mod xdp {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    const SRC: &str = "bpf/steer.c";

    /// Debian's multiarch include directory (`asm/types.h` lives there; `-target bpf` does not
    /// look in it by itself): `gcc -dumpmachine`, else the host's triple without its vendor.
    fn multiarch() -> String {
        if let Ok(out) = Command::new("gcc").arg("-dumpmachine").output() {
            let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !s.is_empty() {
                return s;
            }
        }
        let host = env::var("HOST").unwrap_or_default();
        host.replacen("-unknown-", "-", 1)
    }

    fn unavailable(reason: &str) {
        if env::var("LB_XDP_REQUIRED").is_ok_and(|v| v == "1") {
            eprintln!("lb-dpdk build: the XDP program cannot be built: {reason}");
            std::process::exit(1);
        }
        println!("cargo:warning=lb-dpdk: the AF_XDP port is left out ({reason}); install clang (Debian: apt-get install clang) or use `--live afpacket`");
        println!("cargo:rustc-cfg=lb_no_xdp");
        println!("cargo:rustc-env=LB_NO_XDP_REASON={}", reason.replace(['\n', '\r'], " "));
    }

    pub fn build() {
        println!("cargo::rustc-check-cfg=cfg(lb_no_xdp)");
        println!("cargo:rerun-if-changed={SRC}");
        println!("cargo:rerun-if-env-changed=CLANG");
        println!("cargo:rerun-if-env-changed=LB_XDP_REQUIRED");
        let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("steer.o");
        let include = format!("-I/usr/include/{}", multiarch());
        let run = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-target", "bpf", &include, "-c", SRC, "-o"])
            .arg(&out)
            .output();
        match run {
            Err(e) => unavailable(&format!("{clang} cannot be run: {e}")),
            Ok(o) if !o.status.success() => {
                let err = String::from_utf8_lossy(&o.stderr);
                let first = err.lines().find(|l| l.contains("error")).unwrap_or("no message");
                unavailable(&format!("{clang} failed on {SRC}: {first}"))
            }
            Ok(_) => {}
        }
    }
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    const SHIM_H: &str = "src/dpdk/shim.h";
    const SHIM_C: &str = "src/dpdk/shim.c";

    fn fail(msg: &str) -> ! {
        eprintln!("lb-dpdk build: {msg}");
        eprintln!("lb-dpdk build: the `dpdk` feature needs libdpdk-dev, pkg-config and libclang-dev");
        std::process::exit(1);
    }

    /// `pkg-config --cflags libdpdk`, word by word (the pkg-config crate keeps only `-I` and `-D`,
    /// and DPDK's flags also force-include `rte_config.h` and pick the target CPU).
    fn cflags() -> Vec<String> {
        let tool = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let out = Command::new(&tool)
            .args(["--cflags", "libdpdk"])
            .output()
            .unwrap_or_else(|e| fail(&format!("cannot run {tool}: {e}")));
        if !out.status.success() {
            fail(&format!("{tool} --cflags libdpdk: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }

    pub fn build() {
        for f in [SHIM_H, SHIM_C] {
            println!("cargo:rerun-if-changed={f}");
        }
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG");
        // Links the libraries (and checks the version: the shim uses the 21.11+ API).
        if let Err(e) = pkg_config::Config::new().atleast_version("21.11").probe("libdpdk") {
            fail(&e.to_string());
        }
        let flags = cflags();

        let mut cc = cc::Build::new();
        cc.file(SHIM_C).warnings(true).opt_level(3);
        for f in &flags {
            cc.flag(f);
        }
        // DPDK's per-lcore variables (the lcore id the mempool caches use, rte_errno) are thread
        // locals of librte_eal, which the program links at start-up: the initial-exec model reads
        // them without a __tls_get_addr call per mbuf freed or allocated.
        cc.flag("-ftls-model=initial-exec");
        cc.compile("lb_dpdk_shim");

        let bindings = bindgen::Builder::default()
            .header(SHIM_H)
            .clang_args(&flags)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .allowlist_function("lb_.*")
            .allowlist_function("rte_eal_(init|cleanup|remote_launch|mp_wait_lcore)")
            .allowlist_function("rte_(get_next_lcore|thread_register|thread_unregister|strerror|get_tsc_hz)")
            .allowlist_function("rte_eth_(dev_configure|dev_info_get|dev_adjust_nb_rx_tx_desc)")
            .allowlist_function("rte_eth_(rx_queue_setup|tx_queue_setup|dev_start|dev_stop|dev_close)")
            .allowlist_function("rte_eth_(dev_socket_id|dev_is_valid_port|dev_count_avail|promiscuous_enable)")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_function("rte_pktmbuf_pool_create|rte_mempool_free")
            .allowlist_var("RTE_PKTMBUF_HEADROOM|RTE_MAX_LCORE|RTE_MEMPOOL_CACHE_MAX_SIZE|SOCKET_ID_ANY")
            .allowlist_var("RTE_MBUF_F_INDIRECT|RTE_MBUF_F_EXTERNAL")
            .allowlist_type("rte_mbuf|rte_eth_conf|rte_eth_dev_info|rte_eth_stats|rte_eth_rx_mq_mode")
            .default_enum_style(bindgen::EnumVariation::Consts)
            .derive_default(true)
            .layout_tests(true)
            .generate_comments(false)
            .generate()
            .unwrap_or_else(|e| fail(&format!("bindgen: {e}")));
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
        bindings.write_to_file(out.join("dpdk_sys.rs")).unwrap_or_else(|e| fail(&format!("bindings: {e}")));
    }
}
