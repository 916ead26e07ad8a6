//! Arbitrary bytes as an Ethernet frame: `parse_flow_key` must never panic, and whatever it accepts
//! must agree with every checked view over the same bytes (see `lb_fuzz::check_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lb_fuzz::check_frame(data, 0);
});
