//! What the user sees: the totals (`summary`) and what changed in each `--interval`
//! (`interval`), the event stream in one of three formats (`sink`), the SVG plot (`plot`) and
//! the flame graph (`flame`).
pub mod flame;
pub mod format;
pub mod interval;
pub mod losses;
pub mod plot;
pub mod sink;
pub mod summary;
