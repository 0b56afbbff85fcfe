//! What a job's output files are: one [`OutputKind`] per file, named by the
//! file's place under the attempt's prefix. The worker labels what it uploads,
//! the coordinator checks and keeps the label, the dashboard picks by it.

use serde::{Deserialize, Serialize};

/// The kind of one output file (its name on the wire and in the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// `output.png`: the stylised image.
    Image,
    /// `trace.jsonl`: the loss per iteration.
    Trace,
    /// `metadata.json`: parameters, timings, device.
    Metadata,
    /// `animation.gif`: the progress animation.
    Animation,
    /// `snapshots/…`: intermediate images.
    Snapshot,
    /// `flow.safetensors`: optical flow between two frames (videos).
    Flow,
    /// `frames/…`: decoded or stylised frames (videos).
    Frame,
    /// `….mp4`: an assembled clip.
    Video,
    /// `print.png` (16-bit) or `print.tiff`: the print master a job asked for.
    Print,
}

impl OutputKind {
    pub const ALL: [OutputKind; 9] = [
        OutputKind::Image,
        OutputKind::Trace,
        OutputKind::Metadata,
        OutputKind::Animation,
        OutputKind::Snapshot,
        OutputKind::Flow,
        OutputKind::Frame,
        OutputKind::Video,
        OutputKind::Print,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Image => "image",
            OutputKind::Trace => "trace",
            OutputKind::Metadata => "metadata",
            OutputKind::Animation => "animation",
            OutputKind::Snapshot => "snapshot",
            OutputKind::Flow => "flow",
            OutputKind::Frame => "frame",
            OutputKind::Video => "video",
            OutputKind::Print => "print",
        }
    }

    pub fn parse(name: &str) -> Option<OutputKind> {
        OutputKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Every kind's name, for messages.
    pub fn names() -> String {
        OutputKind::ALL.map(OutputKind::as_str).join(", ")
    }

    /// The kind of the file at `name` under an attempt's prefix.
    pub fn of_file(name: &str) -> OutputKind {
        match name {
            "output.png" => OutputKind::Image,
            "trace.jsonl" => OutputKind::Trace,
            "metadata.json" => OutputKind::Metadata,
            "animation.gif" => OutputKind::Animation,
            "flow.safetensors" => OutputKind::Flow,
            crate::print::PRINT_PNG | crate::print::PRINT_TIFF => OutputKind::Print,
            n if n.starts_with("frames/") => OutputKind::Frame,
            n if n.ends_with(".mp4") => OutputKind::Video,
            _ => OutputKind::Snapshot,
        }
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_one_name_and_files_map_to_kinds() {
        for kind in OutputKind::ALL {
            assert_eq!(OutputKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert_eq!(OutputKind::parse("Image"), None);
        assert_eq!(OutputKind::of_file("output.png"), OutputKind::Image);
        assert_eq!(OutputKind::of_file("snapshots/0010.png"), OutputKind::Snapshot);
        assert_eq!(OutputKind::of_file("frames/000001.png"), OutputKind::Frame);
        assert_eq!(OutputKind::of_file("clip-stylised.mp4"), OutputKind::Video);
        assert_eq!(OutputKind::of_file("print.tiff"), OutputKind::Print);
        assert_eq!(OutputKind::of_file("print.png"), OutputKind::Print);
    }
}
