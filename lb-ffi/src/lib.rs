//! C ABI over `lb-core`. This crate is a shell until the lb-ffi issue: it only exports the version.

/// The library version as a NUL-terminated string, owned by the library (never free it).
#[no_mangle]
pub extern "C" fn lb_version() -> *const core::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
