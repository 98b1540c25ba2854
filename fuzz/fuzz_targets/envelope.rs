//! A relay's and a gateway's first look at the bytes of an envelope.
//!
//! Checks that no input panics, and that whatever decodes encodes back to exactly the
//! bytes it came from (one encoding per envelope: what is signed is what travels).
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkline_envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::decode(data) {
        let again = e.encode().expect("a decoded envelope encodes");
        assert_eq!(again, data, "decoding is not one to one");
    }
});
