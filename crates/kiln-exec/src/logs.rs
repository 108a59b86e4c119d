//! Secret masking and the per-step log stream: raw process output in, masked whole-line
//! chunks out as [`ExecEvent::Log`].
//!
//! Masking works on whole lines so that a secret is never split across two chunks: partial
//! lines are held back until their newline arrives (or the step ends, or a held line grows
//! past [`MAX_CHUNK`]). `::add-mask::VALUE` lines register VALUE and are not printed, as
//! GitHub's runner does. Not here: storing logs (the caller's job) or prefixing lines.

use tokio::sync::mpsc;

use crate::ExecEvent;

/// Largest chunk sent in one [`ExecEvent::Log`]; a line longer than this is sent in pieces.
pub const MAX_CHUNK: usize = 64 * 1024;

const ADD_MASK: &[u8] = b"::add-mask::";

/// Replaces every secret value with `***`; longer values are replaced first so that a secret
/// containing another is masked whole.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    /// Non-empty, distinct, longest first.
    values: Vec<String>,
}

impl Masker {
    pub fn new(values: &[String]) -> Self {
        let mut m = Self::default();
        for v in values {
            m.add(v);
        }
        m
    }

    /// Registers one more value; empty strings are ignored (they would mask everything).
    pub fn add(&mut self, value: &str) {
        // A secret read from a file usually ends in a newline that never appears in output
        // next to the value; mask what is printed.
        let value = value.trim_end_matches(['\r', '\n']);
        if value.is_empty() || self.values.iter().any(|v| v == value) {
            return;
        }
        let at = self
            .values
            .iter()
            .position(|v| v.len() < value.len())
            .unwrap_or(self.values.len());
        self.values.insert(at, value.to_owned());
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Masks text.
    pub fn mask_str(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    /// Masks raw bytes (process output need not be UTF-8).
    pub fn mask_bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        for v in &self.values {
            out = replace_bytes(&out, v.as_bytes(), b"***");
        }
        out
    }
}

fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let Some(first) = find(hay, needle) else {
        return hay.to_vec();
    };
    let mut out = Vec::with_capacity(hay.len());
    out.extend_from_slice(&hay[..first]);
    out.extend_from_slice(with);
    let mut rest = &hay[first + needle.len()..];
    while let Some(i) = find(rest, needle) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(with);
        rest = &rest[i + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Masks `text` with `masks` (empty strings ignored, longer values first).
pub fn mask(text: &str, masks: &[String]) -> String {
    Masker::new(masks).mask_str(text)
}

/// One step's log stream: buffers partial lines, handles `::add-mask::`, masks, and sends
/// chunks on the job's event channel under the step's index.
pub(crate) struct LogSink<'a> {
    index: u32,
    events: &'a mpsc::Sender<ExecEvent>,
    masker: &'a mut Masker,
    /// Bytes after the last newline seen, waiting for the rest of their line.
    partial: Vec<u8>,
}

impl<'a> LogSink<'a> {
    pub(crate) fn new(
        index: u32,
        events: &'a mpsc::Sender<ExecEvent>,
        masker: &'a mut Masker,
    ) -> Self {
        Self {
            index,
            events,
            masker,
            partial: Vec::new(),
        }
    }

    /// Feeds raw output.
    pub(crate) async fn push(&mut self, data: &[u8]) {
        let Some(last_nl) = data.iter().rposition(|&b| b == b'\n') else {
            self.partial.extend_from_slice(data);
            if self.partial.len() >= MAX_CHUNK {
                let held = std::mem::take(&mut self.partial);
                self.emit_lines(&held).await;
            }
            return;
        };
        if self.partial.is_empty() {
            self.emit_lines(&data[..=last_nl]).await;
        } else {
            let mut lines = std::mem::take(&mut self.partial);
            lines.extend_from_slice(&data[..=last_nl]);
            self.emit_lines(&lines).await;
        }
        self.partial.extend_from_slice(&data[last_nl + 1..]);
    }

    /// Writes a line of kiln's own (an error message, a notice) into the step's log.
    pub(crate) async fn line(&mut self, text: &str) {
        self.flush().await;
        let mut data = Vec::with_capacity(text.len() + 1);
        data.extend_from_slice(text.as_bytes());
        data.push(b'\n');
        self.emit_lines(&data).await;
    }

    /// Sends whatever partial line is held (at the end of a step).
    pub(crate) async fn flush(&mut self) {
        if !self.partial.is_empty() {
            let held = std::mem::take(&mut self.partial);
            self.emit_lines(&held).await;
        }
    }

    /// Handles `::add-mask::` lines, masks the rest and sends it in chunks of at most
    /// [`MAX_CHUNK`] bytes.
    async fn emit_lines(&mut self, data: &[u8]) {
        let mut out: Vec<u8> = Vec::new();
        if find(data, ADD_MASK).is_none() {
            out = self.masker.mask_bytes(data);
        } else {
            // Mask what comes before each add-mask line with the masks known then, so the
            // order of registration and printing is the one the script produced.
            let mut pending_start = 0;
            let mut pos = 0;
            while pos < data.len() {
                let end = data[pos..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(data.len(), |i| pos + i + 1);
                let line = &data[pos..end];
                if let Some(value) = line.strip_prefix(ADD_MASK) {
                    out.extend(self.masker.mask_bytes(&data[pending_start..pos]));
                    let value = String::from_utf8_lossy(value);
                    self.masker.add(value.trim());
                    pending_start = end;
                }
                pos = end;
            }
            out.extend(self.masker.mask_bytes(&data[pending_start..]));
        }
        for chunk in out.chunks(MAX_CHUNK) {
            // A closed channel means nobody listens any more; the step still runs to its end.
            let _ = self
                .events
                .send(ExecEvent::Log {
                    index: self.index,
                    data: chunk.to_vec(),
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longer_secrets_are_masked_first_and_empty_ones_ignored() {
        let m = Masker::new(&["abc".into(), "".into(), "abcdef".into(), "abc".into()]);
        assert_eq!(m.mask_str("x abcdef y abc"), "x *** y ***");
        assert_eq!(m.mask_bytes(b"abcdefabc"), b"******");
        assert_eq!(mask("no secrets", &[]), "no secrets");
        assert_eq!(mask("pw=hunter2\n", &["hunter2\n".into()]), "pw=***\n");
    }

    async fn collect(chunks: &[&[u8]], masks: &[String]) -> (Vec<Vec<u8>>, Masker) {
        let (tx, mut rx) = mpsc::channel(100);
        let mut masker = Masker::new(masks);
        {
            let mut sink = LogSink::new(3, &tx, &mut masker);
            for c in chunks {
                sink.push(c).await;
            }
            sink.flush().await;
        }
        drop(tx);
        let mut out = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                ExecEvent::Log { index, data } => {
                    assert_eq!(index, 3);
                    out.push(data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (out, masker)
    }

    #[tokio::test]
    async fn partial_lines_are_held_until_complete() {
        let (out, _) = collect(&[b"hel", b"lo sec", b"ret\nwor", b"ld"], &["secret".into()]).await;
        assert_eq!(out, vec![b"hello ***\n".to_vec(), b"world".to_vec()]);
    }

    #[tokio::test]
    async fn add_mask_lines_register_and_vanish() {
        let (out, masker) = collect(
            &[b"before tok1\n::add-mask::tok1\nafter tok1\n::add-mask:: two words \nsay two words\n"],
            &[],
        )
        .await;
        assert_eq!(out.concat(), b"before tok1\nafter ***\nsay ***\n");
        assert_eq!(masker.mask_str("tok1"), "***");
    }
}
