//! The envelope decoder and the batch framing take bytes from the network: whatever they get,
//! they must return (never panic), and what decodes must survive an encode/decode round trip.
#![no_main]

use _core::{batch, codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = codec::decode(data) {
        let pairs: Vec<(&str, &str)> = env.header.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let again = codec::encode(&env.topic, pairs.iter().copied(), &env.body);
        let back = codec::decode(&again).expect("what we encode decodes");
        assert_eq!(back.topic, env.topic);
        assert_eq!(back.body, env.body);
    }
    for line in batch::split(data) {
        let _ = codec::decode(line);
    }
    let _ = batch::decode_response(data);
});
