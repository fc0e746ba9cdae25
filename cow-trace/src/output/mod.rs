//! What the user sees: the totals (`summary`) and what changed in each `--interval`
//! (`interval`), the event stream in one of three formats (`sink`) and the SVG plot (`plot`).
pub mod format;
pub mod interval;
pub mod losses;
pub mod plot;
pub mod sink;
pub mod summary;
