//! Flame graphs of the faults by user stack: `--flamegraph` (an interactive SVG, drawn by
//! inferno) and `--folded` (the same stacks, one `root;frame;...;leaf count` line each).
//!
//! The session feeds `StackSample`s from either mode (one streamed fault, or the kernel's
//! count for one pid x class x window x stack); where the frames come from does not matter
//! here. Each process is a tower whose root frame names it (`redis-server (1234)`), with the
//! snapshot window the faults fell in (`while child 1240 ran`) as the frame above it.
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use inferno::flamegraph::{
    self, Palette,
    color::{BasicPalette, Color, PaletteMap},
};

use crate::{
    cli::FlameFaults,
    event::{CowOutcome, FaultClass},
    failure::{Status, failure},
    output::format::human_bytes,
    page,
};

/// The frame drawn where a fault's stack was not taken (the kernel could not capture it, or it
/// could not be read back): its faults still count, so the graph adds up to the run's totals.
pub const NO_STACK_FRAME: &str = "[stack not taken]";

/// Faults with one user stack.
pub struct StackSample<'a> {
    pub pid: u32,
    /// The live child whose snapshot window the faults fell in.
    pub window: Option<u32>,
    /// The symbolized frames, innermost first (`function+0xoff (module)` or a hex address, as
    /// the Enricher writes them); empty when the stack was not taken.
    pub frames: &'a [String],
    pub faults: u64,
}

/// The faults of one run, summed per process, window and stack.
pub struct FlameGraph {
    which: FlameFaults,
    /// (pid, window or 0) -> the stack folded root first (`main;f;g`) -> faults.
    stacks: BTreeMap<(u32, u32), HashMap<String, u64>>,
}

impl FlameGraph {
    pub fn new(which: FlameFaults) -> FlameGraph {
        FlameGraph {
            which,
            stacks: BTreeMap::new(),
        }
    }

    /// Whether faults of `class` are drawn: completed faults (as the summary's FAULTS column
    /// counts them), with `copies` only those that copied a page (its COPIED column).
    pub fn counts(&self, class: FaultClass) -> bool {
        match self.which {
            FlameFaults::All => class.is_completed(),
            FlameFaults::Copies => {
                class.is_completed()
                    && class.is_write_protect()
                    && class.cow_outcome() == Some(CowOutcome::Copied)
            }
        }
    }

    /// Adds a sample, whose class the caller checked with [`FlameGraph::counts`].
    pub fn add(&mut self, sample: &StackSample<'_>) {
        if sample.faults == 0 {
            return;
        }
        let folded = fold(sample.frames);
        *self
            .stacks
            .entry((sample.pid, sample.window.unwrap_or(0)))
            .or_default()
            .entry(folded)
            .or_default() += sample.faults;
    }

    /// All the faults drawn.
    pub fn total(&self) -> u64 {
        self.stacks.values().flat_map(HashMap::values).sum()
    }

    /// The folded lines, sorted: `comm (pid);[while child N ran;]frame;...;leaf count`, the
    /// root first. `comms` names the processes.
    pub fn folded_lines(&self, comms: &BTreeMap<u32, String>) -> Vec<String> {
        let mut lines = Vec::new();
        for (&(pid, window), stacks) in &self.stacks {
            let mut prefix = process_frame(pid, comms.get(&pid).map(String::as_str));
            if window != 0 {
                prefix.push(';');
                prefix.push_str(&window_frame(window));
            }
            for (stack, count) in stacks {
                lines.push(format!("{prefix};{stack} {count}"));
            }
        }
        lines.sort_unstable();
        lines
    }

