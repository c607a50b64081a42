//! Keys and identifiers derived from addresses and message ids, within AWS's limits.

use sha2::{Digest, Sha256};
use statefun_core::dedup::DedupKey;
use statefun_core::{Address, MessageId};

/// The state table's partition key of an address: the type name is length-prefixed so
/// no two addresses share a key, whatever their ids contain.
pub fn partition_key(address: &Address) -> String {
    let t = address.function_type.as_str();
    format!("{}:{t}/{}", t.len(), address.id)
}

/// The key of a cancellation record for `(sender, token)`.
pub fn cancel_key(sender: &Address, token: &str) -> String {
    let pk = partition_key(sender);
    format!("cancel:{}:{pk}:{token}", pk.len())
}

/// The key of a dedup entry spilled out of `address`'s record: readable when it fits
/// DynamoDB's 2,048-byte partition key comfortably, else hashed.
pub fn dedup_key(address: &Address, key: &DedupKey) -> String {
    let pk = partition_key(address);
    let plain = format!("dedup:{}:{pk}:{}", pk.len(), key.to_key_string());
    if plain.len() <= 1024 {
        plain
    } else {
        format!("dedup:{}", hashed(&plain))
    }
}

fn sqs_safe(s: &str) -> bool {
    s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

fn hashed(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("h:{hex}")
}

/// FIFO `MessageGroupId`: the address, so each address is its own ordered group.
/// Used as is when SQS allows it (≤ 128 printable ASCII characters), else hashed.
pub fn group_id(address: &Address) -> String {
    let key = partition_key(address);
    if sqs_safe(&key) { key } else { hashed(&key) }
}

/// FIFO `MessageDeduplicationId` of a message id (same rule).
pub fn dedup_id(id: &str) -> String {
    if sqs_safe(id) {
        id.to_string()
    } else {
        hashed(id)
    }
}

/// The dedup id of a message.
pub fn message_dedup_id(id: &MessageId) -> String {
    dedup_id(&id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use statefun_core::TypeName;

    #[test]
    fn partition_keys_do_not_collide_across_type_and_id() {
        let a = Address::new(TypeName::from_static("x/y"), "z/1");
        let b = Address::new(TypeName::from_static("x/y/z"), "1");
        assert_ne!(partition_key(&a), partition_key(&b));
    }

    #[test]
    fn ids_outside_sqs_limits_are_hashed() {
        let plain = Address::new(TypeName::from_static("example/person"), "Bob");
        assert_eq!(group_id(&plain), "14:example/person/Bob");
        let spaced = Address::new(TypeName::from_static("example/person"), "Bob Smith");
        assert!(group_id(&spaced).starts_with("h:"));
        assert_eq!(dedup_id(&"x".repeat(200)).len(), 66);
    }
}
