//! Ids both services derive from each other: a booking's payment intent id
//! is its booking id with the random bits of its last eight bytes flipped by
//! a fixed mask. Both are UUIDv7 (the timestamp, version and variant bits are
//! untouched), and a payment that arrives before its intent was created can
//! find the booking that names it without any index (decisions.md: "not
//! ready" is not "not found").

use uuid::Uuid;

/// Flips the last eight bytes' random bits; the variant bits of byte 8 stay.
const MASK: [u8; 8] = [0x2a, 0x5f, 0x1c, 0x3e, 0x9b, 0x4d, 0x7e, 0x61];

fn flip(id: Uuid) -> Uuid {
    let mut bytes = *id.as_bytes();
    for (byte, mask) in bytes[8..].iter_mut().zip(MASK) {
        *byte ^= mask;
    }
    Uuid::from_bytes(bytes)
}

/// The payment intent id of the booking `booking_id`.
pub fn payment_intent_of(booking_id: Uuid) -> Uuid {
    flip(booking_id)
}

/// The booking a payment intent id belongs to, if the id is a UUID.
pub fn booking_of(payment_intent_id: &str) -> Option<String> {
    Uuid::parse_str(payment_intent_id).ok().map(|id| flip(id).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_id_leads_back_to_its_booking_and_stays_a_uuid_v7() {
        let booking = Uuid::now_v7();
        let intent = payment_intent_of(booking);
        assert_ne!(intent, booking);
        assert_eq!(intent.get_version_num(), 7);
        assert_eq!(intent.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(booking_of(&intent.to_string()), Some(booking.to_string()));
        assert_eq!(booking_of("not-a-uuid"), None);
    }
}
