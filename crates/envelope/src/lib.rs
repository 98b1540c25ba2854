//! Envelopes between twins, as RMB (threefoldtech's Reliable Message Bus) carries them
//! through relays that route them without being able to read them, made sound where the
//! original is weak (docs/relays.md):
//!
//! - [`identity`]: one 32-byte seed gives a twin its ed25519 signing key and the x25519 key
//!   it agrees on encryption keys with; a twin publishes one public key.
//! - [`envelope`]: the envelope and its one encoding, signed whole with a domain
//!   separator (RMB signs an MD5 of its fields run together).
//! - [`seal`]: end-to-end encryption, XChaCha20-Poly1305 under a key only the two twins
//!   can make, bound to the envelope's source, destination and uid.
//! - [`replay`]: each signed envelope is taken once until it expires (RMB takes a replay
//!   again until its TTL ends).
//! - [`login`]: logging in to a relay, by signing its challenge.
//! - [`twin`]: a twin's signed claim to the registry (its key and relays).
//!
//! Pure: no I/O, no runtime. The relay and the gateway (`trunkline peer`) use it.
//!
//! ```
//! use trunkline_envelope::{Address, Envelope, Identity, Kind, Payload, ReplayWindow};
//! let (alice, bob) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
//! let (a, b) = (Address::twin(41), Address::twin(42));
//! let ad = trunkline_envelope::seal::associated_data(&a, &b, "u1");
//! let cipher = trunkline_envelope::seal::seal(b"hi", &alice, &bob.public(), &ad).unwrap();
//! let mut env = Envelope::new("u1", a, b, Kind::Request { command: "echo".into() },
//!     Payload::Cipher(cipher), 1_800_000_000, 60);
//! env.sign(&alice).unwrap();
//! let wire = env.encode().unwrap();
//!
//! let got = Envelope::decode(&wire).unwrap();
//! got.verify(&alice.public()).unwrap();
//! got.check_time(1_800_000_010).unwrap();
//! let mut window = ReplayWindow::new(1000);
//! window.check(&got, 1_800_000_010).unwrap();
//! assert!(window.check(&got, 1_800_000_011).is_err(), "the same envelope again");
//! let ad = trunkline_envelope::seal::associated_data(&got.source, &got.destination, &got.uid);
//! let plain = trunkline_envelope::seal::open(got.payload.bytes(), &bob, &alice.public(), &ad).unwrap();
//! assert_eq!(plain, b"hi");
//! ```

pub mod envelope;
pub mod identity;
pub mod login;
pub mod replay;
pub mod seal;
pub mod twin;

pub use envelope::{Address, Envelope, EnvelopeError, Kind, Payload};
pub use identity::{Identity, KeyError, PublicKey};
pub use login::{Login, LoginError, Who};
pub use replay::ReplayWindow;
pub use twin::{ClaimError, TwinClaim};
