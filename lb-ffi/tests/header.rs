//! `include/lb.h` is what cbindgen (pinned) generates from `src/lib.rs`: regenerate it here and
//! fail on any difference, so the committed header can never drift from the ABI.
//! `LB_BLESS_HEADER=1 cargo test -p lb-ffi --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn header_is_current() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = crate_dir.join("../include/lb.h");
    if std::env::var_os("LB_BLESS_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/lb.h is stale: run LB_BLESS_HEADER=1 cargo test -p lb-ffi --test header and commit it"
    );
}
