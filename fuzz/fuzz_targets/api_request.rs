//! Fuzzes the control API's HTTP request codec and JSON bodies: any bytes
//! on the socket must give a request or an HTTP error, never a panic, and
//! any body must parse or be refused.
#![no_main]

use api::http::read_request;
use api::types::{from_json_object, VmResizeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = read_request(&mut std::io::BufReader::new(data)) {
        assert!(req.body.len() <= api::http::MAX_BODY_BYTES);
        assert!(req.path.starts_with('/'));
        let _ = from_json_object::<VmResizeRequest>(&req.body);
    }
    // Bodies on their own, whatever the codec thinks of the bytes.
    if let Ok(r) = from_json_object::<VmResizeRequest>(data) {
        let back = serde_json::to_vec(&r).unwrap();
        assert_eq!(from_json_object::<VmResizeRequest>(&back).unwrap(), r);
    }
});
