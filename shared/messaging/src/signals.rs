//! How background components (the consumer, say) tell readiness that
//! something is wrong, without knowing who watches.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// Conditions background components report (e.g. "a consumer holds no
/// partitions while its group has work"); readiness fails while any is bad.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    problems: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Signals {
    /// Reports `component` well.
    pub fn ok(&self, component: &str) {
        if let Ok(mut problems) = self.problems.lock() {
            problems.remove(component);
        }
    }

    /// Reports `component` unwell, with why.
    pub fn problem(&self, component: &str, why: impl Into<String>) {
        if let Ok(mut problems) = self.problems.lock() {
            problems.insert(component.to_owned(), why.into());
        }
    }

    /// The current problems, by component.
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems.lock().map(|p| p.clone()).unwrap_or_default()
    }
}
