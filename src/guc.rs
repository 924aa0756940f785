//! Settings (`SET possync.x = ...` per session, or in postgresql.conf).

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

static REJECT_NEGATIVE_ON_HAND: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"possync.reject_negative_on_hand",
        c"Reject events that would take on-hand below zero",
        c"By default the shelf is the truth: negative on-hand posts and raises a negative_on_hand exception. \
          When on, such an event is rejected and kept in possync.exception instead.",
        &REJECT_NEGATIVE_ON_HAND,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn reject_negative_on_hand() -> bool {
    REJECT_NEGATIVE_ON_HAND.get()
}