    /// The folded lines into `out`.
    pub fn write_folded(
        &self,
        out: &mut dyn Write,
        comms: &BTreeMap<u32, String>,
    ) -> io::Result<()> {
        for line in self.folded_lines(comms) {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }

    /// The interactive SVG into `out`; `traced` says what was traced, for the subtitle.
    pub fn write_svg(
        &self,
        out: &mut dyn Write,
        comms: &BTreeMap<u32, String>,
        traced: &str,
    ) -> anyhow::Result<()> {
        let total = self.total();
        let (title, subtitle, count_name, factor) = match self.which {
            FlameFaults::Copies => (
                "Copy-on-write copies by user stack",
                format!(
                    "{traced}: {total} pages copied ({}); widths count pages",
                    human_bytes(total * page::size())
                ),
                "bytes copied",
                // Tooltips give bytes: inferno multiplies the counts (pages) by the factor.
                page::size() as f64,
            ),
            FlameFaults::All => (
                "Page faults by user stack",
                format!("{traced}: {total} faults; widths count faults"),
                "faults",
                1.0,
            ),
        };
        if total == 0 {
            return write_empty_svg(
                out,
                title,
                &format!("{traced}: nothing to draw, no {}", self.nothing()),
            );
        }
        let mut options = flamegraph::Options::default();
        options.title = title.to_string();
        options.subtitle = Some(subtitle);
        options.count_name = count_name.to_string();
        options.factor = factor;
        options.colors = Palette::Basic(BasicPalette::Mem);
        // The same function gets the same colour in every graph, so two runs compare by eye.
        options.hash = true;
        options.deterministic = true;
        let lines = self.folded_lines(comms);
        let mut colours = self.frame_colours(comms);
        options.palette_map = Some(&mut colours);
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
            .context("drawing the flame graph")
    }

    /// Frames that are not code stand out from the functions' greens and blues: processes in
    /// grey-blue, snapshot windows in orange, missing stacks (and the whole) in grey.
    fn frame_colours(&self, comms: &BTreeMap<u32, String>) -> PaletteMap {
        const PROCESS: Color = Color {
            r: 160,
            g: 180,
            b: 210,
        };
        const WINDOW: Color = Color {
            r: 250,
            g: 150,
            b: 50,
        };
        const MISSING: Color = Color {
            r: 200,
            g: 200,
            b: 200,
        };
        let mut colours = PaletteMap::default();
        // inferno's bottom frame, "all", is named "".
        colours.insert("", MISSING);
        colours.insert(NO_STACK_FRAME, MISSING);
        for &(pid, window) in self.stacks.keys() {
            colours.insert(
                process_frame(pid, comms.get(&pid).map(String::as_str)),
                PROCESS,
            );
            if window != 0 {
                colours.insert(window_frame(window), WINDOW);
            }
        }
        colours
    }

    fn nothing(&self) -> &'static str {
        match self.which {
            FlameFaults::Copies => "copy-on-write copy was traced",
            FlameFaults::All => "fault was traced",
        }
    }
}

/// `comm (pid)`, the root frame of a process's tower.
fn process_frame(pid: u32, comm: Option<&str>) -> String {
    match comm {
        Some(comm) => format!("{} ({pid})", sanitize(comm)),
        None => format!("pid {pid}"),
    }
}

/// `while child N ran`, the frame of a snapshot window above its process.
fn window_frame(child: u32) -> String {
    format!("while child {child} ran")
}

/// Frames innermost first -> `outer;...;inner`, each frame its function's name.
fn fold(frames: &[String]) -> String {
    if frames.is_empty() {
        return NO_STACK_FRAME.to_string();
    }
    let mut folded = String::new();
    for (i, frame) in frames.iter().rev().enumerate() {
        if i > 0 {
            folded.push(';');
        }
        folded.push_str(&sanitize(function_name(frame)));
    }
    folded
}

/// The function of a frame as the Enricher writes it: `name+0x1f (/lib/module.so)` -> `name`,
/// so that every call site in a function merges into one frame, as perf's flame graphs show
/// them. An unsymbolized frame (a hex address) stays as it is.
pub fn function_name(frame: &str) -> &str {
    let name = match frame.strip_suffix(')').and_then(|f| f.rsplit_once(" (")) {
        Some((name, _module)) => name,
        None => frame,
    };
    match name.rsplit_once("+0x") {
        Some((function, offset))
            if !function.is_empty()
                && !offset.is_empty()
                && offset.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            function
        }
        _ => name,
    }
}

