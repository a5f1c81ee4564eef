//! Walking a file range one mapping at a time, the kernel's `iomap_iter`.
//!
//! An operation asks the filesystem for the mapping at the current position (`begin`), does a
//! step of work over it and records how far it got (`advance`), then hands the mapping back
//! (`end`) and moves on. Iteration stops when the range is done, when a step fails, or when a
//! step made no progress without marking the mapping stale; a stale mapping (rule R7) is
//! simply asked for again from where the step stopped.

use tracing::trace;

use crate::error::{Error, Result};
use crate::iomap::{Iomap, IomapFlags, IomapKind, IomapOps, IterFlags};

/// Iteration state over `[pos, pos + len)`.
pub struct IomapIter<'a> {
    ops: &'a dyn IomapOps,
    flags: IterFlags,
    pos: u64,
    len: u64,
    /// Start and length of the current step, as handed to `end`.
    step_pos: u64,
    step_len: u64,
    iomap: Option<Iomap>,
    srcmap: Option<Iomap>,
    /// Mappings must start and end on multiples of this (the block size), bar the file's end.
    align: u64,
    /// A step asked to end iteration after it, progress or not.
    stop: bool,
}

impl<'a> IomapIter<'a> {
    /// Iteration over `len` bytes at `pos`.
    pub fn new(ops: &'a dyn IomapOps, pos: u64, len: u64, flags: IterFlags) -> Self {
        Self {
            ops,
            flags,
            pos,
            len,
            step_pos: pos,
            step_len: 0,
            iomap: None,
            srcmap: None,
            align: 1,
            stop: false,
        }
    }

    /// Requires mappings to be aligned to `align` bytes (the block size): the engine tracks
    /// state per block and cannot use a mapping that splits one.
    pub fn with_alignment(mut self, align: u64) -> Self {
        self.align = align.max(1);
        self
    }

    /// Runs `step` over each mapping until the range is done. Returns how many bytes were
    /// processed and how iteration ended; bytes processed before an error are counted.
    pub fn run(mut self, mut step: impl FnMut(&mut Self) -> Result<()>) -> (u64, Result<()>) {
        let start = self.pos;
        loop {
            match self.next() {
                Ok(true) => {}
                Ok(false) => return (self.pos - start, Ok(())),
                Err(e) => return (self.pos - start, Err(e)),
            }
            if let Err(e) = step(&mut self) {
                // The step's error is the one the caller needs; `end` still runs so the
                // filesystem can release what `begin` reserved.
                let _ = self.end_step();
                self.iomap = None;
                return (self.pos - start, Err(e));
            }
        }
    }

    /// Ends the current mapping, if any, and begins the next; false when iteration is over.
    fn next(&mut self) -> Result<bool> {
        if self.iomap.is_some() {
            self.end_step()?;
            let stale = self.iomap().flags.contains(IomapFlags::STALE);
            let progressed = self.pos > self.step_pos;
            self.iomap = None;
            if self.len == 0 || self.stop || (!progressed && !stale) {
                return Ok(false);
            }
        }
        if self.len == 0 {
            return Ok(false);
        }
        let pair = self.ops.begin(self.pos, self.len, self.flags)?;
        check_mapping(&pair.iomap, self.pos, self.align, "iomap")?;
        if let Some(src) = &pair.srcmap {
            check_mapping(src, self.pos, self.align, "srcmap")?;
        }
        trace!(
            pos = self.pos,
            len = self.len,
            offset = pair.iomap.offset,
            length = pair.iomap.length,
            kind = ?pair.iomap.kind,
            flags = ?pair.iomap.flags,
            "iomap_iter"
        );
        self.step_pos = self.pos;
        // A srcmap shorter than the mapping bounds the step too: past its end the old data
        // lives somewhere else (Linux's iomap_length_trim).
        let map_end = match &pair.srcmap {
            Some(src) if src.kind != IomapKind::Hole => pair.iomap.end().min(src.end()),
            _ => pair.iomap.end(),
        };
        self.step_len = self.len.min(map_end - self.pos);
        self.iomap = Some(pair.iomap);
        self.srcmap = pair.srcmap.filter(|s| s.kind != IomapKind::Hole);
        Ok(true)
    }

