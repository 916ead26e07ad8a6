//! Drop reasons are declared once per data path with [`drop_reasons!`]: the enum, its count, every
//! reason in counter order and each one's name (plain, and NUL-terminated for the C ABI) come from
//! one list, so that counters, reports, metrics and the C ABI cannot disagree.

/// Declares a data path's drop reasons: `drop_reasons! { /// doc  pub enum Name, COUNT { /// doc
/// Variant = 0 => "name", ... } }`. The discriminants must run 0, 1, 2... in order (checked at
/// compile time), as they index the counters.
macro_rules! drop_reasons {
    (
        $(#[$meta:meta])*
        pub enum $name:ident, $count:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $index:literal => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $index, )+
        }

        #[doc = concat!("Number of [`", stringify!($name), "`]s.")]
        pub const $count: usize = [$($index),+].len();

        impl $name {
            /// Every reason, in counter order (a reason's counter is `drops[r as usize]`).
            pub const ALL: [$name; $count] = [$($name::$variant),+];

            /// Every reason's name, in counter order.
            pub const NAMES: [&'static str; $count] = [$($label),+];

            const C_NAMES: [&'static core::ffi::CStr; $count] = [$(
                match core::ffi::CStr::from_bytes_with_nul(concat!($label, "\0").as_bytes()) {
                    Ok(name) => name,
                    Err(_) => panic!("a drop reason's name holds a NUL"),
                }
            ),+];

            /// The reason's name in reports and metrics, NUL-terminated for the C ABI.
            pub fn c_name(self) -> &'static core::ffi::CStr {
                Self::C_NAMES[self as usize]
            }

            /// The reason's name in reports and metrics.
            pub fn name(self) -> &'static str {
                Self::NAMES[self as usize]
            }
        }

        const _: () = {
            let mut i = 0;
            while i < $count {
                assert!($name::ALL[i] as usize == i, "drop reasons must be numbered 0, 1, 2... in order");
                i += 1;
            }
        };
    };
}

pub(crate) use drop_reasons;