/// `;` separates frames and a line ends with ` count`: a name keeps neither `;` nor a line
/// break (Rust's `[u8; 4]` becomes `[u8, 4]`).
fn sanitize(name: &str) -> Cow<'_, str> {
    if name.contains([';', '\n', '\r']) {
        Cow::Owned(name.replace(';', ",").replace(['\n', '\r'], " "))
    } else {
        Cow::Borrowed(name)
    }
}

/// inferno refuses to draw nothing; this says so in a valid SVG of the same size.
fn write_empty_svg(out: &mut dyn Write, title: &str, message: &str) -> anyhow::Result<()> {
    write!(
        out,
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            r#"<svg version="1.1" width="1200" height="80" viewBox="0 0 1200 80" xmlns="http://www.w3.org/2000/svg">"#,
            r#"<text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>"#,
            r#"<text x="600" y="54" text-anchor="middle" font-family="Verdana" font-size="12">{}</text>"#,
            "</svg>\n"
        ),
        xml_escape(title),
        xml_escape(message)
    )
    .context("writing the flame graph")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The flame graph's files, opened (created) before tracing starts, so a bad path fails at
/// once, as `-o` does; written at the end.
pub struct FlameFiles {
    pub which: FlameFaults,
    svg: Option<OpenFile>,
    folded: Option<OpenFile>,
}

struct OpenFile {
    path: PathBuf,
    file: File,
}