    fn end_step(&mut self) -> Result<()> {
        let done = self.pos - self.step_pos;
        match &self.iomap {
            Some(iomap) => self
                .ops
                .end(self.step_pos, self.step_len, done, self.flags, iomap),
            None => Ok(()),
        }
    }

    /// Current file position.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes left in the whole iteration.
    pub fn remaining(&self) -> u64 {
        self.len
    }

    /// Bytes left in the current mapping.
    pub fn length(&self) -> u64 {
        self.step_pos + self.step_len - self.pos
    }

    /// Why the engine is iterating.
    pub fn flags(&self) -> IterFlags {
        self.flags
    }

    /// The current mapping.
    pub fn iomap(&self) -> &Iomap {
        match &self.iomap {
            Some(iomap) => iomap,
            None => unreachable!("IomapIter used outside a step"),
        }
    }

    /// The mapping to read existing data through: the srcmap when copying on write, else the
    /// mapping itself.
    pub fn srcmap(&self) -> &Iomap {
        self.srcmap.as_ref().unwrap_or_else(|| self.iomap())
    }

    /// Whether the current mapping is still valid, by the filesystem's cookie check (R7).
    pub fn is_valid(&self) -> bool {
        self.ops.valid(self.iomap())
    }

    /// Records `n` bytes of progress.
    pub fn advance(&mut self, n: u64) {
        debug_assert!(n <= self.length(), "advance {n} past the mapping");
        self.pos += n;
        self.len -= n;
    }

    /// Records progress to the end of the current mapping.
    pub fn advance_full(&mut self) {
        self.advance(self.length());
    }

    /// Ends iteration once the current mapping is handed back, however far the step got: for
    /// steps that know nothing more can be done (a write whose source ran dry).
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// Whether the current mapping was found stale; the step must stop using it.
    pub fn is_stale(&self) -> bool {
        self.iomap().flags.contains(IomapFlags::STALE)
    }

    /// Marks the mapping stale: iteration asks the filesystem again from the current position.
    pub fn mark_stale(&mut self) {
        if let Some(iomap) = &mut self.iomap {
            iomap.flags |= IomapFlags::STALE;
        }
    }

    /// Notes that a write through the current mapping grew the file.
    pub fn mark_size_changed(&mut self) {
        if let Some(iomap) = &mut self.iomap {
            iomap.flags |= IomapFlags::SIZE_CHANGED;
        }
    }
}

