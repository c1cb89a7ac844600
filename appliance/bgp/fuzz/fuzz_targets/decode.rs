//! `cargo +nightly fuzz run decode` (from appliance/bgp): feeds arbitrary bytes to the speaker's message
//! decoder, as a stream of messages the way a session reads them. Any panic, overflow or hang is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_bgp::{DecodeContext, decode};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses two- or four-octet AS numbers, which change how AS_PATH and AGGREGATOR parse.
    let (four_octet_as, mut rest) = match data.split_first() {
        Some((b, rest)) => (b & 1 == 1, rest),
        None => (true, data),
    };
    let ctx = DecodeContext { four_octet_as };
    while let Ok((_, used)) = decode(rest, &ctx) {
        match rest.get(used..) {
            Some(r) if used > 0 => rest = r,
            _ => panic!("decode consumed {used} of {} bytes", rest.len()),
        }
    }
});