impl OpenFile {
    fn create(path: &Path, option: &str) -> anyhow::Result<OpenFile> {
        let file = File::create(path).map_err(|e| {
            failure(
                Status::Output,
                format!(
                    "cannot write to {}: {e}: choose another file with {option}",
                    path.display()
                ),
            )
        })?;
        Ok(OpenFile {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write(
        self,
        what: &str,
        draw: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let path = self.path;
        let mut out = BufWriter::new(self.file);
        draw(&mut out)
            .and_then(|()| out.flush().context("flushing"))
            .map_err(|e| {
                failure(
                    Status::Output,
                    format!("writing the {what} {} failed: {e:#}", path.display()),
                )
            })?;
        note!("cow-trace: {what} written to {}", path.display());
        Ok(())
    }
}

impl FlameFiles {
    /// Creates the files asked for; None when neither was.
    pub fn open(
        svg: Option<&Path>,
        folded: Option<&Path>,
        which: FlameFaults,
    ) -> anyhow::Result<Option<FlameFiles>> {
        if svg.is_none() && folded.is_none() {
            return Ok(None);
        }
        Ok(Some(FlameFiles {
            which,
            svg: svg
                .map(|path| OpenFile::create(path, "--flamegraph"))
                .transpose()?,
            folded: folded
                .map(|path| OpenFile::create(path, "--folded"))
                .transpose()?,
        }))
    }

    /// Writes the graph into the files; `traced` says what was traced (the SVG's subtitle).
    pub fn write(
        self,
        graph: &FlameGraph,
        comms: &BTreeMap<u32, String>,
        traced: &str,
    ) -> anyhow::Result<()> {
        if let Some(folded) = self.folded {
            folded.write("folded stacks", |out| {
                graph.write_folded(out, comms).context("writing")
            })?;
        }
        if let Some(svg) = self.svg {
            svg.write("flame graph", |out| graph.write_svg(out, comms, traced))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cow_trace_common::FaultClass;

    fn frames(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn frames_keep_the_function_name() {
        assert_eq!(function_name("main+0x87 (/usr/bin/cow)"), "main");
        assert_eq!(function_name("_sdsnewlen+0x245"), "_sdsnewlen");
        assert_eq!(function_name("0x7f3a12345678"), "0x7f3a12345678");
        assert_eq!(
            function_name("std::vector<int>::push_back(int const&)+0x1c (/usr/lib/libx.so)"),
            "std::vector<int>::push_back(int const&)"
        );
        // A name that merely looks like an offset is kept.
        assert_eq!(function_name("odd+0xZZ"), "odd+0xZZ");
    }

    #[test]
    fn stacks_fold_root_first_under_process_and_window() {
        let mut graph = FlameGraph::new(FlameFaults::Copies);
        let stack = frames(&["leaf+0x1 (/a)", "mid+0x2 (/a)", "main+0x3 (/a)"]);
        let other_site = frames(&["leaf+0x9 (/a)", "mid+0x2 (/a)", "main+0x3 (/a)"]);
        for (window, frames, faults) in [
            (Some(12), &stack, 3),
            (Some(12), &other_site, 2),
            (None, &stack, 1),
        ] {
            graph.add(&StackSample {
                pid: 10,
                window,
                frames,
                faults,
            });
        }
        graph.add(&StackSample {
            pid: 11,
            window: None,
            frames: &[],
            faults: 4,
        });
        let comms = BTreeMap::from([(10, "redis-server".to_string())]);
        assert_eq!(
            graph.folded_lines(&comms),
            [
                "pid 11;[stack not taken] 4",
                "redis-server (10);main;mid;leaf 1",
                "redis-server (10);while child 12 ran;main;mid;leaf 5",
            ]
        );
        assert_eq!(graph.total(), 10);
    }

    #[test]
    fn separators_never_leak_into_names() {
        let mut graph = FlameGraph::new(FlameFaults::All);
        graph.add(&StackSample {
            pid: 1,
            window: None,
            frames: &frames(&["<[u8; 4] as Foo>::bar+0x1 (/x)"]),
            faults: 1,
        });
        let comms = BTreeMap::from([(1, "a;b".to_string())]);
        assert_eq!(
            graph.folded_lines(&comms),
            ["a,b (1);<[u8, 4] as Foo>::bar 1"]
        );
    }

    #[test]
    fn copies_count_only_completed_copying_faults() {
        use cow_trace_common::class::{COPIED, COPY_KNOWN, READ, RETRY, WRITE, WRITE_PROTECT};
        let copies = FlameGraph::new(FlameFaults::Copies);
        let all = FlameGraph::new(FlameFaults::All);
        let copied = FaultClass::from_bits(WRITE | WRITE_PROTECT | COPY_KNOWN | COPIED);
        let reused = FaultClass::from_bits(WRITE | WRITE_PROTECT | COPY_KNOWN);
        let retried = FaultClass::from_bits(copied.bits() | RETRY);
        let read = FaultClass::from_bits(READ);
        assert!(copies.counts(copied) && all.counts(copied));
        assert!(!copies.counts(reused) && all.counts(reused));
        assert!(!copies.counts(read) && all.counts(read));
        assert!(!copies.counts(retried) && !all.counts(retried));
    }

    #[test]
    fn the_svg_is_xml_with_byte_tooltips() {
        let mut graph = FlameGraph::new(FlameFaults::Copies);
        graph.add(&StackSample {
            pid: 7,
            window: Some(8),
            frames: &frames(&["write_page+0x4 (/w)", "main+0x1 (/w)"]),
            faults: 3,
        });
        let comms = BTreeMap::from([(7, "writer".to_string())]);
        let mut svg = Vec::new();
        graph.write_svg(&mut svg, &comms, "pid 7").unwrap();
        let text = String::from_utf8(svg).unwrap();
        // inferno writes the SVG 1.1 DOCTYPE.
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let document = roxmltree::Document::parse_with_options(&text, options).unwrap();
        let titles: Vec<&str> = document
            .descendants()
            .filter(|n| n.has_tag_name("title"))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            titles.contains(&"writer (7) (12,288 bytes copied, 100.00%)"),
            "{titles:?}"
        );
        assert!(titles.iter().any(|t| t.starts_with("while child 8 ran (")));
    }

    #[test]
    fn an_empty_graph_is_still_an_svg() {
        let graph = FlameGraph::new(FlameFaults::Copies);
        let mut svg = Vec::new();
        graph
            .write_svg(&mut svg, &BTreeMap::new(), "pid 1 & <children>")
            .unwrap();
        let text = String::from_utf8(svg).unwrap();
        let document = roxmltree::Document::parse(&text).unwrap();
        assert!(text.contains("no copy-on-write copy was traced"), "{text}");
        assert_eq!(document.root_element().tag_name().name(), "svg");
    }
}