fn check_mapping(iomap: &Iomap, pos: u64, align: u64, what: &str) -> Result<()> {
    let Some(end) = iomap.offset.checked_add(iomap.length) else {
        return Err(Error::BadMapping(format!("{what} {iomap:?} overflows")));
    };
    if iomap.length == 0 || iomap.offset > pos || end <= pos {
        return Err(Error::BadMapping(format!(
            "{what} {iomap:?} does not contain offset {pos}"
        )));
    }
    if iomap.offset % align != 0 || (end % align != 0 && end != u64::MAX) {
        return Err(Error::BadMapping(format!(
            "{what} {iomap:?} is not aligned to the {align}-byte block size"
        )));
    }
    if matches!(iomap.kind, IomapKind::Mapped | IomapKind::Unwritten)
        && iomap.addr.checked_add(iomap.length).is_none()
    {
        return Err(Error::BadMapping(format!(
            "{what} {iomap:?} runs past the largest device address"
        )));
    }
    if iomap.kind == IomapKind::Inline && iomap.inline_data.is_none() {
        return Err(Error::BadMapping(format!(
            "inline {what} {iomap:?} has no data"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iomap::IomapPair;
    use parking_lot::Mutex;

    /// Maps 4 KiB holes and records begin/end calls; can mark a mapping stale via `valid`.
    struct Recorder {
        calls: Mutex<Vec<String>>,
        extent: u64,
    }

    impl IomapOps for Recorder {
        fn begin(&self, pos: u64, len: u64, _: IterFlags) -> Result<IomapPair> {
            self.calls.lock().push(format!("begin {pos} {len}"));
            let start = pos - pos % self.extent;
            Ok(Iomap::hole(start, self.extent).into())
        }
        fn end(&self, pos: u64, len: u64, done: u64, _: IterFlags, _: &Iomap) -> Result<()> {
            self.calls.lock().push(format!("end {pos} {len} {done}"));
            Ok(())
        }
    }

    fn recorder() -> Recorder {
        Recorder {
            calls: Mutex::new(Vec::new()),
            extent: 4096,
        }
    }

    #[test]
    fn iteration_visits_each_mapping_and_reports_progress_to_end() {
        let ops = recorder();
        let (done, res) = IomapIter::new(&ops, 1000, 8000, IterFlags::empty()).run(|it| {
            it.advance_full();
            Ok(())
        });
        res.unwrap();
        assert_eq!(done, 8000);
        assert_eq!(
            *ops.calls.lock(),
            [
                "begin 1000 8000",
                "end 1000 3096 3096",
                "begin 4096 4904",
                "end 4096 4096 4096",
                "begin 8192 808",
                "end 8192 808 808"
            ]
        );
    }

    #[test]
    fn iteration_stops_when_a_step_makes_no_progress() {
        let ops = recorder();
        let mut first = true;
        let (done, res) = IomapIter::new(&ops, 0, 10000, IterFlags::empty()).run(|it| {
            if std::mem::take(&mut first) {
                it.advance(100);
            }
            Ok(())
        });
        res.unwrap();
        assert_eq!(done, 100);
        assert_eq!(
            *ops.calls.lock(),
            [
                "begin 0 10000",
                "end 0 4096 100",
                "begin 100 9900",
                "end 100 3996 0"
            ]
        );
    }

    #[test]
    fn a_stale_mapping_is_asked_for_again_from_where_the_step_stopped() {
        let ops = recorder();
        let mut stale_once = true;
        let (done, res) = IomapIter::new(&ops, 0, 4096, IterFlags::WRITE).run(|it| {
            if std::mem::take(&mut stale_once) {
                it.advance(512);
                it.mark_stale();
            } else {
                it.advance_full();
            }
            Ok(())
        });
        res.unwrap();
        assert_eq!(done, 4096);
        assert_eq!(
            *ops.calls.lock(),
            [
                "begin 0 4096",
                "end 0 4096 512",
                "begin 512 3584",
                "end 512 3584 3584"
            ]
        );
    }

    #[test]
    fn a_failing_step_still_ends_its_mapping_and_counts_progress() {
        let ops = recorder();
        let (done, res) = IomapIter::new(&ops, 0, 8192, IterFlags::empty()).run(|it| {
            it.advance(10);
            Err(Error::from_errno(28))
        });
        assert_eq!(res.unwrap_err().errno(), 28);
        assert_eq!(done, 10);
        assert_eq!(*ops.calls.lock(), ["begin 0 8192", "end 0 4096 10"]);
    }

    #[test]
    fn a_mapping_that_misses_pos_is_rejected() {
        struct Bad;
        impl IomapOps for Bad {
            fn begin(&self, pos: u64, _: u64, _: IterFlags) -> Result<IomapPair> {
                Ok(Iomap::hole(pos + 1, 10).into())
            }
        }
        let (_, res) = IomapIter::new(&Bad, 0, 100, IterFlags::empty()).run(|_| Ok(()));
        assert!(matches!(res, Err(Error::BadMapping(_))));
    }
}
