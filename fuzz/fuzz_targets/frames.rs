//! The frame decoder takes bytes from the network: whatever it gets, it must return (never
//! panic, never allocate what a length merely announces), decode the same whether the bytes come
//! in one buffer or split in two, and what decodes must survive an encode/decode round trip.
#![no_main]

use _core::frames;
use bytes::{Buf, Bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = frames::decode(data);
    // the same bytes split over two receive buffers decode the same
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let split = Bytes::copy_from_slice(&data[..cut]).chain(Bytes::copy_from_slice(&data[cut..]));
    assert_eq!(frames::decode(split), whole);
    if let Ok(Ok(envs)) = whole.map(|all| all.into_iter().collect::<Result<Vec<_>, _>>()) {
        let mut again = Vec::new();
        for e in &envs {
            again.extend(frames::encode(&e.topic, e.header.iter().map(|(k, v)| (k.as_str(), v.as_str())), &e.body_bytes()));
        }
        assert_eq!(again, data, "a valid frames body has one encoding");
        let back: Vec<_> = frames::decode(&again[..]).expect("what we encode decodes").into_iter().map(|f| f.expect("and each frame")).collect();
        assert_eq!(back, envs);
    }
});
