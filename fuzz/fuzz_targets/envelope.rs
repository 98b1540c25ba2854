//! A relay's and a gateway's first look at the bytes of an envelope, and a relay's first
//! look at a login.
//!
//! Checks that no input panics, and that whatever decodes encodes back to exactly the
//! bytes it came from (one encoding per envelope and per login: what is signed is what
//! travels).
#![no_main]

use libfuzzer_sys::fuzz_target;
use trunkline_envelope::{Envelope, Login};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::decode(data) {
        let again = e.encode().expect("a decoded envelope encodes");
        assert_eq!(again, data, "decoding is not one to one");
    }
    if let Ok(l) = Login::decode(data) {
        let again = l.encode().expect("a decoded login encodes");
        assert_eq!(again, data, "a login decodes one way only");
    }
});
