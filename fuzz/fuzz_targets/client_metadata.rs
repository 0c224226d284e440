//! The client-metadata answer parser: `clients::source::parse_answer` (what
//! the directory does with a 2xx answer of the metadata source) and
//! `clients::meta::from_json` behind it.
//!
//! Input: one byte choosing the `response_pointer` and field pointers (IBM
//! Verify names, or nested ones), then the answer body.
//!
//! Invariants: no panic; an answer that is found is JSON with an object at
//! the pointer, the record carries the client id that was asked for, its
//! `enabled` and entitlements are exactly what the object says, an absent
//! or null `ipFilterOp` means no filter and a set one fails closed for an
//! unknown client address; a disabled client admits no one.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use portcullis::clients::source::parse_answer;
use portcullis::clients::{FieldPointers, IpFilter, Lookup};
use serde_json::Value;

const CLIENT_ID: &str = "client-1";
const RESPONSE_POINTERS: [&str; 4] = ["", "/apiClients/0", "/data", "/a~1b/~0c"];

fn fields(nested: bool) -> FieldPointers {
    if nested {
        FieldPointers {
            enabled: "/status/active".into(),
            entitlements: "/grants/roles".into(),
            ip_filter_op: "/network/op".into(),
            ip_filters: "/network/list".into(),
            id: "/uuid".into(),
            client_id: "/app/id".into(),
        }
    } else {
        FieldPointers::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let pointer = RESPONSE_POINTERS[usize::from(selector & 3)];
    let f = fields(selector & 4 != 0);
    let Lookup::Found(meta) = parse_answer(CLIENT_ID, body, pointer, &f) else {
        return;
    };
    let doc: Value = serde_json::from_slice(body).expect("a found client came from JSON");
    let object = doc
        .pointer(pointer)
        .expect("a found client is at the pointer");
    assert!(object.is_object());
    assert_eq!(&*meta.client_id, CLIENT_ID);
    // The record names the client asked for (not a UUID: exactly).
    assert_eq!(
        object.pointer(&f.client_id),
        Some(&Value::String(CLIENT_ID.into()))
    );
    assert_eq!(object.pointer(&f.enabled), Some(&Value::Bool(meta.enabled)));
    if !meta.enabled {
        // A readable `enabled: false` is a disabled client, whatever else
        // the record says: nothing of it is used.
        assert!(meta.entitlements.is_empty());
        assert_eq!(meta.ip_filter, IpFilter::Off);
        for ip in [None, Some(IpAddr::from([127, 0, 0, 1]))] {
            assert!(meta.admit(ip).is_err());
        }
        return;
    }
    match object.pointer(&f.entitlements) {
        None | Some(Value::Null) => assert!(meta.entitlements.is_empty()),
        Some(Value::Array(items)) => {
            let names: Vec<&str> = items.iter().map(|v| v.as_str().expect("string")).collect();
            assert_eq!(*meta.entitlements, *names);
        }
        Some(other) => panic!("entitlements {other} accepted"),
    }
    let op = object.pointer(&f.ip_filter_op);
    let filtered = !matches!(op, None | Some(Value::Null));
    assert_eq!(filtered, meta.ip_filter != IpFilter::Off);
    if filtered {
        assert!(
            meta.admit(None).is_err(),
            "a filtered client admits an unknown address"
        );
    }
    if !meta.enabled {
        assert!(meta.admit(None).is_err());
    }
    let addresses: [IpAddr; 4] = [
        [127, 0, 0, 1].into(),
        [10, 1, 2, 3].into(),
        "::1".parse().expect("ip"),
        "::ffff:10.1.2.3".parse().expect("ip"),
    ];
    for ip in addresses {
        let admitted = meta.admit(Some(ip)).is_ok();
        assert!(!admitted || meta.enabled);
        if let (IpFilter::Allow(list), true) = (&meta.ip_filter, admitted) {
            assert!(list.contains(ip));
        }
        if let (IpFilter::Deny(list), true) = (&meta.ip_filter, admitted) {
            assert!(!list.contains(ip));
        }
    }
    assert!(meta.names().any(|n| n == CLIENT_ID));
});
