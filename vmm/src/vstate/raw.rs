//! Serde for kvm-bindings structs as their exact bytes.
//!
//! kvm-bindings' own `serde` impls zero-fill a short blob and drop the tail of a long one, so
//! a truncated state file would restore zeroed registers without a word. These helpers
//! (`#[serde(with = "raw")]`, `#[serde(with = "raw::option")]`) refuse any blob whose length
//! is not exactly the struct's size. The layout is the kernel ABI's, which is stable.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Writes `value` as its bytes.
pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(value.as_bytes())
}

/// Reads a value from exactly `size_of::<T>()` bytes.
pub fn deserialize<'de, T: FromBytes, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    let bytes = d.deserialize_bytes(ExactBytes::<T>(PhantomData))?;
    T::read_from_bytes(&bytes).map_err(|_| D::Error::custom("blob size mismatch"))
}

struct ExactBytes<T>(PhantomData<T>);

impl<T> ExactBytes<T> {
    fn check<E: serde::de::Error>(len: usize) -> Result<(), E> {
        let want = std::mem::size_of::<T>();
        if len != want {
            return Err(E::custom(format_args!(
                "{} is {want} bytes, the state holds {len}",
                short_name::<T>()
            )));
        }
        Ok(())
    }
}

fn short_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

impl<'de, T> Visitor<'de> for ExactBytes<T> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} bytes of {}",
            std::mem::size_of::<T>(),
            short_name::<T>()
        )
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Self::check(v.len())?;
        Ok(v.to_vec())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let want = std::mem::size_of::<T>();
        let mut out = Vec::with_capacity(want);
        while let Some(b) = seq.next_element::<u8>()? {
            // Stop counting early: a huge sequence must not be buffered.
            if out.len() == want {
                return Err(A::Error::custom(format_args!(
                    "{} is {want} bytes, the state holds more",
                    short_name::<T>()
                )));
            }
            out.push(b);
        }
        Self::check(out.len())?;
        Ok(out)
    }
}

/// The same for an `Option`: `null` or the exact bytes.
pub mod option {
    use super::*;
    use serde::{Deserialize, Serialize};

    struct Ref<'a, T>(&'a T);

    impl<T: IntoBytes + Immutable> Serialize for Ref<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(self.0, s)
        }
    }

    #[derive(Deserialize)]
    struct Own<T: FromBytes>(#[serde(with = "super")] T);

    pub fn serialize<T: IntoBytes + Immutable, S: Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_ref().map(Ref).serialize(s)
    }

    pub fn deserialize<'de, T: FromBytes, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Ok(Option::<Own<T>>::deserialize(d)?.map(|o| o.0))
    }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{kvm_regs, kvm_xcrs};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Holder {
        #[serde(with = "super")]
        regs: kvm_regs,
        #[serde(with = "super::option")]
        xcrs: Option<kvm_xcrs>,
    }

    #[test]
    fn round_trips_through_json() {
        let h = Holder {
            regs: kvm_regs {
                rax: 0x1234,
                rip: 0xfff0,
                ..Default::default()
            },
            xcrs: Some(kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            }),
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), h);
        let none = Holder { xcrs: None, ..h };
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), none);
    }

    #[test]
    fn short_or_long_blob_is_refused_with_its_size() {
        let ok = serde_json::to_value(Holder {
            regs: kvm_regs::default(),
            xcrs: None,
        })
        .unwrap();
        for len in [0, 143, 145, 100_000] {
            let mut v = ok.clone();
            v["regs"] = serde_json::Value::from(vec![0u8; len]);
            let err = serde_json::from_value::<Holder>(v).unwrap_err().to_string();
            assert!(err.contains("kvm_regs is 144 bytes"), "{err}");
        }
    }
}
