//! Numbers written for people: durations as perf prints them, byte counts in binary units;
//! text padded to the columns a terminal gives it.
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// The columns `text` takes on a terminal: two for an East Asian wide character (a comm or a
/// file name in Chinese), one for most others.
pub fn display_width(text: &str) -> usize {
    if text.is_ascii() {
        text.len()
    } else {
        text.width()
    }
}

/// `text`, then spaces up to `.1` columns: a table's left-aligned cell.
pub struct Left<'a>(pub &'a str, pub usize);

impl std::fmt::Display for Left<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)?;
        for _ in display_width(self.0)..self.1 {
            f.write_str(" ")?;
        }
        Ok(())
    }
}

/// Keeps the end of a long text (of a path, the file name matters most) within `width`
/// columns: "...x86_64-linux-gnu/libc.so.6".
pub fn shorten_left(text: &str, width: usize) -> String {
    if display_width(text) <= width {
        return text.to_string();
    }
    let room = width.saturating_sub(3);
    let mut start = text.len();
    let mut taken = 0;
    for (at, c) in text.char_indices().rev() {
        taken += c.width().unwrap_or(0);
        if taken > room {
            break;
        }
        start = at;
    }
    format!("...{}", &text[start..])
}

/// 1234 ns -> "1.2us", as perf and bpftrace print durations.
pub fn human_ns(ns: u64) -> String {
    HumanNs(ns).to_string()
}

/// A duration written as perf and bpftrace print them, without allocating.
#[derive(Clone, Copy)]
pub struct HumanNs(pub u64);

impl HumanNs {
    /// The duration written into `buffer`, as [`Display`](std::fmt::Display) writes it.
    pub fn text(self, buffer: &mut [u8; 32]) -> &str {
        use std::io::Write as _;
        let ns = self.0;
        let mut cursor = std::io::Cursor::new(&mut buffer[..]);
        // 32 bytes hold any of these: written cannot fail.
        let _ = match ns {
            0..1_000 => write!(cursor, "{ns}ns"),
            1_000..1_000_000 => write!(cursor, "{:.1}us", ns as f64 / 1e3),
            1_000_000..1_000_000_000 => write!(cursor, "{:.1}ms", ns as f64 / 1e6),
            _ => write!(cursor, "{:.2}s", ns as f64 / 1e9),
        };
        let len = cursor.position() as usize;
        std::str::from_utf8(&buffer[..len]).unwrap_or("?")
    }
}

impl std::fmt::Display for HumanNs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Formatted into a stack buffer first, so that width and alignment apply to the whole.
        f.pad(self.text(&mut [0; 32]))
    }
}

/// The largest binary unit not above `bytes` (B below 1 KiB): (its size, its name).
pub fn byte_unit(bytes: u64) -> (u64, &'static str) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    (1 << (10 * unit), UNITS[unit])
}

/// 512 -> "512 B", 65536 -> "64.0 KiB".
pub fn human_bytes(bytes: u64) -> String {
    match byte_unit(bytes) {
        (1, _) => format!("{bytes} B"),
        (unit, name) => format!("{:.1} {name}", bytes as f64 / unit as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_perf() {
        assert_eq!(human_ns(999), "999ns");
        assert_eq!(human_ns(1500), "1.5us");
        assert_eq!(human_ns(2_500_000), "2.5ms");
        assert_eq!(human_ns(3_000_000_000), "3.00s");
    }

    #[test]
    fn bytes_read_like_humans_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(65536), "64.0 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(byte_unit(1023), (1, "B"));
        assert_eq!(byte_unit(4 << 20), (1 << 20, "MiB"));
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
