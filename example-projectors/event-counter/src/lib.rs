//! Counts events: in total, per event type, and per stream category.
//!
//! View keys (values are JSON numbers):
//! - `total`
//! - `type/<EventType>`
//! - `category/<category>` (the stream name before its first `-`)

use prism_guest::{Error, Event, Projector, View};

struct EventCounter;

impl Projector for EventCounter {
    const NAME: &'static str = "event-counter";
    const SCHEMA_VERSION: u32 = 1;

    fn apply(event: &Event<'_>, view: &mut View) -> Result<(), Error> {
        let increment = |count: &mut u64| *count += 1;
        view.update("total", increment)?;
        view.update(("type/", event.event_type), increment)?;
        view.update(("category/", event.category()), increment)
    }
}

prism_guest::export_projector!(EventCounter);
