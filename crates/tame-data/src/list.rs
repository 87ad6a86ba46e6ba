//! ILSVRC-style list files: one `relative/path label` per line.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::DataError;

/// Number of ILSVRC classes: labels are in `0..NUM_CLASSES`.
pub const NUM_CLASSES: u32 = 1000;

/// The extension given to a listed path that has none (the reference lists omit it).
pub const DEFAULT_EXTENSION: &str = "jpg";

/// One line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Image path relative to the image directory (with an extension).
    pub path: PathBuf,
    /// Class index in `0..NUM_CLASSES`.
    pub label: u32,
    /// 1-based line number in the list file, for error messages.
    pub line: usize,
}

/// A parsed list file: its entries in file order and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    source: PathBuf,
    entries: Vec<ListEntry>,
}

impl ImageList {
    /// Reads and parses a list file.
    ///
    /// Only a regular file is read. Blank lines are ignored; a malformed line or a label outside `0..NUM_CLASSES` is an
    /// error naming the file and the line. Image files are not checked here (that happens
    /// when they are loaded, and the error still names this file and line).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let read = |source| DataError::ListRead {
            list: path.to_path_buf(),
            source,
        };
        // A FIFO would block and a device such as /dev/zero would be read without end.
        if !fs::metadata(path).map_err(read)?.is_file() {
            return Err(DataError::ListNotRegularFile {
                list: path.to_path_buf(),
            });
        }
        let text = fs::read_to_string(path).map_err(read)?;
        Self::parse(&text, path)
    }

    /// Parses list text; `source` is the name used in error messages.
    pub fn parse(text: &str, source: impl AsRef<Path>) -> Result<Self, DataError> {
        let source = source.as_ref().to_path_buf();
        let mut entries = Vec::new();
        // Editors on Windows start UTF-8 files with a byte-order mark; it is no path.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let mut fields = raw.split_whitespace();
            let Some(path) = fields.next() else {
                continue;
            };
            let bad = |problem: String| DataError::ListLine {
                list: source.clone(),
                line,
                problem,
            };
            let label = fields
                .next()
                .ok_or_else(|| bad(format!("expected `path label`, found only `{path}`")))?;
            if let Some(extra) = fields.next() {
                return Err(bad(format!(
                    "expected `path label`, found an extra field `{extra}`"
                )));
            }
            let label: u32 = label
                .parse()
                .map_err(|_| bad(format!("label `{label}` is not a non-negative integer")))?;
            if label >= NUM_CLASSES {
                return Err(bad(format!(
                    "label {label} is outside 0..{}",
                    NUM_CLASSES - 1
                )));
            }
            let mut path = PathBuf::from(path);
            if path.extension().is_none() {
                path.set_extension(DEFAULT_EXTENSION);
            }
            entries.push(ListEntry { path, label, line });
        }
        Ok(Self { source, entries })
    }

    /// A list made in memory (for example of the images found in a folder); `source` names
    /// it in error messages, and each entry's `line` is its position there.
    pub fn from_entries(source: impl Into<PathBuf>, entries: Vec<ListEntry>) -> Self {
        Self {
            source: source.into(),
            entries,
        }
    }

    /// The list file these entries came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The entries in file order.
    pub fn entries(&self) -> &[ListEntry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl ListEntry {
    /// The image file of this entry under `image_dir`.
    pub fn resolve(&self, image_dir: &Path) -> PathBuf {
        image_dir.join(&self.path)
    }

    /// Whether the path stays inside the image folder: relative and without `..` (judged on
    /// the text alone: a link inside the folder may still lead out of it).
    pub fn stays_inside(&self) -> bool {
        self.path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> (usize, String) {
        match ImageList::parse(text, "l.txt") {
            Err(DataError::ListLine {
                list,
                line,
                problem,
            }) => {
                assert_eq!(list, Path::new("l.txt"));
                (line, problem)
            }
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn a_byte_order_mark_does_not_cost_the_first_line() {
        let list = ImageList::parse("\u{feff}a/x.jpg 3\nb/y.jpg 4\n", "l.txt").unwrap();
        assert_eq!(list.entries().len(), 2);
        assert_eq!(list.entries()[0].path, std::path::Path::new("a/x.jpg"));
    }

    #[test]
    fn parses_paths_labels_and_line_numbers() {
        let list = ImageList::parse("a/b.JPEG 3\n\n  \nc 999 \r\nd.png\t0\n", "l.txt").unwrap();
        let got: Vec<_> = list
            .entries()
            .iter()
            .map(|e| (e.path.to_str().unwrap(), e.label, e.line))
            .collect();
        assert_eq!(
            got,
            [("a/b.JPEG", 3, 1), ("c.jpg", 999, 4), ("d.png", 0, 5)]
        );
        assert_eq!(list.source(), Path::new("l.txt"));
        assert_eq!(
            list.entries()[1].resolve(Path::new("/img")),
            Path::new("/img/c.jpg")
        );
    }

    #[test]
    fn empty_text_is_an_empty_list() {
        assert!(ImageList::parse("\n \n", "l.txt").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let (line, p) = problem("a.jpg 1\nb.jpg\n");
        assert_eq!(line, 2);
        assert!(p.contains("found only `b.jpg`"), "{p}");

        let (line, p) = problem("a.jpg 1\n\nb.jpg 2 3\n");
        assert_eq!(line, 3);
        assert!(p.contains("extra field `3`"), "{p}");

        let (line, p) = problem("a.jpg x\n");
        assert_eq!(line, 1);
        assert!(p.contains("label `x`"), "{p}");

        let (_, p) = problem("a.jpg -1\n");
        assert!(p.contains("label `-1`"), "{p}");
    }

    #[test]
    fn labels_outside_the_classes_are_rejected() {
        let (line, p) = problem("a.jpg 0\nb.jpg 1000\n");
        assert_eq!(line, 2);
        assert!(p.contains("label 1000 is outside 0..999"), "{p}");
    }

    #[test]
    fn error_message_names_file_and_line() {
        let err = ImageList::parse("a.jpg 1\nb.jpg 1000\n", "lists/train.txt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "lists/train.txt:2: label 1000 is outside 0..999"
        );
    }

    /// A folder or a device is no list: /dev/zero would be read until memory ran out.
    #[test]
    fn a_list_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = vec![dir.path().to_path_buf()];
        if cfg!(unix) {
            paths.push(PathBuf::from("/dev/null"));
        }
        for path in paths {
            let err = ImageList::read(&path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{}: not a regular file", path.display())
            );
        }
    }

    #[test]
    fn paths_that_leave_the_image_folder_are_told_apart() {
        let list = ImageList::parse(
            "a/b.jpg 1\n./c.jpg 1\n../d.jpg 1\na/../../e.jpg 1\n/etc/passwd 1\na/../f.jpg 1\n",
            "l.txt",
        )
        .unwrap();
        let inside: Vec<bool> = list.entries().iter().map(ListEntry::stays_inside).collect();
        assert_eq!(inside, [true, true, false, false, false, false]);
    }

    #[test]
    fn unreadable_file_names_it() {
        let err = ImageList::read("/nonexistent/list.txt").unwrap_err();
        assert!(matches!(err, DataError::ListRead { .. }));
        assert!(err.to_string().contains("/nonexistent/list.txt"), "{err}");
    }
}
