//! What the user sees: the totals (`summary`), the event stream in one of three formats
//! (`sink`) and the SVG plot (`plot`).
pub mod format;
pub mod losses;
pub mod plot;
pub mod sink;
pub mod summary;
