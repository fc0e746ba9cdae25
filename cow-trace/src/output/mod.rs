//! What the user sees: the totals (`summary`), the event stream in one of three formats
//! (`sink`), the SVG plot (`plot`) and the flame graph (`flame`).
pub mod flame;
pub mod format;
pub mod losses;
pub mod plot;
pub mod sink;
pub mod summary;
